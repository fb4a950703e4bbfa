"""Mutation fuzzing of the examples (hypothesis): whatever the bytes, `parse` + `check` either
succeed or raise one located `NlcError`; never another exception, never a crash in the
renderer. When a mutant parses, formatting it keeps its AST.

About 2,400 cases a run: token mutations, name and number swaps that keep the syntax, byte
mutations, and splices of two examples. They are the same cases every run; for a longer,
random hunt set NLC_FUZZ_SCALE (e.g. ``NLC_FUZZ_SCALE=20 python -m pytest tests/test_fuzz.py``).
"""

from __future__ import annotations

import os
import re

from conftest import example_paths, scratch_dir
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from nlc import pipeline
from nlc.errors import NlcError
from nlc.syntax import format_module, parse

EXAMPLES = {p.name: p.read_bytes() for p in example_paths()}
SCALE = float(os.environ.get("NLC_FUZZ_SCALE", "1"))


def fuzz(max_examples: int) -> settings:
    """Fixed cases by default (derandomized); NLC_FUZZ_SCALE > 1 scales them up and randomizes."""
    return settings(max_examples=max(1, int(max_examples * SCALE)), deadline=None,
                    derandomize=SCALE == 1, database=None,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


TOKEN = re.compile(rb"\s+|#[^\n]*|->|[A-Za-z_][A-Za-z0-9_]*|\d+\.?\d*(?:[eE][+-]?\d+)?|.",
                   re.DOTALL)
# Tokens worth inserting: every keyword and punctuation mark of the grammar, plus odd values.
EXTRA = [b"layer", b"optimizer", b"model", b"claims", b"dims", b"hyper", b"param", b"context",
         b"from", b"level", b"over", b"gradients", b"every", b"at", b"chunk", b"tokens", b"step",
         b"state", b"objective", b"retention", b"algorithm", b"read", b"before", b"after",
         b"apply", b"output", b"transfer", b"block", b"{", b"}", b"(", b")", b"[", b"]", b",",
         b":", b";", b"=", b"+", b"-", b"*", b"/", b"@", b"^", b"->", b"\n", b" ", b"#", b"0",
         b"1", b"-1", b"0.5", b"1e999", b"1e-300", b"99999999999999999999", b"len", b"class",
         b"__init__", b"x" * 70, b"\xc3\xa9", b"\x00", b"\t", b"\r", b"train", b"param", b"t",
         b"mlp", b"cache", b"like", b"zeros", b"identity", b"learned", b"init", b"generate",
         b"direct", b"backprop", b"implicit", b"momentum", b"exact", b"nonparametric",
         b"ridge", b"omega", b"none", b"decay", b"silu(", b"((((((((", b"))))))))",
         b"0" * 4400 + b"1"]


def tokens(data: bytes) -> list[bytes]:
    return TOKEN.findall(data)


_TMP = scratch_dir("nlc-fuzz-")


def run_one(data: bytes) -> None:
    """The property: check succeeds, or fails with one located, renderable NlcError."""
    path = _TMP / "fuzz.nl"
    path.write_bytes(data)
    try:
        pipeline.run(str(path), "check")
    except NlcError as err:
        assert err.path == str(path)
        rendered = err.render()
        assert rendered.startswith(f"{path}:")
        assert "\n" not in err.message
        if err.span.known:
            lines = rendered.split("\n")
            assert lines[0].startswith(f"{path}:{err.span.line}:{err.span.column}: error: ")
            source = data.decode("utf-8").split("\n")
            assert err.span.line <= len(source), "the error points past the end of the file"
            line = source[err.span.line - 1].rstrip("\r").expandtabs(1)
            if len(line) <= 200:  # the renderer shows the very line, and a caret inside it
                assert lines[1] == "  " + line, rendered
                assert 2 <= lines[2].index("^") <= len(line) + 2, rendered
        else:  # only whole-file problems have no location
            assert rendered.startswith(f"{path}: error: "), rendered
            assert ("UTF-8" in err.message or "larger than" in err.message), rendered
    try:
        text = data.decode("utf-8")
        comments: list = []
        module = parse(text, "fuzz.nl", comments)
    except (NlcError, UnicodeDecodeError):
        return
    formatted = format_module(module, comments)
    again = parse(formatted, "formatted.nl")
    assert again == module, f"formatting changed the AST:\n{formatted}"


NUMBERS = [b"0", b"1", b"2", b"3", b"0.5", b"1.5", b"4", b"16", b"64", b"4096", b"1e-8", b"1e308",
           b"1048577", b"0.0"]
IS_NAME = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*\Z")
KEYWORDS = {b"layer", b"optimizer", b"model", b"claims", b"dims", b"hyper", b"param", b"context",
            b"from", b"level", b"over", b"gradients", b"every", b"at", b"chunk", b"token",
            b"tokens", b"step", b"steps", b"state", b"objective", b"retention", b"algorithm",
            b"read", b"before", b"after", b"apply", b"output", b"transfer", b"block"}
IS_NUMBER = re.compile(rb"[\d.]")


def _mutate_tokens(toks: list[bytes], ops, pool: list[bytes]) -> bytes:
    """Apply edit operations; `rename` and `renumber` keep the syntax and so reach the checker."""
    toks = list(toks)
    names = sorted({t for t in pool if IS_NAME.match(t) and t not in KEYWORDS}) or [b"x"]
    for op, i, j, extra in ops:
        if op in ("rename", "renumber"):
            kind = IS_NAME if op == "rename" else IS_NUMBER
            spots = [k for k, t in enumerate(toks) if kind.match(t) and t not in KEYWORDS]
            if spots:
                k = spots[i % len(spots)]
                toks[k] = names[j % len(names)] if op == "rename" else NUMBERS[j % len(NUMBERS)]
            continue
        if not toks:
            toks.append(extra)
            continue
        i %= len(toks)
        j %= len(toks)
        if op == "delete":
            del toks[i]
        elif op == "insert":
            toks.insert(i, extra)
        elif op == "insert_own":
            toks.insert(i, pool[j % len(pool)])
        elif op == "duplicate":
            toks[i:i] = toks[i:i + 1 + j % 8]
        elif op == "swap":
            toks[i], toks[j] = toks[j], toks[i]
        elif op == "replace":
            toks[i] = extra
        elif op == "truncate":
            del toks[i:]
    return b"".join(toks)


OPS = st.lists(st.tuples(
    st.sampled_from(["delete", "insert", "insert_own", "duplicate", "swap", "replace", "truncate",
                     "rename", "rename", "renumber", "renumber"]),
    st.integers(0, 10**6), st.integers(0, 10**6), st.sampled_from(EXTRA)), min_size=1, max_size=6)
NAMES = st.sampled_from(sorted(EXAMPLES))


def test_examples_to_fuzz():
    assert EXAMPLES, "no examples/*.nl to fuzz"


@fuzz(900)
@given(NAMES, OPS)
def test_token_mutations(name, ops):
    toks = tokens(EXAMPLES[name])
    assert b"".join(toks) == EXAMPLES[name]
    significant = [t for t in toks if not t.isspace()]
    run_one(_mutate_tokens(toks, ops, significant + EXTRA))


SEMANTIC_OPS = st.lists(st.tuples(st.sampled_from(["rename", "renumber"]), st.integers(0, 10**6),
                                  st.integers(0, 10**6), st.just(b"")), min_size=1, max_size=3)


@fuzz(500)
@given(NAMES, SEMANTIC_OPS)
def test_name_and_number_mutations(name, ops):
    """Mutants that still parse: they exercise the checker rather than the parser."""
    toks = tokens(EXAMPLES[name])
    run_one(_mutate_tokens(toks, ops, [t for t in toks if not t.isspace()] + EXTRA))


RAW = st.one_of(st.binary(min_size=1, max_size=4),
                st.text(st.characters(min_codepoint=9, max_codepoint=126), min_size=1, max_size=4)
                .map(str.encode))
BYTE_OPS = st.lists(st.tuples(st.sampled_from(["set", "insert", "delete", "flip"]),
                              st.integers(0, 10**6), RAW),
                    min_size=1, max_size=8)


@fuzz(700)
@given(NAMES, BYTE_OPS)
def test_byte_mutations(name, ops):
    data = bytearray(EXAMPLES[name])
    for op, i, raw in ops:
        if not data:
            data.extend(raw)
            continue
        i %= len(data)
        if op == "set":
            data[i:i + len(raw)] = raw
        elif op == "insert":
            data[i:i] = raw
        elif op == "delete":
            del data[i:i + len(raw)]
        else:
            data[i] ^= 1 << (raw[0] % 8)
    run_one(bytes(data))


@fuzz(300)
@given(NAMES, NAMES, st.integers(0, 10**6), st.integers(0, 10**6))
def test_splices(first, second, i, j):
    a, b = tokens(EXAMPLES[first]), tokens(EXAMPLES[second])
    run_one(b"".join(a[:i % (len(a) + 1)] + b[j % (len(b) + 1):]))


def test_fuzz_harness_sees_errors():
    """The property is not vacuous: a broken spec is reported, and located."""
    data = next(iter(EXAMPLES.values()))
    run_one(data)
    broken = data + b"\n}\n"
    path = _TMP / "fuzz.nl"
    path.write_bytes(broken)
    try:
        pipeline.run(str(path), "check")
    except NlcError as err:
        assert err.span.known and err.span.line == broken.count(b"\n")
    else:
        raise AssertionError("a stray '}' should be a syntax error")
