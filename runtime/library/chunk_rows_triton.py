"""Chunked Triton kernels, forward and backward, for the decay and delta families with a decay
per row (output channel) of the state (runtime/library/rows.py is the PyTorch form):

    S_t = Diag(a_t) S_{t-1} A_t + v_t k_t^T,   o_t = S_t q_t,   S: [V, K],  log a_t = `log_decay`
    A_t = I (decay) or I - b_t k_t k_t^T (delta);  a_t: [V], one decay per value channel.

The row decay multiplies from the left and A_t from the right, so they commute: the UT
transform is the ungated one (T = (I + A)^-1, A = strict_lower(b_t k_t.k_s); T = I for the
decay family), and the decay reaches the values only through ratios e^{g_t - g_r} per value
channel (g the cumulative log decays in the chunk, G its last row, S the chunk-start state):

  prepare (per chunk):  W = T diag(b) K,  Kt = T^T K,  P = lower(Q K^T),  M = P T,  Qw = Q - P W
  states (sequential):  S' = e^G * (S - (S W^T) K) + (e^{G - g} * V)^T Kt
  output (per chunk):   O = e^g * (Qw S^T) + R,   R[t, j] = sum_{r<=t} M[t, r] e^{g_tj - g_rj} V[r, j]

`*` scales value channels. R is chunk_decay_triton.py's intra-chunk product with the value
axis as its channel axis (`_intra_grads_kernel`, off-diagonal blocks of 16 factored through a
block end, diagonal blocks summed exactly), so no ratio exceeds 1 and nothing is divided.
The backward pass recomputes R and its transpose there, gets dM from `_scores_kernel` (dO and
V in q's and k's places), walks the state gradients back chunk by chunk
(dS = (e^g * dO)^T Qw + D - (D K^T) W, D = e^G * dS') and then every input's gradient per
chunk; it stores one state per chunk and the prepared W, Kt, Qw, M. Log decays are clamped at
LOG_DECAY_FLOOR: a decay of 0 is exact and finite, with a zero gradient."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from nlc.runtime.library.chunk_decay_triton import (
    _cumsum_kernel,
    _g_rows,
    _last_g,
    launch_intra_grads,
    launch_scores,
)
from nlc.runtime.library.chunk_delta_triton import _kkt_kernel
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
def _chunk_g(gc, bos, eos, tok, m_t, i_h, o_v, m_v, H: tl.constexpr, V: tl.constexpr,
             BT: tl.constexpr):
    """The value channels' cumulative log decays g `[BT, BV]` of a chunk (first token bos,
    its sequence's end eos, tokens `tok` with mask `m_t`), with their last valid row G."""
    b_G = _last_g(gc, bos, eos, i_h, o_v, m_v, H, V, BT)
    return _g_rows(gc, tok, m_t, b_G, i_h, o_v, m_v, H, V), b_G


# --------------------------------------------------------------------------- forward
@triton.jit
def _prepare_kernel(q, k, beta, tinv, w, kt, qw, mmat, starts, ends,
                    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                    DELTA: tl.constexpr, PREC: tl.constexpr):
    """Per (chunk, head): M = lower(Q K^T) T and, for delta, W = T diag(b) K, Kt = T^T K,
    Qw = Q - lower(Q K^T) W."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    rows = tl.arange(0, BT)
    tok = bos + rows
    m_t = tok < eos
    o_k = tl.arange(0, BK)
    m_tk = m_t[:, None] & (o_k < K)[None, :]
    p_tk = (tok * H + i_h)[:, None] * K + o_k[None, :]
    p_M = ((i_c * H + i_h) * BT + rows[:, None]) * BT + rows[None, :]
    b_q = tl.load(q + p_tk, mask=m_tk, other=0.0)
    b_k = tl.load(k + p_tk, mask=m_tk, other=0.0)
    b_P = tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    b_P = tl.where(rows[:, None] >= rows[None, :], b_P, 0.0)
    if DELTA:
        dt = b_k.dtype
        b_T = tl.load(tinv + p_M).to(dt)
        b_b = tl.load(beta + tok * H + i_h, mask=m_t, other=0.0).to(tl.float32)
        b_w = tl.dot(b_T, (b_k.to(tl.float32) * b_b[:, None]).to(dt), input_precision=PREC)
        b_kt = tl.dot(tl.trans(b_T), b_k, input_precision=PREC)
        b_qw = b_q.to(tl.float32) - tl.dot(b_P.to(dt), b_w.to(dt), input_precision=PREC)
        tl.store(w + p_tk, b_w.to(w.dtype.element_ty), mask=m_tk)
        tl.store(kt + p_tk, b_kt.to(kt.dtype.element_ty), mask=m_tk)
        tl.store(qw + p_tk, b_qw.to(qw.dtype.element_ty), mask=m_tk)
        tl.store(mmat + p_M, tl.dot(b_P.to(dt), b_T, input_precision=PREC))
    else:
        tl.store(mmat + p_M, b_P)


@triton.jit
def _states_kernel(k, v, w, kt, gc, h, h0, ht, starts, ends, offsets,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, DELTA: tl.constexpr,
                   HAS_H0: tl.constexpr, PREC: tl.constexpr):
    """Per (V block, sequence, head), chunk after chunk: the state at each chunk's start (h)
    and the final state, S' = e^G * (S - (S W^T) K) + (e^{G - g} * V)^T Kt."""
    i_s, i_h, o_k, o_v, m_k, m_v, m_vk, p_state = _state_block(H, K, V, BK, BV, 1)
    first, last = tl.load(offsets + i_s), tl.load(offsets + i_s + 1)
    b_S = _carried(h0, p_state, m_vk, HAS_H0, BV, BK)
    for i_c in range(first, last):
        tl.store(h + ((i_c * H + i_h) * V + o_v[:, None]) * K + o_k[None, :],
                 b_S.to(h.dtype.element_ty), mask=m_vk)
        bos, eos = tl.load(starts + i_c), tl.load(ends + i_c)
        tok, m_t = _tokens(bos, eos, BT)
        b_g, b_G = _chunk_g(gc, bos, eos, tok, m_t, i_h, o_v, m_v, H, V, BT)
        m_tk = m_t[:, None] & m_k[None, :]
        p_tk = (tok * H + i_h)[:, None] * K + o_k[None, :]
        b_k = tl.load(k + p_tk, mask=m_tk, other=0.0)
        dt = b_k.dtype
        b_v = tl.load(v + (tok * H + i_h)[:, None] * V + o_v[None, :],
                      mask=m_t[:, None] & m_v[None, :], other=0.0)
        if DELTA:
            b_w = tl.load(w + p_tk, mask=m_tk, other=0.0)
            b_kt = tl.load(kt + p_tk, mask=m_tk, other=0.0)
            b_R = tl.dot(b_S.to(dt), tl.trans(b_w), input_precision=PREC)  # S W^T
            b_kept = b_S - tl.dot(b_R.to(dt), b_k, input_precision=PREC)
        else:
            b_kt = b_k
            b_kept = b_S
        b_fv = (b_v.to(tl.float32) * tl.exp(b_G[None, :] - b_g)).to(dt)
        b_S = b_kept * tl.exp(b_G)[:, None] + tl.dot(tl.trans(b_fv), b_kt,
                                                      input_precision=PREC)
    tl.store(ht + p_state, b_S, mask=m_vk)


@triton.jit
def _output_kernel(qw, gc, h, intra, o, starts, ends,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """Per (V block, chunk, head): O = e^g * (Qw S^T) + R."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    bos, eos = tl.load(starts + i_c), tl.load(ends + i_c)
    tok, m_t = _tokens(bos, eos, BT)
    b_g, _ = _chunk_g(gc, bos, eos, tok, m_t, i_h, o_v, m_v, H, V, BT)
    m_tv = m_t[:, None] & m_v[None, :]
    b_qw = tl.load(qw + (tok * H + i_h)[:, None] * K + o_k[None, :],
                   mask=m_t[:, None] & m_k[None, :], other=0.0)
    b_S = tl.load(h + ((i_c * H + i_h) * V + o_v[:, None]) * K + o_k[None, :],
                  mask=m_v[:, None] & m_k[None, :], other=0.0)
    p_tv = (tok * H + i_h)[:, None] * V + o_v[None, :]
    b_o = tl.dot(b_qw, tl.trans(b_S.to(b_qw.dtype)), input_precision=PREC) * tl.exp(b_g)
    b_o += tl.load(intra + p_tv, mask=m_tv, other=0.0)
    tl.store(o + p_tv, b_o.to(o.dtype.element_ty), mask=m_tv)


# --------------------------------------------------------------------------- backward
@triton.jit
def _state_grads_kernel(qw, k, w, do, gc, dh, dht, dh0, starts, ends, offsets,
                        H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, DELTA: tl.constexpr,
                        HAS_DHT: tl.constexpr, PREC: tl.constexpr):
    """Per (V block, sequence, head), chunks in reverse: dS' of each chunk (dh) and the
    initial state's gradient, dS = (e^g * dO)^T Qw + D - (D K^T) W with D = e^G * dS'."""
    i_s, i_h, o_k, o_v, m_k, m_v, m_vk, p_state = _state_block(H, K, V, BK, BV, 1)
    first, last = tl.load(offsets + i_s), tl.load(offsets + i_s + 1)
    b_dS = _carried(dht, p_state, m_vk, HAS_DHT, BV, BK)
    for j in range(first, last):
        i_c = last - 1 - (j - first)
        tl.store(dh + ((i_c * H + i_h) * V + o_v[:, None]) * K + o_k[None, :], b_dS,
                 mask=m_vk)
        bos, eos = tl.load(starts + i_c), tl.load(ends + i_c)
        tok, m_t = _tokens(bos, eos, BT)
        b_g, b_G = _chunk_g(gc, bos, eos, tok, m_t, i_h, o_v, m_v, H, V, BT)
        m_tk = m_t[:, None] & m_k[None, :]
        p_tk = (tok * H + i_h)[:, None] * K + o_k[None, :]
        b_qw = tl.load(qw + p_tk, mask=m_tk, other=0.0)
        dt = b_qw.dtype
        b_do = tl.load(do + (tok * H + i_h)[:, None] * V + o_v[None, :],
                       mask=m_t[:, None] & m_v[None, :], other=0.0)
        b_D = b_dS * tl.exp(b_G)[:, None]
        b_z = (b_do.to(tl.float32) * tl.exp(b_g)).to(dt)
        b_dS = b_D + tl.dot(tl.trans(b_z), b_qw, input_precision=PREC)
        if DELTA:
            b_k = tl.load(k + p_tk, mask=m_tk, other=0.0)
            b_w = tl.load(w + p_tk, mask=m_tk, other=0.0)
            b_Dk = tl.dot(b_D.to(dt), tl.trans(b_k), input_precision=PREC)  # [BV, BT]
            b_dS -= tl.dot(b_Dk.to(dt), b_w, input_precision=PREC)
    tl.store(dh0 + p_state, b_dS, mask=m_vk)


@triton.jit
def _input_grads_kernel(q, k, v, beta, ld, gc, qw, w, kt, tinv, h, dh, do, intra, dvi, dmat,
                        dq, dk, dv, dbeta, dld, starts, ends,
                        H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, DELTA: tl.constexpr,
                        FLOOR: tl.constexpr, PREC: tl.constexpr):
    """Per (chunk, head): dv and the row log decays' gradient block by block of V (each value
    channel's decay is its own), while dQw, dKt, dW and the state's part of dk accumulate;
    then dq, dk and dbeta back through M = P T, Qw = Q - P W, Kt = T^T K, W = T diag(b) K and
    T = (I + A)^-1. Products take their operands in the inputs' dtype (dt)."""
    dt = q.dtype.element_ty
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    rows = tl.arange(0, BT)
    tok = bos + rows
    m_t = tok < eos
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p_tk = (tok * H + i_h)[:, None] * K + o_k[None, :]
    b_q = tl.load(q + p_tk, mask=m_tk, other=0.0)
    b_k = tl.load(k + p_tk, mask=m_tk, other=0.0)
    if DELTA:
        b_qw = tl.load(qw + p_tk, mask=m_tk, other=0.0)
        b_kt = tl.load(kt + p_tk, mask=m_tk, other=0.0)
        b_w = tl.load(w + p_tk, mask=m_tk, other=0.0)
    else:
        b_qw = b_q
        b_kt = b_k
    last = tl.minimum(bos + BT, eos) - 1 - bos
    b_dqw = tl.zeros([BT, BK], dtype=tl.float32)  # (e^g * dO) S
    b_dkt = tl.zeros([BT, BK], dtype=tl.float32)  # (e^{G-g} * V) dS'
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)   # -(W S^T) D
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)   # -K D^T S
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        m_vk = m_v[:, None] & m_k[None, :]
        p_tv = (tok * H + i_h)[:, None] * V + o_v[None, :]
        p_vk = ((i_c * H + i_h) * V + o_v[:, None]) * K + o_k[None, :]
        b_S = tl.load(h + p_vk, mask=m_vk, other=0.0).to(dt)
        b_dSe = tl.load(dh + p_vk, mask=m_vk, other=0.0)
        b_do = tl.load(do + p_tv, mask=m_tv, other=0.0).to(tl.float32)
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.0).to(tl.float32)
        b_g, b_G = _chunk_g(gc, bos, eos, tok, m_t, i_h, o_v, m_v, H, V, BT)
        b_E = tl.exp(b_g)
        b_fv = b_v * tl.exp(b_G[None, :] - b_g)
        b_D = b_dSe * tl.exp(b_G)[:, None]
        b_dqw += tl.dot((b_do * b_E).to(dt), b_S, input_precision=PREC)
        b_dkt += tl.dot(b_fv.to(dt), b_dSe.to(dt), input_precision=PREC)
        b_Y = tl.dot(b_kt, tl.trans(b_dSe.to(dt)), input_precision=PREC)  # Kt dS'^T
        b_vi = tl.load(dvi + p_tv, mask=m_tv, other=0.0)
        tl.store(dv + p_tv, (b_Y * tl.exp(b_G[None, :] - b_g) + b_vi).to(dv.dtype.element_ty),
                 mask=m_tv)
        b_c = b_fv * b_Y
        b_read = tl.dot(b_qw, tl.trans(b_S), input_precision=PREC) * b_E \
            + tl.load(intra + p_tv, mask=m_tv, other=0.0)
        b_dg = b_do * b_read - b_v * b_vi - b_c
        if DELTA:
            b_R = tl.dot(b_w, tl.trans(b_S), input_precision=PREC)  # W S^T
            b_kept = b_S.to(tl.float32) - tl.dot(tl.trans(b_R.to(dt)), b_k,
                                                 input_precision=PREC)
            b_dk -= tl.dot(b_R.to(dt), b_D.to(dt), input_precision=PREC)
            b_KD = tl.dot(b_k, tl.trans(b_D.to(dt)), input_precision=PREC)
            b_dw -= tl.dot(b_KD.to(dt), b_S, input_precision=PREC)
        else:
            b_kept = b_S.to(tl.float32)
        b_dG = tl.sum(b_D * b_kept, 1) + tl.sum(b_c, 0)
        b_dg += tl.where(rows[:, None] == last, b_dG[None, :], 0.0)
        b_dg = tl.where(m_t[:, None], b_dg, 0.0)
        b_dld = tl.sum(b_dg, 0)[None, :] - tl.cumsum(b_dg, 0) + b_dg  # reversed cumsum
        b_ld = tl.load(ld + p_tv, mask=m_tv, other=0.0).to(tl.float32)
        b_dld = tl.where(b_ld >= FLOOR, b_dld, 0.0)  # the clamp's gradient
        tl.store(dld + p_tv, b_dld, mask=m_tv)
    b_P = tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    b_P = tl.where(rows[:, None] >= rows[None, :], b_P, 0.0).to(dt)
    p_M = ((i_c * H + i_h) * BT + rows[:, None]) * BT + rows[None, :]
    b_dM = tl.load(dmat + p_M).to(dt)
    if DELTA:
        kf = b_k.to(tl.float32)
        b_b = tl.load(beta + tok * H + i_h, mask=m_t, other=0.0).to(tl.float32)
        b_T = tl.load(tinv + p_M).to(dt)
        b_dw -= tl.dot(tl.trans(b_P), b_dqw.to(dt), input_precision=PREC)
        b_dP = tl.dot(b_dM, tl.trans(b_T), input_precision=PREC) \
            - tl.dot(b_dqw.to(dt), tl.trans(b_w), input_precision=PREC)
        b_dT = tl.dot(tl.trans(b_P), b_dM, input_precision=PREC) \
            + tl.dot(b_k, tl.trans(b_dkt.to(dt)), input_precision=PREC) \
            + tl.dot(b_dw.to(dt), tl.trans((kf * b_b[:, None]).to(dt)), input_precision=PREC)
        b_dkb = tl.dot(tl.trans(b_T), b_dw.to(dt), input_precision=PREC)  # d(diag(b) K)
        b_dk += tl.dot(b_T, b_dkt.to(dt), input_precision=PREC) + b_dkb * b_b[:, None]
        b_db = tl.sum(b_dkb * kf, 1)
        # T = (I + A)^-1: dA = -T^T dT T^T, strictly lower; A = diag(b) strict_lower(K K^T)
        b_TdT = tl.dot(tl.trans(b_T), b_dT.to(dt), input_precision=PREC)
        b_dA = -tl.dot(b_TdT.to(dt), tl.trans(b_T), input_precision=PREC)
        b_dA = tl.where(rows[:, None] > rows[None, :], b_dA, 0.0)
        b_db += tl.sum(b_dA * tl.dot(b_k, tl.trans(b_k), input_precision=PREC), 1)
        b_dKK = (b_dA * b_b[:, None]).to(dt)
        b_dk += tl.dot(b_dKK, b_k, input_precision=PREC) \
            + tl.dot(tl.trans(b_dKK), b_k, input_precision=PREC)
        tl.store(dbeta + tok * H + i_h, b_db, mask=m_t)
    else:
        b_dP = b_dM.to(tl.float32)
        b_dk += b_dkt
    b_dP = tl.where(rows[:, None] >= rows[None, :], b_dP, 0.0).to(dt)
    b_dq = b_dqw + tl.dot(b_dP, b_k, input_precision=PREC)
    b_dk += tl.dot(tl.trans(b_dP), b_q, input_precision=PREC)
    tl.store(dq + p_tk, b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + p_tk, b_dk.to(dk.dtype.element_ty), mask=m_tk)


# --------------------------------------------------------------------------- host side
# Blocks: keys whole (BK = K rounded up to a power of two), values in blocks of BV = 64 for
# the output kernel (V up to 256 runs in several programs) and 32 for the input-gradient
# kernel, whose four [BT, BK] float32 accumulators already hold 128 KiB at BT = 64,
# BK = 128; the intra-chunk products take the value axis whole, in row blocks of 16.
def _tiles(K: int, V: int) -> tuple[int, int, int]:
    return pow2(K), min(pow2(V), 64), pow2(V)


def _stages(q) -> int:
    """Pipeline stages of the sequential state kernels, which load three [BT, BK] key tiles
    per chunk: 48 KiB a stage in bf16 at BT = 64, BK = 128, 96 KiB in float32, so two
    stages (about 110 KiB of shared memory) for half precision and one for float32."""
    return 1 if q.dtype == torch.float32 else 2


def _forward(q, k, v, beta, ld, h0, table, BT, delta_rule):
    N, H, K = k.shape
    V = v.shape[-1]
    BK, BV, BVW = _tiles(K, V)
    prec = dot_precision(q.dtype)
    f32 = {"dtype": torch.float32, "device": q.device}
    NC, S = table.chunks, table.sequences
    rows = {"starts": table.starts, "ends": table.ends}
    gc = torch.empty(N, H, V, **f32)
    _cumsum_kernel[(NC, H)](ld, gc, **rows, H=H, K=V, BT=BT, BK=BVW, FLOOR=LOG_DECAY_FLOOR,
                            num_warps=4)
    mmat = torch.empty(NC, H, BT, BT, **f32)
    tinv = w = kt = None
    qw = q
    if delta_rule:
        amat = torch.empty(NC, H, BT, BT, **f32)
        _kkt_kernel[(NC, H)](k, beta, None, torch.empty(N, H, **f32), amat, **rows, H=H, K=K,
                             BT=BT, BK=BK, HAS_G=False, DELTA=True, FLOOR=LOG_DECAY_FLOOR,
                             PREC=prec, num_warps=4)
        tinv = torch.empty(NC, H, BT, BT, **f32)
        _solve_kernel[(NC, H)](amat, tinv, H=H, BT=BT, BATCHED=False, num_warps=1)
        w, kt, qw = torch.empty_like(k), torch.empty_like(k), torch.empty_like(q)
    _prepare_kernel[(NC, H)](q, k, beta, tinv, w, kt, qw, mmat, **rows, H=H, K=K, BT=BT,
                             BK=BK, DELTA=delta_rule, PREC=prec,
                             num_warps=8 if BK >= 128 else 4)  # 480 -> 128 B spilled
    intra = torch.empty(N, H, V, **f32)
    launch_intra_grads((NC, H), v, v, gc, gc, mmat, intra, None, **rows, H=H, K=V, BT=BT,
                       BK=BVW, STRICT=False, ACC=False, PREC=prec, ROWS_ONLY=True)
    h = torch.empty(NC, H, V, K, dtype=q.dtype, device=q.device)
    ht = torch.empty(S, H, V, K, **f32)
    BVs, warps = state_launch(BV, S * H)
    _states_kernel[(triton.cdiv(V, BVs), S * H)](
        k, v, w, kt, gc, h, h0, ht, **rows, offsets=table.offsets, H=H, K=K, V=V, BT=BT,
        BK=BK, BV=BVs, DELTA=delta_rule, HAS_H0=h0 is not None, PREC=prec, num_warps=warps,
        num_stages=_stages(q))
    o = torch.empty_like(v)
    _output_kernel[(triton.cdiv(V, BV), NC, H)](
        qw, gc, h, intra, o, **rows, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, PREC=prec,
        num_warps=4)
    return o, ht, (gc, tinv, w, kt, qw, mmat, h)


def _backward(q, k, v, beta, ld, saved, do, dht, table, BT, delta_rule):
    gc, tinv, w, kt, qw, mmat, h = saved
    N, H, K = k.shape
    V = v.shape[-1]
    BK, BV, BVW = _tiles(K, V)
    prec = dot_precision(q.dtype)
    f32 = {"dtype": torch.float32, "device": q.device}
    NC, S = table.chunks, table.sequences
    rows = {"starts": table.starts, "ends": table.ends}
    dmat = torch.zeros(NC, H, BT, BT, **f32)  # its upper blocks stay 0
    launch_scores((NC, H), do, v, gc, gc, dmat, **rows, H=H, K=V, BT=BT, BK=BVW,
                  STRICT=False, PREC=prec)
    intra, dvi = torch.empty(N, H, V, **f32), torch.empty(N, H, V, **f32)
    launch_intra_grads((NC, H), do, v, gc, gc, mmat, intra, dvi, **rows, H=H, K=V, BT=BT,
                       BK=BVW, STRICT=False, ACC=False, PREC=prec)
    dh = torch.empty(NC, H, V, K, **f32)
    dh0 = torch.empty(S, H, V, K, **f32)
    BVs, warps = state_launch(BV, S * H)
    _state_grads_kernel[(triton.cdiv(V, BVs), S * H)](
        qw, k, w, do, gc, dh, dht, dh0, **rows, offsets=table.offsets, H=H, K=K, V=V, BT=BT,
        BK=BK, BV=BVs, DELTA=delta_rule, HAS_DHT=dht is not None, PREC=prec,
        num_warps=warps, num_stages=_stages(q))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dbeta = torch.empty(N, H, **f32) if delta_rule else None
    dld = torch.empty(N, H, V, **f32)
    _input_grads_kernel[(NC, H)](
        q, k, v, beta, ld, gc, qw, w, kt, tinv, h, dh, do, intra, dvi, dmat,
        dq, dk, dv, dbeta, dld, **rows, H=H, K=K, V=V, BT=BT, BK=BK, BV=min(BV, 32),
        DELTA=delta_rule, FLOOR=LOG_DECAY_FLOOR, PREC=prec, num_stages=1,
        num_warps=8 if BK >= 128 else 4)
    return dq, dk, dv, dbeta, dld, dh0


class ChunkRowDecay(torch.autograd.Function):
    """Packed `[N, H, *]` tensors; see `chunk_rows`."""

    @staticmethod
    def forward(ctx, q, k, v, beta, ld, h0, bounds, chunk, delta_rule):
        table = chunk_table(bounds, chunk, q.device)
        o, ht, saved = _forward(q, k, v, beta, ld, h0, table, chunk, delta_rule)
        ctx.save_for_backward(q, k, v, beta, ld, *saved)
        ctx.meta = (table, chunk, delta_rule, h0.dtype if h0 is not None else None)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, ld, *saved = ctx.saved_tensors
        table, chunk, delta_rule, h0_dtype = ctx.meta
        dq, dk, dv, dbeta, dld, dh0 = _backward(
            q, k, v, beta, ld, saved, do.contiguous(),
            dht.contiguous() if dht is not None else None, table, chunk, delta_rule)
        return (dq, dk, dv, dbeta.to(beta.dtype) if dbeta is not None else None,
                dld.to(ld.dtype), dh0.to(h0_dtype) if h0_dtype is not None else None,
                None, None, None)


def chunk_rows(q, k, v, beta=None, log_decay=None, *, initial_state=None, cu_seqlens=None,
               chunk_size=64):
    """The delta rule (with `beta`) or the decay family (without) with a decay per value
    channel, chunked on the GPU.

    q, k `[B, T, H, K]`, v `[B, T, H, V]`, beta `[B, T, H]` or None, log_decay `[B, T, H, V]`,
    initial_state `[B, H, V, K]` (or `[S, H, V, K]` for S packed sequences with `cu_seqlens`,
    B = 1). Returns `(o [B, T, H, V], final state [., H, V, K] float32)`."""
    if log_decay is None:
        raise ValueError("chunk_rows needs log_decay [B, T, H, V] (no row decay: chunk_scalar)")
    check_inputs(q, k, v, beta, log_decay, initial_state, cu_seqlens, channel=False, rows=True)
    B, T, H, K = q.shape
    V = v.shape[-1]
    check_dims(K, V, chunk_size)
    bounds = boundaries(B, T, cu_seqlens)
    dtype = compute_dtype(q)

    def packed(x, width):
        return x.to(dtype).reshape(B * T, H, width).contiguous()

    o, ht = ChunkRowDecay.apply(
        packed(q, K), packed(k, K), packed(v, V),
        None if beta is None else beta.reshape(B * T, H).contiguous(),
        log_decay.reshape(B * T, H, V).contiguous(),
        None if initial_state is None else initial_state.contiguous(), bounds, chunk_size,
        beta is not None)
    return o.reshape(B, T, H, V), ht
