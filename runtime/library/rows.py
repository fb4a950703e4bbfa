"""The chunked forms of the decay and delta families with a decay per row (output channel),
`S_t = Diag(g_t) S_{t-1} A_t + v_t k_t^T` (docs/language.md, section 10).

A row decay multiplies the state from the left and every transition A_t (1 for the decay
family, I - b_t k_t k_t^T for delta) from the right, so they commute: with G_t the product of
the row decays since the chunk's start, S_t = Diag(G_t) S~_t where S~ is the ungated rule on
the values v_t / G_t. The division never happens: each token's read and the end state meet
the values only through the ratios G_t / G_r (r <= t), exp of a difference of cumulative log
decays that is <= 0, taken per row. Unrolled (runtime/library/chunked.py's UT transform,
without a decay: inv = (I + A)^-1, A[t, s] = b_t k_t . k_s for s < t, w = inv (b * K)):

    o_t = G_t * S_0 (q_t - sum_{s<=t} (q_t . k_s) w_s) + sum_r M[t, r] (G_t / G_r) * v_r,
    S_C = G_C * S_0 (I - w^T K) + sum_r ((G_C / G_r) * v_r) (inv^T K)_r^T,

with M = (masked q k^T) inv; the decay family is inv = I, w = 0. `*` scales the rows, and
`read before` reads S_{t-1} (G_{t-1}, s < t). The pieces (`intra`, `outputs`, `state_pass`)
are separate functions a kernel can mirror."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from nlc.runtime.library.chunk_triton import LOG_DECAY_FLOOR, chunked_kernel_for
from nlc.runtime.library.chunked import (SAFE_SPAN, _causal, _masked_exp, _merge, _pad, _split,
                                         common_dtype, sub_blocks, unit_lower_inverse)


def intra(k, beta):
    """(inv `[..., C, C]`, w `[..., C, K]`) of the ungated delta rule; the identity and 0 for
    the decay family (beta None)."""
    C = k.shape[-2]
    if beta is None:
        eye = torch.eye(C, dtype=k.dtype, device=k.device)
        return eye.expand(*k.shape[:-2], C, C), torch.zeros_like(k)
    a = (beta * (k @ k.mT)).masked_fill(~_causal(C, True, k.device), 0.0)
    inv = unit_lower_inverse(a)
    return inv, inv @ (beta * k)


def _weighted(M, g_read, g, v, strict: bool):
    """sum_r M[t, r] exp(g_read_t - g_r) * v_r per row: `[..., C, V]`. Factored through a
    reference row while the chunk's log decays span less than SAFE_SPAN, else by blocks of 16
    tokens r (`_blocked_weighted`), else (a decay above 1) masked per row."""
    ref = g[..., :1, :]
    if (g - ref).abs().amax() < SAFE_SPAN:
        masked = M.masked_fill(~_causal(M.shape[-1], strict, M.device), 0.0)
        return torch.exp(g_read - ref) * (masked @ (torch.exp(ref - g) * v))
    blocked = _blocked_weighted(M, g_read, g, v, strict)
    if blocked is not None:
        return blocked
    ratio = _masked_exp((g_read.unsqueeze(-2) - g.unsqueeze(-3)).movedim(-1, -3), strict)
    return torch.einsum("...ts,...vts,...sv->...tv", M, ratio, v)


def _blocked_weighted(M, g_read, g, v, strict: bool):
    """`_weighted` by blocks of SUB_BLOCK tokens r: inside a block the ratios exactly
    (`[..., V, 16, 16]`), and for the reads after it both factors against the block's last
    log decay, exp(g_read_t - ref) and exp(ref - g_r), each at most 1 where no decay exceeds
    1 (a long decay underflows to 0, as its true value does). None where a factor could
    exceed 1, or the chunk is not a whole number of blocks. Strong row decays (a span of 30
    and more in a chunk) built `[..., V, C, C]` ratios for every chunk before: 4.8x slower
    than a scalar gate's chunk on the CPU."""
    blocks = sub_blocks(g_read, g)
    if blocks is None:
        return None
    C, parts = g.shape[-2], []
    for start, end, inside, after in blocks:
        ratio = _masked_exp((g_read[..., start:end, :].unsqueeze(-2)
                             - g[..., start:end, :].unsqueeze(-3)).movedim(-1, -3), strict)
        block = [torch.einsum("...ts,...vts,...sv->...tv", M[..., start:end, start:end],
                              ratio, v[..., start:end, :])]
        if end < C:
            block.append(torch.exp(after) * (M[..., end:, start:end]
                                             @ (torch.exp(inside) * v[..., start:end, :])))
        parts.append(F.pad(torch.cat(block, -2), (0, 0, start, 0)))  # reads before: 0
    return sum(parts)


def outputs(q, k, v, g, g_read, inv, w, S0, strict: bool):
    """Each token's read `[..., C, V]` from the chunk-start state S0 `[..., V, K]`."""
    qk = (q @ k.mT).masked_fill(~_causal(q.shape[-2], strict, q.device), 0.0)
    inter = torch.exp(g_read) * ((q - qk @ w) @ S0.mT)
    return inter + _weighted(qk @ inv, g_read, g, v, strict)


def state_pass(k, v, g, inv, w, S0):
    """The chunk's end state `[..., V, K]`."""
    last = g[..., -1:, :]                                    # [..., 1, V]
    kept = torch.exp(last.mT) * (S0 - (S0 @ w.mT) @ k)
    return kept + (torch.exp(last - g) * v).mT @ (inv.mT @ k)


def row_decay_chunked(q, k, v, beta, log_decay, *, initial_state=None, read_before=False,
                      chunk_size=64):
    """`q, k: [B, T, H, K]`, `v: [B, T, H, V]`, `beta: [B, T, H]` (delta) or None (decay),
    the log of the row decay `[B, T, H, V]` -> `(o [B, T, H, V], final state [B, H, V, K])`.
    CUDA tensors go to the chunked Triton kernels (runtime/library/chunk_rows_triton.py) where
    they cover the case."""
    family = "decay" if beta is None else "delta"
    kernel = chunked_kernel_for(q, family, "row", read_before, chunk_size, k.shape[-1],
                                v.shape[-1])
    if kernel is not None:
        return kernel(q, k, v, beta, log_decay, initial_state=initial_state,
                      chunk_size=chunk_size)
    return row_decay_chunked_torch(q, k, v, beta, log_decay, initial_state=initial_state,
                                   read_before=read_before, chunk_size=chunk_size)


def row_decay_chunked_torch(q, k, v, beta, log_decay, *, initial_state=None,
                            read_before=False, chunk_size=64):
    """`row_decay_chunked` in plain PyTorch (any device)."""
    B, T, H, K = q.shape
    padded = -(-T // chunk_size) * chunk_size
    q, k, v, beta, log_decay, initial_state = common_dtype(q, k, v, beta, log_decay,
                                                           initial_state)
    log_decay = log_decay.clamp_min(LOG_DECAY_FLOOR)  # a decay of 0: finite, zero gradient
    q, k, v, ld = (_split(_pad(x, padded), chunk_size) for x in (q, k, v, log_decay))
    b = None if beta is None else _split(_pad(beta, padded), chunk_size).unsqueeze(-1)
    g = ld.cumsum(-2)
    g_read = g - ld if read_before else g
    inv, w = intra(k, b)
    S = initial_state if initial_state is not None else q.new_zeros(B, H, v.shape[-1], K)
    outs = []
    for n in range(q.shape[2]):
        piece = (x[:, :, n] for x in (q, k, v, g, g_read, inv, w))
        qn, kn, vn, gn, grn, invn, wn = piece
        outs.append(outputs(qn, kn, vn, gn, grn, invn, wn, S, read_before))
        S = state_pass(kn, vn, gn, invn, wn, S)
    return _merge(torch.stack(outs, 2))[:, :T], S
