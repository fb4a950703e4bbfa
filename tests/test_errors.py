"""Golden error messages: each `tests/errors/NAME.nl` is a malformed spec, and
`tests/errors/NAME.txt` is exactly what `nlc check` prints for it (exit code 2).

A spec's leading comments steer its test:
    # expect: TEXT            the message must contain TEXT (survives --update-goldens)
    # nlc-test: ARGS          extra command-line arguments, e.g. ``-D d_k=0``;
                              ``--pad-to N`` pads the file with comment lines to N bytes
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT, TESTS
from nlc.cli import main

ERRORS = TESTS / "errors"
LOCATED = re.compile(r"^tests/errors/[a-z0-9_]+\.nl:\d+:\d+: error: \S")
FILE_LEVEL = re.compile(r"^(tests/errors/[a-z0-9_]+\.nl|nlc): error: \S")


def _cases() -> list[str]:
    return sorted(p.stem for p in ERRORS.glob("*.nl"))


def _directives(text: str) -> tuple[list[str], list[str]]:
    expects, args = [], []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# expect: "):
            expects.append(line[len("# expect: "):])
        elif line.startswith("# nlc-test: "):
            args.extend(shlex.split(line[len("# nlc-test: "):]))
    return expects, args


def _run_check(name: str, tmp_path: Path, monkeypatch, capsys) -> tuple[int, str, list[str]]:
    rel = f"tests/errors/{name}.nl"
    text = (ROOT / rel).read_text(encoding="utf-8")
    expects, args = _directives(text)
    path = rel
    if "--pad-to" in args:
        i = args.index("--pad-to")
        size = int(args.pop(i + 1))
        args.pop(i)
        padded = text + "".join("#" + "x" * 62 + "\n" for _ in range(size // 64 + 1))
        big = tmp_path / "tests" / "errors" / f"{name}.nl"
        big.parent.mkdir(parents=True)
        big.write_text(padded, encoding="utf-8")
        monkeypatch.chdir(tmp_path)
    else:
        monkeypatch.chdir(ROOT)
    monkeypatch.delenv("NLC_DEBUG", raising=False)
    rc = main(["check", path, *args])
    out = capsys.readouterr()
    assert out.out == "", "a failing check prints nothing on stdout"
    return rc, out.err, expects


def test_enough_error_cases():
    assert len(_cases()) >= 30


@pytest.mark.parametrize("name", _cases())
def test_error_golden(name, tmp_path, monkeypatch, capsys, golden):
    rc, message, expects = _run_check(name, tmp_path, monkeypatch, capsys)
    assert rc == 2, f"expected exit code 2, got {rc}:\n{message}"
    assert "Traceback" not in message and "internal error" not in message
    assert expects, f"{name}.nl needs a '# expect: ...' line"
    for text in expects:
        assert text in message, f"{text!r} not in:\n{message}"
    first = message.splitlines()[0]
    if name.startswith("override_") or name == "oversize_input":
        assert LOCATED.match(first) or FILE_LEVEL.match(first), first
    else:
        assert LOCATED.match(first), f"not located: {first}"
        # a located message shows the source line and a caret under the span
        lines = message.splitlines()
        assert len(lines) >= 3 and lines[1].startswith("  ") and set(lines[2].strip()) == {"^"}
    golden(ERRORS / f"{name}.txt", message)


def test_no_stale_error_goldens(update_goldens):
    names = set(_cases())
    stale = sorted(p for p in ERRORS.glob("*.txt") if p.stem not in names)
    if update_goldens:
        for p in stale:
            p.unlink()
        return
    assert not stale, f"goldens without a spec: {[p.name for p in stale]}"


# ---------------------------------------------------------------- refused at check, not later
MLP_LAYER = """layer L {
  dims d_model = 8, d_k = 4
  param W_k : [d_model, d_k]
  param W_o : [d_k, d_model]
  context from x {
    k = x @ W_k
  }
  level slow every 4 tokens {
    state S : mlp(d_k -> 8 -> d_k, act = gelu) = learned
    objective l2(S(k), k)
    algorithm gd(lr = 0.1)
    read S(k)
  }
  level fast {
    state F : STATE
    objective l2(F(k), k)
    algorithm gd(lr = 0.1)
    read F(k)
  }
  TRANSFER
  output (fast + slow) @ W_o
}
"""


def _check(text: str):
    from nlc import pipeline
    return pipeline.run("spec.nl", "check", text=text)


@pytest.mark.parametrize("state, transfer", [
    ("mlp(d_k -> d_k, act = gelu) = zeros", ""),            # one layer: W k moves
    ("mlp(d_k -> 8 -> d_k, act = gelu) = zeros", "transfer slow -> fast : init"),
    ("mlp(d_k -> 8 -> d_k, act = tanh) = learned", ""),
])
def test_an_mlp_memory_that_can_move_passes_check(state, transfer):
    _check(MLP_LAYER.replace("STATE", state).replace("TRANSFER", transfer))


def test_an_mlp_memory_at_the_default_start_is_refused_at_its_state():
    """No `= ...` is zeros: the error points at the state and says so."""
    from nlc.errors import NlcError
    text = MLP_LAYER.replace("STATE", "mlp(d_k -> 8 -> d_k, act = relu)").replace("TRANSFER", "")
    with pytest.raises(NlcError) as info:
        _check(text)
    err = info.value
    assert (err.span.line, err.span.column) == (15, 5)
    assert "since relu(0) = 0" in err.message
    assert err.hint.startswith("a state without '= ...' starts at zeros")


def test_an_optimizer_state_is_its_own_prediction():
    """like(param) states are plain values in their objective (Adam's `dot(m, g)`); only a
    layer's memory must be applied."""
    text = (ROOT / "examples" / "adam.nl").read_text(encoding="utf-8")
    assert "objective dot(m, g)" in text
    _check(text)
