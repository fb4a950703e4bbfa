"""The affine combine of runtime/library/affine_chunk.py (`low_rank`) as two Triton kernels,
forward and backward, for one chunk of C <= 64 tokens and every (batch, head):

    rhs = R[t-1, -1] (W_0 u_t) + sum_s (R[t-1, s] (u_t . row_s)) col_s      [C, r]
    a = (I - L)^-1 rhs,  L[t, s] = R[t-1, s] e_s (u_t . w_s)  (s < t)     (the erase columns)
    last = R[C-1, -1] W_0 + sum_s R[C-1, s] (col_s row_s^T + e_s a_s w_s^T)

with the P input pairs (col, row) taken as P * C tokens of one sum (the same retention per
pair). The retention products R stay in PyTorch (`affine_chunk._Products`, shared by a
chunk's states); the kernels take them, the Gram and right-hand-side products, the unit
lower-triangular inverse (forward substitution, chunk_inverse_triton.py's), the erase pair
(e a, w) and the last state. The rows of W (r) are independent in the forward pass: a
program per (batch, head, block of rows). The backward pass recomputes a and runs one
program per (batch, head) over the row blocks, summing what the rows share (the Gram
products' gradients) in registers; it stores nothing from the forward pass but its inputs.

Products are exact float32 (`ieee`, as the other float32 kernels). At chunks above 16 those
spill kilobytes a thread (the FMA products hold whole operand rows per thread; docs/perf.md,
"The affine combine as Triton kernels"), and `NLC_AFFINE_PREC=tf32x3` (three TF32
tensor-core products) spills less, but on an H100 it put Hope's layer 7.9e-4 from float64
in W_x's gradient, where exact products stay at the float32 PyTorch forms' 1.1e-6
(benchmarks/layer_precision.py, docs/perf.md "sixth batch"): it is not the default.

Every per-token input is read through its strides (views and broadcast batches are not
copied); gradients come back dense. Without an erase a W wider than tall is taken transposed
(`_Layout`), so that the row blocks always walk the longer axis."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from nlc.runtime.library.chunk_inverse_triton import _unit_lower_inverse
from nlc.runtime.library.chunk_triton import pow2

LAUNCHES = {"forward": 0, "backward": 0}   # kernel launches, for tests that check the path ran
MAX_CHUNK = 64          # the [C, C] inverse is held in registers
MAX_COLUMNS = 128       # a block of W's rows holds all n columns
MAX_ERASE_TILE = 4096   # the [C, n] tiles of an erase's column and row
MAX_PAIR_TOKENS = 128   # P pairs x the chunk, padded
# the products' precision above chunks of 16 (NLC_AFFINE_PREC=tf32x3 asks for the tensor
# cores there: less spilling, far less precise; benchmarks/layer_precision.py compares both
# against float64)
LARGE_CHUNK_PREC = os.environ.get("NLC_AFFINE_PREC", "ieee")
if LARGE_CHUNK_PREC not in ("ieee", "tf32x3"):
    raise ValueError(f"NLC_AFFINE_PREC={LARGE_CHUNK_PREC!r}: expected 'ieee' or 'tf32x3'")


@triton.jit
def _mm(a, b, PREC: tl.constexpr):
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _tile(ptr, i, j, si, sj, mask):
    return tl.load(ptr + i[:, None] * si + j[None, :] * sj, mask=mask, other=0.0)


@triton.jit
def _chunk_terms(u, w, bstart, bwithin, e, rows_q, t, qs, mt, mq, ub, us, ux, wb, ws, wx,
                 pb, pt, ps, eb, et, x, mx, C, BC: tl.constexpr, PREC: tl.constexpr):
    """What every row block shares: u, w, e, R[t-1, -1], the strictly lower R[t-1, s] as
    [C, C] and against the pairs' tokens [C, P C], the Gram matrices and (I - L)^-1."""
    mux = mt[:, None] & mx[None, :]
    b_u = _tile(u + ub, t, x, us, ux, mux)
    b_w = _tile(w + wb, t, x, ws, wx, mux)
    b_e = tl.load(e + eb + t * et, mask=mt, other=0.0)
    b_bs = tl.load(bstart + pb + t * pt, mask=mt, other=0.0)
    b_bw = _tile(bwithin + pb, t, t, pt, ps, (t[:, None] > t[None, :]) & mt[:, None])
    b_bq = _tile(bwithin + pb, t, qs, pt, ps,
                 (t[:, None] > qs[None, :]) & mt[:, None] & mq[None, :])
    b_g = _mm(b_u, tl.trans(b_w), PREC)                    # u_t . w_s
    b_gq = _mm(b_u, tl.trans(rows_q), PREC)                # u_t . row_s
    b_inv = _unit_lower_inverse(-(b_bw * b_e[None, :] * b_g), t, t, BC)
    return b_u, b_w, b_e, b_bs, b_bw, b_bq, b_g, b_gq, b_inv


@triton.jit
def _forward_kernel(W0, start, within, bstart, bwithin, e, u, w, cols, rows, ea, last,
                    H, C, r, n, P, sLr, sLn,
                    sWb, sWh, sWr, sWn, pb_, ph, pt, ps, eb_, eh, et,
                    ub_, uh, us, ux, wb_, wh, ws, wx,
                    cp, cb, ch, ct, cx, rp, rb, rh, rt, rx,
                    BC: tl.constexpr, PB: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr,
                    ERASE: tl.constexpr, PREC: tl.constexpr):
    i_bh, i_r = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    t = tl.arange(0, BC)
    q = tl.arange(0, PB)
    qp, qs = q // BC, q % BC                          # the pairs' tokens: pair, token
    x = tl.arange(0, BN)
    o_r = i_r * BR + tl.arange(0, BR)
    mt, mq, mx, mr = t < C, (qp < P) & (qs < C), x < n, o_r < r
    pb = i_b * pb_ + i_h * ph
    b_wl = tl.load(within + pb + (C - 1) * pt + qs * ps, mask=mq, other=0.0)  # R[C-1, s]
    b_sl = tl.load(start + pb + (C - 1) * pt)
    b_rows = _tile(rows + i_b * rb + i_h * rh, qp * rp + qs * rt, x, 1, rx,
                   mq[:, None] & mx[None, :])
    b_cols = _tile(cols + i_b * cb + i_h * ch, qp * cp + qs * ct, o_r, 1, cx,
                   mq[:, None] & mr[None, :])
    b_W = _tile(W0 + i_b * sWb + i_h * sWh, o_r, x, sWr, sWn, mr[:, None] & mx[None, :])
    b_last = b_sl * b_W + _mm(tl.trans(b_cols * b_wl[:, None]), b_rows, PREC)
    if ERASE:
        b_u, b_w, b_e, b_bs, _, b_bq, _, b_gq, b_inv = _chunk_terms(
            u, w, bstart, bwithin, e, b_rows, t, qs, mt, mq, i_b * ub_ + i_h * uh, us, ux,
            i_b * wb_ + i_h * wh, ws, wx, pb, pt, ps, i_b * eb_ + i_h * eh, et, x, mx, C, BC,
            PREC)
        b_rhs = (b_bs[:, None] * _mm(b_u, tl.trans(b_W), PREC)
                 + _mm(b_bq * b_gq, b_cols, PREC))
        b_ea = b_e[:, None] * _mm(b_inv, b_rhs, PREC)
        tl.store(ea + (i_bh * C + t[:, None]) * r + o_r[None, :], b_ea,
                 mask=mt[:, None] & mr[None, :])
        b_wt = tl.load(within + pb + (C - 1) * pt + t * ps, mask=mt, other=0.0)
        b_last += _mm(tl.trans(b_ea * b_wt[:, None]), b_w, PREC)
    tl.store(last + i_bh * r * n + o_r[:, None] * sLr + x[None, :] * sLn, b_last,
             mask=mr[:, None] & mx[None, :])


@triton.jit
def _backward_kernel(W0, start, within, bstart, bwithin, e, u, w, cols, rows, g_ea, g_last,
                     dW0, dstart, dwithin, dbstart, dbwithin, de, du, dw, dcols, drows,
                     H, C, r, n, P, sLr, sLn,
                     sWb, sWh, sWr, sWn, pb_, ph, pt, ps, eb_, eh, et,
                     ub_, uh, us, ux, wb_, wh, ws, wx,
                     cp, cb, ch, ct, cx, rp, rb, rh, rt, rx,
                     BC: tl.constexpr, PB: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr,
                     ERASE: tl.constexpr, HAS_GEA: tl.constexpr, PREC: tl.constexpr):
    """Per (batch, head), the row blocks in turn: each block's own gradients (W_0, the
    pairs' columns) are stored as it goes; those of the tokens' vectors, summed over the
    rows, after the last block."""
    i_bh = tl.program_id(0)
    BH = tl.num_programs(0)
    i_b, i_h = i_bh // H, i_bh % H
    t = tl.arange(0, BC)
    q = tl.arange(0, PB)
    qp, qs = q // BC, q % BC
    x = tl.arange(0, BN)
    mt, mq, mx = t < C, (qp < P) & (qs < C), x < n
    pb = i_b * pb_ + i_h * ph
    b_wl = tl.load(within + pb + (C - 1) * pt + qs * ps, mask=mq, other=0.0)
    b_wt = tl.load(within + pb + (C - 1) * pt + t * ps, mask=mt, other=0.0)
    b_sl = tl.load(start + pb + (C - 1) * pt)
    b_rows = _tile(rows + i_b * rb + i_h * rh, qp * rp + qs * rt, x, 1, rx,
                   mq[:, None] & mx[None, :])
    d_rows = tl.zeros([PB, BN], dtype=tl.float32)
    d_wl = tl.zeros([PB], dtype=tl.float32)
    d_sl = tl.zeros([BN], dtype=tl.float32)
    if ERASE:
        b_u, b_w, b_e, b_bs, b_bw, b_bq, b_g, b_gq, b_inv = _chunk_terms(
            u, w, bstart, bwithin, e, b_rows, t, qs, mt, mq, i_b * ub_ + i_h * uh, us, ux,
            i_b * wb_ + i_h * wh, ws, wx, pb, pt, ps, i_b * eb_ + i_h * eh, et, x, mx, C, BC,
            PREC)
        b_A = b_bq * b_gq
        d_A = tl.zeros([BC, PB], dtype=tl.float32)
        d_L = tl.zeros([BC, BC], dtype=tl.float32)
        d_u = tl.zeros([BC, BN], dtype=tl.float32)
        d_w = tl.zeros([BC, BN], dtype=tl.float32)
        d_e = tl.zeros([BC], dtype=tl.float32)
        d_bs = tl.zeros([BC], dtype=tl.float32)
        d_wt = tl.zeros([BC], dtype=tl.float32)
    for r0 in range(0, r, BR):
        o_r = r0 + tl.arange(0, BR)
        mr = o_r < r
        mrx = mr[:, None] & mx[None, :]
        b_W = _tile(W0 + i_b * sWb + i_h * sWh, o_r, x, sWr, sWn, mrx)
        b_gl = _tile(g_last + i_bh * r * n, o_r, x, sLr, sLn, mrx)
        b_cols = _tile(cols + i_b * cb + i_h * ch, qp * cp + qs * ct, o_r, 1, cx,
                       mq[:, None] & mr[None, :])
        b_dW = b_sl * b_gl
        d_sl += tl.sum(b_gl * b_W, 0)
        b_dc = _mm(b_rows, tl.trans(b_gl), PREC) * b_wl[:, None]
        b_cg = _mm(b_cols, b_gl, PREC)
        d_rows += b_cg * b_wl[:, None]
        d_wl += tl.sum(b_cg * b_rows, 1)
        if ERASE:
            b_X = _mm(b_u, tl.trans(b_W), PREC)
            b_a = _mm(b_inv, b_bs[:, None] * b_X + _mm(b_A, b_cols, PREC), PREC)
            b_ea = b_e[:, None] * b_a
            b_gea = _mm(b_w, tl.trans(b_gl), PREC) * b_wt[:, None]
            if HAS_GEA:
                b_gea += _tile(g_ea + i_bh * C * r, t, o_r, r, 1, mt[:, None] & mr[None, :])
            b_eg = _mm(b_ea, b_gl, PREC)
            d_w += b_eg * b_wt[:, None]
            d_wt += tl.sum(b_eg * b_w, 1)
            d_e += tl.sum(b_gea * b_a, 1)
            b_grhs = _mm(tl.trans(b_inv), b_e[:, None] * b_gea, PREC)
            d_L += _mm(b_grhs, tl.trans(b_a), PREC)
            d_bs += tl.sum(b_grhs * b_X, 1)
            b_dX = b_bs[:, None] * b_grhs
            b_dW += _mm(tl.trans(b_dX), b_u, PREC)
            d_u += _mm(b_dX, b_W, PREC)
            d_A += _mm(b_grhs, tl.trans(b_cols), PREC)
            b_dc += _mm(tl.trans(b_A), b_grhs, PREC)
        tl.store(dW0 + i_bh * r * n + o_r[:, None] * sLr + x[None, :] * sLn, b_dW, mask=mrx)
        tl.store(dcols + ((qp[:, None] * BH + i_bh) * C + qs[:, None]) * r + o_r[None, :],
                 b_dc, mask=mq[:, None] & mr[None, :])
    d_last = tl.sum(tl.reshape(d_wl, (PB // BC, BC)), 0)       # the pairs' R[C-1, s], summed
    mtt = mt[:, None] & mt[None, :]
    at_cc = (i_bh * C + t[:, None]) * C + t[None, :]
    if ERASE:
        d_last += d_wt
        low = (t[:, None] > t[None, :]) & mtt
        d_L = tl.where(low, d_L, 0.0)
        d_gq = d_A * b_bq
        d_bw = d_L * b_e[None, :] * b_g + tl.sum(tl.reshape(d_A * b_gq, (BC, PB // BC, BC)), 1)
        d_e += tl.sum(d_L * b_bw * b_g, 0)
        d_g = d_L * b_bw * b_e[None, :]
        d_u += _mm(d_g, b_w, PREC) + _mm(d_gq, b_rows, PREC)
        d_w += _mm(tl.trans(d_g), b_u, PREC)
        d_rows += _mm(tl.trans(d_gq), b_u, PREC)
        at_cn = (i_bh * C + t[:, None]) * n + x[None, :]
        tl.store(dbwithin + at_cc, tl.where(low, d_bw, 0.0), mask=mtt)
        tl.store(dbstart + i_bh * C + t, d_bs, mask=mt)
        tl.store(de + i_bh * C + t, d_e, mask=mt)
        tl.store(du + at_cn, d_u, mask=mt[:, None] & mx[None, :])
        tl.store(dw + at_cn, d_w, mask=mt[:, None] & mx[None, :])
    tl.store(dwithin + at_cc, tl.where(t[:, None] == C - 1, d_last[None, :], 0.0), mask=mtt)
    tl.store(dstart + i_bh * C + t, tl.where(t == C - 1, tl.sum(d_sl, 0), 0.0), mask=mt)
    tl.store(drows + ((qp[:, None] * BH + i_bh) * C + qs[:, None]) * n + x[None, :], d_rows,
             mask=mq[:, None] & mx[None, :])


def fits(W0: torch.Tensor, products: list, pairs: int, erase: bool) -> bool:
    """Whether the kernels take this chunk: float32 (as the chunk forms run), C <= 64, the
    P pairs' tokens within 128 once padded, the retention products as `_Products` returns
    them (views of one matrix: one set of strides), and a block of rows small enough: at
    most 128 columns (without an erase, the smaller of W's two axes; with one, the columns
    times the chunk at most 4096 entries)."""
    C, (r, n) = products[0].shape[-1], W0.shape[-2:]
    strides = {p.stride()[:3] for p in products}
    columns = n if erase else min(r, n)
    return (W0.dtype == torch.float32 and 0 < C <= MAX_CHUNK and columns <= MAX_COLUMNS
            and (not erase or pow2(C) * pow2(n) <= MAX_ERASE_TILE)
            and pow2(pairs, 1) * pow2(C) <= MAX_PAIR_TOKENS and len(strides) == 1
            and len({p.stride(-1) for p in products if p.dim() == 4}) == 1)


def combine(W0, products: list, e, u, w, cols: list, rows: list):
    """(the erase columns e a `[B, H, C, r]` or None, the last state `[B, H, r, n]`) of
    `affine_chunk.low_rank` (module docstring): products = (R[t, -1], R[t, s], R[t-1, -1],
    R[t-1, s]), the last two None without an erase (e, u, w None too)."""
    return _Combine.apply(len(cols), W0, *products, e, u, w, *cols, *rows)


def _stacked(xs: list) -> torch.Tensor:
    return xs[0][None] if len(xs) == 1 else torch.stack(xs)   # one pair: a view, no copy


class _Layout:
    """The chunk as the kernels take it. Without an erase, last = R W_0 + sum col R row^T is
    the same sum transposed (W_0^T, rows as columns): a W wider than tall is taken so, and
    the row blocks walk its longer axis. `sizes` are the numbers after the tensors, in the
    kernels' order; the tiles keep a row block near 2048 entries."""

    def __init__(self, W0, products, e, u, w, cols, rows):
        self.swap = e is None and W0.shape[-2] < W0.shape[-1]
        W, cols, rows = (W0.mT, rows, cols) if self.swap else (W0, cols, rows)
        B, H, r, n = W.shape
        C, P = products[0].shape[-1], cols.shape[0]
        pr = products[1].stride()
        none = (0, 0, 0, 0)
        self.sizes = (H, C, r, n, P, *((1, r) if self.swap else (n, 1)), *W.stride(),
                      *pr[:3], pr[3], *(none[:3] if e is None else e.stride()),
                      *(none if u is None else u.stride()),
                      *(none if w is None else w.stride()), *cols.stride(), *rows.stride())
        BC, BN = pow2(C), pow2(n)
        self.tiles = {"BC": BC, "PB": pow2(P, 1) * BC, "BN": BN,
                      "BR": min(pow2(r), max(16, 2048 // BN)), "ERASE": e is not None,
                      "PREC": "ieee" if BC == 16 else LARGE_CHUNK_PREC}
        # 8 warps for the erase (its [C, C] and [C, n] tiles) and large chunks: at 4 the
        # erase kernels spilled 0.6 to 1 KB a thread at C = 16, at 8 under 0.3 (docs/perf.md)
        self.warps = 8 if e is not None or BC * max(BN, pow2(P, 1) * BC) > 2048 else 4
        self.tensors = [W, *(W if p is None else p for p in products),
                        *(W if x is None else x for x in (e, u, w)), cols, rows]
        self.grid = (B * H, triton.cdiv(r, self.tiles["BR"]))

    def kernel_view(self, x):
        """A `[B, H, r, n]` tensor (the last state, its gradient, W_0's) as the kernels
        index it."""
        return x.mT if self.swap else x


class _Combine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, P: int, W0, start, within, bstart, bwithin, e, u, w, *pairs):
        products = [start, within, bstart, bwithin]
        cols, rows = _stacked(pairs[:P]), _stacked(pairs[P:])
        at = _Layout(W0, products, e, u, w, cols, rows)
        B, H, r = W0.shape[:3]
        ea = (torch.empty(B, H, start.shape[-1], r, device=W0.device) if e is not None
              else None)
        last = torch.empty_like(W0, memory_format=torch.contiguous_format)
        _forward_kernel[at.grid](*at.tensors, W0 if ea is None else ea, at.kernel_view(last),
                                 *at.sizes, **at.tiles, num_warps=at.warps)
        LAUNCHES["forward"] += 1
        ctx.save_for_backward(W0, start, within, bstart, bwithin, e, u, w, cols, rows)
        return ea, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_ea, g_last):
        W0, start, within, bstart, bwithin, e, u, w, cols, rows = ctx.saved_tensors
        products = [start, within, bstart, bwithin]
        at = _Layout(W0, products, e, u, w, cols, rows)
        g_last = torch.zeros_like(W0) if g_last is None else g_last.contiguous()
        has_gea = e is not None and g_ea is not None
        grads = [torch.empty(W0.shape, device=W0.device),
                 *(None if x is None else torch.empty(x.shape, device=W0.device)
                   for x in (*products, e, u, w))]
        d_cols, d_rows = (torch.empty(x.shape, device=W0.device) for x in (cols, rows))
        stand_in = grads[0]
        _backward_kernel[at.grid[:1]](
            *at.tensors, g_ea.contiguous() if has_gea else g_last, at.kernel_view(g_last),
            at.kernel_view(grads[0]), *(stand_in if g is None else g for g in grads[1:]),
            *((d_rows, d_cols) if at.swap else (d_cols, d_rows)), *at.sizes, **at.tiles,
            HAS_GEA=has_gea, num_warps=at.warps)
        LAUNCHES["backward"] += 1
        return (None, *grads, *d_cols.unbind(0), *d_rows.unbind(0))
