"""Chunked Triton kernels, forward and backward, for the dplr family (RWKV-7; Peng et al.,
arXiv:2503.14456, 2025, eq. 17, in our convention):

    S_t = S_{t-1} (D_t + a_t b_t^T) + v_t k_t^T,   o_t = S_t q_t,   S: [V, K],  D_t = Diag(e^ld_t)

The algorithm is runtime/library/chunked.py's `dplr_chunked_torch`. In a chunk, g is the
cumulative log decay per channel ([C, K]), gx = g - ld the same up to the token before (where
a_t meets the state), G the last row of g, S the state at the chunk's start:

  scores (per chunk):   P_qk, P_qb [t, s] = sum_c q_tc {k, b}_sc e^{g_tc - g_sc}   (s <= t)
                        A_ak, A_ab [t, s] = sum_c a_tc {k, b}_sc e^{gx_tc - g_sc}  (s < t)
  prepare (per chunk):  T = (I - A_ab)^-1,  W = -T (A * e^gx),  U0 = T A_ak V
  states (sequential):  U = U0 - W S^T,  S' = S diag(e^G) + (U^T B + V^T K) e^{G - g}
  output (per chunk):   O = (Q * e^g) S^T + P_qk V + P_qb U

U (the state read along a, S_{t-1} a_t) is the delta rule's Delta with b in place of the key
and the sign of W flipped, so the sequential passes are chunk_kda_triton.py's, forward (with
the second input term V^T K) and backward; the scores and their gradients are
chunk_decay_triton.py's, one launch per row input with the columns k and b as a pair (rows at
gx, strictly lower for A_ak and A_ab), T its block inverse
(chunk_delta_triton.py). The forward saves one state per chunk, no per-token state; the
backward recomputes the rest per chunk. Log decays are clamped at LOG_DECAY_FLOOR, so decays of
exactly 0 stay finite, forward and backward."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from nlc.runtime.library.chunk_decay_triton import (
    COLUMNS,
    _cumsum_kernel,
    _g_rows,
    _last_g,
    _output_kernel,
    _put,
    _rows,
    launch_dscores,
    launch_intra_grads,
    launch_scores,
)
from nlc.runtime.library.chunk_inverse_triton import _solve_kernel
from nlc.runtime.library.chunk_kda_triton import (
    _chunk_square,
    _sizes,
    _state_grads_kernel,
    _states_kernel,
)
from nlc.runtime.library.chunk_state_triton import _tokens
from nlc.runtime.library.chunk_triton import (
    LOG_DECAY_FLOOR,
    SUPPORTED_DTYPES,
    boundaries,
    check_dims,
    check_inputs,
    chunk_table,
    compute_dtype,
    dot_precision,
    pow2,
)


# --------------------------------------------------------------------------- forward
@triton.jit
def _wu_kernel(a, v, gc, gx, tinv, aak, w, u, starts, ends,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
               BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """Per (chunk, head): W = -T (A * e^gx) and U0 = (T A_ak) V (V in blocks of BV)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    rows = tl.arange(0, BT)
    tok = bos + rows
    m_t = tok < eos
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    b_G = _last_g(gc, bos, eos, i_h, o_k, m_k, H, K, BT)
    b_gx = _g_rows(gx, tok, m_t, b_G, i_h, o_k, m_k, H, K)
    p_sq = _chunk_square(i_c, i_h, H, BT)
    b_T = tl.load(tinv + p_sq)
    b_a = _rows(a, tok, m_t, i_h, o_k, m_k, H, K)
    b_x = (b_a.to(tl.float32) * tl.exp(b_gx)).to(b_a.dtype)
    b_w = -tl.dot(b_T.to(b_a.dtype), b_x, input_precision=PREC)
    tl.store(w + (tok * H + i_h)[:, None] * K + o_k[None, :], b_w.to(w.dtype.element_ty),
             mask=m_t[:, None] & m_k[None, :])
    b_M = tl.dot(b_T, tl.load(aak + p_sq), input_precision=PREC)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        p_tv = (tok * H + i_h)[:, None] * V + o_v[None, :]
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.0)
        b_u = tl.dot(b_M.to(b_v.dtype), b_v, input_precision=PREC)
        tl.store(u + p_tv, b_u.to(u.dtype.element_ty), mask=m_tv)


# --------------------------------------------------------------------------- backward
@triton.jit
def _value_sums_kernel(k, v, gc, h, d, tinv, aak, do, dd, dva, dh, dv, dqs, dks, dbs, dws, duv,
                       dgs, starts, ends, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                       BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       PREC: tl.constexpr):
    """Per (chunk, head), V walked in blocks of BV: dv = dva (P_qk^T dO) + (K e^{G-g}) dS'^T +
    (T A_ak)^T dU, and the sums over V that `_key_grads_kernel` finishes, in float32: dO S,
    V dS', U dS', dU S ([N, H, K] each), dU V^T ([BT, BT] a chunk) and the column sums of
    dS' * S ([K] a chunk). `dd` is U's gradient (chunk_kda_triton's state pass). Two kernels,
    not one: the end's tiles spilled when they shared a kernel with these sums."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos, eos = tl.load(starts + i_c), tl.load(ends + i_c)
    tok, m_t = _tokens(bos, eos, BT)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    b_G = _last_g(gc, bos, eos, i_h, o_k, m_k, H, K, BT)
    b_k = _rows(k, tok, m_t, i_h, o_k, m_k, H, K)
    b_kd = (b_k.to(tl.float32) * tl.exp(b_G[None, :] - _g_rows(gc, tok, m_t, b_G, i_h, o_k,
                                                                 m_k, H, K))).to(b_k.dtype)
    p_sq = _chunk_square(i_c, i_h, H, BT)
    b_M = tl.dot(tl.load(tinv + p_sq), tl.load(aak + p_sq), input_precision=PREC)
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)   # dO S
    b_dks = tl.zeros([BT, BK], dtype=tl.float32)  # V dS'
    b_dbs = tl.zeros([BT, BK], dtype=tl.float32)  # U dS'
    b_dws = tl.zeros([BT, BK], dtype=tl.float32)  # dU S
    b_duv = tl.zeros([BT, BT], dtype=tl.float32)  # dU V^T
    b_dGs = tl.zeros([BK], dtype=tl.float32)      # column sums of dS' * S
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        m_vk = m_v[:, None] & m_k[None, :]
        p_tv = (tok * H + i_h)[:, None] * V + o_v[None, :]
        p_vk = ((i_c * H + i_h) * V + o_v[:, None]) * K + o_k[None, :]
        b_S = tl.load(h + p_vk, mask=m_vk, other=0.0).to(tl.float32)
        b_dSe = tl.load(dh + p_vk, mask=m_vk, other=0.0)
        b_do = tl.load(do + p_tv, mask=m_tv, other=0.0).to(tl.float32)
        b_du = tl.load(dd + p_tv, mask=m_tv, other=0.0)
        b_u = tl.load(d + p_tv, mask=m_tv, other=0.0).to(tl.float32)
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.0).to(tl.float32)
        b_dq += tl.dot(b_do, b_S, input_precision=PREC)
        b_dks += tl.dot(b_v, b_dSe, input_precision=PREC)
        b_dbs += tl.dot(b_u, b_dSe, input_precision=PREC)
        b_dGs += tl.sum(b_dSe * b_S, 0)
        b_dws += tl.dot(b_du, b_S, input_precision=PREC)
        b_duv += tl.dot(b_du, tl.trans(b_v), input_precision=PREC)
        b_dv = tl.load(dva + p_tv, mask=m_tv, other=0.0)
        b_dv += tl.dot(b_kd, tl.trans(b_dSe.to(b_kd.dtype)), input_precision=PREC)
        b_dv += tl.dot(tl.trans(b_M), b_du, input_precision=PREC)
        tl.store(dv + p_tv, b_dv.to(dv.dtype.element_ty), mask=m_tv)
    _put(dqs, b_dq, tok, m_t, i_h, o_k, m_k, H, K, False)
    _put(dks, b_dks, tok, m_t, i_h, o_k, m_k, H, K, False)
    _put(dbs, b_dbs, tok, m_t, i_h, o_k, m_k, H, K, False)
    _put(dws, b_dws, tok, m_t, i_h, o_k, m_k, H, K, False)
    tl.store(duv + p_sq, b_duv)
    tl.store(dgs + (i_c * H + i_h) * K + o_k, b_dGs, mask=m_k)


@triton.jit
def _key_grads_kernel(q, k, a, b, gc, gx, tinv, aak, dqs, dks, dbs, dws, duv, dgs, daak, daab,
                      dqp, dkp, dap, dbp, dgp, dgxp, starts, ends, H: tl.constexpr,
                      K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                      PREC: tl.constexpr):
    """Per (chunk, head), from `_value_sums_kernel`'s sums, K walked in blocks of BK (every
    step is per key channel but dT's sum over K): the score gradients
    dA_ak = strict_lower(T^T dU V^T) and dA_ab = strict_lower(T^T dT T^T) (for
    `_intra_grads_kernel`), and every part of dq, dk, da, db and the gradients of g and gx that
    does not come from the scores: the read of S, the end state, W and U0."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos, eos = tl.load(starts + i_c), tl.load(ends + i_c)
    tok, m_t = _tokens(bos, eos, BT)
    rows = tl.arange(0, BT)
    last = tl.minimum(bos + BT, eos) - 1 - bos
    p_sq = _chunk_square(i_c, i_h, H, BT)
    b_T = tl.load(tinv + p_sq)
    b_duv = tl.load(duv + p_sq)
    # U = U0 + T X S^T with X = A * e^gx, U0 = T A_ak V: dT = dU V^T A_ak^T + dU S X^T
    b_dT = tl.dot(b_duv, tl.trans(tl.load(aak + p_sq)), input_precision=PREC)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        p_tk = (tok * H + i_h)[:, None] * K + o_k[None, :]
        b_G = _last_g(gc, bos, eos, i_h, o_k, m_k, H, K, BT)
        b_g = _g_rows(gc, tok, m_t, b_G, i_h, o_k, m_k, H, K)
        # the read of the chunk-start state: O += (Q * e^g) S^T
        b_dq = tl.load(dqs + p_tk, mask=m_tk, other=0.0) * tl.exp(b_g)
        tl.store(dqp + p_tk, b_dq, mask=m_tk)
        b_dg = _rows(q, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32) * b_dq
        # the end state: S' = S diag(e^G) + (U^T B + V^T K) e^{G - g}
        fade = tl.exp(b_G[None, :] - b_g)
        kf = _rows(k, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32)
        bf = _rows(b, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32)
        b_dk = tl.load(dks + p_tk, mask=m_tk, other=0.0) * fade
        b_db = tl.load(dbs + p_tk, mask=m_tk, other=0.0) * fade
        tl.store(dkp + p_tk, b_dk, mask=m_tk)
        tl.store(dbp + p_tk, b_db, mask=m_tk)
        b_dke = kf * b_dk + bf * b_db
        b_dG = tl.exp(b_G) * tl.load(dgs + (i_c * H + i_h) * K + o_k, mask=m_k, other=0.0)
        b_dG += tl.sum(b_dke, 0)
        b_dg += tl.where(rows[:, None] == last, b_dG[None, :], 0.0) - b_dke
        tl.store(dgp + p_tk, b_dg, mask=m_tk)
        # the state read along a: X = A * e^gx
        egx = tl.exp(_g_rows(gx, tok, m_t, b_G, i_h, o_k, m_k, H, K))
        b_x = _rows(a, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32) * egx
        b_dws = tl.load(dws + p_tk, mask=m_tk, other=0.0)
        b_dT += tl.dot(b_dws, tl.trans(b_x), input_precision=PREC)
        b_dx = tl.dot(tl.trans(b_T), b_dws, input_precision=PREC)
        tl.store(dap + p_tk, b_dx * egx, mask=m_tk)
        tl.store(dgxp + p_tk, b_dx * b_x, mask=m_tk)
    strict = rows[:, None] > rows[None, :]
    b_dAak = tl.dot(tl.trans(b_T), b_duv, input_precision=PREC)
    tl.store(daak + p_sq, tl.where(strict, b_dAak, 0.0))
    # T = (I - A_ab)^-1: dA_ab = T^T dT T^T, strictly lower
    b_dAab = tl.dot(tl.dot(tl.trans(b_T), b_dT, input_precision=PREC), tl.trans(b_T),
                    input_precision=PREC)
    tl.store(daab + p_sq, tl.where(strict, b_dAab, 0.0))


@triton.jit
def _combine_kernel(q, k, a, b, ld, dqp, dkp, dap, dbp, dgp, dgxp, dqi, dki, dai, dbi,
                    dq, dk, da, db, dld, starts, ends,
                    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                    FLOOR: tl.constexpr):
    """Per (chunk, head): dq, dk, da, db with the scores' parts added, and the gradients of g
    and gx summed back into the log decays': a score x_t . y_s e^{g_t - g_s} gives
    dg_t += x_t * dx_t, dg_s -= y_s * dy_s; gx = g - ld."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    tok = bos + tl.arange(0, BT)
    m_t = tok < eos
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    b_dqi = _rows(dqi, tok, m_t, i_h, o_k, m_k, H, K)
    b_dki = _rows(dki, tok, m_t, i_h, o_k, m_k, H, K)
    b_dai = _rows(dai, tok, m_t, i_h, o_k, m_k, H, K)
    b_dbi = _rows(dbi, tok, m_t, i_h, o_k, m_k, H, K)
    b_dg = _rows(dgp, tok, m_t, i_h, o_k, m_k, H, K) \
        + _rows(q, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32) * b_dqi \
        - _rows(k, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32) * b_dki \
        - _rows(b, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32) * b_dbi
    b_dgx = _rows(dgxp, tok, m_t, i_h, o_k, m_k, H, K) \
        + _rows(a, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32) * b_dai
    b_dg = tl.where(m_t[:, None], b_dg + b_dgx, 0.0)
    b_dld = tl.sum(b_dg, 0)[None, :] - tl.cumsum(b_dg, 0) + b_dg - b_dgx  # reversed cumsum
    b_ld = _rows(ld, tok, m_t, i_h, o_k, m_k, H, K).to(tl.float32)
    b_dld = tl.where(b_ld >= FLOOR, b_dld, 0.0)  # the clamp's gradient
    p_tk = (tok * H + i_h)[:, None] * K + o_k[None, :]
    tl.store(dq + p_tk, (_rows(dqp, tok, m_t, i_h, o_k, m_k, H, K) + b_dqi)
             .to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + p_tk, (_rows(dkp, tok, m_t, i_h, o_k, m_k, H, K) + b_dki)
             .to(dk.dtype.element_ty), mask=m_tk)
    tl.store(da + p_tk, (_rows(dap, tok, m_t, i_h, o_k, m_k, H, K) + b_dai)
             .to(da.dtype.element_ty), mask=m_tk)
    tl.store(db + p_tk, (_rows(dbp, tok, m_t, i_h, o_k, m_k, H, K) + b_dbi)
             .to(db.dtype.element_ty), mask=m_tk)
    tl.store(dld + p_tk, b_dld, mask=m_tk)


# --------------------------------------------------------------------------- host side
# the key side's backward kernels' steps (at K = V = 128 and 8 warps, the largest without
# spills for the second: benchmarks/kernel_resources.py; the first spills about 200 bytes)
SUMS_BLOCK = 16  # `_value_sums_kernel`'s value channels a step
KEY_BLOCK = 16   # `_key_grads_kernel`'s key channels a step


def _scores(x, ys, gq, gc, table, BT, strict, prec):
    """The two score matrices of rows x (at gq) with columns ys = (k, b) (at gc) per
    (chunk, head), `[NC, H, BT, BT]` each, from one launch."""
    NC, (_, H, K) = table.chunks, x.shape
    pair = [torch.zeros(NC, H, BT, BT, dtype=torch.float32, device=x.device)  # lower blocks
            for _ in range(2)]
    launch_scores((NC, H), x, ys[0], gq, gc, pair[0], table.starts, table.ends, H=H, K=K,
                  BT=BT, BK=pow2(K), STRICT=strict, PREC=prec, k2=ys[1], amat2=pair[1],
                  PAIR=COLUMNS)
    return pair


def _forward(q, k, v, a, b, ld, h0, table, BT):
    N, H, K, V, BK, BV, (BVs, warps) = _sizes(k, v, table)
    prec = dot_precision(q.dtype)
    NC, S = table.chunks, table.sequences
    f32 = {"dtype": torch.float32, "device": q.device}
    rows = {"starts": table.starts, "ends": table.ends}
    gc = torch.empty(N, H, K, **f32)
    _cumsum_kernel[(NC, H)](ld, gc, **rows, H=H, K=K, BT=BT, BK=BK, FLOOR=LOG_DECAY_FLOOR,
                            num_warps=4)
    # g up to the token before: g's own floats shifted by a row, so that gx_t - g_{t-1} is
    # exactly 0 (g - ld would round, by as much as 1e-5 after a clamped decay of 0)
    gx = gc.roll(1, 0)
    gx[table.starts.long()] = 0.0
    pqk, pqb = _scores(q, (k, b), gc, gc, table, BT, False, prec)
    aak, aab = _scores(a, (k, b), gx, gc, table, BT, True, prec)
    tinv = torch.empty(NC, H, BT, BT, **f32)
    _solve_kernel[(NC, H)](aab.neg_(), tinv, H=H, BT=BT, BATCHED=False, num_warps=1)
    w = torch.empty_like(k)
    u = torch.empty_like(v)
    _wu_kernel[(NC, H)](a, v, gc, gx, tinv, aak, w, u, **rows, H=H, K=K, V=V, BT=BT, BK=BK,
                        BV=BV, PREC=prec, num_warps=4)
    h = torch.empty(NC, H, V, K, dtype=q.dtype, device=q.device)
    ht = torch.empty(S, H, V, K, **f32)
    d = torch.empty_like(v)
    _states_kernel[(triton.cdiv(V, BVs), S * H)](
        b, u, w, gc, h, d, h0, ht, k, v, table.bounds, table.offsets, H=H, K=K, V=V, BT=BT,
        BK=BK, BV=BVs, HAS_H0=h0 is not None, TWO=True, PREC=prec, num_warps=warps)
    o = torch.empty_like(v)
    _output_kernel[(triton.cdiv(V, BV), NC, H)](
        q, v, gc, h, pqk, o, d, pqb, **rows, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, TWO=True,
        PREC=prec, num_warps=4)
    return o, ht, (gc, gx, pqk, pqb, aak, tinv, w, d, h)


def _backward(q, k, v, a, b, ld, saved, do, dht, table, BT):
    gc, gx, pqk, pqb, aak, tinv, w, d, h = saved
    N, H, K, V, BK, BV, (BVs, warps) = _sizes(k, v, table)
    prec = dot_precision(q.dtype)
    NC, S = table.chunks, table.sequences
    f32 = {"dtype": torch.float32, "device": q.device}
    rows = {"starts": table.starts, "ends": table.ends}
    dpqk, dpqb = torch.empty(NC, H, BT, BT, **f32), torch.empty(NC, H, BT, BT, **f32)
    dva = torch.empty(N, H, V, **f32)  # P_qk^T dO
    dd = torch.empty(N, H, V, **f32)   # dU: P_qb^T dO, then the state part
    launch_dscores((NC, H), v, do, pqk, dpqk, dva, **rows, H=H, V=V, BT=BT, BV=min(BV, 32),
                   PREC=prec)
    launch_dscores((NC, H), d, do, pqb, dpqb, dd, **rows, H=H, V=V, BT=BT, BV=min(BV, 32),
                   PREC=prec)
    dh = torch.empty(NC, H, V, K, **f32)
    dh0 = torch.empty(S, H, V, K, **f32)
    _state_grads_kernel[(triton.cdiv(V, BVs), S * H)](
        q, b, w, do, gc, dd, dh, dht, dh0, table.bounds, table.offsets, H=H, K=K, V=V,
        BT=BT, BK=BK, BV=BVs, HAS_DHT=dht is not None, PREC=prec, num_warps=warps)
    dv = torch.empty_like(v)
    daak, daab, duv = (torch.empty(NC, H, BT, BT, **f32) for _ in range(3))
    dgs = torch.empty(NC, H, K, **f32)
    parts = [torch.empty(N, H, K, **f32) for _ in range(14)]
    dqs, dks, dbs, dws, dqp, dkp, dap, dbp, dgp, dgxp, dqi, dki, dai, dbi = parts
    warps = 8 if BK >= 128 else 4
    _value_sums_kernel[(NC, H)](
        k, v, gc, h, d, tinv, aak, do, dd, dva, dh, dv, dqs, dks, dbs, dws, duv, dgs, **rows,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=min(BV, SUMS_BLOCK), PREC=prec, num_warps=warps)
    _key_grads_kernel[(NC, H)](
        q, k, a, b, gc, gx, tinv, aak, dqs, dks, dbs, dws, duv, dgs, daak, daab, dqp, dkp, dap,
        dbp, dgp, dgxp, **rows, H=H, K=K, BT=BT, BK=min(BK, KEY_BLOCK), PREC=prec,
        num_warps=warps)
    # each input meets one cumulative log decay in every score: q and a as rows (at g, gx),
    # k and b as columns (at g), so the four scores' gradients add up per input; one launch
    # per row input, the second adding to dki and dbi
    for x, gq, ds, dx, strict, acc in ((q, gc, (dpqk, dpqb), dqi, False, False),
                                       (a, gx, (daak, daab), dai, True, True)):
        launch_intra_grads((NC, H), x, k, gq, gc, ds[0], dx, dki, **rows, H=H, K=K, BT=BT,
                           BK=BK, STRICT=strict, ACC=acc, PREC=prec, k2=b, damat2=ds[1],
                           dki2=dbi, PAIR=COLUMNS)
    dq, dk, da, db = (torch.empty_like(x) for x in (q, k, a, b))
    dld = torch.empty(N, H, K, **f32)
    _combine_kernel[(NC, H)](q, k, a, b, ld, dqp, dkp, dap, dbp, dgp, dgxp, dqi, dki, dai, dbi,
                             dq, dk, da, db, dld, **rows, H=H, K=K, BT=BT, BK=BK,
                             FLOOR=LOG_DECAY_FLOOR, num_warps=warps)
    return dq, dk, dv, da, db, dld, dh0


class ChunkDPLR(torch.autograd.Function):
    """Packed `[N, H, *]` tensors; see `chunk_dplr`."""

    @staticmethod
    def forward(ctx, q, k, v, a, b, ld, h0, bounds, chunk):
        table = chunk_table(bounds, chunk, q.device)
        o, ht, saved = _forward(q, k, v, a, b, ld, h0, table, chunk)
        ctx.save_for_backward(q, k, v, a, b, ld, *saved)
        ctx.meta = (table, chunk, h0.dtype if h0 is not None else None)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, a, b, ld, *saved = ctx.saved_tensors
        table, chunk, h0_dtype = ctx.meta
        dq, dk, dv, da, db, dld, dh0 = _backward(
            q, k, v, a, b, ld, saved, do.contiguous(),
            dht.contiguous() if dht is not None else None, table, chunk)
        return (dq, dk, dv, da, db, dld.to(ld.dtype),
                dh0.to(h0_dtype) if h0_dtype is not None else None, None, None)


def chunk_dplr(q, k, v, a, b, log_decay=None, *, initial_state=None, cu_seqlens=None,
               chunk_size=64):
    """The dplr family (RWKV-7), chunked on the GPU: S_t = S_{t-1} (D_t + a_t b_t^T) +
    v_t k_t^T, o_t = S_t q_t, D_t = Diag(e^log_decay_t).

    q, k, a, b `[B, T, H, K]`, v `[B, T, H, V]`, log_decay `[B, T, H, K]` (None: no decay),
    initial_state `[B, H, V, K]` (or `[S, H, V, K]` for S packed sequences with
    `cu_seqlens`, B = 1). Returns `(o [B, T, H, V], final state float32)`."""
    check_inputs(q, k, v, None, log_decay, initial_state, cu_seqlens, channel=True)
    B, T, H, K = q.shape
    for name, x in (("a", a), ("b", b)):
        if list(x.shape) != [B, T, H, K]:
            raise ValueError(f"{name} must be {[B, T, H, K]}, got {list(x.shape)}")
        if x.dtype not in SUPPORTED_DTYPES or x.device != q.device:
            raise ValueError(f"{name} must be float32, bfloat16 or float16 on {q.device}, "
                             f"got {x.dtype} on {x.device}")
    V = v.shape[-1]
    check_dims(K, V, chunk_size)
    bounds = boundaries(B, T, cu_seqlens)
    dtype = compute_dtype(q)
    if log_decay is None:
        log_decay = q.new_zeros(B, T, H, K, dtype=torch.float32)

    def packed(x, width):
        return x.to(dtype).reshape(B * T, H, width).contiguous()

    o, ht = ChunkDPLR.apply(
        packed(q, K), packed(k, K), packed(v, V), packed(a, K), packed(b, K),
        log_decay.reshape(B * T, H, K).contiguous(),
        None if initial_state is None else initial_state.contiguous(), bounds, chunk_size)
    return o.reshape(B, T, H, V), ht
