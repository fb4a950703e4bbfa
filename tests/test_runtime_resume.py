"""Resume is exact on the CPU: a run killed with SIGKILL and resumed, or resumed from an
older checkpoint, logs the same losses as the run that never stopped."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from nlc.runtime.trainer import checkpoint as ckpt
from nlc.runtime.trainer.config import TrainConfig
from nlc.runtime.trainer.progress import read_metrics
from nlc.runtime.trainer.train import train


# one thread (conftest.py): the killed subprocess runs with one thread too: same arithmetic
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(out, **changes) -> TrainConfig:
    base = TrainConfig(task="mqar", steps=12, batch_size=4, seq_len=32, d_model=16, n_layers=2,
                       mqar_vocab_size=64, mqar_num_kv_pairs=2, eval_examples=8,
                       eval_interval=4, log_interval=1, checkpoint_interval=3, keep_last=10,
                       warmup=2, lr=3e-3, out=str(out))
    return dataclasses.replace(base, **changes)


def losses(run) -> list[tuple]:
    return [(r["kind"], r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl")]


def test_resume_from_an_older_checkpoint_repeats_the_same_losses(tmp_path):
    out = tmp_path / "run"
    train(tiny(out), progress=False)
    reference = losses(out)
    assert [s for k, s, _ in reference if k == "train"] == list(range(1, 13))
    for late in ckpt.checkpoint_dirs(out)[-2:]:  # back to step 6: as if stopped there
        for f in late.iterdir():
            f.unlink()
        late.rmdir()
    summary = train(tiny(out), resume=True, progress=False)
    assert summary["resumed_from"] == 6
    assert losses(out) == reference  # bitwise: same floats, same order, no duplicates


def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_losses(tmp_path):
    steps = 60
    reference_run = tmp_path / "reference"
    train(tiny(reference_run, steps=steps, eval_interval=20, checkpoint_interval=5),
          progress=False)

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "nlc.train_cli", "train", "builtin:attention",
               "--task", "mqar", "--steps", str(steps), "--batch-size", "4", "--seq-len", "32",
               "--d-model", "16", "--n-layers", "2", "--mqar-vocab-size", "64",
               "--mqar-num-kv-pairs", "2", "--eval-examples", "8", "--eval-interval", "20",
               "--log-interval", "1", "--checkpoint-interval", "5", "--keep-last", "10",
               "--warmup", "2", "--lr", "0.003", "--out", str(out), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", NLC_DEBUG="1")
    victim = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    target = out / "checkpoints" / "step_00000010"
    deadline = time.monotonic() + 60
    while not target.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    _, stderr = victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    assert target.exists() and not (out / "summary.json").exists()  # died mid-run

    from nlc.train_cli import main
    assert main(command[3:] + ["--resume"]) == 0
    assert losses(out) == losses(reference_run)
    assert [s for k, s, _ in losses(out) if k == "train"] == list(range(1, steps + 1))


def test_resume_without_checkpoints_never_replaces_a_runs_metrics(tmp_path):
    """--resume with no checkpoint left (deleted, or never kept) would start over at step 0
    and rewrite metrics.jsonl: refused, and the metrics stay as they were. So is a run
    stopped before its first checkpoint: its metrics would be replaced too."""
    from nlc.errors import NlcError
    out = tmp_path / "run"
    train(tiny(out, steps=6), progress=False)
    for late in ckpt.checkpoint_dirs(out):
        shutil.rmtree(late)
    before = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(NlcError, match="no checkpoint to resume from"):
        train(tiny(out, steps=6), resume=True, progress=False)
    assert (out / "metrics.jsonl").read_bytes() == before
    early = tmp_path / "early"  # stopped at step 2, before its first checkpoint (step 3)
    train(tiny(early, steps=2), progress=False)
    shutil.rmtree(early / "checkpoints")  # (a finished run saves its last step too)
    (early / "summary.json").unlink()
    before = (early / "metrics.jsonl").read_bytes()
    with pytest.raises(NlcError, match="no checkpoint to resume from"):
        train(tiny(early, steps=4), resume=True, progress=False)
    assert (early / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("where", ["checkpoints", "metrics.jsonl", "checkpoints/step_00000003"])
def test_a_run_folders_parts_of_the_wrong_kind_are_refused_before_work(tmp_path, where):
    """A file where the run keeps a folder (or the reverse) is a clear error, not an
    internal one at the first save, and the run's other files stay."""
    from nlc.errors import NlcError
    out = tmp_path / "run"
    train(tiny(out, steps=3), progress=False)
    target = out / where
    if target.is_dir():
        shutil.rmtree(target)
        target.write_text("x")
    else:
        target.unlink()
        target.mkdir()
    before = (out / "config.json").read_bytes()
    with pytest.raises(NlcError, match="move it away"):
        train(tiny(out, steps=6), resume=True, progress=False)
    assert (out / "config.json").read_bytes() == before
