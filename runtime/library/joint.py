"""The exact chunked form of a level whose n states are jointly affine per token (a momentum
delta rule's (S, M); docs/design.md, "Kernel families").

The states X_1 .. X_n are all `[V, K]`, read o_t = X_r q_t (one of them, r = `read`). Per
token every next state is a combination of the old ones through one key k_t:

    X_i' = sum_j X_j (P_t[j, i] I + Q_t[j, i] k_t k_t^T) + v_{t,i} k_t^T,

so the joint state X = [X_1, ..., X_n] (`[V, n K]`) evolves as X' = X A_t + B_t with
A_t = P_t (x) I + K_t Q_t K_t^T, K_t = I_n (x) k_t: an n x n mixing of the states plus a rank-n
term in the structured n K space. Write X_t = X_{t-1} (P_t (x) I) + W_t K_t^T with the n
columns W_t = X_{t-1} K_t Q_t + V_t (`[V, n]`, the delta rule's delta_t for n = 1). Unrolled
inside a chunk from its start X_0, with T[s, t] = P_s ... P_{t-1} the mixing from the state
after s tokens to the state after t (T[t, t] = I, products only: no gate is ever divided by):

    W_t = (X_0 K_t) T[0, t] Q_t + sum_{s<t} (k_s . k_t) W_s T[s+1, t] Q_t + V_t,

a unit lower-triangular system over the C n columns of a chunk (the UT transform of
runtime/library/chunked.py in n K dimensions): W = U + w X_0^T with U = (I - L)^-1 V and
w = (I - L)^-1 Z, computed for all chunks at once. Then

    o_t = X_0 (T[0, r_t] e_r (x) q_t) + sum_{s<=t} (q_t . k_s) W_s T[s+1, r_t] e_r,
    X_C = X_0 (T[0, C] (x) I) + sum_s W_s (T[s+1, C] (x) k_s^T),

r_t = t + 1 (the read after the write) or t (`read before`, s < t). The pieces are separate
functions a kernel can mirror: `transfers` (the mixings T), `intra` (the triangular system),
`outputs` (each token's read from the chunk-start state and the W's) and `state_pass`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from nlc.runtime.library.chunk_triton import chunked_kernel_for, joint_fits
from nlc.runtime.library.chunked import _causal, _merge, _split, common_dtype, unit_lower_inverse


def _pad(x, T: int):
    if x.shape[1] == T:
        return x
    return F.pad(x, [0, 0] * (x.dim() - 2) + [0, T - x.shape[1]])


def small_matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A @ B for n x n matrices (n at most a few) in any batch, as n broadcast products. A
    batched matmul runs a whole GEMM tile per 2 x 2 product, and cuBLAS takes at most 65535
    of them a call: at (8, 2048, 16) the products below took 194 of a forward + backward's
    239 ms on an H100 (docs/perf.md, "Structure of the slow chunked kernels")."""
    return sum(A[..., :, j, None] * B[..., None, j, :] for j in range(A.shape[-1]))


def transfers(P: torch.Tensor) -> torch.Tensor:
    """P `[..., C, n, n]` -> T `[..., C + 1, C + 1, n, n]`, T[s, t] = P_s ... P_{t-1} for
    s <= t (the identity at s = t), 0 for s > t. Built column by column, t from 0 to C."""
    C, n = P.shape[-3], P.shape[-1]
    eye = torch.eye(n, dtype=P.dtype, device=P.device)
    start = torch.eye(C + 1, dtype=P.dtype, device=P.device)[:, :, None, None] * eye
    column = start[0].expand(*P.shape[:-3], C + 1, n, n)
    columns = [column]
    for t in range(C):
        column = small_matmul(column, P[..., t, None, :, :]) + start[t + 1]
        columns.append(column)
    return torch.stack(columns, -3)


def intra(k, Q, V, T, inverse=unit_lower_inverse):
    """The chunk's triangular system: (U `[..., C n, V]`, w `[..., C n, n K]`), so that the
    columns W_t of every token (row t n + i holds W_t's column i) are U + w X_0^T. `inverse`
    inverts I + A for a strictly lower A (chunk_joint_triton.py passes its kernels')."""
    C, n = Q.shape[-3], Q.shape[-1]
    E = small_matmul(T[..., 1:, :C, :, :], Q.unsqueeze(-4))   # [s, t]: T[s+1, t] Q_t
    kk = (k @ k.mT).masked_fill(~_causal(C, True, k.device), 0.0)   # [t, s], s < t
    L = torch.einsum("...ts,...stji->...tisj", kk, E).reshape(*kk.shape[:-2], C * n, C * n)
    inv = inverse(-L)
    Z = small_matmul(T[..., 0, :C, :, :], Q)                 # [t]: T[0, t] Q_t
    z = torch.einsum("...tji,...tk->...tijk", Z, k).reshape(*Z.shape[:-3], C * n, -1)
    return inv @ V.reshape(*V.shape[:-3], C * n, V.shape[-1]), inv @ z


def outputs(q, k, T, read: int, read_before: bool):
    """Each token's read as (a `[..., C, n K]` against X_0, b `[..., C, C n]` against the
    W's): o = a X_0^T + b W."""
    C = q.shape[-2]
    n = T.shape[-1]
    at = slice(0, C) if read_before else slice(1, C + 1)
    mixed = T[..., :, at, :, read]                           # [s', t, j]: (T[s', r_t] e_r)_j
    qk = (q @ k.mT).masked_fill(~_causal(C, read_before, q.device), 0.0)
    b = (qk.unsqueeze(-1) * mixed[..., 1:, :, :].transpose(-3, -2)).reshape(
        *qk.shape[:-2], C, C * n)
    a = torch.einsum("...tj,...tk->...tjk", mixed[..., 0, :, :], q).flatten(-2)
    return a, b


def state_pass(k, T):
    """The chunk's end state as (mix `[..., n, n]`, r `[..., C n, n K]`):
    X_C = X_0 (mix (x) I) + W^T r."""
    C, n = k.shape[-2], T.shape[-1]
    last = T[..., 1:, C, :, :]                               # [s, j, i]: T[s+1, C]
    r = torch.einsum("...sji,...sk->...sjik", last, k).reshape(*k.shape[:-2], C * n, -1)
    return T[..., 0, C, :, :], r


def _flat(X):
    """`[..., n, V, K]` -> `[..., V, n K]`."""
    return X.movedim(-3, -2).flatten(-2)


def _unflat(X, n: int):
    return X.unflatten(-1, (n, -1)).movedim(-2, -3)


def joint_chunked(q, k, values, P, Q, *, read=0, initial_state=None, read_before=False,
                  chunk_size=64):
    """`q, k: [B, T, H, K]`, `values: [B, T, H, n, V]` (v_{t,i}), `P, Q: [B, T, H, n, n]`
    -> `(o [B, T, H, V], final states [B, H, n, V, K])`. CUDA tensors go to the chunked Triton
    kernels (runtime/library/chunk_joint_triton.py) where they cover the case."""
    kernel = chunked_kernel_for(q, "joint", "none", False, chunk_size, k.shape[-1],
                                values.shape[-1])
    if kernel is not None and joint_fits(values.shape[-2], k.shape[-1]):
        return kernel(q, k, values, P, Q, read=read, initial_state=initial_state,
                      read_before=read_before, chunk_size=chunk_size)
    return joint_chunked_torch(q, k, values, P, Q, read=read, initial_state=initial_state,
                               read_before=read_before, chunk_size=chunk_size)


def joint_chunked_torch(q, k, values, P, Q, *, read=0, initial_state=None, read_before=False,
                        chunk_size=64):
    """`joint_chunked` in plain PyTorch (any device)."""
    B, T, H, K = q.shape
    n, Vd = values.shape[-2], values.shape[-1]
    padded = -(-T // chunk_size) * chunk_size
    q, k, values, P, Q, initial_state = common_dtype(q, k, values, P, Q, initial_state)
    eye = torch.eye(n, dtype=P.dtype, device=P.device)
    P = torch.cat([P, eye.expand(B, padded - T, H, n, n)], 1)   # padding: X' = X
    q, k, values, P, Q = (_split(_pad(x, padded), chunk_size) for x in (q, k, values, P, Q))
    Tm = transfers(P)
    U, w = intra(k, Q, values, Tm)
    a, b = outputs(q, k, Tm, read, read_before)
    mix, r = state_pass(k, Tm)
    X = initial_state if initial_state is not None else q.new_zeros(B, H, n, Vd, K)
    outs = []
    for c in range(q.shape[2]):
        X0 = _flat(X)                                        # [B, H, V, n K]
        W = U[:, :, c] + w[:, :, c] @ X0.mT                  # [B, H, C n, V]
        outs.append(a[:, :, c] @ X0.mT + b[:, :, c] @ W)
        X = torch.einsum("...jvk,...ji->...ivk", X, mix[:, :, c]) + _unflat(W.mT @ r[:, :, c], n)
    return _merge(torch.stack(outs, 2))[:, :T], X


def mixing(rows, like: torch.Tensor) -> torch.Tensor:
    """n x n scalars per token (numbers, or tensors `[B, T, H, 1, 1]` as the printed
    expressions give them) -> `[B, T, H, n, n]` shaped like `like`'s `[B, T, H]`."""
    def one(c):
        c = torch.as_tensor(c, dtype=like.dtype, device=like.device)
        return (c[..., 0, 0] if c.dim() >= 2 else c).expand(*like.shape[:3])
    return torch.stack([torch.stack([one(c) for c in row], -1) for row in rows], -2)


def joint_values(values, like: torch.Tensor) -> torch.Tensor:
    """Each state's written value `[B, T, H, V]`, None for a state with no input term ->
    `[B, T, H, n, V]`."""
    given = next(v for v in values if v is not None)
    return torch.stack([v if v is not None else torch.zeros_like(given) for v in values], -2)
