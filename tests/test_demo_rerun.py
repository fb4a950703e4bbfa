"""`nlc demo` run again over the same --out: finished runs with the same settings are
reported again, never retrained or replaced; other settings or an unfinished run are refused,
naming the folder, before any work."""

from __future__ import annotations

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
    assert files(run) == before  # metrics, checkpoints, summary: as they were


def test_a_demo_with_other_settings_refuses_before_any_work(demo, capsys):
    command, run = demo
    before = files(run)
    assert main([*command[:2], "--steps", "4", *command[4:]]) == 2
    out, err = capsys.readouterr()
    assert f"{run}: holds an earlier demo run with other settings (steps 3 there, 4 now" in err
    assert f"delete {run}" in err and "1. check" not in out  # refused before the stages
    assert files(run) == before


def test_a_demo_over_an_unfinished_run_refuses(demo, capsys):
    command, run = demo
    shutil.rmtree(run / "checkpoints")
    (run / "summary.json").unlink()
    before = files(run)
    assert main(command) == 2
    assert f"{run}: holds an earlier run that did not finish" in capsys.readouterr().err
    assert files(run) == before
