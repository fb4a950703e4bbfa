"""Data parallel: two gloo ranks under torchrun (`nlc train --nproc 2`) log the same losses
as one process on the same global batch, within 1e-6; only rank 0 writes."""

from __future__ import annotations

import sys
import time

import pytest
import torch
from nlc.runtime.trainer import distributed
from nlc.runtime.trainer.progress import read_metrics

from nlc.train_cli import main

ARGS = ["train", "builtin:attention", "--task", "mqar", "--steps", "6", "--batch-size", "8",
        "--seq-len", "32", "--d-model", "16", "--n-layers", "2", "--mqar-vocab-size", "64",
        "--mqar-num-kv-pairs", "2", "--eval-examples", "16", "--eval-interval", "3",
        "--log-interval", "1", "--checkpoint-interval", "3", "--warmup", "2", "--lr", "0.003",
        "--quiet"]


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch without gloo")
def test_two_gloo_ranks_match_one_process(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(ARGS + ["--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(ARGS + ["--out", str(tmp_path / "two"), "--nproc", "2"]) == 0

    one = read_metrics(tmp_path / "one" / "metrics.jsonl")
    two = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in two] == [(r["kind"], r["step"]) for r in one]
    assert len(two) == 8  # rank 1 wrote nothing: one line per step and eval
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-6, (a, b)
        if a["kind"] == "eval":
            assert a["accuracy"] == b["accuracy"]
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == [
        "step_00000003", "step_00000006"]


def test_ranks_slice_one_global_batch():
    batch = torch.arange(8)
    slices = [distributed.local_slice(batch, distributed.World(rank=r, world_size=4))
              for r in range(4)]
    assert torch.equal(torch.cat(slices), batch)
    from nlc.errors import NlcError
    with pytest.raises(NlcError, match="does not split over 3 ranks"):
        distributed.local_slice(batch, distributed.World(rank=0, world_size=3))


def test_a_refusal_in_the_ranks_exits_2_without_a_launcher_traceback(tmp_path, capfd):
    """Every rank refuses a run folder that holds a run; the command exits 2 (the launcher,
    torchrun's, had exited 1 with a traceback of its own)."""
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "metrics.jsonl").write_text("")
    assert main(ARGS + ["--out", str(tmp_path / "taken"), "--nproc", "2"]) == 2
    err = capfd.readouterr().err
    assert "holds the metrics of a run that saved no checkpoint" in err
    assert "Traceback" not in err


def test_a_spec_error_is_told_once_before_the_ranks_start(tmp_path, capfd):
    """-D foo with --nproc 2: the launcher checks the spec first (each rank printed it)."""
    from conftest import ROOT
    argv = ["train", str(ROOT / "examples" / "deltanet.nl"), *ARGS[2:], "-D", "foo=1",
            "--out", str(tmp_path / "r"), "--nproc", "2"]
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert err.count("-D foo: no dim or hyper of that name") == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_the_first_failing_rank_decides_and_stops_the_others(tmp_path):
    """A rank that fails stops a rank left waiting (here: one that would sleep an hour; were
    it not stopped, this test would not end)."""
    script = tmp_path / "rank.py"
    script.write_text("import os, sys, time\n"
                      "sys.exit(3) if os.environ['RANK'] == '1' else time.sleep(3600)\n")
    command = distributed.rank_command
    try:
        distributed.rank_command = lambda args: [sys.executable, str(script)]
        assert distributed.launch_local(2, [], grace=0.5) == 3
    finally:
        distributed.rank_command = command

def test_sigterm_to_the_launcher_reaches_the_ranks_as_ctrl_c(tmp_path):
    """`kill` of `nlc train --nproc 2`'s launcher killed it alone: its ranks trained on to the
    end as orphans. Each rank now gets the SIGINT a terminal's Ctrl-C sends, and the launcher
    waits for them and exits with 130, also when the launcher started with SIGINT ignored."""
    import signal
    import subprocess

    rank = tmp_path / "rank.py"
    rank.write_text(
        "import os, sys, time, pathlib\n"
        "out = pathlib.Path(sys.argv[1]) / os.environ['RANK']\n"
        "try:\n"  # the Ctrl-C may come as soon as 'started' is written
        "    out.write_text('started')\n"
        "    time.sleep(120)\n"
        "except KeyboardInterrupt:\n"
        "    out.write_text('interrupted')\n"
        "    sys.exit(130)\n")
    launcher = ("import sys\n"
                "from nlc.runtime.trainer import distributed\n"
                f"distributed.rank_command = lambda args: [sys.executable, {str(rank)!r}, "
                f"{str(tmp_path)!r}]\n"
                "sys.exit(distributed.launch_local(2, [], grace=20))\n")
    # started as a shell's background job is (`nlc train --nproc 2 &`): SIGINT ignored, which
    # its ranks inherited, so the forwarded Ctrl-C did nothing (a CI run in the background)
    proc = subprocess.Popen([sys.executable, "-c", launcher],
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 60
    while not all((tmp_path / r).exists() for r in "01") and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 130
    assert [(tmp_path / r).read_text() for r in "01"] == ["interrupted", "interrupted"]
