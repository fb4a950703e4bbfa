"""The README says what is true: CI runs its test command, and its tour shows real output."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import ROOT
from nlc.cli import main

README = (ROOT / "README.md").read_text(encoding="utf-8")
TEST_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest'


def test_ci_runs_the_readme_test_command():
    assert f"    {TEST_COMMAND}\n" in README
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    steps = [line for line in run.splitlines() if line and not line.startswith("#")
             and line.split()[0] in ("pip", "python")]
    assert steps == ["pip install torch==2.13.0", 'pip install -e ".[test]"',
                     "python -m pytest || status=$?"]
    assert " && ".join(s.split(" ||")[0] for s in steps) == TEST_COMMAND
    assert run.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in run


def test_quickstart_pins_torch_first():
    first = re.search(r"^    (pip install .* nlc demo)$", README, re.M)
    assert first, "the README's first command runs the demo"
    assert first.group(1).startswith("pip install torch==2.13.0 && ")


def _tour() -> list[tuple[str, list[str]]]:
    """(command, shown output) for each complete ``$ nlc ...`` example in the README."""
    blocks, current = [], None
    for line in README.splitlines():
        if line.startswith("    $ "):
            current = (line[6:].split("  #")[0].strip(), [])
            blocks.append(current)
        elif current and line.startswith("    ") and line.strip():
            current[1].append(line[4:])
        else:
            current = None
    return [(cmd, out) for cmd, out in blocks if out and "..." not in out
            and "examples/*" not in cmd]


@pytest.mark.parametrize("command, shown", _tour())
def test_tour_output(command, shown, monkeypatch, capsys):
    argv = shlex.split(command)
    assert argv[0] == "nlc"
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("NLC_DEBUG", raising=False)
    main(argv[1:])
    out = capsys.readouterr()
    assert (out.out + out.err).rstrip("\n").splitlines() == shown


def test_tour_is_not_empty():
    assert len(_tour()) >= 3


def _subcommands() -> set[str]:
    from nlc.cli import build_parser
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(action.choices)


DOCS = [ROOT / "README.md", ROOT / "generated" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_only_commands_that_exist(doc):
    """Every `nlc WORD` a document mentions is a command, and none is said not to exist yet."""
    text = doc.read_text(encoding="utf-8")
    commands = _subcommands()
    for word in re.findall(r"`nlc ([a-z_]+)", text):
        assert word in commands, f"{doc.name} mentions `nlc {word}`, which is not a command"
    stale = re.search(r"once `nlc [a-z_]+` exists|when `nlc [a-z_]+` (?:exists|lands)", text)
    assert not stale, f"{doc.name}: {stale.group(0)}"


def test_the_tour_makes_every_run_it_evaluates_or_plots():
    made = set()
    for line in README.replace("\\\n", " ").splitlines():  # join continued lines
        command = line.strip().lstrip("$ ").split("  #")[0]
        if not command.startswith("nlc "):
            continue
        argv = shlex.split(command)
        if argv[1] == "train" and "--out" in argv:
            made.add(argv[argv.index("--out") + 1])
        elif argv[1] == "eval":
            assert argv[2] in made, f"`{command}` evaluates a run the README never trains"
        elif argv[1] == "plot":
            runs = [a for a in argv[2:argv.index("-o")]]
            missing = [r for r in runs if r not in made]
            assert not missing, f"`{command}` plots {missing}, which the README never trains"


def test_every_benchmark_script_the_results_and_perf_docs_name_exists():
    """Every number in docs/results.md and docs/perf.md names the script that regenerates
    it: each `benchmarks/...` those docs cite is in the repo."""
    for doc in ("docs/results.md", "docs/perf.md"):
        text = (ROOT / doc).read_text()
        cited = set(re.findall(r"benchmarks/[\w./-]+\.(?:py|sh)", text))
        missing = sorted(c for c in cited if not (ROOT / c).is_file())
        assert not missing, f"{doc} cites {missing}"
    assert "benchmarks/mlp_memory_sensitivity.py" in (ROOT / "docs/results.md").read_text()


def test_the_identify_example_in_prose_is_what_identify_prints(tmp_path, capsys):
    """"a Gated DeltaNet whose step goes through a momentum buffer prints `nearest: ...` and
    `Gated DeltaNet + momentum`": examples/gated_deltanet.nl with `momentum` for `gd`."""
    text = (ROOT / "examples" / "gated_deltanet.nl").read_text(encoding="utf-8")
    text = text.replace(" claims gated_deltanet", "").replace(
        "algorithm gd(lr = beta)", "algorithm momentum(lr = beta, momentum = 0.9)")
    (tmp_path / "variant.nl").write_text(text)
    main(["identify", str(tmp_path / "variant.nl")])
    first, second = capsys.readouterr().out.splitlines()[:2]
    nearest = re.search(r"prints `(nearest: [^`]*)` and\s+`([^`]*)`", README)
    assert nearest and first.endswith(nearest[1]) and second.strip() == nearest[2]
