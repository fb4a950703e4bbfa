"""The command line, run as a user runs it: `python -m nlc ...` in a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, example_paths
from nlc import __version__

GOOD = """layer Tiny {
  dims d_model = 8, d_k = 4, d_v = 4
  param W_q, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param W_o : [d_v, d_model]
  context from x {
    q = x @ W_q
    k = x @ W_k
    v = x @ W_v
  }
  level memory every 1 token {
    state S : matrix[d_v, d_k] = zeros
    objective l2(S(k), v)
    algorithm gd(lr = 0.5)
    read S(q)
  }
  output memory @ W_o
}
"""


def nlc(*args: str, env: dict | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "NLC_DEBUG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "nlc", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=120)


def assert_user_error(proc: subprocess.CompletedProcess, where: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith(where), proc.stderr
    assert ": error: " in proc.stderr.splitlines()[0]


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "tiny.nl"
    path.write_text(GOOD)
    return path


@pytest.fixture
def example() -> Path:
    paths = example_paths()
    assert paths, "no examples/*.nl"
    preferred = ROOT / "examples" / "gated_deltanet.nl"
    return preferred if preferred in paths else paths[0]


def test_version():
    proc = nlc("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"nlc {__version__}"


def test_check_ok(good):
    proc = nlc("check", str(good))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{good}: ok: layer Tiny (1 level)\n"
    assert proc.stderr == ""


def test_check_every_example():
    paths = [str(p.relative_to(ROOT)) for p in example_paths()]
    assert paths
    proc = nlc("check", *paths)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(": ok: ") == len(paths)


def test_check_bad_spec_located(tmp_path):
    path = tmp_path / "bad.nl"
    path.write_text(GOOD.replace("read S(q)", "read S(qq)"))
    proc = nlc("check", str(path))
    assert_user_error(proc, f"{path}:15:12: error: unknown name 'qq'")
    lines = proc.stderr.splitlines()
    assert lines[1] == "      read S(qq)"
    assert lines[2] == "             ^^"
    assert lines[3] == "  hint: did you mean 'q'?"


def test_missing_file(tmp_path):
    proc = nlc("check", str(tmp_path / "nope.nl"))
    assert_user_error(proc, f"{tmp_path / 'nope.nl'}: error: no such file")


def test_directory(tmp_path):
    proc = nlc("check", str(tmp_path))
    assert_user_error(proc, f"{tmp_path}: error: is a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(good):
    good.chmod(0)
    proc = nlc("check", str(good))
    assert_user_error(proc, f"{good}: error: cannot read")


def test_unreadable_through_a_file_component(good):
    # reading "file/child" fails with ENOTDIR, an OSError that is neither of the usual two
    proc = nlc("check", str(good / "child.nl"))
    assert_user_error(proc, f"{good / 'child.nl'}: error: cannot read")


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.nl"
    path.write_bytes(GOOD.replace("Tiny", "T\xefny").encode("latin-1"))
    proc = nlc("check", str(path))
    assert_user_error(proc, f"{path}: error: not UTF-8 text (byte 7)")


def test_oversize_file(tmp_path):
    path = tmp_path / "huge.nl"
    path.write_text(GOOD + "#" * (1 << 20) + "\n")
    proc = nlc("check", str(path))
    assert_user_error(proc, f"{path}: error: spec is larger than 1024 KiB")


@pytest.mark.parametrize("define, message", [
    ("d_k", "nlc: error: -D expects NAME=VALUE, got 'd_k'"),
    ("d_k=four", "nlc: error: -D d_k: 'four' is not a number"),
    ("d_k=inf", "nlc: error: -D d_k: value must be finite"),
    ("class=3", "nlc: error: 'class' is a Python keyword"),
])
def test_bad_define(good, define, message):
    proc = nlc("check", str(good), "-D", define)
    assert_user_error(proc, message)


def test_define_unknown_name(good):
    proc = nlc("check", str(good), "-D", "d_kk=8")
    assert_user_error(proc, f"{good}: error: -D d_kk: no dim or hyper of that name in this spec")
    assert "did you mean 'd_k'?" in proc.stderr


def test_an_empty_spec_with_a_define_says_it_declares_nothing(tmp_path):
    """`nlc train` passes -D d_model to every spec: an empty one got an error about that -D,
    which the user never wrote, instead of the spec's own problem."""
    empty = tmp_path / "empty.nl"
    empty.write_text("# nothing yet\n")
    proc = nlc("check", str(empty), "-D", "d_model=16")
    assert_user_error(proc, f"{empty}:1:1: error: the spec declares nothing")


def test_define_overrides_a_dim(good):
    proc = nlc("graph", str(good), "--format", "json", "-D", "d_k=16", "-D", "d_v=16")
    assert proc.returncode == 0, proc.stderr
    proc = nlc("check", str(good), "-D", "d_k=0")
    assert_user_error(proc, f"{good}:2:21: error: dim 'd_k' must be a positive whole number")


def test_debug_reraises(tmp_path):
    path = tmp_path / "bad.nl"
    path.write_text(GOOD.replace("read S(q)", "read S(qq)"))
    proc = nlc("check", str(path), env={"NLC_DEBUG": "1"})
    assert proc.returncode != 0 and proc.returncode != 2
    assert "Traceback" in proc.stderr
    assert "NlcError" in proc.stderr


def test_usage_error_exit_code():
    proc = nlc("check")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    proc = nlc("frobnicate")
    assert proc.returncode == 2


_NO_TORCH = """
import sys
from nlc.cli import main
rc = main(["check", sys.argv[1]])
heavy = sorted(m for m in ("torch", "triton") if m in sys.modules)
print(rc, heavy)
"""


def test_check_does_not_import_torch(example):
    """`nlc check` stays light: it never imports torch or triton. (Its latency is measured by
    benchmarks/cli_latency.py, not asserted here.)"""
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, str(example)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    rc, heavy = last.split(" ", 1)
    assert rc == "0"
    assert heavy == "[]", f"nlc check imported {heavy}"


def test_fmt_check(tmp_path, good):
    proc = nlc("fmt", str(good))
    assert proc.returncode == 0, proc.stderr
    canonical = tmp_path / "canonical.nl"
    canonical.write_text(proc.stdout)
    assert nlc("fmt", "--check", str(canonical)).returncode == 0
    messy = tmp_path / "messy.nl"
    messy.write_text(GOOD.replace("  level memory", "level   memory").replace("@ W_o", "@W_o"))
    proc = nlc("fmt", "--check", str(messy))
    assert proc.returncode == 1
    assert proc.stdout == f"{messy}: would reformat\n"
    assert messy.read_text() != proc.stdout  # --check never writes
    proc = nlc("fmt", "--write", str(messy))
    assert proc.returncode == 0
    assert messy.read_text() == canonical.read_text()
    assert nlc("fmt", "--check", str(messy)).returncode == 0


def test_examples_are_formatted():
    paths = [str(p.relative_to(ROOT)) for p in example_paths()]
    assert paths
    proc = nlc("fmt", "--check", *paths)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""


def test_fmt_bad_input(tmp_path):
    path = tmp_path / "bad.nl"
    path.write_text("layer L {\n  dims d_model = \n}\n")
    proc = nlc("fmt", str(path))
    assert_user_error(proc, f"{path}:3:1: error: unexpected")


def check_graph_output(out: str, fmt: str) -> None:
    """The shape of each format; tests/test_graph.py checks what they draw."""
    assert out.endswith("\n") and out.strip()
    if fmt == "json":
        data = json.loads(out)  # one document, whatever the number of declarations
        for doc in data if isinstance(data, list) else [data]:
            assert doc["name"]
            if "levels" in doc:
                names = {lv["name"] for lv in doc["levels"]}
                assert "train" in names
                assert all(e["source"] in names and e["target"] in names for e in doc["edges"])
            else:
                assert doc["kind"] == "model" and doc["blocks"]
    elif fmt == "dot":
        assert out.startswith("digraph ")
        assert out.count("{") == out.count("}")
    elif fmt == "mermaid":
        assert out.startswith("flowchart TB\n")
        assert out.count("subgraph ") == len(re.findall(r"^ *end$", out, re.MULTILINE))
    else:
        assert re.match(r"(model|layer|optimizer) \w+: ", out)
        assert "\n  every 1 step\n" in out or "\n    every 1 step\n" in out


@pytest.mark.parametrize("fmt", ["text", "dot", "json", "mermaid"])
def test_graph_formats(example, fmt):
    proc = nlc("graph", str(example), "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    check_graph_output(proc.stdout, fmt)


@pytest.mark.parametrize("fmt", ["text", "dot", "json", "mermaid"])
def test_graph_formats_every_example(fmt, capsys):
    from nlc.cli import main
    paths = example_paths()
    assert paths
    for path in paths:
        assert main(["graph", str(path), "--format", fmt]) == 0, path
        out = capsys.readouterr()
        assert out.err == ""
        check_graph_output(out.out, fmt)


def test_graph_of_tiny(good):
    proc = nlc("graph", str(good))
    assert proc.stdout == ("layer Tiny: 2 levels, 1 edge\n"
                           "  every 1 step\n"
                           "    train   parameters\n"
                           "  every 1 token\n"
                           "    memory  S: matrix\n"
                           "  edges\n"
                           "    train -> memory  [context]\n")
    data = json.loads(nlc("graph", str(good), "--format", "json").stdout)
    assert [lv["name"] for lv in data["levels"]] == ["train", "memory"]
    assert data["levels"][1]["state"] == {"name": "S", "form": "matrix", "dims": ["d_v", "d_k"],
                                          "init": "zeros"}
    assert data["levels"][1]["frequency"] == "every 1 token"
    assert data["edges"] == [{"source": "train", "target": "memory", "mode": "context",
                              "explicit": False}]
    assert data["links"] == [{"source": "train", "target": "memory", "modes": ["context"],
                              "stated": [], "two_way": False}]


def test_stop_after_parse_dump(good):
    from nlc.syntax import parse
    from nlc.syntax.dump import dump_ast
    proc = nlc("check", "--stop-after", "parse", "--dump", str(good))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == dump_ast(parse(GOOD))
    assert proc.stdout.startswith("Module  @1:1\n")
    assert "Decl kind=layer name='Tiny'" in proc.stdout


def test_stop_after_parse_skips_check(tmp_path):
    path = tmp_path / "unchecked.nl"
    path.write_text(GOOD.replace("read S(q)", "read S(qq)"))
    done = nlc("check", "--stop-after", "parse", str(path))
    assert done.returncode == 0 and f"{path}: ok up to parse" in done.stdout
    assert nlc("check", "--stop-after", "check", str(path)).returncode == 2


def test_a_model_may_come_before_the_layers_it_stacks(tmp_path):
    """It was refused: "'L' is not a layer of this file" for a layer declared below it."""
    name = GOOD.split("layer ", 1)[1].split()[0]
    path = tmp_path / "model_first.nl"
    path.write_text(f"model Stack {{\n  block {name} -> {name}\n}}\n\n" + GOOD)
    done = nlc("check", str(path))
    assert done.returncode == 0, done.stderr
    assert f"model Stack ({name} -> {name}), layer {name} (1 level)" in done.stdout


def test_stop_after_check_dump(good):
    proc = nlc("check", "--stop-after", "check", "--dump", str(good))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == nlc("graph", str(good)).stdout
    assert nlc("check", "--dump", str(good)).stdout == proc.stdout


def test_stop_after_unknown_stage(good):
    proc = nlc("check", "--stop-after", "frobnicate", str(good))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_compile_refuses_two_specs_with_one_module_name_before_writing(tmp_path, good):
    first, second = tmp_path / "a-b.nl", tmp_path / "a_b.nl"
    first.write_text(good.read_text())
    second.write_text(good.read_text().replace("gd(lr = 0.5)", "gd(lr = 0.25)"))
    out = tmp_path / "out"
    proc = nlc("compile", str(first), str(second), "-o", str(out))
    assert_user_error(proc, f"{second}: error: this spec and {first} both compile to a_b.py")
    assert not out.exists()


def test_compile_keeps_a_hand_written_file_and_replaces_its_own(tmp_path, good):
    """`nlc compile -o DIR` once overwrote any DIR/NAME.py, a hand-written one too."""
    spec, out = tmp_path / "mine.nl", tmp_path / "out"
    spec.write_text(good.read_text())
    out.mkdir()
    (out / "mine.py").write_text("print('written by hand')\n")
    proc = nlc("compile", str(spec), "-o", str(out))
    assert_user_error(proc, f"{out / 'mine.py'}: error: a file not generated by nlc is there")
    assert (out / "mine.py").read_text() == "print('written by hand')\n"
    assert sorted(p.name for p in out.iterdir()) == ["mine.py"]
    (out / "mine.py").unlink()
    for _ in range(2):  # the second run replaces the first's generated file
        proc = nlc("compile", str(spec), "-o", str(out))
        assert proc.returncode == 0, proc.stderr
    assert (out / "mine.py").read_text().startswith("# Generated by nlc ")


def test_a_leading_byte_order_mark_is_read_past(tmp_path, good):
    """Some editors start UTF-8 files with U+FEFF: the spec checks as without it."""
    spec = tmp_path / "bom.nl"
    spec.write_bytes(b"\xef\xbb\xbf" + good.read_bytes())
    proc = nlc("check", str(spec))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("stem", ["torch", "import", "math", "typing_extensions", "__init__"])
def test_compiled_spec_never_shadows_a_module_or_is_a_keyword(tmp_path, good, stem):
    """torch.nl's module beside the other generated files would shadow torch for them
    (import torch then finds it), import.nl's could not be imported by name: both get
    `spec_` before the stem, and the compiled module imports and runs from its folder."""
    spec = tmp_path / f"{stem}.nl"
    spec.write_text(good.read_text())
    out = tmp_path / "out"
    proc = nlc("compile", str(spec), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert not (out / f"{stem}.py").exists() and (out / f"spec_{stem}.py").exists()
    run = subprocess.run([sys.executable, "-c", f"import spec_{stem}, torch; torch.zeros(1)"],
                         cwd=out, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_a_spec_named_in_another_script_compiles_to_an_ascii_module(tmp_path, good):
    """Accents are dropped (`délta` -> `delta`); a name with no ASCII letter or digit left
    is `spec_` and a hash of it, so two such names do not collide (both were `_____`)."""
    specs = [tmp_path / f"{stem}.nl" for stem in ("délta", "δέλτα", "ΔΈΛΤΑ")]
    for spec in specs:
        spec.write_text(good.read_text())
    out = tmp_path / "out"
    proc = nlc("compile", *map(str, specs), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    modules = sorted(p.stem for p in out.glob("*.py") if not p.stem.startswith("nlc_kernel_"))
    assert modules[0] == "delta" and len(modules) == 3
    assert all(re.fullmatch(r"spec_[0-9a-f]{8}", name) for name in modules[1:]), modules


def test_fmt_write_through_a_symlink_keeps_the_link(tmp_path, good):
    target = tmp_path / "target.nl"
    target.write_text(GOOD.replace("  level memory", "level   memory"))
    link = tmp_path / "link.nl"
    link.symlink_to(target)
    proc = nlc("fmt", "--write", str(link))
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and link.resolve() == target
    assert target.read_text() == nlc("fmt", str(good)).stdout


@pytest.mark.parametrize("args, says", [
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--out", "{file}"], "a file is there, not a folder"),
    (["--toy", "--out", "{file}"], "a file is there, not a folder"),
    (["--toy", "--out", "{file}/x"], "cannot write the --out folder: not a directory"),
    (["--examples", "{empty}"], "no *.nl specs there")])
def test_demo_refuses_its_arguments_before_any_work(args, says, tmp_path, capsys):
    """`--steps 0` meant the default 800, and a file as --out failed after minutes of work."""
    from nlc.cli import main
    (tmp_path / "file").write_text("keep me")
    (tmp_path / "empty").mkdir()
    args = [a.format(file=tmp_path / "file", empty=tmp_path / "empty") for a in args]
    assert main(["demo", *args]) == 2
    err = capsys.readouterr()
    assert says in err.err and "1. check" not in err.out
    assert (tmp_path / "file").read_text() == "keep me"


def test_compile_to_an_empty_output_is_refused(tmp_path, good):
    """`-o ''` wrote the modules into the current folder."""
    proc = nlc("compile", str(good), "-o", "", cwd=tmp_path)
    assert_user_error(proc, "nlc: error: -o is empty")
    assert [p.name for p in tmp_path.iterdir()] == [good.name]  # nothing written beside it


def test_an_unknown_option_is_refused_by_its_command_with_a_near_spelling():
    """`nlc train SPEC --stepz 5` printed the top-level usage and no hint."""
    proc = nlc("train", "examples/deltanet.nl", "--stepz", "5")
    assert proc.returncode == 2
    assert "nlc train: error: unrecognized arguments: --stepz 5; did you mean '--steps'?" in \
        proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unknown_command_gets_a_near_spelling():
    """`nlc chek` got argparse's invalid choice list and no hint, unlike `--stp`."""
    proc = nlc("chek", "examples/deltanet.nl")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nlc: error: unknown command 'chek'; did you mean 'check'?" in proc.stderr
