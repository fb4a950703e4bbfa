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


# What each kernel writes, as its code says: torch's reading of the kernels must find the
# same (more would make it clone inputs or fail the partition, less would lose a write)
WRITES = {
    "chunk_decay_triton._cumsum_kernel": "gc",
    "chunk_decay_triton._dscores_kernel": "damat dv",
    "chunk_decay_triton._input_grads_kernel": "dk dld dq",
    "chunk_decay_triton._intra_grads_kernel": "dki dki2 dqi dqi2",
    "chunk_decay_triton._output_kernel": "o",
    "chunk_decay_triton._scores_kernel": "amat amat2",
    "chunk_decay_triton._state_grads_kernel": "dh dh0",
    "chunk_decay_triton._states_kernel": "h ht",
    "chunk_delta_triton._input_grads_kernel": "dbeta dk dld dq dv",
    "chunk_delta_triton._intra_ddelta_kernel": "dd",
    "chunk_delta_triton._kkt_kernel": "amat gc",
    "chunk_delta_triton._output_kernel": "o",
    "chunk_delta_triton._state_grads_kernel": "dd dh dh0",
    "chunk_delta_triton._states_kernel": "delta h ht",
    "chunk_delta_triton._wu_kernel": "u w",
    "chunk_dplr_triton._combine_kernel": "da db dk dld dq",
    "chunk_dplr_triton._key_grads_kernel": "daab daak dap dbp dgp dgxp dkp dqp",
    "chunk_dplr_triton._value_sums_kernel": "dbs dgs dks dqs duv dv dws",
    "chunk_dplr_triton._wu_kernel": "u w",
    "chunk_inverse_triton._prepare_kernel": "gc tinv",
    "chunk_inverse_triton._solve_kernel": "tinv",
    "chunk_joint_triton._output_kernel": "o",
    "chunk_joint_triton._state_grads_kernel": "dh dw dx0",
    "chunk_joint_triton._states_kernel": "h wout xt",
    "chunk_kda_triton._combine_kernel": "dk dld dq",
    "chunk_kda_triton._key_grads_kernel": "dbeta dgp dkk dkp dqp",
    "chunk_kda_triton._state_grads_kernel": "dd dh dh0",
    "chunk_kda_triton._states_kernel": "delta h ht",
    "chunk_kda_triton._ut_matrix_kernel": "akk",
    "chunk_kda_triton._value_sums_kernel": "dgs dks dqs dts dv dws",
    "chunk_kda_triton._wu_kernel": "u w",
    "chunk_rows_triton._input_grads_kernel": "dbeta dk dld dq dv",
    "chunk_rows_triton._output_kernel": "o",
    "chunk_rows_triton._prepare_kernel": "kt mmat qw w",
    "chunk_rows_triton._state_grads_kernel": "dh dh0",
    "chunk_rows_triton._states_kernel": "h ht",
    "context_triton._conv_bwd": "dw dx",
    "context_triton._conv_dpre": "dpre",
    "context_triton._conv_fwd": "y",
    "context_triton._row_bwd": "dg dx",
    "context_triton._row_fwd": "y",
    "joint_transfers_triton._transfers_grad_kernel": "dp",
    "joint_transfers_triton._transfers_kernel": "t_out",
}


def test_compiled_graphs_of_every_kernel_family_partition():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(PROBE)], capture_output=True, text=True,
                          env=env, timeout=900, check=False)
    lines = done.stdout.splitlines()
    cases = [line for line in lines if not line.startswith("writes ")]
    assert len(cases) >= 12, done.stdout + done.stderr[-3000:]
    failed = [line for line in cases if " FAIL " in line]
    assert not failed and done.returncode == 0, "\n".join(failed) + done.stderr[-3000:]
    found = {line.split()[1]: " ".join(line.split()[2:]) for line in lines
             if line.startswith("writes ")}
    assert found == WRITES
