"""Chunked Triton kernels, forward and backward, for the decay family with a decay per key
channel (GLA, HGRN2-style):

    S_t = S_{t-1} diag(a_t) + v_t k_t^T,   o_t = S_t q_t,   S: [V, K],  log a_t = `log_decay`

In a chunk, g is the cumulative log decay per channel ([C, K]), G its last row and S the state
at the chunk's start:

    O  = (Q * e^g) S^T + A V,   A[t, s] = sum_k q_tk k_sk e^{g_tk - g_sk}  (s <= t)
    S' = S diag(e^G) + V^T (K * e^{G - g})

A per-channel decay ratio cannot be factored over a whole chunk (e^{-g} overflows once the
chunk's log decays span more than ~88), so A is built from blocks of 16 rows: an
off-diagonal block (rows i, columns j < i) factors through the log decay r at the end of
block j, where both e^{g_i - r} and e^{r - g_j} are at most 1, and goes to the tensor cores; a
diagonal block is summed exactly, one column at a time, with its exponentials masked first.
The backward pass uses the same blocks for the intra-chunk part of dq and dk, and
dg = q * dq - k * dk (plus G's gradient on the chunk's last row), summed back over the chunk.
Scalar decays go to chunk_delta_triton.py (its kernels without the delta rule); the delta
rule with a per-channel decay to chunk_kda_triton.py, which reuses these kernels' scores, as
chunk_dplr_triton.py does: both run two score matrices of the same decays per launch (PAIR)."""

from __future__ import annotations

import json
import os

import torch
import triton
import triton.language as tl
from nlc.runtime.library.chunk_state_triton import _carried, _state_block
from nlc.runtime.library.chunk_triton import (
    LOG_DECAY_FLOOR,
    STATE_PASSES,
    boundaries,
    check_dims,
    check_inputs,
    chunk_table,
    compute_dtype,
    dot_precision,
    pow2,
    split_state_launch,
)

# The largest span of log decays within a diagonal block of 16 (in any channel) that its
# product on the tensor cores may factor through the block's first row: every factor then
# lies within e^{+-40} (1e-17 to 1e17), far inside bf16's and float32's normal range
# (float16 inputs keep the column sums: `_diag_dot`).
DIAG_SPAN = 40.0

# `PAIR` of the score kernels: a second score matrix with the same decays, sharing every
# exponential, and either the rows (a second column input k2: the dplr family's q with k and
# b, a with k and b) or the columns (a second row input q2: KDA's q and k with k)
COLUMNS = tl.constexpr(1)
ROWS = tl.constexpr(2)


@triton.jit
def _rows(x, tok, m_t, i_h, o_k, m_k, H: tl.constexpr, K: tl.constexpr):
    """Rows `tok` of a [N, H, K] tensor (0 where masked)."""
    return tl.load(x + (tok * H + i_h)[:, None] * K + o_k[None, :],
                   mask=m_t[:, None] & m_k[None, :], other=0.0)


@triton.jit
def _g_rows(gc, tok, m_t, b_G, i_h, o_k, m_k, H: tl.constexpr, K: tl.constexpr):
    """Cumulative log decays of rows `tok`; rows past the sequence's end repeat G (their log
    decays are 0), so no ratio between a valid and a missing row exceeds 1."""
    b_g = _rows(gc, tok, m_t, i_h, o_k, m_k, H, K)
    return tl.where(m_t[:, None], b_g, b_G[None, :])


@triton.jit
def _g_at(gc, t, eos, i_h, o_k, m_k, H: tl.constexpr, K: tl.constexpr):
    """The cumulative log decays of token t, or of the sequence's last token past its end
    (as `_g_rows` repeats G)."""
    return tl.load(gc + (tl.minimum(t, eos - 1) * H + i_h) * K + o_k, mask=m_k, other=0.0)


@triton.jit
def _last_g(gc, bos, eos, i_h, o_k, m_k, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr):
    last = tl.minimum(bos + BT, eos) - 1
    return tl.load(gc + (last * H + i_h) * K + o_k, mask=m_k, other=0.0)


@triton.jit
def _diagonal_column(gc, t_s, s, eos, b_gi, b_G, r, i_h, o_k, m_k, H: tl.constexpr,
                     K: tl.constexpr, STRICT: tl.constexpr):
    """Column s (token t_s) of a diagonal block of 16 rows at log decays b_gi: its offsets
    and mask in a [N, H, K] tensor and the rows' e^{g_t - g_s}, 0 above the diagonal (and on
    it if STRICT). Callers only load through the offsets: a store through them would make
    torch.compile take `gc` as written (chunk_state_triton.py)."""
    ok = (o_k * 0 + t_s) < eos  # as a vector: the interpreter wants one
    p_s = (t_s * H + i_h) * K + o_k
    b_gs = tl.where(ok, tl.load(gc + p_s, mask=m_k & ok, other=0.0), b_G)
    keep = (r[:, None] > s) if STRICT else (r[:, None] >= s)
    return p_s, m_k & ok, tl.exp(tl.where(keep, b_gi - b_gs[None, :], float("-inf")))


@triton.jit
def _lower(r, STRICT: tl.constexpr):
    """A diagonal block's kept entries, [16, 16]: row t >= column s (t > s if STRICT)."""
    return (r[:, None] > r[None, :]) if STRICT else (r[:, None] >= r[None, :])


@triton.jit
def _diagonal_span(b_gr, b_gs, SPAN: tl.constexpr):
    """For a diagonal block with rows' log decays b_gr and columns' b_gs ([16, K]): the
    columns' first row g_ref (log decays only fall), and whether every channel's log decays
    stay within SPAN, so that its products may factor through g_ref."""
    g_ref = tl.max(b_gs, 0)
    lo = tl.minimum(tl.min(b_gr, 0), tl.min(b_gs, 0))
    hi = tl.maximum(tl.max(b_gr, 0), g_ref)
    return g_ref, tl.max(hi - lo, 0) < SPAN


@triton.jit
def _diagonal_columns(k, k2, gc, t0, eos, b_q, b_q2, b_gi, b_G, r, i_h, o_k, m_k,
                      H: tl.constexpr, K: tl.constexpr, STRICT: tl.constexpr,
                      PAIR: tl.constexpr):
    """A diagonal block of 16 scores (rows b_q, tokens t0 on), column by column, each decay
    ratio its own exponential: exact at any decay, at 16 [16, K] exponentials and
    reductions. Returns it and PAIR's second block (zeros without one)."""
    b_A = tl.zeros([16, 16], dtype=tl.float32)
    b_A2 = tl.zeros([16, 16], dtype=tl.float32)
    qf = b_q.to(tl.float32)
    for s in range(16):
        p_s, m_s, b_e = _diagonal_column(gc, t0 + s, s, eos, b_gi, b_G, r, i_h, o_k, m_k, H,
                                         K, STRICT)
        b_ks = tl.load(k + p_s, mask=m_s, other=0.0).to(tl.float32)
        b_A = tl.where(r[None, :] == s, tl.sum(qf * b_e * b_ks[None, :], 1)[:, None], b_A)
        if PAIR == COLUMNS:
            b_k2s = tl.load(k2 + p_s, mask=m_s, other=0.0).to(tl.float32)
            b_col2 = tl.sum(qf * b_e * b_k2s[None, :], 1)
        if PAIR == ROWS:
            b_col2 = tl.sum(b_q2.to(tl.float32) * b_e * b_ks[None, :], 1)
        if PAIR:
            b_A2 = tl.where(r[None, :] == s, b_col2[:, None], b_A2)
    return b_A, b_A2


@triton.jit
def _diagonal_dot(k, k2, tok, m_t, b_q, b_q2, b_gi, b_gs, g_ref, r, i_h, o_k, m_k,
                  H: tl.constexpr, K: tl.constexpr, STRICT: tl.constexpr,
                  PREC: tl.constexpr, PAIR: tl.constexpr):
    """The same block as one product on the tensor cores, its decay ratios factored through
    the block's first row g_ref: (q e^{g_t - g_ref}) (k e^{g_ref - g_s})^T. Every factor is
    within e^{+-DIAG_SPAN} when the caller has checked the block's span, so none overflows
    or loses its digits to underflow."""
    b_eq = tl.exp(b_gi - g_ref[None, :])
    b_qg = (b_q.to(tl.float32) * b_eq).to(b_q.dtype)
    b_ek = tl.exp(g_ref[None, :] - b_gs)
    b_k = _rows(k, tok, m_t, i_h, o_k, m_k, H, K)
    b_kg = (b_k.to(tl.float32) * b_ek).to(b_k.dtype)
    keep = _lower(r, STRICT)
    b_A = tl.where(keep, tl.dot(b_qg, tl.trans(b_kg), input_precision=PREC), 0.0)
    b_A2 = tl.zeros([16, 16], dtype=tl.float32)
    if PAIR == COLUMNS:
        b_k2 = _rows(k2, tok, m_t, i_h, o_k, m_k, H, K)
        b_k2g = (b_k2.to(tl.float32) * b_ek).to(b_k2.dtype)
        b_A2 = tl.where(keep, tl.dot(b_qg, tl.trans(b_k2g), input_precision=PREC), 0.0)
    if PAIR == ROWS:
        b_q2g = (b_q2.to(tl.float32) * b_eq).to(b_q2.dtype)
        b_A2 = tl.where(keep, tl.dot(b_q2g, tl.trans(b_kg), input_precision=PREC), 0.0)
    return b_A, b_A2


# --------------------------------------------------------------------------- forward
@triton.jit
def _cumsum_kernel(ld, gc, starts, ends, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr, FLOOR: tl.constexpr):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    tok = bos + tl.arange(0, BT)
    m_t = tok < eos
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    b_ld = _rows(ld, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32)
    b_g = tl.cumsum(tl.maximum(b_ld, FLOOR), 0)
    tl.store(gc + (tok * H + i_h)[:, None] * K + o_k[None, :], b_g,
             mask=m_t[:, None] & m_k[None, :])


@triton.jit
def _scores_kernel(q, k, gq, gc, amat, starts, ends, H: tl.constexpr, K: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, STRICT: tl.constexpr,
                   PREC: tl.constexpr, k2, q2, amat2, PAIR: tl.constexpr,
                   SPLIT: tl.constexpr, DIAG_DOT: tl.constexpr, DIAG_SPAN: tl.constexpr,
                   SAME_G: tl.constexpr):
    """Per (chunk, head): A's lower blocks of 16 (`amat` starts zeroed), the rows' cumulative
    log decays `gq` (gc, or for the dplr family's A_ak, A_ab those up to the token before,
    which never exceed the columns' of an earlier block); s < t only if STRICT. A PAIR also
    writes `amat2`: rows q with columns k2 (COLUMNS), or rows q2 with columns k (ROWS).
    SPLIT: one program per (row block of 16, chunk, head) instead, BT / 16 times the
    programs, each with one diagonal block and the blocks left of it. DIAG_DOT: a diagonal
    block whose log decays span less than DIAG_SPAN in every channel is one product on the
    tensor cores (`_diagonal_dot`), the others column by column (`_diagonal_columns`).
    SAME_G: gq is gc (the launch checks), so the span check reuses the rows' decays."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_lo, i_hi = 0, BT // 16
    if SPLIT:
        i_lo = i_c % (BT // 16)
        i_hi = i_lo + 1
        i_c = i_c // (BT // 16)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    r = tl.arange(0, 16)
    base = (i_c * H + i_h) * BT * BT
    b_G = _last_g(gc, bos, eos, i_h, o_k, m_k, H, K, BT)
    for i in range(i_lo, i_hi):  # not unrolled: an unrolled loop spilled
        tok_i = bos + i * 16 + r
        m_i = tok_i < eos
        b_q = _rows(q, tok_i, m_i, i_h, o_k, m_k, H, K)
        b_gi = _g_rows(gq, tok_i, m_i, b_G, i_h, o_k, m_k, H, K)
        b_q2 = b_q  # read only with a PAIR of ROWS
        if PAIR == ROWS:
            b_q2 = _rows(q2, tok_i, m_i, i_h, o_k, m_k, H, K)
        for j in range(i):  # the blocks left of the diagonal
            tok_j = bos + j * 16 + r
            m_j = tok_j < eos
            b_r = _g_at(gc, bos + j * 16 + 15, eos, i_h, o_k, m_k, H, K)  # g at block j's end
            b_ei = tl.exp(b_gi - b_r[None, :])
            b_qg = (b_q.to(tl.float32) * b_ei).to(b_q.dtype)
            b_ej = tl.exp(b_r[None, :] - _g_rows(gc, tok_j, m_j, b_G, i_h, o_k, m_k, H, K))
            b_k = _rows(k, tok_j, m_j, i_h, o_k, m_k, H, K)
            b_kg = (b_k.to(tl.float32) * b_ej).to(b_k.dtype)
            p_A = base + (i * 16 + r)[:, None] * BT + (j * 16 + r)[None, :]
            tl.store(amat + p_A, tl.dot(b_qg, tl.trans(b_kg), input_precision=PREC))
            if PAIR == COLUMNS:
                b_k2 = _rows(k2, tok_j, m_j, i_h, o_k, m_k, H, K)
                b_A2 = tl.dot(b_qg, tl.trans((b_k2.to(tl.float32) * b_ej).to(b_k2.dtype)),
                              input_precision=PREC)
                tl.store(amat2 + p_A, b_A2)
            if PAIR == ROWS:
                b_A2 = tl.dot((b_q2.to(tl.float32) * b_ei).to(b_q2.dtype), tl.trans(b_kg),
                              input_precision=PREC)
                tl.store(amat2 + p_A, b_A2)
        # the diagonal block: on the tensor cores (DIAG_DOT) when its log decays span less
        # than DIAG_SPAN in every channel, else column by column
        use_dot, g_ref, b_gs = False, b_G, b_gi  # (stand-ins without DIAG_DOT)
        if DIAG_DOT:
            if not SAME_G:
                b_gs = _g_rows(gc, tok_i, m_i, b_G, i_h, o_k, m_k, H, K)
            g_ref, use_dot = _diagonal_span(b_gi, b_gs, DIAG_SPAN)
        if use_dot:
            b_A, b_A2 = _diagonal_dot(k, k2, tok_i, m_i, b_q, b_q2, b_gi, b_gs, g_ref, r,
                                      i_h, o_k, m_k, H, K, STRICT, PREC, PAIR)
        else:
            b_A, b_A2 = _diagonal_columns(k, k2, gc, bos + i * 16, eos, b_q, b_q2, b_gi, b_G,
                                          r, i_h, o_k, m_k, H, K, STRICT, PAIR)
        p_A = base + (i * 16 + r)[:, None] * BT + (i * 16 + r)[None, :]
        tl.store(amat + p_A, b_A)
        if PAIR:
            tl.store(amat2 + p_A, b_A2)


@triton.jit
def _states_kernel(k, v, gc, h, h0, ht, bounds, offsets,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, NK: tl.constexpr,
                   HAS_H0: tl.constexpr, PREC: tl.constexpr):
    """Per (V block x K block, sequence, head), chunk after chunk: the state at each chunk's
    start (h) and the final state."""
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
        b_G = _last_g(gc, bos, eos, i_h, o_k, m_k, H, K, BT)
        b_g = _g_rows(gc, tok, m_t, b_G, i_h, o_k, m_k, H, K)
        b_k = _rows(k, tok, m_t, i_h, o_k, m_k, H, K)
        b_v = tl.load(v + (tok * H + i_h)[:, None] * V + o_v[None, :],
                      mask=m_t[:, None] & m_v[None, :], other=0.0)
        b_kd = (b_k.to(tl.float32) * tl.exp(b_G[None, :] - b_g)).to(b_k.dtype)
        b_S = b_S * tl.exp(b_G)[None, :] + tl.dot(tl.trans(b_v), b_kd, input_precision=PREC)
    tl.store(ht + p_state, b_S, mask=m_vk)


@triton.jit
def _output_kernel(q, v, gc, h, amat, o, v2, amat2, starts, ends,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, TWO: tl.constexpr, PREC: tl.constexpr):
    """Per (V block, chunk, head): O = (Q * e^g) S^T + A V (+ A2 V2 if TWO: the dplr family's
    second input term)."""
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
    m_tv = m_t[:, None] & m_v[None, :]
    b_G = _last_g(gc, bos, eos, i_h, o_k, m_k, H, K, BT)
    b_g = _g_rows(gc, tok, m_t, b_G, i_h, o_k, m_k, H, K)
    b_q = _rows(q, tok, m_t, i_h, o_k, m_k, H, K)
    b_qg = (b_q.to(tl.float32) * tl.exp(b_g)).to(b_q.dtype)
    b_S = tl.load(h + ((i_c * H + i_h) * V + o_v[:, None]) * K + o_k[None, :],
                  mask=m_v[:, None] & m_k[None, :], other=0.0)
    b_v = tl.load(v + (tok * H + i_h)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
    b_A = tl.load(amat + ((i_c * H + i_h) * BT + rows[:, None]) * BT + rows[None, :])
    b_o = tl.dot(b_qg, tl.trans(b_S.to(b_qg.dtype)), input_precision=PREC)
    b_o += tl.dot(b_A.to(b_v.dtype), b_v, input_precision=PREC)
    if TWO:
        b_v2 = tl.load(v2 + (tok * H + i_h)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
        b_A2 = tl.load(amat2 + ((i_c * H + i_h) * BT + rows[:, None]) * BT + rows[None, :])
        b_o += tl.dot(b_A2.to(b_v2.dtype), b_v2, input_precision=PREC)
    tl.store(o + (tok * H + i_h)[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty),
             mask=m_tv)


# --------------------------------------------------------------------------- backward
@triton.jit
def _dscores_kernel(v, do, amat, damat, dv, starts, ends, k, gc, dh,
                    H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                    PREC: tl.constexpr, K: tl.constexpr, BK: tl.constexpr,
                    STATE: tl.constexpr):
    """Per (chunk, head): dA = lower(dO V^T) and the intra-chunk part of dv, A^T dO; with
    STATE (the channel family, whose dS' `dh` is then known) dv's state part too,
    (K * e^(G - g)) dS'^T, so that dv is written once and the input-gradient kernel may
    split the key axis."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    rows = tl.arange(0, BT)
    tok = bos + rows
    m_t = tok < eos
    p_A = ((i_c * H + i_h) * BT + rows[:, None]) * BT + rows[None, :]
    b_A = tl.load(amat + p_A)
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    if STATE:
        o_k = tl.arange(0, BK)
        m_k = o_k < K
        b_G = _last_g(gc, bos, eos, i_h, o_k, m_k, H, K, BT)
        b_k = _rows(k, tok, m_t, i_h, o_k, m_k, H, K)
        b_kd = (b_k.to(tl.float32)
                * tl.exp(b_G[None, :] - _g_rows(gc, tok, m_t, b_G, i_h, o_k, m_k, H, K)))
        b_kd = b_kd.to(b_k.dtype)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        p_tv = (tok * H + i_h)[:, None] * V + o_v[None, :]
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.0)
        b_do = tl.load(do + p_tv, mask=m_tv, other=0.0)
        b_dA += tl.dot(b_do, tl.trans(b_v.to(b_do.dtype)), input_precision=PREC)
        b_dv = tl.dot(tl.trans(b_A.to(b_do.dtype)), b_do, input_precision=PREC)
        if STATE:
            p_vk = ((i_c * H + i_h) * V + o_v[:, None]) * K + o_k[None, :]
            b_dSe = tl.load(dh + p_vk, mask=(o_v < V)[:, None] & m_k[None, :], other=0.0)
            b_dv += tl.dot(b_kd, tl.trans(b_dSe.to(b_kd.dtype)), input_precision=PREC)
        tl.store(dv + p_tv, b_dv, mask=m_tv)
    b_dA = tl.where(rows[:, None] >= rows[None, :], b_dA, 0.0)
    tl.store(damat + p_A, b_dA)


@triton.jit
def _state_grads_kernel(q, do, gc, dh, dht, dh0, bounds, offsets,
                        H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, NK: tl.constexpr,
                        HAS_DHT: tl.constexpr, PREC: tl.constexpr):
    """Per (V block x K block, sequence, head), chunks in reverse: dS' of each chunk (dh) and
    the initial state's gradient. The key columns evolve apart, so the key axis splits
    across programs as the value axis does; dv's state part is `_dscores_kernel`'s, per
    chunk in parallel (here it was a read-modify-write on this pass's serial path)."""
    i_s, i_h, o_k, o_v, m_k, m_v, m_vk, p_state = _state_block(H, K, V, BK, BV, NK)
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
        b_G = _last_g(gc, bos, eos, i_h, o_k, m_k, H, K, BT)
        b_g = _g_rows(gc, tok, m_t, b_G, i_h, o_k, m_k, H, K)
        b_q = _rows(q, tok, m_t, i_h, o_k, m_k, H, K)
        b_do = tl.load(do + (tok * H + i_h)[:, None] * V + o_v[None, :],
                       mask=m_t[:, None] & m_v[None, :], other=0.0)
        b_qg = (b_q.to(tl.float32) * tl.exp(b_g)).to(b_q.dtype)
        b_dS = b_dS * tl.exp(b_G)[None, :] + tl.dot(tl.trans(b_do), b_qg, input_precision=PREC)
    tl.store(dh0 + p_state, b_dS, mask=m_vk)


@triton.jit
def _put(x, b_x, tok, m_t, i_h, o_k, m_k, H: tl.constexpr, K: tl.constexpr,
         ACC: tl.constexpr):
    """Stores rows `tok` of a [N, H, K] float32 tensor, or adds to them if ACC."""
    p_x = x + (tok * H + i_h)[:, None] * K + o_k[None, :]
    m_x = m_t[:, None] & m_k[None, :]
    if ACC:
        b_x += tl.load(p_x, mask=m_x, other=0.0)
    tl.store(p_x, b_x, mask=m_x)


@triton.jit
def _intra_grads_kernel(q, k, gq, gc, damat, dqi, dki, starts, ends, H: tl.constexpr,
                        K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                        STRICT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
                        ROWS_ONLY: tl.constexpr, k2, q2, damat2, dki2, dqi2,
                        PAIR: tl.constexpr, DIAG_DOT: tl.constexpr, DIAG_SPAN: tl.constexpr,
                        SAME_G: tl.constexpr):
    """Per (chunk, head): the intra-chunk parts of dq and dk, by the blocks of A:
    dq_t = sum_{s<=t} dA[t, s] k_s e^{gq_t - g_s},  dk_s = sum_{t>=s} dA[t, s] q_t e^{gq_t - g_s}
    (`_scores_kernel`'s rows and STRICT); ACC adds dk to what dki holds (dq is written).
    ROWS_ONLY computes dq alone (chunk_rows_triton.py's forward: its intra-chunk reads). A
    PAIR adds `_scores_kernel`'s second matrix, gradient `damat2`: with COLUMNS, dq gets both
    parts and dki2 the dk of k2 (ACC as dki); with ROWS, dki gets both and dqi2 the dq of q2.
    DIAG_DOT, DIAG_SPAN, SAME_G: the diagonal blocks as `_scores_kernel` takes them."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    r = tl.arange(0, 16)
    base = (i_c * H + i_h) * BT * BT
    b_G = _last_g(gc, bos, eos, i_h, o_k, m_k, H, K, BT)
    for i in range(BT // 16):  # dq of row block i (not unrolled: an unrolled loop spilled)
        tok_i = bos + i * 16 + r
        m_i = tok_i < eos
        b_gi = _g_rows(gq, tok_i, m_i, b_G, i_h, o_k, m_k, H, K)
        b_dq = tl.zeros([16, BK], dtype=tl.float32)
        b_dq2 = tl.zeros([16, BK], dtype=tl.float32)
        for j in range(i):  # the blocks left of the diagonal
            tok_j = bos + j * 16 + r
            m_j = tok_j < eos
            b_r = _g_at(gc, bos + j * 16 + 15, eos, i_h, o_k, m_k, H, K)
            b_ej = tl.exp(b_r[None, :] - _g_rows(gc, tok_j, m_j, b_G, i_h, o_k, m_k, H, K))
            b_ei = tl.exp(b_gi - b_r[None, :])
            p_A = base + (i * 16 + r)[:, None] * BT + (j * 16 + r)[None, :]
            b_kg = _rows(k, tok_j, m_j, i_h, o_k, m_k, H, K).to(tl.float32) * b_ej
            b_part = tl.dot(tl.load(damat + p_A), b_kg, input_precision=PREC)
            if PAIR == COLUMNS:
                b_k2g = _rows(k2, tok_j, m_j, i_h, o_k, m_k, H, K).to(tl.float32) * b_ej
                b_part += tl.dot(tl.load(damat2 + p_A), b_k2g, input_precision=PREC)
            if PAIR == ROWS:
                b_dq2 += tl.dot(tl.load(damat2 + p_A), b_kg, input_precision=PREC) * b_ei
            b_dq += b_part * b_ei
        # the diagonal block: one product, or column by column (`_scores_kernel`'s DIAG_DOT)
        use_dot, g_ref, b_gs = False, b_G, b_gi  # (stand-ins without DIAG_DOT)
        if DIAG_DOT:
            if not SAME_G:
                b_gs = _g_rows(gc, tok_i, m_i, b_G, i_h, o_k, m_k, H, K)
            g_ref, use_dot = _diagonal_span(b_gi, b_gs, DIAG_SPAN)
        if use_dot:
            keep = _lower(r, STRICT)
            p_D = base + (i * 16 + r)[:, None] * BT + (i * 16 + r)[None, :]
            b_eq = tl.exp(b_gi - g_ref[None, :])
            b_ek = tl.exp(g_ref[None, :] - b_gs)
            b_kg = _rows(k, tok_i, m_i, i_h, o_k, m_k, H, K).to(tl.float32) * b_ek
            b_part = tl.dot(tl.where(keep, tl.load(damat + p_D), 0.0), b_kg,
                            input_precision=PREC)
            if PAIR == COLUMNS:
                b_k2g = _rows(k2, tok_i, m_i, i_h, o_k, m_k, H, K).to(tl.float32) * b_ek
                b_part += tl.dot(tl.where(keep, tl.load(damat2 + p_D), 0.0), b_k2g,
                                 input_precision=PREC)
            if PAIR == ROWS:
                b_dq2 += tl.dot(tl.where(keep, tl.load(damat2 + p_D), 0.0), b_kg,
                                input_precision=PREC) * b_eq
            b_dq += b_part * b_eq
        else:
            for s in range(16):  # column by column
                p_s, m_s, b_e = _diagonal_column(gc, bos + i * 16 + s, s, eos, b_gi, b_G, r,
                                                 i_h, o_k, m_k, H, K, STRICT)
                p_col = base + (i * 16 + r) * BT + i * 16 + s  # dA[:, s]
                b_ke = tl.load(k + p_s, mask=m_s, other=0.0).to(tl.float32)[None, :] * b_e
                b_dq += tl.load(damat + p_col)[:, None] * b_ke
                if PAIR == COLUMNS:
                    b_k2s = tl.load(k2 + p_s, mask=m_s, other=0.0).to(tl.float32)
                    b_dq += tl.load(damat2 + p_col)[:, None] * b_k2s[None, :] * b_e
                if PAIR == ROWS:
                    b_dq2 += tl.load(damat2 + p_col)[:, None] * b_ke
        _put(dqi, b_dq, tok_i, m_i, i_h, o_k, m_k, H, K, False)
        if PAIR == ROWS:
            _put(dqi2, b_dq2, tok_i, m_i, i_h, o_k, m_k, H, K, False)
    if not ROWS_ONLY:
        for j in range(BT // 16):  # dk of row block j
            tok_j = bos + j * 16 + r
            m_j = tok_j < eos
            b_gj = _g_rows(gc, tok_j, m_j, b_G, i_h, o_k, m_k, H, K)
            b_r = _g_at(gc, bos + j * 16 + 15, eos, i_h, o_k, m_k, H, K)
            b_dk = tl.zeros([16, BK], dtype=tl.float32)
            b_dk2 = tl.zeros([16, BK], dtype=tl.float32)
            for i in range(j + 1, BT // 16):  # the blocks below the diagonal
                tok_i = bos + i * 16 + r
                m_i = tok_i < eos
                b_ei = tl.exp(_g_rows(gq, tok_i, m_i, b_G, i_h, o_k, m_k, H, K) - b_r[None, :])
                b_qg = _rows(q, tok_i, m_i, i_h, o_k, m_k, H, K).to(tl.float32) * b_ei
                p_A = base + (i * 16 + r)[:, None] * BT + (j * 16 + r)[None, :]
                b_dk += tl.dot(tl.trans(tl.load(damat + p_A)), b_qg, input_precision=PREC)
                if PAIR == COLUMNS:
                    b_dk2 += tl.dot(tl.trans(tl.load(damat2 + p_A)), b_qg,
                                    input_precision=PREC)
                if PAIR == ROWS:
                    b_q2g = _rows(q2, tok_i, m_i, i_h, o_k, m_k, H, K).to(tl.float32) * b_ei
                    b_dk += tl.dot(tl.trans(tl.load(damat2 + p_A)), b_q2g,
                                   input_precision=PREC)
            b_ej = tl.exp(b_r[None, :] - b_gj)  # their common factor
            b_dk *= b_ej
            if PAIR == COLUMNS:
                b_dk2 *= b_ej
            # the diagonal block: one product, or row by row (`_scores_kernel`'s DIAG_DOT)
            use_dot, g_ref, b_gr = False, b_G, b_gj  # (stand-ins without DIAG_DOT)
            if DIAG_DOT:
                if not SAME_G:
                    b_gr = _g_rows(gq, tok_j, m_j, b_G, i_h, o_k, m_k, H, K)
                g_ref, use_dot = _diagonal_span(b_gr, b_gj, DIAG_SPAN)
            if use_dot:
                keep = _lower(r, STRICT)
                p_D = base + (j * 16 + r)[:, None] * BT + (j * 16 + r)[None, :]
                b_dAt = tl.trans(tl.where(keep, tl.load(damat + p_D), 0.0))
                b_eq = tl.exp(b_gr - g_ref[None, :])
                b_ek = tl.exp(g_ref[None, :] - b_gj)
                b_qg = _rows(q, tok_j, m_j, i_h, o_k, m_k, H, K).to(tl.float32) * b_eq
                b_dk += tl.dot(b_dAt, b_qg, input_precision=PREC) * b_ek
                if PAIR == COLUMNS:
                    b_dA2t = tl.trans(tl.where(keep, tl.load(damat2 + p_D), 0.0))
                    b_dk2 += tl.dot(b_dA2t, b_qg, input_precision=PREC) * b_ek
                if PAIR == ROWS:
                    b_dA2t = tl.trans(tl.where(keep, tl.load(damat2 + p_D), 0.0))
                    b_q2g = _rows(q2, tok_j, m_j, i_h, o_k, m_k, H, K).to(tl.float32) * b_eq
                    b_dk += tl.dot(b_dA2t, b_q2g, input_precision=PREC) * b_ek
            else:
                for t in range(16):  # row by row
                    t_t = bos + j * 16 + t
                    ok = (o_k * 0 + t_t) < eos  # as a vector: the interpreter wants one
                    p_t = (t_t * H + i_h) * K + o_k
                    b_gt = tl.where(ok, tl.load(gq + p_t, mask=m_k & ok, other=0.0), b_G)
                    keep = (r[:, None] < t) if STRICT else (r[:, None] <= t)
                    b_e = tl.exp(tl.where(keep, b_gt[None, :] - b_gj, float("-inf")))
                    b_qe = tl.load(q + p_t, mask=m_k & ok,
                                   other=0.0).to(tl.float32)[None, :] * b_e
                    p_row = base + (j * 16 + t) * BT + j * 16 + r  # dA[t, :]
                    b_dk += tl.load(damat + p_row)[:, None] * b_qe
                    if PAIR == COLUMNS:
                        b_dk2 += tl.load(damat2 + p_row)[:, None] * b_qe
                    if PAIR == ROWS:
                        b_q2t = tl.load(q2 + p_t, mask=m_k & ok, other=0.0).to(tl.float32)
                        b_dk += tl.load(damat2 + p_row)[:, None] * b_q2t[None, :] * b_e
            _put(dki, b_dk, tok_j, m_j, i_h, o_k, m_k, H, K, ACC)
            if PAIR == COLUMNS:
                _put(dki2, b_dk2, tok_j, m_j, i_h, o_k, m_k, H, K, ACC)


@triton.jit
def _input_grads_kernel(q, k, v, ld, gc, h, do, dh, dqi, dki, dq, dk, dld, starts, ends,
                        H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, FLOOR: tl.constexpr,
                        PREC: tl.constexpr):
    """Per (chunk x K block, head): dq, dk (inter-chunk parts added to the intra ones) and dg,
    summed back into the log decays' gradient. Every term is per key channel, so the key
    axis splits across programs (dv, which sums over it, is `_dscores_kernel`'s)."""
    NK: tl.constexpr = (K + BK - 1) // BK
    i_c, i_k, i_h = tl.program_id(0) // NK, tl.program_id(0) % NK, tl.program_id(1)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    rows = tl.arange(0, BT)
    tok = bos + rows
    m_t = tok < eos
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)   # dO S
    b_dks = tl.zeros([BT, BK], dtype=tl.float32)  # V dS'
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
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.0)
        b_dq += tl.dot(b_do, b_S.to(b_do.dtype), input_precision=PREC)
        b_dks += tl.dot(b_v.to(b_do.dtype), b_dSe.to(b_do.dtype), input_precision=PREC)
        b_dGs += tl.sum(b_dSe * b_S.to(tl.float32), 0)
    b_G = _last_g(gc, bos, eos, i_h, o_k, m_k, H, K, BT)
    b_g = _g_rows(gc, tok, m_t, b_G, i_h, o_k, m_k, H, K)
    p_tk = (tok * H + i_h)[:, None] * K + o_k[None, :]
    qf = _rows(q, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32)
    kf = _rows(k, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32)
    b_dq = b_dq * tl.exp(b_g) + tl.load(dqi + p_tk, mask=m_tk, other=0.0)
    b_dkst = b_dks * tl.exp(b_G[None, :] - b_g)
    b_dk = b_dkst + tl.load(dki + p_tk, mask=m_tk, other=0.0)
    b_dg = qf * b_dq - kf * b_dk
    b_dG = tl.exp(b_G) * b_dGs + tl.sum(kf * b_dkst, 0)
    last = tl.minimum(bos + BT, eos) - 1 - bos
    b_dg += tl.where(rows[:, None] == last, b_dG[None, :], 0.0)
    b_dg = tl.where(m_t[:, None], b_dg, 0.0)
    b_dld = tl.sum(b_dg, 0)[None, :] - tl.cumsum(b_dg, 0) + b_dg  # reversed cumulative sum
    b_ld = _rows(ld, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32)
    b_dld = tl.where(b_ld >= FLOOR, b_dld, 0.0)  # the clamp's gradient
    tl.store(dq + p_tk, b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + p_tk, b_dk.to(dk.dtype.element_ty), mask=m_tk)
    tl.store(dld + p_tk, b_dld, mask=m_tk)


# --------------------------------------------------------------------------- host side
# chunk_channel's forward launch: warps of the cumulative sums, the scores and the output
# kernel; whether the scores kernel runs a program per row block of 16 (`scores_split`) or
# per chunk; the output kernel's V block (None: up to 64); and the state pass's
# (K block, V block, warps) when few sequences x heads run (`states_few`, below
# chunk_triton.STATE_PASSES["few"]; otherwise chunk_triton.split_state_launch's). From
# benchmarks/kernel_profile.py --models gla --sweep-forward --sweep-states on an H200 at
# (1, 16384, 16, 128), bf16 (docs/perf.md, ninth batch): forward 1.474 ms at the old
# launch (scores 4 warps per chunk, output 4 warps, states (64, 16, 4)); scores 2 warps per
# row block with output 2 warps, V block 128: 1.313 ms; states (32, 64, 8) alone: 1.153 ms.
# At (8, 2048, 16, 128) an H100 had scores at 2 warps 3% faster than at 4 (per chunk); the
# row-block programs and the state launch there are not timed.
# `scores_diag_dot`: the scores kernel's diagonal blocks of 16 as one tensor-core product
# each when their log decays span less than DIAG_SPAN in every channel (the others, and
# every block without it, column by column: 16 exponentials of [16, K] and 16 cross-thread
# reductions, which the ninth batch's profile put at about twice fla's sub_intra kernel,
# 592 against 262 us at (8, 2048)); the backward's `_intra_grads_kernel` follows it. Untimed
# on a GPU; it applies wherever these kernels run (GLA, KDA, RWKV-7, row decay).
# NLC_CHANNEL_FORWARD='{"scores_warps": 1, ...}' sets them for a run.
FORWARD = {"cumsum_warps": 4, "scores_warps": 2, "scores_split": True,
           "scores_diag_dot": True, "output_warps": 2, "output_BV": 128,
           "states_few": (32, 64, 8),
           **json.loads(os.environ.get("NLC_CHANNEL_FORWARD", "{}"))}


# chunk_channel's backward launch: warps of `_dscores_kernel` (which adds dv's state part
# over the whole key axis; None: 8 for keys of 128 or more, else 4) and the input-gradient
# kernel's key and value blocks and warps (the key axis split across programs). With it
# GLA's forward + backward is 0.86x fla's chunk_gla at (8, 2048, 16, 128) and 0.78x at
# (1, 16384, 16, 128) on an H100 (docs/perf.md, twelfth batch); the input-gradient kernel
# went from 1396 to 770 us. Not swept: these are the values first written.
# NLC_CHANNEL_BACKWARD='{"input_BK": 128, ...}' sets them for a run.
BACKWARD = {"dscores_warps": None, "input_BK": 64, "input_BV": 64, "input_warps": 4,
            **json.loads(os.environ.get("NLC_CHANNEL_BACKWARD", "{}"))}


def _state_launch(BK: int, BV: int, programs: int) -> tuple[int, int, int]:
    """(K block, V block, warps) of the forward's state pass."""
    if programs < STATE_PASSES["few"]:
        BKs, BVs, warps = FORWARD["states_few"]
        return min(BK, BKs), min(BV, BVs), warps
    return split_state_launch(BK, BV, programs)


# The two kernels with optional arguments launch through these, which pass every argument:
# torch.compile lowers a launch to learn which arguments it writes, and cannot when a
# kernel's own defaults fill some in (it then takes every argument as written, and the
# partition of a compiled graph fails; tests/test_compile_trace.py).
def _diag_dot(x: torch.Tensor) -> bool:
    """Whether the diagonal blocks take the product form for inputs of x's dtype: not for
    float16, whose largest value (65504) a factor of e^{DIAG_SPAN} times a key would pass."""
    return FORWARD["scores_diag_dot"] and x.dtype != torch.float16


def launch_scores(grid, q, k, gq, gc, amat, starts, ends, *, H, K, BT, BK, STRICT, PREC,
                  k2=None, q2=None, amat2=None, PAIR=0, num_warps=4, split=False):
    """`_scores_kernel` on `grid` (chunks, heads); `split`: a program per row block; the
    diagonal blocks as FORWARD["scores_diag_dot"] says, for every family that calls it."""
    if split:
        grid = (grid[0] * (BT // 16), *grid[1:])
    _scores_kernel[grid](q, k, gq, gc, amat, starts, ends, H=H, K=K, BT=BT, BK=BK,
                         STRICT=STRICT, PREC=PREC, k2=k2, q2=q2, amat2=amat2, PAIR=PAIR,
                         SPLIT=split, DIAG_DOT=_diag_dot(q), DIAG_SPAN=DIAG_SPAN,
                         SAME_G=gq is gc, num_warps=num_warps)


def launch_dscores(grid, v, do, amat, damat, dv, starts, ends, *, H, V, BT, BV, PREC,
                   k=None, gc=None, dh=None, K=16, BK=16, num_warps=4):
    """`_dscores_kernel` on `grid` (chunks, heads); given the state gradients `dh` (with k
    and the cumulative log decays gc), dv's state part too."""
    _dscores_kernel[grid](v, do, amat, damat, dv, starts, ends, k, gc, dh, H=H, V=V, BT=BT,
                          BV=BV, PREC=PREC, K=K, BK=BK, STATE=dh is not None,
                          num_warps=num_warps)


def launch_intra_grads(grid, q, k, gq, gc, damat, dqi, dki, starts, ends, *, H, K, BT, BK,
                       STRICT, ACC, PREC, ROWS_ONLY=False, k2=None, q2=None, damat2=None,
                       dki2=None, dqi2=None, PAIR=0):
    """`_intra_grads_kernel` on `grid`, 4 warps."""
    _intra_grads_kernel[grid](q, k, gq, gc, damat, dqi, dki, starts, ends, H=H, K=K, BT=BT,
                              BK=BK, STRICT=STRICT, ACC=ACC, PREC=PREC, ROWS_ONLY=ROWS_ONLY,
                              k2=k2, q2=q2, damat2=damat2, dki2=dki2, dqi2=dqi2, PAIR=PAIR,
                              DIAG_DOT=_diag_dot(q), DIAG_SPAN=DIAG_SPAN,
                              SAME_G=gq is gc, num_warps=4)


def _forward(q, k, v, ld, h0, table, BT):
    N, H, K = k.shape
    V = v.shape[-1]
    BK, BV = pow2(K), min(pow2(V), 64)
    prec = dot_precision(q.dtype)
    dev = q.device
    NC, S = table.chunks, table.sequences
    gc = torch.empty(N, H, K, dtype=torch.float32, device=dev)
    _cumsum_kernel[(NC, H)](ld, gc, table.starts, table.ends, H=H, K=K, BT=BT, BK=BK,
                            FLOOR=LOG_DECAY_FLOOR, num_warps=FORWARD["cumsum_warps"])
    amat = torch.zeros(NC, H, BT, BT, dtype=torch.float32, device=dev)
    launch_scores((NC, H), q, k, gc, gc, amat, table.starts, table.ends, H=H, K=K, BT=BT,
                  BK=BK, STRICT=False, PREC=prec, num_warps=FORWARD["scores_warps"],
                  split=FORWARD["scores_split"])
    h = torch.empty(NC, H, V, K, dtype=q.dtype, device=dev)
    ht = torch.empty(S, H, V, K, dtype=torch.float32, device=dev)
    BKs, BVs, warps = _state_launch(BK, pow2(V), S * H)
    NK = triton.cdiv(K, BKs)
    _states_kernel[(triton.cdiv(V, BVs) * NK, S * H)](
        k, v, gc, h, h0, ht, table.bounds, table.offsets, H=H, K=K, V=V, BT=BT,
        BK=BKs, BV=BVs, NK=NK, HAS_H0=h0 is not None, PREC=prec, num_warps=warps)
    o = torch.empty_like(v)
    BVo = min(FORWARD["output_BV"] or BV, pow2(V))
    _output_kernel[(triton.cdiv(V, BVo), NC, H)](
        q, v, gc, h, amat, o, None, None, table.starts, table.ends, H=H, K=K, V=V, BT=BT,
        BK=BK, BV=BVo, TWO=False, PREC=prec, num_warps=FORWARD["output_warps"])
    return o, ht, (gc, amat, h)


def _backward(q, k, v, ld, saved, do, dht, table, BT):
    gc, amat, h = saved
    N, H, K = k.shape
    V = v.shape[-1]
    BK, BV = pow2(K), min(pow2(V), 64)
    prec = dot_precision(q.dtype)
    dev = q.device
    NC, S = table.chunks, table.sequences
    f32 = {"dtype": torch.float32, "device": dev}
    dh = torch.empty(NC, H, V, K, **f32)
    dh0 = torch.empty(S, H, V, K, **f32)
    BKs, BVs, warps = split_state_launch(BK, pow2(V), S * H)
    NK = triton.cdiv(K, BKs)
    _state_grads_kernel[(triton.cdiv(V, BVs) * NK, S * H)](
        q, do, gc, dh, dht, dh0, table.bounds, table.offsets, H=H, K=K, V=V, BT=BT, BK=BKs,
        BV=BVs, NK=NK, HAS_DHT=dht is not None, PREC=prec, num_warps=warps)
    damat = torch.empty(NC, H, BT, BT, **f32)
    dv = torch.empty(N, H, V, **f32)
    launch_dscores((NC, H), v, do, amat, damat, dv, table.starts, table.ends, H=H, V=V, BT=BT,
                   BV=min(BV, 32), PREC=prec, k=k, gc=gc, dh=dh, K=K, BK=BK,
                   num_warps=BACKWARD["dscores_warps"] or (8 if BK >= 128 else 4))
    dqi = torch.empty(N, H, K, **f32)
    dki = torch.empty(N, H, K, **f32)
    launch_intra_grads((NC, H), q, k, gc, gc, damat, dqi, dki, table.starts, table.ends, H=H,
                       K=K, BT=BT, BK=BK, STRICT=False, ACC=False, PREC=prec)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dld = torch.empty(N, H, K, **f32)
    BKi = min(BK, BACKWARD["input_BK"])
    _input_grads_kernel[(NC * triton.cdiv(K, BKi), H)](
        q, k, v, ld, gc, h, do, dh, dqi, dki, dq, dk, dld, table.starts, table.ends, H=H, K=K,
        V=V, BT=BT, BK=BKi, BV=min(pow2(V), BACKWARD["input_BV"]), FLOOR=LOG_DECAY_FLOOR,
        PREC=prec, num_warps=BACKWARD["input_warps"])
    return dq, dk, dv.to(v.dtype), dld, dh0


class ChunkChannelDecay(torch.autograd.Function):
    """Packed `[N, H, *]` tensors; see `chunk_channel`."""

    @staticmethod
    def forward(ctx, q, k, v, ld, h0, bounds, chunk):
        table = chunk_table(bounds, chunk, q.device)
        o, ht, saved = _forward(q, k, v, ld, h0, table, chunk)
        ctx.save_for_backward(q, k, v, ld, *saved)
        ctx.meta = (table, chunk, h0.dtype if h0 is not None else None)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, ld, *saved = ctx.saved_tensors
        table, chunk, h0_dtype = ctx.meta
        dq, dk, dv, dld, dh0 = _backward(q, k, v, ld, saved, do.contiguous(),
                                         dht.contiguous() if dht is not None else None,
                                         table, chunk)
        return (dq, dk, dv, dld.to(ld.dtype),
                dh0.to(h0_dtype) if h0_dtype is not None else None, None, None)


def chunk_channel(q, k, v, beta=None, log_decay=None, *, initial_state=None, cu_seqlens=None,
                  chunk_size=64):
    """The decay family with a decay per key channel, chunked on the GPU.

    q, k `[B, T, H, K]`, v `[B, T, H, V]`, log_decay `[B, T, H, K]`, initial_state
    `[B, H, V, K]` (or `[S, H, V, K]` for S packed sequences with `cu_seqlens`, B = 1).
    `beta` must be None (the delta rule with a channel decay is chunk_kda_triton.py's).
    Returns `(o [B, T, H, V], final state float32)`."""
    if beta is not None:
        raise ValueError("chunk_channel is the decay family: the delta rule with a "
                         "per-channel decay is chunk_kda (chunk_kda_triton.py)")
    check_inputs(q, k, v, None, log_decay, initial_state, cu_seqlens, channel=True)
    B, T, H, K = q.shape
    V = v.shape[-1]
    check_dims(K, V, chunk_size)
    if log_decay is None:
        raise ValueError("chunk_channel needs log_decay [B, T, H, K]")
    bounds = boundaries(B, T, cu_seqlens)
    dtype = compute_dtype(q)

    def packed(x, width):
        return x.to(dtype).reshape(B * T, H, width).contiguous()

    o, ht = ChunkChannelDecay.apply(
        packed(q, K), packed(k, K), packed(v, V), log_decay.reshape(B * T, H, K).contiguous(),
        None if initial_state is None else initial_state.contiguous(), bounds, chunk_size)
    return o.reshape(B, T, H, V), ht
