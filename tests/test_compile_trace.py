"""A compiled model (`nlc train --compile`) traces the chunked and context kernels' launches
into its graph: tests/compile_trace_probe.py traces each family as torch.compile does on a
GPU and checks that AOT autograd can split the graph into forward and backward with torch
2.11's partitioner, and that torch could read every kernel to learn what it writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
PROBE = Path(__file__).with_name("compile_trace_probe.py")


def test_compiled_graphs_of_every_kernel_family_partition():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(PROBE)], capture_output=True, text=True,
                          env=env, timeout=900, check=False)
    lines = done.stdout.splitlines()
    cases = [line for line in lines if not line.startswith("writes ")]
    assert len(cases) >= 12, done.stdout + done.stderr[-3000:]
    failed = [line for line in cases if " FAIL " in line]
    assert not failed and done.returncode == 0, "\n".join(failed) + done.stderr[-3000:]
    writes = {line.split()[1]: set(line.split()[2:]) for line in lines
              if line.startswith("writes ")}
    # no kernel seems to write its chunk table or the state it starts from
    for kernel, names in writes.items():
        assert not names & {"starts", "ends", "offsets", "bounds", "h0", "x0", "dht", "dxt"}, (
            kernel, names)
