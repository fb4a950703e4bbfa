"""The mixings' products of runtime/library/joint.py's `transfers` as one Triton kernel each way
(chunk_joint_triton.py's first piece):

    T[s, t] = P_s ... P_{t-1}   (T[t, t] = I, 0 for s > t),   each an n x n matrix,

for every chunk at once. joint.py builds T column by column, t from 0 to C, as a loop of C
batched PyTorch products over all chunks: with autograd, about 1,800 operations for a forward
+ backward at C = 64 and n = 2 (the n x n products as broadcast sums, selects and their
backward's zero fills; docs/perf.md, "Structure of the slow chunked kernels"), each touching
a whole column of every chunk. Here one program per (chunk, head) keeps its column
`[C + 1, n n]` in registers and walks t:

    forward:   column_0 = e_0 (x) I,   column_{t+1} = column_t M_t + e_{t+1} (x) I,
    backward:  G_C = dT[:, C],   dM_t = column_t^T G_{t+1},   G_t = dT[:, t] + G_{t+1} M_t^T,

with M_t = I_n (x) P_t acting on a column's flattened (j, i) entries (block j of M_t is P_t),
so dP_t[l, i] = sum_j dM_t[(j, l), (j, i)] (two more [16, 16] products). The columns are
[CP, 16] tiles (n n <= 16: at most 4 states, JOINT_MAX_STATES) and each step is one
[CP, 16] x [16, 16] product in float32 (ieee: the products feed a triangular solve)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from nlc.runtime.library.chunk_triton import pow2

NN = 16  # a column's (j, i) entries, padded: n n <= 16 for n <= 4


@triton.jit
def _step_matrix(p, n: tl.constexpr, NN: tl.constexpr):
    """M = I_n (x) P for the n x n P at `p`, as an [NN, NN] tile over the flattened (j, l) x
    (j', i) entries: M[(j, l), (j', i)] = [j == j'] P[l, i]."""
    a = tl.arange(0, NN)[:, None]
    b = tl.arange(0, NN)[None, :]
    keep = (a // n == b // n) & (a < n * n) & (b < n * n)
    return tl.load(p + (a % n) * n + b % n, mask=keep, other=0.0)


@triton.jit
def _columns(g, C: tl.constexpr, n: tl.constexpr, CP: tl.constexpr, NN: tl.constexpr):
    """Row s, flattened entry c of the chunk's columns: the offset of T[s, 0][c] in
    `[G, C + 1, C + 1, n, n]`, the mask, and where the identity's entries are."""
    s = tl.arange(0, CP)[:, None]
    c = tl.arange(0, NN)[None, :]
    W: tl.constexpr = C + 1
    offset = g * W * W * n * n + s * W * n * n + c
    return s, offset, (s < W) & (c < n * n), (c // n == c % n) & (c < n * n)


@triton.jit
def _transfers_kernel(p, t_out, C: tl.constexpr, n: tl.constexpr, CP: tl.constexpr,
                      NN: tl.constexpr):
    """Per (chunk, head): every column T[:, t], t = 0 .. C."""
    g = tl.program_id(0)
    s, offset, m, diag = _columns(g, C, n, CP, NN)
    col = tl.where((s == 0) & diag, 1.0, 0.0)
    for t in range(C):
        tl.store(t_out + offset + t * n * n, col, mask=m)
        M = _step_matrix(p + (g * C + t) * n * n, n, NN)
        col = tl.dot(col, M, input_precision="ieee") + tl.where((s == t + 1) & diag, 1.0, 0.0)
    tl.store(t_out + offset + C * n * n, col, mask=m)


@triton.jit
def _transfers_grad_kernel(p, tm, dt, dp, C: tl.constexpr, n: tl.constexpr, CP: tl.constexpr,
                           NN: tl.constexpr):
    """Per (chunk, head), t from C - 1 down to 0: dP_t from the column T[:, t] and G_{t+1}."""
    g = tl.program_id(0)
    _, offset, m, _ = _columns(g, C, n, CP, NN)
    a = tl.arange(0, NN)[:, None]
    b = tl.arange(0, NN)[None, :]
    # dP[l, i] = sum_j dM[(j, l), (j, i)] = (F^T (dM * same j) F)[l, i], F[(j, l), l'] = [l == l']
    same = (a // n == b // n) & (a < n * n) & (b < n * n)
    fold = tl.where((a % n == b) & (a < n * n), 1.0, 0.0)
    grad = tl.load(dt + offset + C * n * n, mask=m, other=0.0)
    for j in range(C):
        t = C - 1 - j
        col = tl.load(tm + offset + t * n * n, mask=m, other=0.0)
        dM = tl.where(same, tl.dot(tl.trans(col), grad, input_precision="ieee"), 0.0)
        dP = tl.dot(tl.dot(tl.trans(fold), dM, input_precision="ieee"), fold,
                    input_precision="ieee")
        tl.store(dp + (g * C + t) * n * n + a * n + b, dP, mask=(a < n) & (b < n))
        M = _step_matrix(p + (g * C + t) * n * n, n, NN)
        grad = tl.load(dt + offset + t * n * n, mask=m, other=0.0) \
            + tl.dot(grad, tl.trans(M), input_precision="ieee")


class Transfers(torch.autograd.Function):
    """P `[..., C, n, n]` (float32) -> T `[..., C + 1, C + 1, n, n]`, as joint.py's
    `transfers`."""

    @staticmethod
    def forward(ctx, P):
        C, n = P.shape[-3], P.shape[-1]
        p = P.contiguous()
        G = p.numel() // (C * n * n)
        T = torch.empty(*P.shape[:-3], C + 1, C + 1, n, n, dtype=P.dtype, device=P.device)
        _transfers_kernel[(G,)](p, T, C=C, n=n, CP=pow2(C + 1), NN=NN, num_warps=4)
        ctx.save_for_backward(p, T)
        return T

    @staticmethod
    def backward(ctx, dT):
        p, T = ctx.saved_tensors
        C, n = p.shape[-3], p.shape[-1]
        dP = torch.empty_like(p)
        _transfers_grad_kernel[(p.numel() // (C * n * n),)](
            p, T, dT.contiguous(), dP, C=C, n=n, CP=pow2(C + 1), NN=NN,
            num_warps=8)  # 4 spill 350 bytes at n = 3, 4 (benchmarks/kernel_resources.py)
        return dP
