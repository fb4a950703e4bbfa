"""`nlc train / eval` on bad or racing input: a changed --mlp or --optimizer spec on resume,
two runs into one folder, bytes that are not UTF-8 JSON, a diverged run's JSON. Each is a
clear `error: ...` (exit 2) or a strict result, never a traceback, and loses nothing."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from nlc.train_cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = ["--task", "mqar", "--steps", "2", "--batch-size", "4", "--seq-len", "32",
        "--d-model", "16", "--n-layers", "1", "--mqar-vocab-size", "64",
        "--mqar-num-kv-pairs", "2", "--eval-examples", "8", "--log-interval", "2",
        "--checkpoint-interval", "2", "--warmup", "1", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def no_nan(text: str):
    """Strict JSON: Python's NaN and Infinity are refused."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


# ---- 1. --mlp and --optimizer specs compared by content on resume -------------------------

@pytest.fixture
def spec_run(tmp_path, monkeypatch, capsys):
    """A finished run (relative paths, as typed) with an --mlp and an --optimizer spec."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(EXAMPLES / "linear_attention.nl", "m.nl")
    shutil.copy(EXAMPLES / "sgd_momentum.nl", "o.nl")
    assert main(["train", "builtin:attention", *TINY, "--mlp", "m.nl", "--optimizer", "o.nl",
                 "--out", "run"]) == 0
    capsys.readouterr()
    return tmp_path


@pytest.mark.parametrize("name", ["mlp", "optimizer"])
def test_resume_refuses_an_edited_spec_and_keeps_the_runs_copy(spec_run, capsys, name):
    edited = Path("m.nl" if name == "mlp" else "o.nl")
    copy = Path("run") / f"{name}.nl"
    kept = copy.read_text()
    metrics = Path("run/metrics.jsonl").read_text()
    edited.write_text(edited.read_text() + "# edited after the run\n")
    assert main(["train", "builtin:attention", "--out", "run", "--resume", "--steps", "4",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{edited}: differs from the --{name} spec the run run was trained with" in err
    assert f"resume with --{name} {copy}" in err and "Traceback" not in err
    assert copy.read_text() == kept and Path("run/metrics.jsonl").read_text() == metrics
    # the run's own copy is the same spec, whatever its path
    assert main(["train", "builtin:attention", "--out", "run", "--resume", "--steps", "4",
                 "--quiet", f"--{name}", str(copy)]) == 0
    assert copy.read_text() == kept
    assert json.loads(Path("run/summary.json").read_text())["steps"] == 4


def test_resume_from_another_folder_uses_the_runs_copies(spec_run, monkeypatch, capsys):
    """The run's config names m.nl and o.nl relative to where it started: from elsewhere
    they are not found, and the run's copies are used."""
    (spec_run / "elsewhere").mkdir()
    monkeypatch.chdir(spec_run / "elsewhere")
    assert main(["train", "builtin:attention", "--out", "../run", "--resume", "--steps", "4",
                 "--quiet"]) == 0
    config = json.loads((spec_run / "run" / "config.json").read_text())
    assert (config["mlp"], config["optimizer"]) == ("../run/mlp.nl", "../run/optimizer.nl")
    assert (spec_run / "run" / "mlp.nl").read_text() == (spec_run / "m.nl").read_text()


# ---- 2. one run at a time in a run folder -------------------------------------------------

def hold(folder: Path) -> int:
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_a_second_run_into_a_busy_folder_is_refused_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "builtin:attention", *TINY, "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    fd = hold(out)  # as a run in progress does
    try:
        for extra in ([], ["--resume", "--steps", "4"]):
            capsys.readouterr()
            assert main(["train", "builtin:attention", *TINY, "--out", str(out), *extra]) == 2
            err = capsys.readouterr().err
            assert f"{out}: " in err and "Traceback" not in err
            # checked first: not "already holds a run; pass --resume", which then fails too
            assert "another nlc train is running in this run folder" in err, extra
            assert "already holds a run" not in err
        new = tmp_path / "new"
        new.mkdir()
        fd_new = hold(new)
        try:
            assert main(["train", "builtin:attention", *TINY, "--out", str(new)]) == 2
            assert "another nlc train is running" in capsys.readouterr().err
            assert list(new.iterdir()) == []
        finally:
            os.close(fd_new)
    finally:
        os.close(fd)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # released at the end of a run (and by the kernel when a holder dies): resuming works
    assert main(["train", "builtin:attention", *TINY, "--out", str(out), "--resume",
                 "--steps", "4"]) == 0


# ---- 4. bytes that are not UTF-8, JSON lines that are not records -------------------------

def test_a_config_that_is_not_utf8_is_refused_with_its_name(tmp_path, capsys):
    bad = tmp_path / "bin.json"
    bad.write_bytes(b"\xff\xfe{}")
    assert main(["train", "builtin:attention", *TINY, "--config", str(bad),
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: config is not UTF-8 text (byte 0)" in err and "internal error" not in err
    assert not (tmp_path / "r").exists()


def test_a_runs_config_that_is_not_utf8_is_refused_on_resume_and_eval(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "builtin:attention", *TINY, "--out", str(out)]) == 0
    (out / "config.json").write_bytes(b"{\"task\": \"mq\xe4r\"}")
    capsys.readouterr()
    assert main(["train", "builtin:attention", "--out", str(out), "--resume", "--quiet"]) == 2
    assert f"{out / 'config.json'}: config is not UTF-8 text" in capsys.readouterr().err
    assert main(["eval", str(out)]) == 2
    assert f"{out / 'config.json'}: config is not UTF-8 text" in capsys.readouterr().err


def test_metrics_lines_that_are_no_records_are_skipped_as_torn_lines(tmp_path, capsys):
    from nlc.runtime.trainer.plot import load_curves
    out = tmp_path / "r"
    assert main(["train", "builtin:attention", *TINY, "--out", str(out)]) == 0
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b"\xff\n[1]\n\"text\"\n{\"kind\": \"train\", \"step\": \"2\", \"loss\": 1}\n"
                b"{\"kind\": \"train\", \"step\": 2}\n{\"kind\": \"eval\", \"step\": 2}\n")
    curves = load_curves(out)
    assert [s for s, _ in curves["train"]] == [2] and [s for s, _ in curves["eval"]] == [2]
    capsys.readouterr()
    assert main(["train", "builtin:attention", "--out", str(out), "--resume", "--steps", "4",
                 "--quiet"]) == 0
    records = [no_nan(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 2, 4]  # no "loss": kept


# ---- 5. a diverged run's JSON --------------------------------------------------------------

def test_a_diverged_run_writes_strict_json_and_a_fitting_hint(tmp_path, capsys):
    out = tmp_path / "wild"
    args = ["train", "builtin:attention", *TINY, "--out", str(out), "--warmup", "0",
            "--checkpoint-interval", "1", "--grad-clip", "0", "--log-interval", "100"]
    assert main([*args, "--steps", "1"]) == 0
    capsys.readouterr()
    args.remove("--quiet")
    assert main([*args, "--resume", "--steps", "20", "--lr", "1e6"]) == 1
    stdout, err = capsys.readouterr()
    assert no_nan(stdout)["final_loss"] is None
    summary = no_nan((out / "summary.json").read_text())
    assert summary["final_loss"] is None and summary["diverged_at"] is not None
    for line in (out / "metrics.jsonl").read_text().splitlines():
        no_nan(line)
    done = next(line for line in err.splitlines() if line.startswith("done:"))
    assert "nan" not in done and ", ;" not in done
    assert f"diverged at step {summary['diverged_at']}" in done
    assert "smaller --grad-clip" not in err and "--grad-clip 1" in err


# ---- 6. plot destinations ------------------------------------------------------------------

def test_plot_into_a_folder_is_refused_before_drawing(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "builtin:attention", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["plot", str(out), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out}: is a folder; -o names the PNG file to write" in err


def test_plot_to_a_name_that_is_not_png_is_refused(tmp_path, capsys):
    """`-o x.pdf` wrote PNG bytes under a .pdf name."""
    out = tmp_path / "r"
    assert main(["train", "builtin:attention", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["plot", str(out), "-o", str(tmp_path / "x.pdf")]) == 2
    assert "writes a PNG image; name the file *.png" in capsys.readouterr().err
    assert not (tmp_path / "x.pdf").exists()


def test_plot_under_a_file_empty_name_or_no_lines_is_refused(tmp_path, capsys):
    """`-o curves.png/x.png` said "File exists", `-o ''` said ": is a folder", and a run
    without a training or eval line gave an empty PNG and exit 0."""
    out = tmp_path / "r"
    assert main(["train", "builtin:attention", *TINY, "--out", str(out)]) == 0
    (tmp_path / "curves.png").write_bytes(b"")
    capsys.readouterr()
    assert main(["plot", str(out), "-o", str(tmp_path / "curves.png" / "x.png")]) == 2
    assert "curves.png: error: cannot write the plot's folder: a file, not a folder" in \
        capsys.readouterr().err
    assert main(["plot", str(out), "-o", ""]) == 2
    assert "-o is empty" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("not json\n")
    assert main(["plot", str(empty), "-o", str(tmp_path / "e.png")]) == 2
    assert "no training or eval line to plot yet" in capsys.readouterr().err
    assert not (tmp_path / "e.png").exists()


def test_resuming_with_another_task_names_the_task(tmp_path, capsys):
    """The refusal spoke of vocab_size (the lm task's 256 against the run's 64)."""
    out = tmp_path / "r"
    assert main(["train", "builtin:attention", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "builtin:attention", "--task", "lm", "--out", str(out),
                 "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--task lm: the run in {out} trains on mqar" in err and "vocab_size" not in err


# ---- 5. --resume with nothing to resume from ----------------------------------------------

@pytest.mark.parametrize("stopped", ["finished", "interrupted"])
def test_resume_with_metrics_but_no_checkpoint_is_refused_alike(tmp_path, capsys, stopped):
    """A finished run whose checkpoints are gone and a run interrupted before its first
    checkpoint: both would start over and replace the metrics; both are refused alike."""
    out = tmp_path / "run"
    assert main(["train", "builtin:attention", *TINY, "--out", str(out)]) == 0
    shutil.rmtree(out / "checkpoints")
    if stopped == "interrupted":  # as Ctrl-C before the first checkpoint leaves it
        (out / "summary.json").unlink()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "builtin:attention", *TINY, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{out}: holds a run's metrics up to step 2 but no checkpoint to resume from" in err
    assert f"delete {out} to start the run over" in err and "another --out" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resume_into_a_folder_without_a_run_is_refused_even_quiet(tmp_path, capsys):
    """`--resume --out <typo>` used to start a new run, saying so only without --quiet."""
    for out in (tmp_path / "typo", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        assert main(["train", "builtin:attention", *TINY, "--out", str(out), "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"{out}: nothing to resume: no run in this folder" in err
        assert "drop --resume to start a new run" in err
    assert not (tmp_path / "typo").exists() and list((tmp_path / "empty").iterdir()) == []


def test_resume_without_the_runs_config_names_it_missing(tmp_path, capsys):
    """Not "written for another model shape" (the defaults' vocab_size against the run's)."""
    out = tmp_path / "run"
    assert main(["train", "builtin:attention", *TINY, "--out", str(out)]) == 0
    (out / "config.json").unlink()
    capsys.readouterr()
    assert main(["train", "builtin:attention", "--out", str(out), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'config.json'}: missing; --resume takes the run's settings from it" in err
    assert "step_00000002/state.json" in err and "another model shape" not in err


@pytest.mark.parametrize("saved", [False, True])
def test_an_interrupted_train_says_whether_it_can_be_resumed(tmp_path, monkeypatch, capsys,
                                                            saved):
    """Ctrl-C before the first checkpoint saved nothing: the message no longer says that
    --resume continues from the run's latest checkpoint."""
    from nlc.runtime.trainer import train as trainer

    from nlc import cli
    out = tmp_path / "run"
    if saved:
        assert main(["train", "builtin:attention", *TINY, "--out", str(out)]) == 0

    def interrupted(config, **kwargs):
        Path(config.out).mkdir(exist_ok=True)
        with open(Path(config.out) / "metrics.jsonl", "a") as f:
            f.write('{"kind": "train", "step": 1, "loss": 4.0}\n')
        raise KeyboardInterrupt
    monkeypatch.setattr(trainer, "train", interrupted)
    capsys.readouterr()
    assert cli.main(["train", "builtin:attention", *TINY, "--out", str(out),
                     *(["--resume", "--steps", "4"] if saved else [])]) == 130
    err = capsys.readouterr().err
    if saved:
        assert f"--out {out} --resume` continues from its latest checkpoint, step_00000002" in err
    else:
        assert f"no checkpoint was written to {out}, so nothing is saved" in err
        assert "cannot be resumed" in err and "continues from" not in err
    # a second data-parallel rank (`--nproc 2`) gets the same Ctrl-C and says nothing: the
    # first rank's line is the command's
    monkeypatch.setenv("RANK", "1")
    assert cli.main(["train", "builtin:attention", *TINY, "--out", str(out),
                     *(["--resume", "--steps", "4"] if saved else [])]) == 130
    assert "interrupted" not in capsys.readouterr().err


def test_an_interrupt_before_the_run_folder_exists_says_nothing_was_saved(tmp_path, monkeypatch,
                                                                         capsys):
    """Ctrl-C before the trainer wrote the run folder said to delete a folder that was not
    there; before the run's settings were known, it said to resume a run that never began."""
    from nlc.runtime.trainer import train as trainer

    from nlc import cli
    out = tmp_path / "never"

    def interrupted(config, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(trainer, "train", interrupted)
    assert cli.main(["train", "builtin:attention", *TINY, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"{out} was not written yet, so nothing is saved: run the command again" in err
    assert "delete" not in err and not out.exists()
    from nlc.train_cli import BEFORE_TRAINING_HINT
    assert "trained nothing" in BEFORE_TRAINING_HINT and "--out RUN" not in BEFORE_TRAINING_HINT


def test_train_says_it_is_compiling_a_spec(tmp_path, capsys):
    """An MLP memory's spec compiles for 10 to 20 s before the first progress line: train
    says so first (not with --quiet, not for builtin mixers)."""
    spec = tmp_path / "tiny.nl"
    spec.write_text((EXAMPLES / "deltanet.nl").read_text())
    loud = [a for a in TINY if a != "--quiet"]
    assert main(["train", str(spec), *loud, "--out", str(tmp_path / "run")]) == 0
    assert f"nlc train: compiling {spec} ..." in capsys.readouterr().err
    assert main(["train", str(spec), *TINY, "--out", str(tmp_path / "quiet")]) == 0
    assert "compiling" not in capsys.readouterr().err
    assert main(["train", "builtin:attention", *loud, "--out", str(tmp_path / "b")]) == 0
    assert "compiling" not in capsys.readouterr().err


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_ctrl_c_finishes_the_step_and_saves_it(tmp_path, capsys, signum):
    """The first Ctrl-C (SIGINT) or SIGTERM (kill, timeout, a scheduler) of a run stops at
    the end of the step it came in and saves that step as a checkpoint: before, every step
    since the last checkpoint was lost (all of them before the first; SIGTERM killed the
    process with nothing saved), and the folder then said 'pass --resume', which was
    refused."""
    import signal
    import threading
    out = tmp_path / "run"
    from nlc.runtime.trainer import train as trainer
    real_step = trainer.train_step
    calls = []

    def step_then_interrupt(*args, **kwargs):
        result = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # as a user's Ctrl-C, in the middle of the run
            signal.raise_signal(getattr(signal, signum))
        return result
    assert threading.current_thread() is threading.main_thread()
    from nlc import cli
    trainer.train_step, saved_step = step_then_interrupt, real_step
    try:
        code = cli.main(["train", "builtin:attention", *TINY, "--steps", "50",
                     "--checkpoint-interval", "1000", "--out", str(out)])
    finally:
        trainer.train_step = saved_step
    assert code == 130
    err = capsys.readouterr().err
    assert f"--out {out} --resume` continues from its latest checkpoint, step_00000003" in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000003"]
    assert main(["train", "builtin:attention", *TINY, "--steps", "5", "--out", str(out),
                 "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == 3


def test_a_folder_with_metrics_and_no_checkpoint_is_not_told_to_resume(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 4.0}\n')
    assert main(["train", "builtin:attention", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "saved no checkpoint, so it cannot be resumed" in err and "pass --resume" not in err


def test_plot_into_a_missing_folder_is_refused_and_creates_nothing(tmp_path, capsys):
    """`-o /nonexistent/dir/x.png` made the folders and said "wrote"."""
    out = tmp_path / "r"
    assert main(["train", "builtin:attention", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    target = tmp_path / "typo" / "dir" / "x.png"
    assert main(["plot", str(out), "-o", str(target)]) == 2
    assert f"its folder {target.parent} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_a_damaged_latest_checkpoint_says_how_to_resume_from_the_one_before(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "builtin:attention", *TINY, "--steps", "4", "--checkpoint-interval",
                 "2", "--out", str(out)]) == 0
    latest = out / "checkpoints" / "step_00000004"
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    capsys.readouterr()
    assert main(["train", "builtin:attention", *TINY, "--steps", "6", "--out", str(out),
                 "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"delete {latest} to resume from step_00000002, the checkpoint before it" in err, err


def test_a_checkpoint_with_nan_weights_is_refused_and_the_run_left_as_it_was(tmp_path,
                                                                             capsys):
    """A checkpoint whose weights hold NaN (its hashes rewritten to match) was loaded, and
    the resume blamed the optimizer's first step, rewriting summary.json with an empty
    evaluation; eval blamed a gate. Both now refuse it as corrupt, naming the tensor, and
    change no file; the resume says which checkpoint to resume from instead."""
    from safetensors.torch import load_file, save_file
    out = tmp_path / "r"
    assert main(["train", "builtin:attention", *TINY, "--steps", "4", "--checkpoint-interval",
                 "2", "--out", str(out)]) == 0
    latest = out / "checkpoints" / "step_00000004"
    weights = latest / "model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(weights))
    state = json.loads((latest / "state.json").read_text())
    state["files"]["model.safetensors"] = {
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "bytes": weights.stat().st_size}
    (latest / "state.json").write_text(json.dumps(state))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "builtin:attention", *TINY, "--steps", "6", "--out", str(out),
                 "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"tensor {name} holds non-finite values" in err, err
    assert f"delete {latest} to resume from step_00000002" in err, err
    assert main(["eval", str(out)]) == 2
    assert f"tensor {name} holds non-finite values" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_eval_does_not_read_the_optimizer_state(tmp_path, capsys):
    """An evaluation needs the weights only: a damaged optimizer.safetensors refused it."""
    out = tmp_path / "r"
    assert main(["train", "builtin:attention", *TINY, "--steps", "2", "--out", str(out)]) == 0
    state = out / "checkpoints" / "step_00000002" / "optimizer.safetensors"
    state.write_bytes(state.read_bytes()[:50])
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    assert main(["train", "builtin:attention", *TINY, "--steps", "4", "--out", str(out),
                 "--resume"]) == 2
    assert "optimizer.safetensors: truncated" in capsys.readouterr().err


def test_resume_takes_the_runs_own_spec_when_none_is_named(tmp_path, monkeypatch, capsys):
    """`nlc train --out RUN --resume` demanded SPEC, though the run keeps its own; from
    another folder, where the spec's relative path is gone, the run's copy RUN/spec.nl is
    the one resumed. Without --resume a missing SPEC is refused, saying so."""
    spec = tmp_path / "mine.nl"
    spec.write_text((Path(__file__).parents[1] / "examples" / "deltanet.nl").read_text())
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    small = ["-D", "d_model=16", "-D", "heads=2", "-D", "d_k=8", "-D", "d_v=8"]
    assert main(["train", "mine.nl", *small, *TINY, "--d-model", "16", "--out", str(out)]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--steps", "3"]) == 0
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == 2
    assert main(["train", "--task", "mqar"]) == 2
    assert "SPEC is missing" in capsys.readouterr().err


def test_plotting_runs_of_two_tasks_is_refused(tmp_path, capsys):
    """mqar's accuracy and lm's bits per byte were drawn on one axis labelled with both."""
    from nlc.runtime.trainer.plot import plot_runs

    from nlc.errors import NlcError
    runs = []
    for task, metric in (("mqar", "accuracy"), ("lm", "bits_per_byte")):
        run = tmp_path / task
        run.mkdir()
        (run / "metrics.jsonl").write_text(
            json.dumps({"kind": "train", "step": 1, "loss": 4.0}) + "\n"
            + json.dumps({"kind": "eval", "step": 1, metric: 0.5}) + "\n")
        runs.append(run)
    with pytest.raises(NlcError, match=r"different metrics \(accuracy, bits_per_byte\)"):
        plot_runs(runs, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_a_run_named_twice_is_drawn_once_and_same_named_runs_get_their_paths(tmp_path):
    """`nlc plot RUN RUN` drew RUN's curves twice, with two legend entries; runs a/r and b/r
    both showed as "r"."""
    pytest.importorskip("matplotlib")
    from nlc.runtime.trainer import plot
    drawn = []
    real = plot.load_curves

    def spy(run):
        curves = real(run)
        drawn.append(curves)
        return curves
    runs = []
    for parent in ("a", "b"):
        run = tmp_path / parent / "r"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(
            json.dumps({"kind": "train", "step": 1, "loss": 4.0}) + "\n")
        runs.append(run)
    import unittest.mock
    with unittest.mock.patch.object(plot, "load_curves", spy):
        plot.plot_runs([runs[0], runs[0], tmp_path / "a" / ".." / "a" / "r"], tmp_path / "x.png")
    assert len(drawn) == 1 and drawn[0]["name"] == "r"
    drawn.clear()
    with unittest.mock.patch.object(plot, "load_curves", spy):
        plot.plot_runs(runs, tmp_path / "y.png")
    assert [c["name"] for c in drawn] == [str(runs[0]), str(runs[1])]


def test_a_run_folder_where_writes_fail_is_refused_before_any_work(tmp_path, monkeypatch,
                                                                     capsys):
    """A folder that exists but takes no files (root passes os.access there: /sys/kernel) was
    an internal error at the first write; now it is refused with the reason, exit 2."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert main(["train", "builtin:attention", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the run folder is not writable (Permission denied)" in err
    assert "Traceback" not in err and list(out.iterdir()) == []


def test_a_warmup_longer_than_a_tenth_of_the_steps_is_said(tmp_path, capsys):
    args = [a for a in TINY if a != "--quiet"]
    args[args.index("--warmup") + 1] = "50"
    assert main(["train", "builtin:attention", *args, "--out", str(tmp_path / "run")]) == 0
    assert "warmup: 0 step(s), a tenth of --steps 2 (--warmup 50 is longer)" in \
        capsys.readouterr().err


def test_a_missing_spec_suggests_the_builtin_and_a_bad_file_config_names_the_file(
        tmp_path, capsys):
    assert main(["train", "attention", *TINY, "--out", str(tmp_path / "a")]) == 2
    assert "did you mean 'builtin:attention'?" in capsys.readouterr().err
    assert main(["train", "builtin:attention", *TINY, "--mlp", "nothere.nl",
                 "--out", str(tmp_path / "b")]) == 2
    assert "(--mlp also takes none)" in capsys.readouterr().err
    config = tmp_path / "c.json"
    config.write_text('{"d_model": -3}')
    args = [a for a in TINY if a not in ("--d-model", "16")]
    assert main(["train", "builtin:attention", *args, "--config", str(config),
                 "--out", str(tmp_path / "c")]) == 2
    assert f"{config}: d_model must be at least 1, got -3" in capsys.readouterr().err
    assert main(["train", "builtin:attention", *args, "--d-model", "-3",
                 "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "--d-model must be at least 1, got -3" in err and str(config) not in err


@pytest.mark.parametrize("failure, said", [
    (OSError(28, "No space left on device", "runs/x/checkpoints/.step_6.tmp"),
     "nlc: error: no space left on the device (runs/x/checkpoints/.step_6.tmp)"),
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
     "nlc: error: no space left on the device"),
    (PermissionError(1, "Operation not permitted", "run/metrics.jsonl"),
     "nlc: error: Operation not permitted (run/metrics.jsonl)"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 "
                  "bytes"), "nlc: error: out of memory: DefaultCPUAllocator"),
    (MemoryError(), "nlc: error: out of memory")])
def test_a_machine_failure_is_an_error_not_a_bug(monkeypatch, capsys, failure, said):
    """A full disk, a file that cannot be written or memory that cannot be allocated was
    "internal error ... this is a bug in nlc" (exit 3)."""
    from nlc import cli, train_cli

    def fail(args):
        raise failure

    monkeypatch.setattr(train_cli, "cmd_train", fail)
    monkeypatch.delenv("NLC_DEBUG", raising=False)
    for main in (cli.main, train_cli.main):
        assert main(["train", "builtin:attention"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(said) and "bug" not in err, err


def test_ctrl_c_during_an_evaluation_saves_that_step_and_trains_no_more(tmp_path, capsys):
    """A Ctrl-C that came while a step's evaluation ran let the run train one more step
    before it stopped; it now saves the evaluated step and stops there."""
    import signal
    out = tmp_path / "run"
    from nlc.runtime.trainer import train as trainer
    real_evaluate = trainer.evaluate
    calls = []

    def evaluate_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        return real_evaluate(*args, **kwargs)
    from nlc import cli
    trainer.evaluate = evaluate_then_interrupt
    try:
        code = cli.main(["train", "builtin:attention", *TINY, "--steps", "50",
                         "--eval-interval", "2", "--checkpoint-interval", "1000",
                         "--out", str(out)])
    finally:
        trainer.evaluate = real_evaluate
    assert code == 130
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2


def test_plotting_mqar_and_niah_runs_together_is_refused(tmp_path):
    """Both evaluate an accuracy, so the metric check let them onto one axis."""
    from nlc.runtime.trainer.plot import plot_runs

    from nlc.errors import NlcError
    runs = []
    for task in ("mqar", "niah"):
        run = tmp_path / task
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"task": task}))
        (run / "metrics.jsonl").write_text(
            json.dumps({"kind": "train", "step": 1, "loss": 4.0}) + "\n"
            + json.dumps({"kind": "eval", "step": 1, "accuracy": 0.5}) + "\n")
        runs.append(run)
    with pytest.raises(NlcError, match=r"different tasks \(mqar, niah\)"):
        plot_runs(runs, tmp_path / "x.png")


def test_derive_says_a_group_member_runs_with_its_group(tmp_path, capsys):
    """A level of a loop of outputs runs as its group does: Hope with one generating memory
    reading `before` runs the whole group token by token, but derive printed each member's
    own chunk-parallel form ('runs as frozen split')."""
    from nlc.cli import main as nlc_main
    text = (Path(__file__).resolve().parents[1] / "examples" / "hope.nl").read_text()
    spec = tmp_path / "hope_before.nl"
    spec.write_text(text.replace("read start sigmoid(total(A(h))", "read before sigmoid(total(A(h))"))
    assert nlc_main(["derive", str(spec)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "runs as" in ln]
    assert sum("in a loop (k, v, eta, alpha)" in ln for ln in lines) == 4
    assert nlc_main(["derive", str(Path(__file__).resolve().parents[1] / "examples"
                                   / "hope.nl")]) == 0
    assert "token loop" not in capsys.readouterr().out
