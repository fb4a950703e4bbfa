"""`nlc bench recall`: the sweep end to end on a tiny config (runs as processes, the table,
CSV, JSON and plot), the best-run selection with diverged runs, and the refusals."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest

from nlc.bench.recall import QUICK
from nlc.bench.report import best_runs, markdown
from nlc.cli import main

ROOT = Path(__file__).resolve().parent.parent
DELTANET = str(ROOT / "examples" / "deltanet.nl")
TINY = ["--quick", "--widths", "16", "--lrs", "0.003", "0.01", "--steps", "4", "--seq-len",
        "32", "--vocab", "64", "--batch-size", "4", "--eval-examples", "8", "--eval-interval",
        "2", "--scale", "d_k", "--scale", "d_v"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "recall"
    return out, main(["bench", "recall", DELTANET, *TINY, "--jobs", "2", "-o", str(out)])


def test_the_sweep_writes_the_table_the_runs_and_the_plot(bench, capsys):
    out, status = bench
    assert status == 0
    rows = list(csv.DictReader((out / "recall.csv").open()))
    assert [(r["model"], r["width"], float(r["lr"]), r["status"]) for r in rows] == [
        ("deltanet", "16", 0.003, "ok"), ("deltanet", "16", 0.01, "ok")]
    data = json.loads((out / "recall.json").read_text())
    accuracies = {r["lr"]: r["accuracy"] for r in data["runs"]}
    for r in data["runs"]:  # each number is the run's own final evaluation
        summary = json.loads((Path(r["run"]) / "summary.json").read_text())
        assert r["accuracy"] == summary["eval"]["accuracy"] and summary["steps"] == 4
    best = data["best"][0]
    assert best["accuracy"] == max(accuracies.values()) and best["lr"] in accuracies
    # d_k = d_v = 16 * 64 / 256 = 4 per head, 4 heads: 4 * 4 * 4 floats of state
    assert best["state_floats"] == 64 and data["settings"]["widths"] == [16]
    table = (out / "recall.md").read_text()
    assert f"| deltanet | 16 | 64 | {best['lr']:g} | {best['accuracy']:.4f} | 2 |" in table
    assert (out / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_call_reads_the_finished_runs(bench, capsys):
    out, _ = bench
    before = (out / "recall.json").read_text()
    assert main(["bench", "recall", DELTANET, *TINY, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("(already run)") == 2 and "start" not in printed
    assert json.loads((out / "recall.json").read_text())["best"] == json.loads(before)["best"]


def test_other_settings_in_the_same_folder_are_refused(bench, capsys):
    out, _ = bench
    args = ["bench", "recall", DELTANET, *TINY, "-o", str(out)]
    args[args.index("--steps") + 1] = "5"
    assert main(args) == 2
    assert "holds a run with other settings" in capsys.readouterr().err


def run(model, lr, seed, status, accuracy=None):
    return {"model": model, "width": 64, "lr": lr, "seed": seed, "status": status,
            "accuracy": accuracy}


def test_the_best_lr_is_the_best_mean_over_seeds_and_divergence_is_reported():
    runs = [run("gdn", 1e-3, 0, "ok", 0.5), run("gdn", 1e-3, 1, "ok", 0.7),
            run("gdn", 1e-2, 0, "ok", 0.9), run("gdn", 1e-2, 1, "diverged"),
            run("titans", 1e-3, 0, "diverged"), run("titans", 1e-2, 0, "diverged")]
    best = best_runs(runs, {("gdn", 64): 100, ("titans", 64): 200})
    gdn, titans = best
    # 1e-2 has a diverged seed: no score; 1e-3's mean 0.6 is the best
    assert (gdn["lr"], gdn["accuracy"], gdn["seeds"], gdn["diverged"]) == (1e-3, 0.6, [0.5, 0.7], 1)
    assert titans["status"] == "diverged" and titans["accuracy"] is None
    table = markdown(best, QUICK, "t")
    assert "| gdn | 64 | 100 | 0.001 | 0.6000 (0.500, 0.700) | 4 (1 diverged) |" in table
    assert "| titans | 64 | 200 | - | diverged | 2 (2 diverged) |" in table


@pytest.mark.parametrize("args, message", [
    (["nothere.nl"], "nothere.nl: error: no such spec file"),
    ([str(ROOT / "examples" / "adam.nl")], "declares optimizer, not a layer"),
    (["builtin:mlp"], "unknown builtin 'builtin:mlp'"),
    (["attention", "--scale", "d_k"], "--scale d_k: no spec declares such a dim"),
    ([DELTANET, "-D", "d_model=32"], "d_model is the benchmark's width"),
    (["attention", "--pairs", "40"], "mqar needs 1 <= 4 * mqar_num_kv_pairs <= seq_len"),
    (["attention", "--stop-accuracy", "2"], "--stop-accuracy must be in [0, 1]"),
    (["attention", "--lrs", "1e300"], "--lrs: learning rates must be at most 1e+06, got 1e+300"),
    (["attention", "--device", "tpu"], "unknown device 'tpu'"),  # was a failed run each
    ([DELTANET, DELTANET], "two specs are both named deltanet"),
    (["attention", "--widths", "32", "15"],  # was a failed run, the reason only in its log
     "--widths 15: builtin:attention: d_model 15 must split into 1 heads of even width"),
])
def test_bad_input_is_a_located_error_and_exit_2(tmp_path, capsys, args, message):
    assert main(["bench", "recall", *args, "--quick", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o" / "runs").exists()


@pytest.mark.parametrize("under, says", [
    ("", "cannot write the output folder: a file, not a folder"),
    ("sub", "cannot write the output folder: not a directory"),
])
def test_an_output_under_a_file_is_refused_before_any_run(tmp_path, capsys, under, says):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    out = afile / under if under else afile
    assert main(["bench", "recall", "attention", "--quick", "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert f"{out}: error: {says}" in captured.err and "Traceback" not in captured.err
    assert "start" not in captured.out and afile.read_text() == "keep"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_a_read_only_output_folder_is_refused_before_any_run(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    out = locked / "o"
    assert main(["bench", "recall", "attention", "--quick", "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert f"{out}: error: cannot write the output folder: permission denied" in captured.err
    assert "start" not in captured.out


@pytest.mark.parametrize("option", [["--lrs", "-1"], ["--widths", "0"], ["--jobs", "x"],
                                    ["--seeds", "-2"]])
def test_bad_options_exit_2_with_usage(capsys, option):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "recall", "attention", *option])
    assert exit_.value.code == 2 and "nlc bench recall: error: argument" in capsys.readouterr().err


def test_a_run_stops_at_the_first_eval_that_reaches_stop_accuracy(tmp_path, monkeypatch):
    """Zoology's early stop: the eval at step 2 reports 0.995 >= 0.99, so the run ends
    there, with a checkpoint of that step, instead of running its 6 steps."""
    from nlc.runtime.trainer import train as trainer
    from nlc.runtime.trainer.config import TrainConfig
    evals = iter([0.5, 0.995])
    monkeypatch.setattr(trainer, "evaluate",
                        lambda *a, **k: {"loss": 1.0, "accuracy": next(evals)})
    config = TrainConfig(steps=6, eval_interval=1, stop_accuracy=0.99, batch_size=2,
                         seq_len=16, d_model=8, n_layers=1, mqar_vocab_size=32,
                         mqar_num_kv_pairs=2, checkpoint_interval=0, out=str(tmp_path / "r"))
    summary = trainer.train(config, progress=False)
    assert summary["steps"] == 2 and summary["eval"]["accuracy"] == 0.995
    assert (tmp_path / "r" / "checkpoints" / "step_00000002").is_dir()


def test_an_early_stop_logs_its_step_and_its_rate_counts_the_steps_run(tmp_path, monkeypatch):
    """Stopped by --stop-accuracy at step 5 with lines every 4 steps: the run's last train
    line is step 5's (there was none, and final_loss was null), and its tokens/s counts the
    one step since step 4's line (it counted a whole interval, 4x too high; so did a Ctrl-C)."""
    from nlc.runtime.trainer import train as trainer
    from nlc.runtime.trainer.config import TrainConfig
    from nlc.runtime.trainer.progress import read_metrics
    evals = iter([0.5, 0.5, 0.5, 0.5, 0.995])
    monkeypatch.setattr(trainer, "evaluate",
                        lambda *a, **k: {"loss": 1.0, "accuracy": next(evals)})
    config = TrainConfig(steps=8, eval_interval=1, log_interval=4, stop_accuracy=0.99,
                         batch_size=2, seq_len=16, d_model=8, n_layers=1, mqar_vocab_size=32,
                         mqar_num_kv_pairs=2, checkpoint_interval=0, out=str(tmp_path / "r"))
    summary = trainer.train(config, progress=False)
    lines = {r["step"]: r for r in read_metrics(tmp_path / "r" / "metrics.jsonl")
             if r["kind"] == "train"}
    assert summary["steps"] == 5 and sorted(lines) == [4, 5]
    assert summary["final_loss"] == lines[5]["loss"] and math.isfinite(lines[5]["loss"])
    seconds = lines[5]["elapsed_s"] - lines[4]["elapsed_s"]
    assert lines[5]["tokens_per_s"] == pytest.approx(2 * 16 / seconds, rel=1e-9)


def test_a_diverged_and_a_failed_run_are_reported_as_such(tmp_path):
    """`nlc train` exits 1 with a summary saying where it diverged, or fails otherwise: the
    benchmark records the status (and the log's last line), not a crash."""
    from nlc.bench.recall import config_for
    from nlc.bench.runs import Model, Point, finished
    point = Point(Model("attention", "builtin:attention"), 16, 1e-2, 0)
    config = config_for(point, QUICK, tmp_path, "cpu")
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True)
    (run_dir / "log.txt").write_text("step 1/300 ...\nnlc: internal error: boom\n")
    failed = finished(point, config, 3, 1.0)
    assert failed["status"] == "failed" and failed["error"] == "nlc: internal error: boom"
    (run_dir / "summary.json").write_text(json.dumps(
        {"steps": 7, "diverged_at": 7, "eval": {}, "parameters": 10}))
    diverged = finished(point, config, 1, 1.0)
    assert (diverged["status"], diverged["diverged_at"], diverged["accuracy"]) == ("diverged", 7, None)
    assert best_runs([failed | {"model": "a"}, diverged], {("a", 16): 1, ("attention", 16): 1})[
        1]["status"] == "diverged"
