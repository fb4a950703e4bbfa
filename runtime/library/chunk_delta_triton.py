"""Chunked Triton kernels, forward and backward, for a scalar (or no) decay per head and token:

    delta:  S_t = a_t S_{t-1} (I - b_t k_t k_t^T) + v_t k_t^T     (DeltaNet, Gated DeltaNet)
    decay:  S_t = a_t S_{t-1} + v_t k_t^T                         (linear attention, Mamba2)
    o_t = S_t q_t,  S: [V, K] (rows are the value axis), log a_t = `log_decay`.

The algorithm is runtime/library/chunked.py's (the UT transform inside a chunk of C tokens,
the state passed from chunk to chunk), laid out for tensor cores. g is the cumulative log
decay inside a chunk, G its last entry, S the state at the chunk's start,
Gamma[t, s] = e^{g_t - g_s} (s <= t).

  prepare (per chunk):  A = strict_lower(b_t Gamma[t, s] k_t.k_s),  T = (I + A)^-1 (by
                        blocks of 16; A kept in registers, one kernel),
                        W = T diag(b e^g) K,  U = T V          (delta only)
  states (sequential):  Delta = U - W S^T (V for decay),  S' = e^G S + Delta^T diag(e^{G-g}) K
  output (per chunk):   O = diag(e^g) Q S^T + (Gamma * Q K^T) Delta

The backward pass runs the same three stages in reverse: an intra-chunk part of dDelta (per
chunk), the state gradients chunk after chunk (the only sequential stage), and every input's
gradient per chunk. It stores one state per chunk and nothing per token beyond the forward's
W, U and Delta. Decay ratios are exponentials of differences of cumulative sums, masked before
the exponential, and log decays are clamped at LOG_DECAY_FLOOR: a decay of 0 is exact and
finite, forward and backward."""

from __future__ import annotations

import json
import os

import torch
import triton
import triton.language as tl
from nlc.runtime.library.chunk_inverse_triton import _gamma, _prepare_kernel
from nlc.runtime.library.chunk_state_triton import _carried, _state_block
from nlc.runtime.library.chunk_triton import (
    LOG_DECAY_FLOOR,
    boundaries,
    check_dims,
    check_inputs,
    chunk_table,
    compute_dtype,
    dot_precision,
    pow2,
    split_state_launch,
    state_launch,
)


# --------------------------------------------------------------------------- device helpers
@triton.jit
def _load_g(gc, tok, m_t, bos, eos, i_h, H: tl.constexpr, BT: tl.constexpr):
    """A chunk's cumulative log decays and their last valid entry G. Rows past the sequence's
    end repeat G (their log decays are 0), so that no decay ratio between a valid and a
    missing row exceeds 1: e^{0 - g} could overflow to inf, and inf * 0 is NaN."""
    b_G = tl.load(gc + (tl.minimum(bos + BT, eos) - 1) * H + i_h)
    b_g = tl.load(gc + tok * H + i_h, mask=m_t, other=0.0)
    return tl.where(m_t, b_g, b_G), b_G


# --------------------------------------------------------------------------- forward
@triton.jit
def _kkt_kernel(k, beta, ld, gc, amat, starts, ends,
                H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                HAS_G: tl.constexpr, DELTA: tl.constexpr, FLOOR: tl.constexpr,
                PREC: tl.constexpr):
    """Per (chunk, head): the cumulative log decay g; for delta, A = strict_lower(b_t
    Gamma[t, s] k_t.k_s)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    rows = tl.arange(0, BT)
    tok = bos + rows
    m_t = tok < eos
    if HAS_G:
        b_ld = tl.load(ld + tok * H + i_h, mask=m_t, other=0.0).to(tl.float32)
        b_g = tl.cumsum(tl.maximum(b_ld, FLOOR), 0)
    else:
        b_g = tl.zeros([BT], dtype=tl.float32)
    tl.store(gc + tok * H + i_h, b_g, mask=m_t)
    if DELTA:
        o_k = tl.arange(0, BK)
        b_k = tl.load(k + (tok * H + i_h)[:, None] * K + o_k[None, :],
                      mask=m_t[:, None] & (o_k < K)[None, :], other=0.0)
        b_b = tl.load(beta + tok * H + i_h, mask=m_t, other=0.0).to(tl.float32)
        b_A = tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
        b_A = b_A * b_b[:, None] * _gamma(b_g, rows, rows, True)
        tl.store(amat + ((i_c * H + i_h) * BT + rows[:, None]) * BT + rows[None, :], b_A)


@triton.jit
def _wu_kernel(k, v, beta, gc, tinv, w, u, starts, ends,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
               BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """Per (chunk, head): W = T diag(b e^g) K and U = T V."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    rows = tl.arange(0, BT)
    tok = bos + rows
    m_t = tok < eos
    b_g, _ = _load_g(gc, tok, m_t, bos, eos, i_h, H, BT)
    b_T = tl.load(tinv + ((i_c * H + i_h) * BT + rows[:, None]) * BT + rows[None, :])
    o_k = tl.arange(0, BK)
    m_tk = m_t[:, None] & (o_k < K)[None, :]
    b_k = tl.load(k + (tok * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
    b_b = tl.load(beta + tok * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    b_kb = (b_k.to(tl.float32) * (b_b * tl.exp(b_g))[:, None]).to(b_k.dtype)
    b_w = tl.dot(b_T.to(b_k.dtype), b_kb, input_precision=PREC)
    tl.store(w + (tok * H + i_h)[:, None] * K + o_k[None, :], b_w.to(w.dtype.element_ty),
             mask=m_tk)
    o_v = tl.arange(0, BV)
    m_tv = m_t[:, None] & (o_v < V)[None, :]
    b_v = tl.load(v + (tok * H + i_h)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
    b_u = tl.dot(b_T.to(b_v.dtype), b_v, input_precision=PREC)
    tl.store(u + (tok * H + i_h)[:, None] * V + o_v[None, :], b_u.to(u.dtype.element_ty),
             mask=m_tv)


@triton.jit
def _states_kernel(k, u, w, gc, h, delta, h0, ht, bounds, offsets,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, NK: tl.constexpr,
                   DELTA: tl.constexpr, HAS_H0: tl.constexpr, PREC: tl.constexpr):
    """Per (V block x K block, sequence, head), chunk after chunk: store the state at each
    chunk's start in h, the chunk's Delta, and the final state. The delta rule reads whole
    rows of the state (NK = 1)."""
    i_s, i_h, o_k, o_v, m_k, m_v, m_vk, p_state = _state_block(H, K, V, BK, BV, NK)
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
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_k = tl.load(k + (tok * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
        b_d = tl.load(u + (tok * H + i_h)[:, None] * V + o_v[None, :], mask=m_tv,
                      other=0.0).to(tl.float32)
        if DELTA:
            b_w = tl.load(w + (tok * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk,
                          other=0.0)
            b_d -= tl.dot(b_w, tl.trans(b_S.to(b_w.dtype)), input_precision=PREC)
            tl.store(delta + (tok * H + i_h)[:, None] * V + o_v[None, :],
                     b_d.to(delta.dtype.element_ty), mask=m_tv)
        b_g, b_G = _load_g(gc, tok, m_t, bos, eos, i_h, H, BT)
        b_dk = (b_d * tl.exp(b_G - b_g)[:, None]).to(b_k.dtype)
        b_S = b_S * tl.exp(b_G) + tl.dot(tl.trans(b_dk), b_k, input_precision=PREC)
    tl.store(ht + p_state, b_S, mask=m_vk)


@triton.jit
def _output_kernel(q, k, delta, gc, h, o, starts, ends,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """Per (V block, chunk, head): O = diag(e^g) Q S^T + (Gamma * Q K^T) Delta."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    rows = tl.arange(0, BT)
    tok = bos + rows
    m_t = tok < eos
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_tk = m_t[:, None] & m_k[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    b_q = tl.load(q + (tok * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
    b_k = tl.load(k + (tok * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
    b_d = tl.load(delta + (tok * H + i_h)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
    b_S = tl.load(h + ((i_c * H + i_h) * V + o_v[:, None]) * K + o_k[None, :],
                  mask=m_v[:, None] & m_k[None, :], other=0.0)
    b_g, _ = _load_g(gc, tok, m_t, bos, eos, i_h, H, BT)
    b_o = tl.dot(b_q, tl.trans(b_S.to(b_q.dtype)), input_precision=PREC) * tl.exp(b_g)[:, None]
    b_P = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * _gamma(b_g, rows, rows, False)
    b_o += tl.dot(b_P.to(b_d.dtype), b_d, input_precision=PREC)
    tl.store(o + (tok * H + i_h)[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty),
             mask=m_tv)


# --------------------------------------------------------------------------- backward
@triton.jit
def _intra_ddelta_kernel(q, k, do, gc, dd, starts, ends,
                         H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                         BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                         PREC: tl.constexpr):
    """Per (V block, chunk, head): the within-chunk part of dDelta, (Gamma * Q K^T)^T dO."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    rows = tl.arange(0, BT)
    tok = bos + rows
    m_t = tok < eos
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_tk = m_t[:, None] & (o_k < K)[None, :]
    m_tv = m_t[:, None] & (o_v < V)[None, :]
    b_q = tl.load(q + (tok * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
    b_k = tl.load(k + (tok * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
    b_do = tl.load(do + (tok * H + i_h)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
    b_g, _ = _load_g(gc, tok, m_t, bos, eos, i_h, H, BT)
    # P^T[s, t] = k_s . q_t e^{g_t - g_s} for s <= t
    b_Pt = tl.dot(b_k, tl.trans(b_q), input_precision=PREC) * tl.trans(
        _gamma(b_g, rows, rows, False))
    b_dd = tl.dot(b_Pt.to(b_do.dtype), b_do, input_precision=PREC)
    tl.store(dd + (tok * H + i_h)[:, None] * V + o_v[None, :], b_dd, mask=m_tv)


@triton.jit
def _state_grads_kernel(q, k, w, do, gc, dd, dh, dht, dh0, bounds, offsets,
                        H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, DELTA: tl.constexpr,
                        HAS_DHT: tl.constexpr, PREC: tl.constexpr):
    """Per (V block, sequence, head), chunks in reverse: store dS' (the gradient of each
    chunk's end state) in dh, complete dDelta in dd, and store the initial state's gradient."""
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
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_q = tl.load(q + (tok * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
        b_k = tl.load(k + (tok * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
        b_do = tl.load(do + (tok * H + i_h)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
        b_g, b_G = _load_g(gc, tok, m_t, bos, eos, i_h, H, BT)
        p_dd = dd + (tok * H + i_h)[:, None] * V + o_v[None, :]
        b_kd = (b_k.to(tl.float32) * tl.exp(b_G - b_g)[:, None]).to(b_k.dtype)
        b_dd = tl.load(p_dd, mask=m_tv, other=0.0) + tl.dot(
            b_kd, tl.trans(b_dS.to(b_k.dtype)), input_precision=PREC)
        tl.store(p_dd, b_dd, mask=m_tv)
        b_qg = (b_q.to(tl.float32) * tl.exp(b_g)[:, None]).to(b_q.dtype)
        b_dS = b_dS * tl.exp(b_G) + tl.dot(tl.trans(b_do), b_qg, input_precision=PREC)
        if DELTA:
            b_w = tl.load(w + (tok * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk,
                          other=0.0)
            b_dS -= tl.dot(tl.trans(b_dd.to(b_w.dtype)), b_w, input_precision=PREC)
    tl.store(dh0 + p_state, b_dS, mask=m_vk)


@triton.jit
def _input_grads_kernel(q, k, v, beta, gc, h, delta, tinv, do, dd, dh,
                        dq, dk, dv, dbeta, dld, starts, ends,
                        H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, DELTA: tl.constexpr,
                        HAS_G: tl.constexpr, FLOOR: tl.constexpr, ld,
                        PREC: tl.constexpr):
    """Per (chunk, head): dq, dk, dv (delta), dbeta (delta) and the log decays' gradient.
    V is walked in blocks of BV; everything on the key side stays in registers. Every
    product takes its operands in the inputs' dtype (dt): float32 inputs keep exact float32
    products, half-precision inputs run on the tensor cores' half-precision path."""
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
    b_q = tl.load(q + (tok * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
    b_k = tl.load(k + (tok * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
    b_g, b_G = _load_g(gc, tok, m_t, bos, eos, i_h, H, BT)
    last = tl.minimum(bos + BT, eos) - 1 - bos
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)   # dO S (before e^g)
    b_dks = tl.zeros([BT, BK], dtype=tl.float32)  # Delta dS' (before e^{G-g})
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)   # dW = -dDelta S
    b_dPs = tl.zeros([BT, BT], dtype=tl.float32)  # dO Delta^T
    b_dT = tl.zeros([BT, BT], dtype=tl.float32)   # dU V^T
    b_dGs = 0.0                                    # sum of dS' * S
    if DELTA:
        b_T = tl.load(tinv + ((i_c * H + i_h) * BT + rows[:, None]) * BT + rows[None, :])
        b_Td = b_T.to(dt)
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
        if DELTA:
            b_d = tl.load(delta + p_tv, mask=m_tv, other=0.0)
        else:
            b_d = tl.load(v + p_tv, mask=m_tv, other=0.0)
        b_dq += tl.dot(b_do, b_S.to(b_do.dtype), input_precision=PREC)
        b_dPs += tl.dot(b_do, tl.trans(b_d.to(b_do.dtype)), input_precision=PREC)
        b_dks += tl.dot(b_d.to(dt), b_dSe.to(dt), input_precision=PREC)
        b_dGs += tl.sum(tl.sum(b_dSe * b_S.to(tl.float32), 1), 0)
        if DELTA:
            b_v = tl.load(v + p_tv, mask=m_tv, other=0.0)
            b_dw -= tl.dot(b_dd.to(dt), b_S.to(dt), input_precision=PREC)
            b_dT += tl.dot(b_dd.to(dt), tl.trans(b_v.to(dt)), input_precision=PREC)
            b_dv = tl.dot(tl.trans(b_Td), b_dd.to(dt), input_precision=PREC)  # dV = T^T dU
            tl.store(dv + p_tv, b_dv.to(dv.dtype.element_ty), mask=m_tv)
        else:
            tl.store(dv + p_tv, b_dd.to(dv.dtype.element_ty), mask=m_tv)
    qf = b_q.to(tl.float32)
    kf = b_k.to(tl.float32)
    eg = tl.exp(b_g)
    eGg = tl.exp(b_G - b_g)
    b_gam = _gamma(b_g, rows, rows, False)
    # output: inter-chunk read, then the masked scores
    b_dqi = b_dq * eg[:, None]
    b_dg = tl.sum(qf * b_dqi, 1)
    b_P = tl.dot(b_q.to(dt), tl.trans(b_k.to(dt)), input_precision=PREC) * b_gam
    b_Y = b_dPs * b_P
    b_dg += tl.sum(b_Y, 1) - tl.sum(b_Y, 0)
    b_dQK = b_dPs * b_gam
    b_dqo = b_dqi + tl.dot(b_dQK.to(dt), b_k.to(dt), input_precision=PREC)
    b_dko = (tl.dot(tl.trans(b_dQK.to(dt)), b_q.to(dt), input_precision=PREC)
             + b_dks * eGg[:, None])
    # the end state: S' = e^G S + Delta^T diag(e^{G-g}) K
    b_c = tl.sum(kf * b_dks, 1) * eGg
    b_dg -= b_c
    b_dG = tl.exp(b_G) * b_dGs + tl.sum(b_c, 0)
    if DELTA:
        b_b = tl.load(beta + tok * H + i_h, mask=m_t, other=0.0).to(tl.float32)
        bg = b_b * eg
        b_R = tl.dot(tl.trans(b_Td), b_dw.to(dt), input_precision=PREC)  # d(diag(b e^g) K)
        b_x = tl.sum(b_R * kf, 1)
        b_dko += b_R * bg[:, None]
        b_db = eg * b_x
        b_dg += bg * b_x
        b_dT += tl.dot(b_dw.to(dt), tl.trans((kf * bg[:, None]).to(dt)), input_precision=PREC)
        # T = (I + A)^-1: dA = -T^T dT T^T, strictly lower
        b_TdT = tl.dot(tl.trans(b_Td), b_dT.to(dt), input_precision=PREC)
        b_dA = -tl.dot(b_TdT.to(dt), tl.trans(b_Td), input_precision=PREC)
        b_gs = _gamma(b_g, rows, rows, True)
        b_KKg = tl.dot(b_k.to(dt), tl.trans(b_k.to(dt)), input_precision=PREC) * b_gs
        b_dA = tl.where(rows[:, None] > rows[None, :], b_dA, 0.0)
        b_db += tl.sum(b_dA * b_KKg, 1)
        b_Y2 = b_dA * b_KKg * b_b[:, None]
        b_dg += tl.sum(b_Y2, 1) - tl.sum(b_Y2, 0)
        b_dKK = b_dA * b_gs * b_b[:, None]
        b_dKKd = b_dKK.to(dt)
        b_dko += (tl.dot(b_dKKd, b_k.to(dt), input_precision=PREC)
                  + tl.dot(tl.trans(b_dKKd), b_k.to(dt), input_precision=PREC))
        tl.store(dbeta + tok * H + i_h, b_db, mask=m_t)
    p_tk = (tok * H + i_h)[:, None] * K + o_k[None, :]
    tl.store(dq + p_tk, b_dqo.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + p_tk, b_dko.to(dk.dtype.element_ty), mask=m_tk)
    if HAS_G:
        b_dg += tl.where(rows == last, b_dG, 0.0)
        b_dg = tl.where(m_t, b_dg, 0.0)
        # g_t = sum_{s <= t} ld_s: dld_s = sum_{t >= s} dg_t (a reversed cumulative sum)
        b_dld = tl.sum(b_dg, 0) - tl.cumsum(b_dg, 0) + b_dg
        b_ld = tl.load(ld + tok * H + i_h, mask=m_t, other=0.0).to(tl.float32)
        b_dld = tl.where(b_ld >= FLOOR, b_dld, 0.0)  # the clamp's gradient
        tl.store(dld + tok * H + i_h, b_dld, mask=m_t)


# --------------------------------------------------------------------------- host side
# the input-gradient kernel's launch for half-precision inputs: V block, warps (None: by K)
# and pipeline stages. benchmarks/kernel_profile.py --sweep times the alternatives on a GPU;
# NLC_INPUT_GRADS='{"BV": 64, ...}' overrides them for such a run. Float32 inputs take one
# stage: at K = V = 128 three need 240 KiB of shared memory, more than an H200 has.
INPUT_GRADS = {"BV": 32, "num_warps": None, "num_stages": 3,
               **json.loads(os.environ.get("NLC_INPUT_GRADS", "{}"))}


# the forward kernels' warps (kkt: g alone, for decay; prepare: delta's g and T, None: one
# warp for half-precision inputs, fastest on an H200 by 0.14 ms of 0.69 at (8, 2048, 16,
# 128), docs/perf.md eighth batch; four for float32, which spills 1.8 KB a thread at one)
# and the output kernel's V block (None: as `_tiles`);
# benchmarks/kernel_profile.py --sweep-forward times the alternatives on a GPU, and
# NLC_FORWARD='{"prepare_warps": 2, ...}' overrides them for such a run
FORWARD = {"kkt_warps": 4, "prepare_warps": None, "batched_inverse": False, "wu_warps": 4,
           "output_warps": 4, "output_BV": None,
           **json.loads(os.environ.get("NLC_FORWARD", "{}"))}


def _tiles(K: int, V: int):
    BK = pow2(K)
    BV = min(pow2(V), 64)
    return BK, BV


def _forward(q, k, v, beta, ld, h0, table, BT, delta_rule):
    N, H, K = k.shape
    V = v.shape[-1]
    BK, BV = _tiles(K, V)
    prec = dot_precision(q.dtype)
    dev = q.device
    gc = torch.empty(N, H, dtype=torch.float32, device=dev)
    NC, S = table.chunks, table.sequences
    if delta_rule:
        w = torch.empty_like(k)
        u = torch.empty_like(v)
        # T in the operands' dtype: every product reading it (W, U, the backward's) rounds it
        # to that dtype first, so results are the same and half precision halves its traffic
        tinv = torch.empty(NC, H, BT, BT, dtype=q.dtype, device=dev)
        d = torch.empty_like(v)
        _prepare_kernel[(NC, H)](
            k, beta, ld, gc, tinv, table.starts, table.ends, H=H, K=K, BT=BT, BK=min(BK, 64),
            HAS_G=ld is not None, FLOOR=LOG_DECAY_FLOOR, PREC=prec,
            BATCHED=FORWARD["batched_inverse"],
            num_warps=FORWARD["prepare_warps"] or (4 if q.dtype == torch.float32 else 1))
        _wu_kernel[(NC, H)](
            k, v, beta, gc, tinv, w, u, table.starts, table.ends,
            H=H, K=K, V=V, BT=BT, BK=BK, BV=pow2(V), PREC=prec, num_warps=FORWARD["wu_warps"])
    else:  # g alone
        w = u = tinv = None
        d = v
        _kkt_kernel[(NC, H)](
            k, beta, ld, gc, None, table.starts, table.ends, H=H, K=K, BT=BT, BK=BK,
            HAS_G=ld is not None, DELTA=False, FLOOR=LOG_DECAY_FLOOR, PREC=prec,
            num_warps=FORWARD["kkt_warps"])
    h = torch.empty(NC, H, V, K, dtype=q.dtype, device=dev)
    ht = torch.empty(S, H, V, K, dtype=torch.float32, device=dev)
    if delta_rule:
        (BVs, warps), BKs = state_launch(BV, S * H), BK
    else:
        BKs, BVs, warps = split_state_launch(BK, BV, S * H)
    NK = triton.cdiv(K, BKs)
    _states_kernel[(triton.cdiv(V, BVs) * NK, S * H)](
        k, u if delta_rule else v, w, gc, h, d, h0, ht, table.bounds, table.offsets,
        H=H, K=K, V=V, BT=BT, BK=BKs, BV=BVs, NK=NK, DELTA=delta_rule,
        HAS_H0=h0 is not None, PREC=prec, num_warps=warps)
    o = torch.empty_like(v)
    BVo = min(FORWARD["output_BV"] or BV, pow2(V))
    _output_kernel[(triton.cdiv(V, BVo), NC, H)](
        q, k, d, gc, h, o, table.starts, table.ends,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BVo, PREC=prec, num_warps=FORWARD["output_warps"])
    return o, ht, (gc, w, tinv, d, h)  # U only feeds the states: not kept for backward


def _backward(q, k, v, beta, ld, saved, do, dht, table, BT, delta_rule):
    gc, w, tinv, d, h = saved
    N, H, K = k.shape
    V = v.shape[-1]
    BK, BV = _tiles(K, V)
    prec = dot_precision(q.dtype)
    NC, S = table.chunks, table.sequences
    dd = torch.empty(N, H, V, dtype=torch.float32, device=q.device)
    _intra_ddelta_kernel[(triton.cdiv(V, BV), NC, H)](
        q, k, do, gc, dd, table.starts, table.ends,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, PREC=prec, num_warps=4)
    dh = torch.empty(NC, H, V, K, dtype=q.dtype, device=q.device)  # read once, by products
    dh0 = torch.empty(S, H, V, K, dtype=torch.float32, device=q.device)
    BVs, warps = state_launch(BV, S * H)
    _state_grads_kernel[(triton.cdiv(V, BVs), S * H)](
        q, k, w, do, gc, dd, dh, dht, dh0, table.bounds, table.offsets,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BVs, DELTA=delta_rule, HAS_DHT=dht is not None,
        PREC=prec, num_warps=warps)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    dbeta = torch.empty(N, H, dtype=torch.float32, device=q.device) if delta_rule else None
    dld = torch.empty(N, H, dtype=torch.float32, device=q.device) if ld is not None else None
    _input_grads_kernel[(NC, H)](
        q, k, v, beta, gc, h, d, tinv, do, dd, dh, dq, dk, dv, dbeta, dld,
        table.starts, table.ends, H=H, K=K, V=V, BT=BT, BK=BK,
        BV=min(BV, INPUT_GRADS["BV"]), DELTA=delta_rule, HAS_G=ld is not None,
        FLOOR=LOG_DECAY_FLOOR, ld=ld, PREC=prec,
        num_stages=INPUT_GRADS["num_stages"] if q.dtype != torch.float32 else 1,
        num_warps=INPUT_GRADS["num_warps"] or (8 if BK >= 128 else 4))
    return dq, dk, dv, dbeta, dld, dh0


class ChunkScalarDecay(torch.autograd.Function):
    """Packed `[N, H, *]` tensors; see `chunk_scalar`."""

    @staticmethod
    def forward(ctx, q, k, v, beta, ld, h0, bounds, chunk, delta_rule):
        table = chunk_table(bounds, chunk, q.device)
        o, ht, saved = _forward(q, k, v, beta, ld, h0, table, chunk, delta_rule)
        ctx.save_for_backward(q, k, v, beta, ld, *saved)
        ctx.meta = (table, chunk, delta_rule, h0 is not None, h0.dtype if h0 is not None
                    else None)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, ld, *saved = ctx.saved_tensors
        table, chunk, delta_rule, has_h0, h0_dtype = ctx.meta
        dq, dk, dv, dbeta, dld, dh0 = _backward(
            q, k, v, beta, ld, saved, do.contiguous(),
            dht.contiguous() if dht is not None else None, table, chunk, delta_rule)
        return (dq, dk, dv,
                dbeta.to(beta.dtype) if dbeta is not None else None,
                dld.to(ld.dtype) if dld is not None else None,
                dh0.to(h0_dtype) if has_h0 else None, None, None, None)


def chunk_scalar(q, k, v, beta=None, log_decay=None, *, initial_state=None, cu_seqlens=None,
                 chunk_size=64):
    """The delta rule (with `beta`) or the decay family (without), chunked on the GPU.

    q, k `[B, T, H, K]`, v `[B, T, H, V]`, beta and log_decay `[B, T, H]` (either may be None:
    no delta rule, no decay), initial_state `[B, H, V, K]` (or `[S, H, V, K]` for S packed
    sequences with `cu_seqlens`, B = 1). Returns `(o [B, T, H, V], final state [., H, V, K]
    float32)`."""
    check_inputs(q, k, v, beta, log_decay, initial_state, cu_seqlens, channel=False)
    B, T, H, K = q.shape
    V = v.shape[-1]
    check_dims(K, V, chunk_size)
    bounds = boundaries(B, T, cu_seqlens)
    dtype = compute_dtype(q)

    def packed(x, *tail):
        return None if x is None else x.to(dtype).reshape(B * T, H, *tail).contiguous()

    args = (packed(q, K), packed(k, K), packed(v, V),
            None if beta is None else beta.reshape(B * T, H).contiguous(),
            None if log_decay is None else log_decay.reshape(B * T, H).contiguous(),
            None if initial_state is None else initial_state.contiguous())
    o, ht = ChunkScalarDecay.apply(*args, bounds, chunk_size, beta is not None)
    return o.reshape(B, T, H, V), ht
