"""The solve family's reads: o = G (H + reg I)^-1 q (docs/design.md, "Kernel families").

Mesa (von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", 2023)
and MesaNet (von Oswald et al., arXiv:2506.05233, 2025) keep two statistics per head,
both affine in the token (the decay family):

    H_t = gamma_t H_{t-1} + k_t k_t^T      [K, K]
    G_t = gamma_t G_{t-1} + v_t k_t^T      [V, K]

and read o_t = G_t x_t with x_t = (H_t + reg I)^-1 q_t (or the statistics before the
write, `read before`). `shifted_solve` is the one-token solve the recurrent step prints.
`ridge_chunked` runs a whole sequence: x for every token, by an exact batched solve of
each token's H_t (materialized one chunk at a time) or by a fixed number of conjugate-
gradient steps, where each product H_t p_t is a linear-attention read with keys = values =
k (MesaNet's chunked method); then o = G_t x_t is one more such read, with values v.
Everything is plain PyTorch and differentiable (CG is differentiated through its steps);
on CUDA, decay_chunked runs the chunked Triton kernels where they cover the case."""

from __future__ import annotations

import torch
from nlc.runtime.library.chunk_triton import LOG_DECAY_FLOOR
from nlc.runtime.library.chunked import _masked_exp, _pad, _split, decay_chunked


def shifted_solve(matrix: torch.Tensor, shift, rhs: torch.Tensor) -> torch.Tensor:
    """(matrix + shift I)^-1 rhs over the leading axes: `[..., n, n]`, `[..., n, m]`."""
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    return torch.linalg.solve(matrix + shift * eye, rhs)  # batch axes broadcast


def _batched_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1, keepdim=True)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, 0 where den is 0 (a token whose residual is already 0): no NaN, in the
    value or in its gradient."""
    ok = den > torch.finfo(den.dtype).tiny
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)),
                       torch.zeros_like(num))


def cg_solve(apply, b: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` conjugate-gradient steps on A x = b from x = 0, a system per row of the last
    axis (`apply(p)` = A p for every row at once; A symmetric positive definite)."""
    x = torch.zeros_like(b)
    r, p = b, b
    rr = _batched_dot(r, r)
    for _ in range(steps):
        ap = apply(p)
        alpha = _ratio(rr, _batched_dot(p, ap))
        x = x + alpha * p
        r = r - alpha * ap
        rr_next = _batched_dot(r, r)
        p = r + _ratio(rr_next, rr) * p
        rr = rr_next
    return x


def ridge_chunked(q, k, v, log_decay=None, reg=1.0, *, initial_state=None, read_before=False,
                  chunk_size=64, cg_steps=0):
    """o_t = G_t (H_t + reg I)^-1 q_t for `q, k: [B, T, H, K]`, `v: [B, T, H, V]`, a scalar
    log decay `[B, T, H]` (or None) and a number `reg`; `initial_state` is
    `(H_0 [B, H, K, K], G_0 [B, H, V, K])`. `cg_steps` = 0 solves exactly, else by that many
    conjugate-gradient steps. Returns `(o [B, T, H, V], (H_T, G_T))`."""
    B, _, Hh, K = k.shape
    if initial_state is None:
        initial_state = (k.new_zeros(B, Hh, K, K), k.new_zeros(B, Hh, v.shape[-1], K))
    h0, g0 = initial_state

    def read(query, values, state):
        return decay_chunked(query, k, values, log_decay, initial_state=state,
                             read_before=read_before, chunk_size=chunk_size)

    if cg_steps:
        finals = []

        def apply(p):  # (H_t + reg I) p_t for every token: one read with values k
            hp, final = read(p, k, h0)
            finals.append(final)
            return hp + reg * p

        x = cg_solve(apply, q, cg_steps)
        h_final = finals[0]
    else:
        x, h_final = _exact_solves(q, k, log_decay, reg, h0, read_before, chunk_size)
    o, g_final = read(x, v, g0)
    return o, (h_final, g_final)


def _exact_solves(q, k, log_decay, reg, h0, read_before: bool, chunk: int):
    """x_t = (H_t + reg I)^-1 q_t, each token's H_t built inside its chunk as
    e^{g_t} H_0 + sum_{s <= t} e^{g_t - g_s} k_s k_s^T (s < t for `read before`), one chunk
    of `[C, K, K]` matrices at a time."""
    B, T, Hh, K = k.shape
    padded = -(-T // chunk) * chunk
    if log_decay is None:
        log_decay = k.new_zeros(B, T, Hh)
    ld = log_decay.clamp_min(LOG_DECAY_FLOOR)
    qc, kc, ldc = (_split(_pad(x, padded), chunk) for x in (q, k, ld))  # [B, H, N, C, *]
    eye = torch.eye(K, dtype=k.dtype, device=k.device)
    state, xs = h0, []
    for n in range(qc.shape[2]):
        kn, g = kc[:, :, n], ldc[:, :, n].cumsum(-1)                # g: [B, H, C]
        g_read = g - ldc[:, :, n] if read_before else g
        weights = _masked_exp(g_read[..., :, None] - g[..., None, :], read_before)
        h_tok = torch.einsum("bhts,bhsi,bhsj->bhtij", weights, kn, kn) \
            + g_read.exp()[..., None, None] * state[:, :, None]
        xs.append(torch.linalg.solve(h_tok + reg * eye, qc[:, :, n].unsqueeze(-1))[..., 0])
        last = g[..., -1:]
        state = state * last.exp()[..., None] + (kn * (last - g).exp()[..., None]).mT @ kn
    x = torch.stack(xs, 2)                                           # [B, H, N, C, K]
    x = x.movedim(1, 3).reshape(B, padded, Hh, K)[:, :T]
    return x, state
