"""Exact chunked forms of the affine kernel families (docs/design.md, "Kernel families").

Both work on `q, k: [B, T, H, K]`, `v: [B, T, H, V]`, a state `S: [B, H, V, K]` (read
`o = S q`) and the log of the decay, `[B, T, H]` (scalar) or `[B, T, H, K]` (per key
channel). Inside a chunk of C tokens the decays are cumulative sums in log space, so every
token's contribution is a masked matrix product; only the state is passed from chunk to
chunk.

decay:  S_t = S_{t-1} D_t + v_t k_t^T
delta:  S_t = S_{t-1} D_t (I - b_t k_t k_t^T) + v_t k_t^T
dplr:   S_t = S_{t-1} (D_t + a_t b_t^T) + v_t k_t^T

For delta, write S_t = S_{t-1} D_t + delta_t k_t^T with delta_t = v_t - b_t S_{t-1} D_t k_t.
Unrolled inside a chunk from its start state S_0 (g the cumulative log decay), the deltas
solve a unit lower-triangular system (the UT transform):
  (I + A) Delta = V - diag(b) (K * e^g) S_0^T,
  A[t, s] = b_t sum_c k_tc k_sc e^{g_tc - g_sc}  (s < t),
so Delta = U - W S_0^T with U = (I + A)^-1 V and W = (I + A)^-1 diag(b) (K * e^g), both
computed for all chunks at once. With a decay per key channel (Kimi Delta Attention) A is the
keys' own decayed scores, built as the output's are (`_scores`); a scalar decay is the case
K = 1 of the same formulas.

For dplr, write S_t = S_{t-1} D_t + u_t b_t^T + v_t k_t^T with u_t = S_{t-1} a_t: two input
terms of the decay family, the first's values unknown. The decay sits beside the rank-one
term (S_{t-1} a_t, not S_{t-1} D_t a_t), so a_t meets the cumulative decay up to the token
before it, gx_t = g_t - log D_t. Unrolled inside a chunk,
  (I - A_ab) U = A_ak V + (A * e^gx) S_0^T,
  A_xy[t, s] = sum_c x_tc y_sc e^{gx_tc - g_sc}  (s < t),
so U = T A_ak V + W S_0^T with T = (I - A_ab)^-1 and W = T (A * e^gx), and
  O = (Q * e^g) S_0^T + P_qk V + P_qb U,   S' = S_0 e^G + (U^T B + V^T K) e^{G - g},
P_xy the same scores with e^{g_t - g_s}, s <= t (Peng et al., RWKV-7, arXiv:2503.14456,
2025, eq. 17 is the rule; the chunked form is this derivation's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from nlc.runtime.library.chunk_triton import LOG_DECAY_FLOOR, chunked_kernel_for

# per-channel decays are factored into q and k while a chunk's log decays stay within this
# range (e^30 is far from fp32's limit); beyond it the exact masked product is used
SAFE_SPAN = 30.0


def _split(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """`[B, T, H, *]` (T a multiple of chunk) -> `[B, H, N, C, *]`."""
    B, T, H = x.shape[:3]
    return x.reshape(B, T // chunk, chunk, H, *x.shape[3:]).movedim(3, 1)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """`[B, H, N, C, *]` -> `[B, N * C, H, *]`."""
    B, H, N, C = x.shape[:4]
    return x.movedim(1, 3).reshape(B, N * C, H, *x.shape[4:])


def _pad(x, T: int):
    if x is None or x.shape[1] == T:
        return x
    pad = [0, 0] * (x.dim() - 2) + [0, T - x.shape[1]]
    return F.pad(x, pad)


def _prepare(q, k, v, log_decay, chunk):
    T = q.shape[1]
    padded = -(-T // chunk) * chunk
    if log_decay is None:
        log_decay = q.new_zeros(q.shape[:3])
    # a decay of 0 has log -inf, and -inf - -inf is NaN: clamp where e^x is 0 in float32
    # anyway. The gradient of the log is then 0, as it is at -inf; that of the gate itself
    # is not (d(a S)/da = S), so a gate of exactly 0 gets 0 here and its true value from
    # the recurrent form (docs/language.md)
    log_decay = log_decay.clamp_min(LOG_DECAY_FLOOR)
    if log_decay.dim() == 3:
        log_decay = log_decay.unsqueeze(-1)
    q, k, v, log_decay = (_split(_pad(x, padded), chunk) for x in (q, k, v, log_decay))
    return T, q, k, v, log_decay.cumsum(-2), log_decay


def unit_lower_inverse(A: torch.Tensor) -> torch.Tensor:
    """(I + A)^-1 for strictly lower-triangular A `[..., R, R]`, by a triangular solve. Half
    precision is solved in float32 and cast back: CUDA has no bf16 triangular solve."""
    work = A.float() if A.dtype in (torch.float16, torch.bfloat16) else A
    eye = torch.eye(A.shape[-1], dtype=work.dtype, device=A.device)
    inverse = torch.linalg.solve_triangular(eye + work, eye.expand_as(work), upper=False,
                                            unitriangular=True)
    return inverse.to(A.dtype)


def _causal(C: int, strict: bool, device) -> torch.Tensor:
    """[t, s] is kept where s <= t (s < t if strict)."""
    return torch.ones(C, C, dtype=torch.bool, device=device).tril(-1 if strict else 0)


def _masked_exp(diff: torch.Tensor, strict: bool) -> torch.Tensor:
    """exp(diff[t, s]) where s <= t (s < t if strict), 0 elsewhere; masked before exp."""
    return torch.exp(diff.masked_fill(~_causal(diff.shape[-1], strict, diff.device),
                                      float("-inf")))


def _scores(q, k, g_read, g, strict: bool):
    """q_t . (k_s e^{g_read_t - g_s}) for s <= t, per chunk: `[B, H, N, C, C]`."""
    if g.shape[-1] == 1:
        decay = _masked_exp(g_read[..., :, 0, None] - g[..., None, :, 0], strict)
        return (q @ k.mT) * decay
    ref = g[..., :1, :]
    span = torch.maximum((g - ref).abs().amax(), (g_read - ref).abs().amax())
    if span < SAFE_SPAN:  # factor e^{g_t - g_s} into q and k: one matmul
        scores = (q * torch.exp(g_read - ref)) @ (k * torch.exp(ref - g)).mT
        return scores.masked_fill(~_causal(g.shape[-2], strict, g.device), 0.0)
    blocked = _blocked_scores(q, k, g_read, g)
    if blocked is not None:
        return blocked.masked_fill(~_causal(g.shape[-2], strict, g.device), 0.0)
    decay = _masked_exp((g_read.unsqueeze(-2) - g.unsqueeze(-3)).movedim(-1, -3), strict)
    return torch.einsum("...tk,...sk,...kts->...ts", q, k, decay)


SUB_BLOCK = 16


def sub_blocks(g_read, g):
    """A chunk's tokens s by blocks of SUB_BLOCK, each (start, end, inside, after): r - g_s for
    the block's own tokens and g_read_t - r for the tokens after it, r the log decay at the
    block's last token, so that e^{g_read_t - g_s} = e^{after} e^{inside} factors through r.
    Both are at most 0 where no decay exceeds 1. None where one exceeds 0 (a decay above 1),
    or the chunk is not several whole blocks."""
    C = g.shape[-2]
    if C % SUB_BLOCK or C <= SUB_BLOCK:
        return None
    blocks = []
    for start in range(0, C, SUB_BLOCK):
        end = start + SUB_BLOCK
        ref = g[..., end - 1:end, :]
        inside, after = ref - g[..., start:end, :], g_read[..., end:, :] - ref
        if inside.amax() > 0 or (after.numel() and after.amax() > 0):
            return None
        blocks.append((start, end, inside, after))
    return blocks


def _blocked_scores(q, k, g_read, g):
    """q_t . (k_s e^{g_read_t - g_s}) for s <= t (the diagonal) and every t after s's block,
    by blocks of 16 key columns: the block's own [16, 16] decays exactly, and the rows after
    it factored against the log decay r at the block's last token, e^{g_read_t - r} and
    e^{r - g_s}, both at most 1 where no decay exceeds 1 (a long decay underflows to 0, as
    its true value does). None when a factor could exceed 1 (a decay above 1): then the
    exact [C, C, K] product runs. A chunk's span beyond SAFE_SPAN (Kimi Delta Attention's
    strong decays over 64 tokens) sent every chunk to that product before."""
    blocks = sub_blocks(g_read, g)
    if blocks is None:
        return None
    C, parts = g.shape[-2], []
    for start, end, inside, after in blocks:
        diagonal = _masked_exp((g_read[..., start:end, :].unsqueeze(-2)
                                - g[..., start:end, :].unsqueeze(-3)).movedim(-1, -3), False)
        block = [torch.einsum("...tk,...sk,...kts->...ts", q[..., start:end, :],
                              k[..., start:end, :], diagonal)]
        if end < C:
            block.append((q[..., end:, :] * torch.exp(after))
                         @ (k[..., start:end, :] * torch.exp(inside)).mT)
        parts.append(F.pad(torch.cat(block, -2), (0, 0, start, 0)))  # rows before: 0
    return torch.cat(parts, -1)


def common_dtype(*tensors):
    """The given tensors (None skipped) cast to one dtype, the widest among them: a float32
    state or decay with half-precision tokens computes in float32 (matmuls do not mix)."""
    dtype = None
    for x in tensors:
        if x is not None:
            dtype = x.dtype if dtype is None else torch.promote_types(dtype, x.dtype)
    return tuple(None if x is None else x.to(dtype) for x in tensors)


def _initial(state, q, v):
    if state is not None:
        return state
    B, H = q.shape[0], q.shape[1]
    return q.new_zeros(B, H, v.shape[-1], q.shape[-1])


def decay_chunked(q, k, v, log_decay=None, *, initial_state=None, read_before=False,
                  chunk_size=64):
    """The decay family, chunked; returns `(o [B, T, H, V], final state [B, H, V, K])`.
    CUDA tensors go to the chunked Triton kernels where they cover the case."""
    kernel = chunked_kernel_for(q, "decay", _decay_kind(log_decay), read_before, chunk_size,
                                k.shape[-1], v.shape[-1])
    if kernel is not None:
        return kernel(q, k, v, None, log_decay, initial_state=initial_state,
                      chunk_size=chunk_size)
    return decay_chunked_torch(q, k, v, log_decay, initial_state=initial_state,
                               read_before=read_before, chunk_size=chunk_size)


def _decay_kind(log_decay) -> str:
    return "none" if log_decay is None else "scalar" if log_decay.dim() == 3 else "channel"


def decay_chunked_torch(q, k, v, log_decay=None, *, initial_state=None, read_before=False,
                        chunk_size=64):
    """`decay_chunked` in plain PyTorch (any device)."""
    T, q, k, v, g, ld = _prepare(q, k, v, log_decay, chunk_size)
    g_read = g - ld if read_before else g
    S = _initial(initial_state, q, v)
    outs = []
    for n in range(q.shape[2]):
        qn, kn, vn, gn, gr = q[:, :, n], k[:, :, n], v[:, :, n], g[:, :, n], g_read[:, :, n]
        inter = (qn * gr.exp()) @ S.mT
        intra = _scores(qn, kn, gr, gn, strict=read_before) @ vn
        outs.append(inter + intra)
        last = gn[..., -1:, :]
        S = S * last.exp() + vn.mT @ (kn * (last - gn).exp())
    o = _merge(torch.stack(outs, 2))[:, :T]
    return o, S


def delta_chunked(q, k, v, beta, log_decay=None, *, initial_state=None, read_before=False,
                  chunk_size=64):
    """The delta family (no, scalar or per-channel decay), chunked by the UT transform. CUDA
    tensors go to the chunked Triton kernels where they cover the case."""
    kernel = chunked_kernel_for(q, "delta", _decay_kind(log_decay), read_before, chunk_size,
                                k.shape[-1], v.shape[-1])
    if kernel is not None:
        return kernel(q, k, v, beta, log_decay, initial_state=initial_state,
                      chunk_size=chunk_size)
    return delta_chunked_torch(q, k, v, beta, log_decay, initial_state=initial_state,
                               read_before=read_before, chunk_size=chunk_size)


def delta_chunked_torch(q, k, v, beta, log_decay=None, *, initial_state=None,
                        read_before=False, chunk_size=64):
    """`delta_chunked` in plain PyTorch (any device)."""
    T, q, k, v, g, ld = _prepare(q, k, v, log_decay, chunk_size)
    b = _split(_pad(beta, q.shape[2] * chunk_size), chunk_size).unsqueeze(-1)  # [B,H,N,C,1]
    a = b * _scores(k, k, g, g, strict=True)
    inv = unit_lower_inverse(a)
    u = inv @ v
    w = inv @ (b * g.exp() * k)
    g_read = g - ld if read_before else g
    S = _initial(initial_state, q, v)
    outs = []
    for n in range(q.shape[2]):
        qn, kn, gn, gr = q[:, :, n], k[:, :, n], g[:, :, n], g_read[:, :, n]
        delta = u[:, :, n] - w[:, :, n] @ S.mT
        outs.append((qn * gr.exp()) @ S.mT + _scores(qn, kn, gr, gn, strict=read_before) @ delta)
        last = gn[..., -1:, :]
        S = S * last.exp() + delta.mT @ (kn * (last - gn).exp())
    o = _merge(torch.stack(outs, 2))[:, :T]
    return o, S


def dplr_chunked(q, k, v, a, b, log_decay=None, *, initial_state=None, read_before=False,
                 chunk_size=64):
    """The dplr family (S' = S (D + a b^T) + v k^T), chunked. CUDA tensors go to the chunked
    Triton kernels (runtime/library/chunk_dplr_triton.py) where they cover the case."""
    kind = _decay_kind(log_decay)
    kernel = chunked_kernel_for(q, "dplr", kind, read_before, chunk_size, k.shape[-1],
                                v.shape[-1])
    if kernel is not None:
        if kind == "scalar":  # the kernels take a log decay per key channel
            log_decay = log_decay.unsqueeze(-1).expand(*q.shape)
        return kernel(q, k, v, a, b, log_decay, initial_state=initial_state,
                      chunk_size=chunk_size)
    return dplr_chunked_torch(q, k, v, a, b, log_decay, initial_state=initial_state,
                              read_before=read_before, chunk_size=chunk_size)


def dplr_chunked_torch(q, k, v, a, b, log_decay=None, *, initial_state=None,
                       read_before=False, chunk_size=64):
    """`dplr_chunked` in plain PyTorch (any device); `a`, `b` are `[B, T, H, K]`."""
    T, q, k, v, g, _ = _prepare(q, k, v, log_decay, chunk_size)
    a, b = (_split(_pad(x, q.shape[2] * chunk_size), chunk_size) for x in (a, b))
    gx = F.pad(g, (0, 0, 1, 0))[..., :-1, :]  # up to the token before; g - ld would round
    t_inv = unit_lower_inverse(-_scores(a, b, gx, g, strict=True))
    u0 = t_inv @ (_scores(a, k, gx, g, strict=True) @ v)
    w = t_inv @ (a * gx.exp())
    g_read = gx if read_before else g
    S = _initial(initial_state, q, v)
    outs = []
    for n in range(q.shape[2]):
        qn, kn, vn, bn, gn, gr = (x[:, :, n] for x in (q, k, v, b, g, g_read))
        u = u0[:, :, n] + w[:, :, n] @ S.mT
        outs.append((qn * gr.exp()) @ S.mT + _scores(qn, kn, gr, gn, strict=read_before) @ vn
                    + _scores(qn, bn, gr, gn, strict=read_before) @ u)
        fade = (gn[..., -1:, :] - gn).exp()
        S = S * gn[..., -1:, :].exp() + u.mT @ (bn * fade) + vn.mT @ (kn * fade)
    o = _merge(torch.stack(outs, 2))[:, :T]
    return o, S
