"""Chunked Triton kernels, forward and backward, for the delta rule with a decay per key
channel (Kimi Delta Attention; Kimi Team, arXiv:2510.26692, 2025, in our convention):

    S_t = S_{t-1} diag(a_t) (I - b_t k_t k_t^T) + v_t k_t^T,   o_t = S_t q_t,   S: [V, K]

The algorithm is runtime/library/chunked.py's `delta_chunked_torch`. In a chunk, g is the
cumulative log decay per channel ([C, K]), G its last row, S the state at the chunk's start:

  scores (per chunk):   P[t, s] = sum_c q_tc k_sc e^{g_tc - g_sc}  (s <= t)
                        A[t, s] = b_t sum_c k_tc k_sc e^{g_tc - g_sc}  (s < t)
  prepare (per chunk):  T = (I + A)^-1,  W = T diag(b) (K * e^g),  U = T V
  states (sequential):  Delta = U - W S^T,  S' = S diag(e^G) + Delta^T (K * e^{G - g})
  output (per chunk):   O = (Q * e^g) S^T + P Delta

P and the keys' own scores are GLA's decayed scores (chunk_decay_triton.py's
`_scores_kernel`, which factors off-diagonal blocks of 16 through a block end so no
exponential exceeds 1, and sums diagonal blocks exactly); T comes from chunk_inverse_triton.py's
block inverse. The forward saves one state per chunk, W, Delta, T and the score matrices, no
per-token state; the backward runs dDelta's in-chunk part and dP (chunk_decay_triton's
`_dscores_kernel`), the state gradients chunk after chunk (recomputing nothing: the chunk-start
states are saved), then per chunk the key side in two kernels (the sums over V with dv, then
per key block dW, dT, dA, dbeta: one kernel spilled), and the scores'
gradients by `_intra_grads_kernel`. P and the keys' scores share their columns and decays, so
each score kernel runs once on the pair (rows q and k). Log decays are clamped at
LOG_DECAY_FLOOR, so decays of exactly 0 stay finite, forward and backward."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from nlc.runtime.library.chunk_decay_triton import (
    ROWS,
    _cumsum_kernel,
    _g_rows,
    _last_g,
    _output_kernel,
    _put,
    _rows,
    chunk_channel,
    launch_dscores,
    launch_intra_grads,
    launch_scores,
)
from nlc.runtime.library.chunk_inverse_triton import _solve_kernel
from nlc.runtime.library.chunk_state_triton import _carried, _state_block, _tokens
from nlc.runtime.library.chunk_triton import (
    LOG_DECAY_FLOOR,
    boundaries,
    check_dims,
    check_inputs,
    chunk_table,
    compute_dtype,
    dot_precision,
    pow2,
    state_launch,
)


@triton.jit
def _chunk_square(i_c, i_h, H: tl.constexpr, BT: tl.constexpr):
    """Offsets of a chunk's [BT, BT] matrix."""
    rows = tl.arange(0, BT)
    return ((i_c * H + i_h) * BT + rows[:, None]) * BT + rows[None, :]


# --------------------------------------------------------------------------- forward
@triton.jit
def _ut_matrix_kernel(kk, beta, akk, starts, ends, H: tl.constexpr, BT: tl.constexpr):
    """Per (chunk, head): A = strict_lower(diag(b) KK), KK the keys' decayed scores."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    rows = tl.arange(0, BT)
    tok = bos + rows
    b_b = tl.load(beta + tok * H + i_h, mask=tok < eos, other=0.0).to(tl.float32)
    p = _chunk_square(i_c, i_h, H, BT)
    b_A = tl.load(kk + p) * b_b[:, None]
    tl.store(akk + p, tl.where(rows[:, None] > rows[None, :], b_A, 0.0))


@triton.jit
def _wu_kernel(k, v, beta, gc, tinv, w, u, starts, ends,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
               BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """Per (chunk, head): W = T diag(b) (K * e^g) and U = T V (V in blocks of BV)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    rows = tl.arange(0, BT)
    tok = bos + rows
    m_t = tok < eos
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    b_G = _last_g(gc, bos, eos, i_h, o_k, m_k, H, K, BT)
    b_g = _g_rows(gc, tok, m_t, b_G, i_h, o_k, m_k, H, K)
    b_T = tl.load(tinv + _chunk_square(i_c, i_h, H, BT))
    b_k = _rows(k, tok, m_t, i_h, o_k, m_k, H, K)
    b_b = tl.load(beta + tok * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    b_x = (b_k.to(tl.float32) * tl.exp(b_g) * b_b[:, None]).to(b_k.dtype)
    b_w = tl.dot(b_T.to(b_k.dtype), b_x, input_precision=PREC)
    tl.store(w + (tok * H + i_h)[:, None] * K + o_k[None, :], b_w.to(w.dtype.element_ty),
             mask=m_t[:, None] & m_k[None, :])
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        p_tv = (tok * H + i_h)[:, None] * V + o_v[None, :]
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.0)
        b_u = tl.dot(b_T.to(b_v.dtype), b_v, input_precision=PREC)
        tl.store(u + p_tv, b_u.to(u.dtype.element_ty), mask=m_tv)


@triton.jit
def _states_kernel(k, u, w, gc, h, delta, h0, ht, k2, v2, bounds, offsets,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr,
                   TWO: tl.constexpr, PREC: tl.constexpr):
    """Per (V block, sequence, head), chunk after chunk: the state at each chunk's start (h),
    the chunk's Delta = U - W S^T, and the final state; TWO adds a second input term
    V2^T (K2 * e^{G - g}) to each chunk's end state (the dplr family's v k^T)."""
    i_s, i_h, o_k, o_v, m_k, m_v, m_vk, p_state = _state_block(H, K, V, BK, BV, 1)
    first, last = tl.load(offsets + i_s), tl.load(offsets + i_s + 1)
    seq_bos, eos = tl.load(bounds + i_s), tl.load(bounds + i_s + 1)
    b_S = _carried(h0, p_state, m_vk, HAS_H0, BV, BK)
    rows = tl.arange(0, BT)
    for i_c in range(first, last):
        tl.store(h + ((i_c * H + i_h) * V + o_v[:, None]) * K + o_k[None, :],
                 b_S.to(h.dtype.element_ty), mask=m_vk)
        bos = seq_bos + (i_c - first) * BT
        tok = bos + rows
        m_t = tok < eos
        m_tv = m_t[:, None] & m_v[None, :]
        b_k = _rows(k, tok, m_t, i_h, o_k, m_k, H, K)
        b_w = _rows(w, tok, m_t, i_h, o_k, m_k, H, K)
        p_tv = (tok * H + i_h)[:, None] * V + o_v[None, :]
        b_d = tl.load(u + p_tv, mask=m_tv, other=0.0).to(tl.float32)
        b_d -= tl.dot(b_w, tl.trans(b_S.to(b_w.dtype)), input_precision=PREC)
        tl.store(delta + p_tv, b_d.to(delta.dtype.element_ty), mask=m_tv)
        b_G = _last_g(gc, bos, eos, i_h, o_k, m_k, H, K, BT)
        b_g = _g_rows(gc, tok, m_t, b_G, i_h, o_k, m_k, H, K)
        b_kd = (b_k.to(tl.float32) * tl.exp(b_G[None, :] - b_g)).to(b_k.dtype)
        b_S = b_S * tl.exp(b_G)[None, :] + tl.dot(tl.trans(b_d.to(b_k.dtype)), b_kd,
                                                  input_precision=PREC)
        if TWO:
            b_k2 = _rows(k2, tok, m_t, i_h, o_k, m_k, H, K)
            b_v2 = tl.load(v2 + p_tv, mask=m_tv, other=0.0)
            b_k2d = (b_k2.to(tl.float32) * tl.exp(b_G[None, :] - b_g)).to(b_k2.dtype)
            b_S += tl.dot(tl.trans(b_v2), b_k2d, input_precision=PREC)
    tl.store(ht + p_state, b_S, mask=m_vk)


# --------------------------------------------------------------------------- backward
@triton.jit
def _state_grads_kernel(q, k, w, do, gc, dd, dh, dht, dh0, bounds, offsets,
                        H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, HAS_DHT: tl.constexpr,
                        PREC: tl.constexpr):
    """Per (V block, sequence, head), chunks in reverse: dS' of each chunk (dh), dDelta's
    state part (added to dd), and the initial state's gradient:
    dDelta += (K * e^{G-g}) dS'^T,  dS = dS' diag(e^G) + dO^T (Q * e^g) - dDelta^T W."""
    i_s, i_h, o_k, o_v, m_k, m_v, m_vk, p_state = _state_block(H, K, V, BK, BV, 1)
    first, last = tl.load(offsets + i_s), tl.load(offsets + i_s + 1)
    seq_bos, eos = tl.load(bounds + i_s), tl.load(bounds + i_s + 1)
    b_dS = _carried(dht, p_state, m_vk, HAS_DHT, BV, BK)
    rows = tl.arange(0, BT)
    for j in range(first, last):
        i_c = last - 1 - (j - first)
        tl.store(dh + ((i_c * H + i_h) * V + o_v[:, None]) * K + o_k[None, :], b_dS,
                 mask=m_vk)
        bos = seq_bos + (i_c - first) * BT
        tok = bos + rows
        m_t = tok < eos
        m_tv = m_t[:, None] & m_v[None, :]
        b_G = _last_g(gc, bos, eos, i_h, o_k, m_k, H, K, BT)
        b_g = _g_rows(gc, tok, m_t, b_G, i_h, o_k, m_k, H, K)
        b_q = _rows(q, tok, m_t, i_h, o_k, m_k, H, K)
        b_k = _rows(k, tok, m_t, i_h, o_k, m_k, H, K)
        b_w = _rows(w, tok, m_t, i_h, o_k, m_k, H, K)
        p_tv = (tok * H + i_h)[:, None] * V + o_v[None, :]
        b_do = tl.load(do + p_tv, mask=m_tv, other=0.0)
        b_kd = (b_k.to(tl.float32) * tl.exp(b_G[None, :] - b_g)).to(b_k.dtype)
        b_dd = tl.load(dd + p_tv, mask=m_tv, other=0.0) + tl.dot(
            b_kd, tl.trans(b_dS.to(b_k.dtype)), input_precision=PREC)
        tl.store(dd + p_tv, b_dd, mask=m_tv)
        b_qg = (b_q.to(tl.float32) * tl.exp(b_g)).to(b_q.dtype)
        b_dS = b_dS * tl.exp(b_G)[None, :] + tl.dot(tl.trans(b_do), b_qg, input_precision=PREC)
        b_dS -= tl.dot(tl.trans(b_dd.to(b_w.dtype)), b_w, input_precision=PREC)
    tl.store(dh0 + p_state, b_dS, mask=m_vk)


@triton.jit
def _value_sums_kernel(v, h, delta, tinv, do, dd, dh, dv, dqs, dks, dws, dts, dgs, starts, ends,
                       H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """Per (chunk, head), V walked in blocks of BV: dv = T^T dDelta, and the sums over V that
    `_key_grads_kernel` finishes, in float32: dO S, Delta dS', -dDelta S ([N, H, K] each),
    dDelta V^T ([BT, BT] a chunk) and the column sums of dS' * S ([K] a chunk). Two kernels,
    not one: the end's tiles spilled when they shared a kernel with these sums."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    tok, m_t = _tokens(tl.load(starts + i_c), tl.load(ends + i_c), BT)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    p_sq = _chunk_square(i_c, i_h, H, BT)
    b_T = tl.load(tinv + p_sq)
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)   # dO S
    b_dks = tl.zeros([BT, BK], dtype=tl.float32)  # Delta dS'
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)   # dW = -dDelta S
    b_dT = tl.zeros([BT, BT], dtype=tl.float32)   # dU V^T
    b_dGs = tl.zeros([BK], dtype=tl.float32)      # column sums of dS' * S
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        m_vk = m_v[:, None] & m_k[None, :]
        p_tv = (tok * H + i_h)[:, None] * V + o_v[None, :]
        p_vk = ((i_c * H + i_h) * V + o_v[:, None]) * K + o_k[None, :]
        b_S = tl.load(h + p_vk, mask=m_vk, other=0.0)
        b_dSe = tl.load(dh + p_vk, mask=m_vk, other=0.0)
        b_do = tl.load(do + p_tv, mask=m_tv, other=0.0)
        b_dd = tl.load(dd + p_tv, mask=m_tv, other=0.0)
        b_d = tl.load(delta + p_tv, mask=m_tv, other=0.0)
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.0)
        b_dq += tl.dot(b_do, b_S.to(b_do.dtype), input_precision=PREC)
        b_dks += tl.dot(b_d.to(tl.float32), b_dSe, input_precision=PREC)
        b_dGs += tl.sum(b_dSe * b_S.to(tl.float32), 0)
        b_dw -= tl.dot(b_dd, b_S.to(tl.float32), input_precision=PREC)
        b_dT += tl.dot(b_dd, tl.trans(b_v.to(tl.float32)), input_precision=PREC)
        b_dv = tl.dot(tl.trans(b_T), b_dd, input_precision=PREC)
        tl.store(dv + p_tv, b_dv.to(dv.dtype.element_ty), mask=m_tv)
    _put(dqs, b_dq, tok, m_t, i_h, o_k, m_k, H, K, False)
    _put(dks, b_dks, tok, m_t, i_h, o_k, m_k, H, K, False)
    _put(dws, b_dw, tok, m_t, i_h, o_k, m_k, H, K, False)
    tl.store(dts + p_sq, b_dT)
    tl.store(dgs + (i_c * H + i_h) * K + o_k, b_dGs, mask=m_k)


@triton.jit
def _key_grads_kernel(q, k, beta, gc, tinv, kk, dqs, dks, dws, dts, dgs, dkk, dqp, dkp, dgp,
                      dbeta, starts, ends, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                      BK: tl.constexpr, PREC: tl.constexpr):
    """Per (chunk, head), from `_value_sums_kernel`'s sums, K walked in blocks of BK (every
    step is per key channel but dT and dbeta's sums over K): dbeta, the gradient of the keys'
    scores dKK = diag(b) strict_lower(-T^T dT T^T) (for `_intra_grads_kernel`), and every part
    of dq, dk and the cumulative log decays' gradient dg that does not come from the scores:
    the read of S, the end state, and W."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos, eos = tl.load(starts + i_c), tl.load(ends + i_c)
    tok, m_t = _tokens(bos, eos, BT)
    rows = tl.arange(0, BT)
    last = tl.minimum(bos + BT, eos) - 1 - bos
    p_sq = _chunk_square(i_c, i_h, H, BT)
    b_T = tl.load(tinv + p_sq)
    b_b = tl.load(beta + tok * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    b_dT = tl.load(dts + p_sq)
    b_db = tl.zeros([BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        p_tk = (tok * H + i_h)[:, None] * K + o_k[None, :]
        b_G = _last_g(gc, bos, eos, i_h, o_k, m_k, H, K, BT)
        b_g = _g_rows(gc, tok, m_t, b_G, i_h, o_k, m_k, H, K)
        kf = _rows(k, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32)
        eg = tl.exp(b_g)
        # W = T X with X = diag(b) (K * e^g)
        b_x = kf * eg * b_b[:, None]
        b_dw = tl.load(dws + p_tk, mask=m_tk, other=0.0)
        b_dT += tl.dot(b_dw, tl.trans(b_x), input_precision=PREC)
        b_dx = tl.dot(tl.trans(b_T), b_dw, input_precision=PREC)
        b_dk = b_dx * eg * b_b[:, None]
        b_db += tl.sum(b_dx * kf * eg, 1)
        b_dg = b_dx * b_x
        # the read of the chunk-start state: O += (Q * e^g) S^T
        b_dq = tl.load(dqs + p_tk, mask=m_tk, other=0.0) * eg
        tl.store(dqp + p_tk, b_dq, mask=m_tk)
        b_dg += _rows(q, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32) * b_dq
        # the end state: S' = S diag(e^G) + Delta^T (K * e^{G - g})
        b_dke = tl.load(dks + p_tk, mask=m_tk, other=0.0) * tl.exp(b_G[None, :] - b_g)
        b_dg -= kf * b_dke
        b_dG = tl.exp(b_G) * tl.load(dgs + (i_c * H + i_h) * K + o_k, mask=m_k, other=0.0)
        b_dG += tl.sum(kf * b_dke, 0)
        b_dg += tl.where(rows[:, None] == last, b_dG[None, :], 0.0)
        tl.store(dkp + p_tk, b_dk + b_dke, mask=m_tk)
        tl.store(dgp + p_tk, b_dg, mask=m_tk)
    # T = (I + A)^-1: dA = -T^T dT T^T, strictly lower; A = diag(b) strict_lower(KK)
    b_dA = -tl.dot(tl.dot(tl.trans(b_T), b_dT, input_precision=PREC), tl.trans(b_T),
                   input_precision=PREC)
    b_dA = tl.where(rows[:, None] > rows[None, :], b_dA, 0.0)
    b_db += tl.sum(b_dA * tl.load(kk + p_sq), 1)
    tl.store(dkk + p_sq, b_dA * b_b[:, None])
    tl.store(dbeta + tok * H + i_h, b_db, mask=m_t)


@triton.jit
def _combine_kernel(q, k, ld, dqp, dkp, dgp, dqi, dkr, dkc, dq, dk, dld, starts, ends,
                    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                    FLOOR: tl.constexpr):
    """Per (chunk, head): dq and dk, the scores' parts added (dqi from P's rows, dkr from the
    keys' scores' rows, dkc from both matrices' columns), and dg summed back into the log
    decays' gradient:
    a score x_t . y_s e^{g_t - g_s} gives dg_t += x_t * dx_t, dg_s -= y_s * dy_s."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    rows = tl.arange(0, BT)
    tok = bos + rows
    m_t = tok < eos
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    qf = _rows(q, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32)
    kf = _rows(k, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32)
    b_dqi = _rows(dqi, tok, m_t, i_h, o_k, m_k, H, K)
    b_dkr = _rows(dkr, tok, m_t, i_h, o_k, m_k, H, K)
    b_dkc = _rows(dkc, tok, m_t, i_h, o_k, m_k, H, K)
    b_dq = _rows(dqp, tok, m_t, i_h, o_k, m_k, H, K) + b_dqi
    b_dk = _rows(dkp, tok, m_t, i_h, o_k, m_k, H, K) + b_dkr + b_dkc
    b_dg = _rows(dgp, tok, m_t, i_h, o_k, m_k, H, K) + qf * b_dqi + kf * (b_dkr - b_dkc)
    b_dg = tl.where(m_t[:, None], b_dg, 0.0)
    b_dld = tl.sum(b_dg, 0)[None, :] - tl.cumsum(b_dg, 0) + b_dg  # reversed cumulative sum
    b_ld = _rows(ld, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32)
    b_dld = tl.where(b_ld >= FLOOR, b_dld, 0.0)  # the clamp's gradient
    p_tk = (tok * H + i_h)[:, None] * K + o_k[None, :]
    tl.store(dq + p_tk, b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + p_tk, b_dk.to(dk.dtype.element_ty), mask=m_tk)
    tl.store(dld + p_tk, b_dld, mask=m_tk)


# --------------------------------------------------------------------------- host side
# the key side's backward kernels' steps (at K = V = 128 and 8 warps, the largest without
# spills: benchmarks/kernel_resources.py)
SUMS_BLOCK = 16  # `_value_sums_kernel`'s value channels a step
KEY_BLOCK = 32   # `_key_grads_kernel`'s key channels a step


def _sizes(k, v, table):
    N, H, K = k.shape
    V = v.shape[-1]
    BV = min(pow2(V), 64)
    return N, H, K, V, pow2(K), BV, state_launch(BV, table.sequences * H)


def _forward(q, k, v, beta, ld, h0, table, BT):
    N, H, K, V, BK, BV, (BVs, warps) = _sizes(k, v, table)
    prec = dot_precision(q.dtype)
    NC, S = table.chunks, table.sequences
    f32 = {"dtype": torch.float32, "device": q.device}
    rows = {"starts": table.starts, "ends": table.ends}
    gc = torch.empty(N, H, K, **f32)
    _cumsum_kernel[(NC, H)](ld, gc, **rows, H=H, K=K, BT=BT, BK=BK, FLOOR=LOG_DECAY_FLOOR,
                            num_warps=4)
    scores = torch.zeros(NC, H, BT, BT, **f32)  # P (zeroed: only lower blocks are written)
    kk = torch.zeros(NC, H, BT, BT, **f32)      # the keys' decayed scores
    launch_scores((NC, H), q, k, gc, gc, scores, **rows, H=H, K=K, BT=BT, BK=BK,
                  STRICT=False, PREC=prec, q2=k, amat2=kk, PAIR=ROWS)
    amat = torch.empty(NC, H, BT, BT, **f32)
    _ut_matrix_kernel[(NC, H)](kk, beta, amat, **rows, H=H, BT=BT, num_warps=4)
    tinv = torch.empty(NC, H, BT, BT, **f32)
    _solve_kernel[(NC, H)](amat, tinv, H=H, BT=BT, BATCHED=False, num_warps=1)
    w = torch.empty_like(k)
    u = torch.empty_like(v)
    _wu_kernel[(NC, H)](k, v, beta, gc, tinv, w, u, **rows, H=H, K=K, V=V, BT=BT, BK=BK,
                        BV=BV, PREC=prec, num_warps=4)
    h = torch.empty(NC, H, V, K, dtype=q.dtype, device=q.device)
    ht = torch.empty(S, H, V, K, **f32)
    d = torch.empty_like(v)
    _states_kernel[(triton.cdiv(V, BVs), S * H)](
        k, u, w, gc, h, d, h0, ht, None, None, table.bounds, table.offsets, H=H, K=K, V=V,
        BT=BT, BK=BK, BV=BVs, HAS_H0=h0 is not None, TWO=False, PREC=prec, num_warps=warps)
    o = torch.empty_like(v)
    _output_kernel[(triton.cdiv(V, BV), NC, H)](
        q, d, gc, h, scores, o, None, None, **rows, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
        TWO=False, PREC=prec, num_warps=4)
    return o, ht, (gc, scores, kk, tinv, w, d, h)


def _backward(q, k, v, beta, ld, saved, do, dht, table, BT):
    gc, scores, kk, tinv, w, d, h = saved
    N, H, K, V, BK, BV, (BVs, warps) = _sizes(k, v, table)
    prec = dot_precision(q.dtype)
    NC, S = table.chunks, table.sequences
    f32 = {"dtype": torch.float32, "device": q.device}
    rows = {"starts": table.starts, "ends": table.ends}
    dscores = torch.empty(NC, H, BT, BT, **f32)
    dd = torch.empty(N, H, V, **f32)  # dDelta: the in-chunk part, then the state part
    launch_dscores((NC, H), d, do, scores, dscores, dd, **rows, H=H, V=V, BT=BT,
                             BV=min(BV, 32), PREC=prec)
    dh = torch.empty(NC, H, V, K, **f32)
    dh0 = torch.empty(S, H, V, K, **f32)
    _state_grads_kernel[(triton.cdiv(V, BVs), S * H)](
        q, k, w, do, gc, dd, dh, dht, dh0, table.bounds, table.offsets, H=H, K=K, V=V,
        BT=BT, BK=BK, BV=BVs, HAS_DHT=dht is not None, PREC=prec, num_warps=warps)
    dv = torch.empty_like(v)
    dkk, dts = torch.empty(NC, H, BT, BT, **f32), torch.empty(NC, H, BT, BT, **f32)
    dgs = torch.empty(NC, H, K, **f32)
    dqs, dks, dws, dqp, dkp, dgp, dqi, dkr, dkc = (torch.empty(N, H, K, **f32)
                                                   for _ in range(9))
    dbeta = torch.empty(N, H, **f32)
    warps = 8 if BK >= 128 else 4
    _value_sums_kernel[(NC, H)](
        v, h, d, tinv, do, dd, dh, dv, dqs, dks, dws, dts, dgs, **rows, H=H, K=K, V=V, BT=BT,
        BK=BK, BV=min(BV, SUMS_BLOCK), PREC=prec, num_warps=warps)
    _key_grads_kernel[(NC, H)](
        q, k, beta, gc, tinv, kk, dqs, dks, dws, dts, dgs, dkk, dqp, dkp, dgp, dbeta, **rows,
        H=H, K=K, BT=BT, BK=min(BK, KEY_BLOCK), PREC=prec, num_warps=warps)
    launch_intra_grads((NC, H), q, k, gc, gc, dscores, dqi, dkc, **rows, H=H, K=K, BT=BT,
                       BK=BK, STRICT=False, ACC=False, PREC=prec, q2=k, damat2=dkk,
                       dqi2=dkr, PAIR=ROWS)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dld = torch.empty(N, H, K, **f32)
    _combine_kernel[(NC, H)](q, k, ld, dqp, dkp, dgp, dqi, dkr, dkc, dq, dk, dld,
                             **rows, H=H, K=K, BT=BT, BK=BK, FLOOR=LOG_DECAY_FLOOR,
                             num_warps=warps)
    return dq, dk, dv, dbeta, dld, dh0


class ChunkKDA(torch.autograd.Function):
    """Packed `[N, H, *]` tensors; see `chunk_kda`."""

    @staticmethod
    def forward(ctx, q, k, v, beta, ld, h0, bounds, chunk):
        table = chunk_table(bounds, chunk, q.device)
        o, ht, saved = _forward(q, k, v, beta, ld, h0, table, chunk)
        ctx.save_for_backward(q, k, v, beta, ld, *saved)
        ctx.meta = (table, chunk, h0.dtype if h0 is not None else None)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, ld, *saved = ctx.saved_tensors
        table, chunk, h0_dtype = ctx.meta
        dq, dk, dv, dbeta, dld, dh0 = _backward(
            q, k, v, beta, ld, saved, do.contiguous(),
            dht.contiguous() if dht is not None else None, table, chunk)
        return (dq, dk, dv, dbeta.to(beta.dtype), dld.to(ld.dtype),
                dh0.to(h0_dtype) if h0_dtype is not None else None, None, None)


def chunk_kda(q, k, v, beta=None, log_decay=None, *, initial_state=None, cu_seqlens=None,
              chunk_size=64):
    """The delta rule with a decay per key channel (Kimi Delta Attention), chunked on the GPU.

    q, k `[B, T, H, K]`, v `[B, T, H, V]`, beta `[B, T, H]`, log_decay `[B, T, H, K]`,
    initial_state `[B, H, V, K]` (or `[S, H, V, K]` for S packed sequences with
    `cu_seqlens`, B = 1). Without `beta` it is the decay family (`chunk_channel`). Returns
    `(o [B, T, H, V], final state float32)`."""
    if beta is None:
        return chunk_channel(q, k, v, None, log_decay, initial_state=initial_state,
                             cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    check_inputs(q, k, v, beta, log_decay, initial_state, cu_seqlens, channel=True)
    if log_decay is None:
        raise ValueError("chunk_kda needs log_decay [B, T, H, K]")
    B, T, H, K = q.shape
    V = v.shape[-1]
    check_dims(K, V, chunk_size)
    bounds = boundaries(B, T, cu_seqlens)
    dtype = compute_dtype(q)

    def packed(x, width):
        return x.to(dtype).reshape(B * T, H, width).contiguous()

    o, ht = ChunkKDA.apply(
        packed(q, K), packed(k, K), packed(v, V), beta.reshape(B * T, H).contiguous(),
        log_decay.reshape(B * T, H, K).contiguous(),
        None if initial_state is None else initial_state.contiguous(), bounds, chunk_size)
    return o.reshape(B, T, H, V), ht
