"""`nlc demo` run again over the same --out: finished runs with the same settings are
reported again, never retrained or replaced; other settings or an unfinished run are refused,
naming the folder, before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nlc.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture
def demo(tmp_path, capsys):
    """A quick demo of softmax attention alone, 3 steps, finished."""
    examples = tmp_path / "examples"
    examples.mkdir()
    shutil.copy(EXAMPLES / "softmax_attention.nl", examples)
    command = ["demo", "--quick", "--steps", "3", "--examples", str(examples),
               "--out", str(tmp_path / "demo")]
    assert main(command) == 0
    capsys.readouterr()
    return command, tmp_path / "demo" / "mqar_softmax_attention"


def files(run: Path) -> dict:
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_a_demo_run_again_reports_its_finished_runs(demo, capsys):
    command, run = demo
    before = files(run)
    assert main(command) == 0
    out, err = capsys.readouterr()
    assert "steps 1..3" not in err and "steps 4..3" not in err
    assert "nothing to train: the run is at step 3 of 3" in err
    assert "softmax_attention" in out
    table = out.split("train loss")[1]  # the accuracy table's rows
    row = next(line for line in table.splitlines() if line.strip().startswith("softmax_attention"))
    assert row.rstrip().endswith("before")  # not this call's second of evaluation
    assert files(run) == before  # metrics, checkpoints, summary: as they were


def test_a_demo_with_other_settings_refuses_before_any_work(demo, capsys):
    command, run = demo
    before = files(run)
    assert main([*command[:2], "--steps", "4", *command[4:]]) == 2
    out, err = capsys.readouterr()
    assert f"{run}: holds an earlier demo run with other settings (steps 3 there, 4 now" in err
    assert f"delete {run}" in err and "1. check" not in out  # refused before the stages
    assert files(run) == before


def test_a_demo_over_a_run_stopped_before_its_first_checkpoint_refuses(demo, capsys):
    command, run = demo
    shutil.rmtree(run / "checkpoints")
    (run / "summary.json").unlink()
    before = files(run)
    assert main(command) == 2
    assert f"{run}: holds an earlier run stopped before its first checkpoint" in \
        capsys.readouterr().err
    assert files(run) == before


def losses(run: Path) -> list:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").open())
            if r["kind"] == "train"]


def test_a_demo_run_again_continues_an_interrupted_run(demo, capsys):
    """The demo checkpoints its runs as they train: a run interrupted after step 2 (its last
    checkpoint and summary not yet written) trains on from step 2 when the demo is run again,
    to the losses of the run that was not interrupted."""
    command, run = demo
    whole = losses(run)
    last = sorted((run / "checkpoints").iterdir())
    assert len(last) == 3, last  # one per evaluation: every step of 3
    shutil.rmtree(last[-1])
    (run / "summary.json").unlink()
    assert main(command) == 0
    err = capsys.readouterr().err
    assert "steps 3..3" in err and "nothing to train" not in err, err
    assert (run / "summary.json").is_file() and losses(run) == whole


def test_an_interrupted_demo_says_how_to_continue(monkeypatch, capsys):
    from nlc import demo as demo_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(demo_module, "run_demo", interrupted)
    assert main(["demo", "--quick"]) == 130
    err = capsys.readouterr().err
    assert "nlc: interrupted; `nlc demo` again with the same options and --out continues" in err
