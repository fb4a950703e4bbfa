"""Operation count of the joint family's per-chunk pieces (CPU, a proxy for GPU launches):
runtime/library/joint.py's `transfers`, `intra`, `outputs` and `state_pass`, forward and
backward, with the n x n products as batched matmuls (as before `joint.small_matmul`), as
broadcast sums, and with T from runtime/library/joint_transfers_triton.py's kernels (run by
Triton's interpreter here, so they add no ATen operation: 2 launches on a GPU).

An operation counts when it is an ATen operation that does work (not a view) with no such
operation below it in torch.profiler's tree; `bmm` on 2 x 2 matrices is counted apart.

    python benchmarks/joint_pieces_ops.py          (docs/perf.md, "Structure of the slow
                                                     chunked kernels")
"""

from __future__ import annotations

import collections
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch
from nlc.runtime.library import joint
from nlc.runtime.library.joint_transfers_triton import Transfers
from torch.profiler import ProfilerActivity, profile

VIEWS = {"select", "squeeze", "unsqueeze", "view", "reshape", "transpose", "slice", "expand",
         "as_strided", "permute", "t", "alias", "unflatten", "flatten", "_unsafe_view", "empty",
         "empty_strided", "detach", "result_type", "empty_like", "resolve_conj", "resolve_neg",
         "set_", "lift_fresh", "_reshape_alias", "contiguous", "clone"}


def count(transfers, small_matmul, G=4, C=64, n=2, K=16):
    """(operations, bmm on n x n matrices) of one forward + backward of the pieces."""
    joint.small_matmul = small_matmul
    g = torch.Generator().manual_seed(0)
    P, Q = (torch.rand(G, C, n, n, generator=g).requires_grad_() for _ in range(2))
    k, q = (torch.randn(G, C, K, generator=g).requires_grad_() for _ in range(2))
    v = torch.randn(G, C, n, K, generator=g).requires_grad_()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        T = transfers(P)
        pieces = (*joint.intra(k, Q, v, T), *joint.outputs(q, k, T, 0, False),
                  *joint.state_pass(k, T))
        sum(x.sum() for x in pieces).backward()
    real = [e for e in prof.events()
            if e.name.startswith("aten::") and e.name[6:] not in VIEWS]
    parents = {id(e.cpu_parent) for e in real if e.cpu_parent is not None}
    ops = [e for e in real if id(e) not in parents]
    small = sum(1 for e in ops if e.name == "aten::bmm" and e.input_shapes
                and e.input_shapes[0][-2:] == [n, n])
    return len(ops), small, collections.Counter(e.name for e in ops).most_common(4)


def main():
    sums = joint.small_matmul
    rows = [("batched matmuls, column loop (before)", joint.transfers, torch.matmul),
            ("broadcast sums, column loop", joint.transfers, sums),
            ("broadcast sums, T by the Triton kernels", Transfers.apply, sums)]
    print("| pieces | operations | bmm on n x n | most common |")
    print("|---|---|---|---|")
    for name, transfers, mm in rows:
        total, small, common = count(transfers, mm)
        print(f"| {name} | {total} | {small} | {common} |")
    joint.small_matmul = sums


if __name__ == "__main__":
    main()
