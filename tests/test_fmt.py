"""`nlc fmt` round trip: formatting keeps the AST and every comment, and is idempotent, for the
examples and for random specs generated from the grammar's constructs (hypothesis)."""

from __future__ import annotations

import builtins
import keyword
import os
import re

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import ROOT, example_ids
from nlc.syntax import format_module, parse
from nlc.syntax.parser import _grammar_text

# Every literal word of the grammar is a keyword, so generated names avoid them.
GRAMMAR_WORDS = frozenset(re.findall(r'"([A-Za-z_]+)"', _grammar_text()))
RESERVED = GRAMMAR_WORDS | set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins))


def round_trip(text: str) -> str:
    """Format `text` and check the three properties; return the formatted text."""
    comments: list = []
    module = parse(text, "in.nl", comments)
    formatted = format_module(module, comments)
    again_comments: list = []
    again = parse(formatted, "formatted.nl", again_comments)
    assert again == module, f"formatting changed the AST:\n--- in\n{text}\n--- out\n{formatted}"
    assert sorted(c for _, c in again_comments) == sorted(c.rstrip() for _, c in comments), \
        f"formatting lost or changed a comment:\n{formatted}"
    assert format_module(again, again_comments) == formatted, \
        f"formatting is not idempotent:\n{formatted}"
    return formatted


@pytest.mark.parametrize("name", example_ids())
def test_examples_round_trip(name):
    text = (ROOT / "examples" / f"{name}.nl").read_text(encoding="utf-8")
    formatted = round_trip(text)
    assert formatted.endswith("\n") and not formatted.endswith("\n\n")
    assert "\t" not in formatted
    assert all(line == line.rstrip() for line in formatted.splitlines())


def test_round_trip_detects_a_changed_ast():
    """The comparison is not vacuous: ASTs that differ compare unequal (spans aside)."""
    assert parse("layer A { output a + b * c }") == parse("layer A {\n  output a + (b * c)\n}")
    assert parse("layer A { output (a + b) * c }") != parse("layer A { output a + b * c }")
    assert parse("layer A { output 2 ^ 3 ^ 4 }") != parse("layer A { output (2 ^ 3) ^ 4 }")
    assert parse("layer A { output 2.0 }") != parse("layer A { output 2 }")


@pytest.mark.parametrize("text", [
    "layer A { output -(a + b) ^ 2 }",
    "layer A { output (-a) ^ -b ^ c }",
    "layer A { output a - (b - c) - d / (e / f) @ g }",
    "layer A { output ---a * -(-b) }",
    "layer A { output f(x, y = 1e-3, a -> 2 * b -> c)[0] }".replace("[0]", ""),
    "layer A { output m[d_v, d_k] }",
    "layer A { output .5 + 2. + 3E+2 + 007 + 1e15 }",
    "# head\nlayer A { # after brace\n  # before dims\n  dims d = 4 # trailing\n\n\n  ; ;\n"
    "  # before close\n} # after close\n# tail\n",
])
def test_round_trip_cases(text):
    round_trip(text)


SPREAD_OVER_LINES = """\
layer A {  # the layer
  dims d_model = 8,
       d_k = 4  # dims
  hyper eta = 0.5,
        mu = 0.1  # hypers
  param W : [d_model,
             d_k]  # weights

  context from x {  # context
    k = x
        @ W  # keys
  }  # end context

  level memory
      every 1 token {  # the level
    state S : matrix[d_k,
                     d_k] = zeros  # state
    objective l2(S(k),  # prediction
                 k)  # objective
    algorithm gd(lr = eta)  # algorithm
  }  # end level

  output memory @ W  # output
}
"""


def test_a_trailing_comment_stays_on_the_statement_it_ends():
    """Each statement written over several lines becomes one line that keeps the comment
    ending it; an earlier comment inside it goes above it, not onto the next statement."""
    assert round_trip(SPREAD_OVER_LINES) == """\
layer A {  # the layer
  dims d_model = 8, d_k = 4  # dims
  hyper eta = 0.5, mu = 0.1  # hypers
  param W : [d_model, d_k]  # weights

  context from x {  # context
    k = x @ W  # keys
  }  # end context

  level memory every 1 token {  # the level
    state S : matrix[d_k, d_k] = zeros  # state
    # prediction
    objective l2(S(k), k)  # objective
    algorithm gd(lr = eta)  # algorithm
  }  # end level

  output memory @ W  # output
}
"""


# ---------------------------------------------------------------- random specs from the grammar

SCALE = float(os.environ.get("NLC_FUZZ_SCALE", "1"))  # > 1: more cases, and random ones
SETTINGS = settings(max_examples=int(400 * SCALE), deadline=None, derandomize=SCALE == 1,
                    database=None,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True).filter(
    lambda n: n not in RESERVED and not (n.startswith("__") and n.endswith("__")))
NUMBER = st.one_of(st.integers(0, 10**6).map(str),
                   st.sampled_from(["0.5", ".25", "2.", "1e-3", "3E+2", "1.5e10", "007", "1e15"]))
SEP = "\x01"  # stands between two tokens; the layout strategy replaces it


def _join(*parts: str) -> str:
    return SEP.join(p for p in parts if p)


def _expr(children):
    call = st.builds(lambda f, args: _join(f, "(", f" {SEP}, ".join(args), ")"), NAME,
                     st.lists(st.one_of(children,
                                        st.builds(lambda k, v: _join(k, "=", v), NAME, children),
                                        st.lists(children, min_size=2, max_size=3)
                                        .map(lambda xs: f"{SEP}->{SEP}".join(xs))),
                              max_size=3))
    index = st.builds(lambda n, items: _join(n, "[", f"{SEP},{SEP}".join(items), "]"), NAME,
                      st.lists(children, min_size=1, max_size=3))
    paren = children.map(lambda e: _join("(", e, ")"))
    unary = st.builds(lambda minus, a: SEP.join(["-"] * minus + [a]), st.integers(0, 2),
                      st.one_of(NAME, NUMBER, call, index, paren))
    binary = st.builds(lambda first, rest: _join(first, *[_join(op, t) for op, t in rest]), unary,
                       st.lists(st.tuples(st.sampled_from("+-*/@^"), unary), max_size=3))
    return st.one_of(unary, binary)


EXPR = st.recursive(st.one_of(NAME, NUMBER), _expr, max_leaves=8)
NAMES = st.lists(NAME, min_size=1, max_size=3).map(lambda ns: f"{SEP},{SEP}".join(ns))


def _opt(strategy, text=lambda s: s):
    return st.one_of(st.just(""), strategy.map(text))


DIMS = st.builds(lambda word, defs: _join(word, f"{SEP},{SEP}".join(defs)),
                 st.sampled_from(["dims", "hyper"]),
                 st.lists(st.builds(lambda n, e: _join(n, "=", e), NAME, EXPR), min_size=1,
                          max_size=3))
PARAM = st.builds(lambda names, shape, init: _join("param", names, ":", "[",
                                                   f"{SEP},{SEP}".join(shape), "]", init),
                  NAMES, st.lists(EXPR, max_size=3), _opt(EXPR, lambda e: _join("=", e)))
CONTEXT = st.builds(lambda src, body: _join("context", "from", src, "{", *body, "}"), NAMES,
                    st.lists(st.one_of(st.builds(lambda n, e: _join(n, "=", e), NAME, EXPR),
                                       st.just(";")), max_size=4))
LEVEL_ITEM = st.one_of(
    st.builds(lambda n, form, init: _join("state", n, ":", form, init), NAME, EXPR,
              _opt(EXPR, lambda e: _join("=", e))),
    EXPR.map(lambda e: _join("objective", e)),
    st.lists(EXPR, min_size=1, max_size=3)
    .map(lambda es: _join("retention", f"{SEP},{SEP}".join(es))),
    EXPR.map(lambda e: _join("algorithm", e)),
    st.builds(lambda when, e: _join("read", when, e), st.sampled_from(["", "before", "after"]),
              EXPR),
    st.builds(lambda n, e: _join("apply", n, "=", e), NAME, EXPR),
    PARAM,
    st.just(";"),
)
UNITS = st.sampled_from(["token", "tokens", "step", "steps"])
LEVEL = st.builds(
    lambda name, over, every, chunk, body: _join("level", name, over, every, chunk, "{", *body,
                                                 "}"),
    NAME,
    _opt(st.tuples(NAME, _opt(NAME)),
         lambda t: _join("over", "gradients", t[0], _join(",", "inputs", t[1]) if t[1] else "")),
    _opt(st.tuples(EXPR, UNITS), lambda t: _join("every", t[0], t[1])),
    _opt(EXPR, lambda e: _join(",", "gradients", "at", "chunk", "(", e, ")")),
    st.lists(LEVEL_ITEM, max_size=5))
ITEM = st.one_of(
    DIMS, PARAM, CONTEXT, LEVEL,
    EXPR.map(lambda e: _join("output", e)),
    st.builds(lambda a, b, m: _join("transfer", a, "->", b, ":", m), NAME, NAME, NAME),
    st.lists(NAME, min_size=1, max_size=4).map(lambda ns: _join("block", f"{SEP}->{SEP}".join(ns))),
    st.just(";"),
)
DECL = st.builds(lambda kind, name, claims, body: _join(kind, name, claims, "{", *body, "}"),
                 st.sampled_from(["layer", "optimizer"]), NAME,
                 _opt(NAME, lambda n: _join("claims", n)), st.lists(ITEM, max_size=6))
MODEL = st.builds(lambda name, body: _join("model", name, "{", *body, "}"), NAME,
                  st.lists(ITEM, max_size=4))
SPEC = st.lists(st.one_of(DECL, MODEL), max_size=3).map(lambda ds: SEP.join(ds))

COMMENT = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\n\r"),
                  max_size=12).map(lambda t: f" #{t}\n")
LAYOUT = st.one_of(st.just(" "), st.just(" "), st.just("\n"), st.just("\n\n  "), st.just("\t"),
                   COMMENT)


@SETTINGS
@given(SPEC, st.data())
def test_generated_specs_round_trip(spec, data):
    pieces = spec.split(SEP)
    layout = data.draw(st.lists(LAYOUT, min_size=len(pieces), max_size=len(pieces)))
    text = "".join(p + sep for p, sep in zip(pieces, layout))
    round_trip(text)


def test_a_trailing_comment_ends_the_last_statement_of_its_line():
    """`param a ...; param b ...  # c` gave the comment to `a`, and `layer B { dims ... # c`
    to the layer's header: the comment ends the statement written last on its line."""
    text = ("layer B { dims d_model = 8  # the width\n"
            "  param W_a : [d_model, d_model]; param W_b : [d_model, d_model]  # second\n"
            "  level m { state S : matrix[d_model, d_model]\n"
            "    objective dot(S(x), x)\n    algorithm gd(lr = 1)\n    read S(x) }\n"
            "  output m @ W_a @ W_b\n}\n")
    out = round_trip(text)
    assert "layer B {\n" in out
    assert "  dims d_model = 8  # the width\n" in out
    assert "  param W_a : [d_model, d_model]\n  param W_b : [d_model, d_model]  # second\n" in out
