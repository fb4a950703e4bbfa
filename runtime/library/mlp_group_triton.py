"""Fused Triton kernels, forward and backward, for a group of generating MLP memories: Hope's
self-modifying Titans (examples/hope.nl), the fused group-chunk kernel of issue 17.

The mathematics is runtime/library/mlp_group.py's (read it first): per chunk of C tokens,
every member's read at the chunk-start weights, the tails that make the key, value, rate and
retention, one sweep for `P = M_1 ... M_C` and the rows `U`, then each member's last state in
closed form. Here one program runs one row (batch x head) through every chunk of the
sequence: the whole group's forward is one launch, and so is its backward, where the PyTorch
form launched hundreds of kernels per chunk (docs/perf.md, "Where Hope's step goes").

The members are four, in the order key, value, rate, retention: a read that is a vector is
l2-normalized (NORM_K, NORM_V) or not, and a scalar one is sigmoid(mean(read) + bias). Each
is an MLP `x + W2 gelu(W1 x)`, W1 `[F, D]`, W2 `[D, F]`, taken in blocks of BF rows of W1
(columns of W2): nothing of F is held whole.

Forward: the states are updated in place, chunk after chunk; with SAVE each chunk's
start states are kept (`[n_chunks, N, 4, ...]`) for the backward pass, which recomputes
everything else of a chunk from them (nothing per token is kept). Backward: chunks in
reverse; the state gradients are carried in place; the sweep's right factors of one chunk
go to a scratch of `[N, C, D, D]`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from nlc.runtime.library.ops import EPS
from triton.runtime.errors import OutOfResources


# --------------------------------------------------------------------------- device helpers
@triton.jit
def _gelu3(x):
    """gelu, gelu' and gelu'' of the exact (erf) gelu."""
    cdf = 0.5 * (1 + tl.erf(x * 0.7071067811865476))
    pdf = tl.exp(-0.5 * x * x) * 0.3989422804014327
    return x * cdf, cdf + x * pdf, pdf * (2 - x * x)


@triton.jit
def _row(X, rows, t):
    """Row t of a [C, D] tile."""
    return tl.sum(tl.where(rows[:, None] == t, X, 0.0), 0)


@triton.jit
def _entry(x, rows, t):
    """Entry t of a [C] vector."""
    return tl.sum(tl.where(rows == t, x, 0.0), 0)


@triton.jit
def _read(h_c, w1p, w2p, fr, fc, di, F: tl.constexpr, D: tl.constexpr, BF: tl.constexpr,
          PREC: tl.constexpr):
    """One member's read of the chunk's tokens, x + W2 gelu(W1 x), before its tail."""
    r = h_c
    for f0 in range(0, F, BF):
        w1 = tl.load(w1p + (f0 + fr)[:, None] * D + di[None, :])
        w2 = tl.load(w2p + di[:, None] * F + (f0 + fc)[None, :])
        g, _, _ = _gelu3(tl.dot(h_c, tl.trans(w1), input_precision=PREC))
        r += tl.dot(g, tl.trans(w2), input_precision=PREC)
    return r


@triton.jit
def _norm_scale(r):
    return 1.0 / tl.sqrt(tl.sum(r * r, 1) + EPS_)


EPS_ = tl.constexpr(EPS)


@triton.jit
def _group_reads(h_c, W1, W2, base1, base2, bias, valid, fr, fc, di,
                 F: tl.constexpr, D: tl.constexpr, BF: tl.constexpr, NORM_K: tl.constexpr,
                 NORM_V: tl.constexpr, PREC: tl.constexpr):
    """The four reads after their tails (key, value, rate, retention; rows past the sequence
    get rate 0 and retention 1, a transition of I) and the l2 tails' scales."""
    S1: tl.constexpr = F * D
    rk = _read(h_c, W1 + base1, W2 + base2, fr, fc, di, F, D, BF, PREC)
    rv = _read(h_c, W1 + base1 + S1, W2 + base2 + S1, fr, fc, di, F, D, BF, PREC)
    re = _read(h_c, W1 + base1 + 2 * S1, W2 + base2 + 2 * S1, fr, fc, di, F, D, BF, PREC)
    ra = _read(h_c, W1 + base1 + 3 * S1, W2 + base2 + 3 * S1, fr, fc, di, F, D, BF, PREC)
    sk = _norm_scale(rk)
    sv = _norm_scale(rv)
    k = rk * sk[:, None] if NORM_K else rk
    v = rv * sv[:, None] if NORM_V else rv
    eta = tl.sigmoid(tl.sum(re, 1) / D + tl.load(bias))
    alpha = tl.sigmoid(tl.sum(ra, 1) / D + tl.load(bias + 1))
    eta = tl.where(valid, eta, 0.0)
    alpha = tl.where(valid, alpha, 1.0)
    return k, v, eta, alpha, sk, sv


@triton.jit
def _decays(alpha, rows, C: tl.constexpr):
    """prod_t alpha_t and, per token, prod_{s>t} alpha_s."""
    after = tl.full([C], 1.0, tl.float32)
    run = tl.sum(tl.zeros([C], tl.float32), 0) + 1.0
    for i in range(C):
        t = C - 1 - i
        after = tl.where(rows == t, run, after)
        run = run * _entry(alpha, rows, t)
    return run, after


@triton.jit
def _error(k, v, w1p, w2p, fr, fc, di, F: tl.constexpr, D: tl.constexpr, BF: tl.constexpr,
           PREC: tl.constexpr):
    """e_t = f0(k_t) - f0(v_t) for the chunk's tokens, f0 the chunk-start MLP."""
    e = k - v
    for f0 in range(0, F, BF):
        w1 = tl.load(w1p + (f0 + fr)[:, None] * D + di[None, :])
        w2 = tl.load(w2p + di[:, None] * F + (f0 + fc)[None, :])
        g, _, _ = _gelu3(tl.dot(k, tl.trans(w1), input_precision=PREC))
        gb, _, _ = _gelu3(tl.dot(v, tl.trans(w1), input_precision=PREC))
        e += tl.dot(g - gb, tl.trans(w2), input_precision=PREC)
    return e


@triton.jit
def _sweep(k, eta, alpha, rows, eye, keep, C: tl.constexpr, D: tl.constexpr,
           KEEP: tl.constexpr):
    """P = M_1 ... M_C and the rows U_t = k_t^T M_{t+1} ... M_C, M_t = alpha_t I - eta_t k_t
    k_t^T, from the last token back; with KEEP each step's right factor M_{t+1} ... M_C
    goes to `keep` + t D D (the backward pass's)."""
    Q = eye
    U = tl.zeros([C, D], tl.float32)
    for i in range(C):
        t = C - 1 - i
        if KEEP:
            tl.store(keep + t * D * D, Q)
        kt = _row(k, rows, t)
        u = tl.sum(kt[:, None] * Q, 0)
        U = tl.where(rows[:, None] == t, u[None, :], U)
        Q = _entry(alpha, rows, t) * Q - _entry(eta, rows, t) * kt[:, None] * u[None, :]
    return Q, U


# --------------------------------------------------------------------------- forward
@triton.jit
def _forward_kernel(h, W1, W2, ck1, ck2, bias, out_k, out_v, out_eta, out_alpha, T, n_chunks,
                    N, F: tl.constexpr, D: tl.constexpr, C: tl.constexpr, BF: tl.constexpr,
                    NORM_K: tl.constexpr, NORM_V: tl.constexpr, SAVE: tl.constexpr,
                    PREC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, C)
    di = tl.arange(0, D)
    fr = tl.arange(0, BF)
    fc = tl.arange(0, BF)
    S1: tl.constexpr = F * D
    base1 = n * 4 * S1
    eye = tl.where(di[:, None] == di[None, :], 1.0, 0.0)
    for c in range(n_chunks):
        tok = c * C + rows
        valid = tok < T
        h_c = tl.load(h + n * T * D + tok[:, None] * D + di[None, :], mask=valid[:, None],
                      other=0.0).to(tl.float32)
        if SAVE:
            for j in range(0, 4 * S1, BF * D):
                blk = tl.load(W1 + base1 + j + fr[:, None] * D + di[None, :])
                tl.store(ck1 + (c * N + n) * 4 * S1 + j + fr[:, None] * D + di[None, :], blk)
                blk = tl.load(W2 + base1 + j + fr[:, None] * D + di[None, :])
                tl.store(ck2 + (c * N + n) * 4 * S1 + j + fr[:, None] * D + di[None, :], blk)
        k, v, eta, alpha, _sk, _sv = _group_reads(h_c, W1, W2, base1, base1, bias + n * 2, valid,
                                              fr, fc,
                                              di, F, D, BF, NORM_K, NORM_V, PREC)
        o = n * T * D + tok[:, None] * D + di[None, :]
        tl.store(out_k + o, k, mask=valid[:, None])
        tl.store(out_v + o, v, mask=valid[:, None])
        tl.store(out_eta + n * T + tok, eta, mask=valid)
        tl.store(out_alpha + n * T + tok, alpha, mask=valid)

        Q, U = _sweep(k, eta, alpha, rows, eye, eye, C, D, False)
        A, after = _decays(alpha, rows, C)
        ce = eta * after

        for m in range(4):
            w1p = W1 + base1 + m * S1
            w2p = W2 + base1 + m * S1
            e = _error(k, v, w1p, w2p, fr, fc, di, F, D, BF, PREC)
            for f0 in range(0, F, BF):
                p1 = w1p + (f0 + fr)[:, None] * D + di[None, :]
                p2 = w2p + di[:, None] * F + (f0 + fc)[None, :]
                w1 = tl.load(p1)
                w2 = tl.load(p2)
                g, g1, _g2 = _gelu3(tl.dot(k, tl.trans(w1), input_precision=PREC))
                p = g1 * tl.dot(e, w2, input_precision=PREC)
                w1n = (tl.dot(w1, Q, input_precision=PREC)
                       - tl.dot(tl.trans(p * eta[:, None]), U, input_precision=PREC))
                w2n = A * w2 - tl.dot(tl.trans(e * ce[:, None]), g, input_precision=PREC)
                tl.store(p1, w1n)
                tl.store(p2, w2n)


# --------------------------------------------------------------------------- backward
@triton.jit
def _backward_kernel(h, ck1, ck2, bias, d_k, d_v, d_eta, d_alpha, dW1, dW2, dh, dbias, scratch,
                     T, n_chunks, N, F: tl.constexpr, D: tl.constexpr, C: tl.constexpr,
                     BF: tl.constexpr, NORM_K: tl.constexpr, NORM_V: tl.constexpr,
                     PREC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, C)
    di = tl.arange(0, D)
    fr = tl.arange(0, BF)
    fc = tl.arange(0, BF)
    S1: tl.constexpr = F * D
    base_g = n * 4 * S1
    eye = tl.where(di[:, None] == di[None, :], 1.0, 0.0)
    sq = scratch + n * C * D * D + di[:, None] * D + di[None, :]
    db_rate = tl.sum(tl.zeros([C], tl.float32), 0)
    db_ret = db_rate
    for ci in range(n_chunks):
        c = n_chunks - 1 - ci
        tok = c * C + rows
        valid = tok < T
        o = n * T * D + tok[:, None] * D + di[None, :]
        h_c = tl.load(h + o, mask=valid[:, None], other=0.0).to(tl.float32)
        base_s = (c * N + n) * 4 * S1
        k, v, eta, alpha, sk, sv = _group_reads(h_c, ck1, ck2, base_s, base_s, bias + n * 2,
                                                valid, fr, fc, di, F, D, BF, NORM_K, NORM_V, PREC)
        P, U = _sweep(k, eta, alpha, rows, eye, sq, C, D, True)  # keeping the right factors
        A, after = _decays(alpha, rows, C)
        ce = eta * after

        dk = tl.load(d_k + o, mask=valid[:, None], other=0.0).to(tl.float32)
        dv = tl.load(d_v + o, mask=valid[:, None], other=0.0).to(tl.float32)
        deta = tl.load(d_eta + n * T + tok, mask=valid, other=0.0).to(tl.float32)
        dalpha = tl.load(d_alpha + n * T + tok, mask=valid, other=0.0).to(tl.float32)
        dP = tl.zeros([D, D], tl.float32)
        dU = tl.zeros([C, D], tl.float32)
        dA = tl.sum(tl.zeros([C], tl.float32), 0)
        dc = tl.zeros([C], tl.float32)

        # each member's last state: W1_C = W1 P - sum eta p U, W2_C = A W2 - sum c e g^T
        for m in range(4):
            w1p = ck1 + base_s + m * S1
            w2p = ck2 + base_s + m * S1
            g1p = dW1 + base_g + m * S1
            g2p = dW2 + base_g + m * S1
            e = _error(k, v, w1p, w2p, fr, fc, di, F, D, BF, PREC)
            GE = tl.zeros([C, D], tl.float32)
            de = tl.zeros([C, D], tl.float32)
            for f0 in range(0, F, BF):
                i1 = (f0 + fr)[:, None] * D + di[None, :]
                i2 = di[:, None] * F + (f0 + fc)[None, :]
                w1 = tl.load(w1p + i1)
                w2 = tl.load(w2p + i2)
                G1 = tl.load(g1p + i1)
                G2 = tl.load(g2p + i2)
                g, g1, _ = _gelu3(tl.dot(k, tl.trans(w1), input_precision=PREC))
                p = g1 * tl.dot(e, w2, input_precision=PREC)
                GU = tl.dot(U, tl.trans(G1), input_precision=PREC)
                deta -= tl.sum(p * GU, 1)
                dU -= tl.dot(eta[:, None] * p, G1, input_precision=PREC)
                dP += tl.dot(tl.trans(w1), G1, input_precision=PREC)
                dA += tl.sum(tl.sum(G2 * w2, 1), 0)
                GE += tl.dot(g, tl.trans(G2), input_precision=PREC)
                de += tl.dot(-eta[:, None] * GU * g1, tl.trans(w2), input_precision=PREC)
            de = de - ce[:, None] * GE
            dc -= tl.sum(e * GE, 1)
            dk += de
            dv -= de
            for f0 in range(0, F, BF):
                i1 = (f0 + fr)[:, None] * D + di[None, :]
                i2 = di[:, None] * F + (f0 + fc)[None, :]
                w1 = tl.load(w1p + i1)
                w2 = tl.load(w2p + i2)
                G1 = tl.load(g1p + i1)
                G2 = tl.load(g2p + i2)
                g, g1, g2 = _gelu3(tl.dot(k, tl.trans(w1), input_precision=PREC))
                gb, gb1, _ = _gelu3(tl.dot(v, tl.trans(w1), input_precision=PREC))
                s = tl.dot(e, w2, input_precision=PREC)
                dp = -eta[:, None] * tl.dot(U, tl.trans(G1), input_precision=PREC)
                ds = dp * g1
                dg = -ce[:, None] * tl.dot(e, G2, input_precision=PREC)
                dgd = tl.dot(de, w2, input_precision=PREC)
                da = dp * s * g2 + (dg + dgd) * g1
                db = -dgd * gb1
                n1 = (tl.dot(G1, tl.trans(P), input_precision=PREC)
                      + tl.dot(tl.trans(da), k, input_precision=PREC)
                      + tl.dot(tl.trans(db), v, input_precision=PREC))
                n2 = (A * G2 + tl.dot(tl.trans(e), ds, input_precision=PREC)
                      + tl.dot(tl.trans(de), g - gb, input_precision=PREC))
                dk += tl.dot(da, w1, input_precision=PREC)
                dv += tl.dot(db, w1, input_precision=PREC)
                tl.store(g1p + i1, n1)
                tl.store(g2p + i2, n2)

        # the decays: A = prod alpha, c_t = eta_t prod_{s>t} alpha_s
        deta += dc * after
        acc = tl.sum(tl.zeros([C], tl.float32), 0)
        before = acc + 1.0
        for t in range(C):
            a_t = _entry(alpha, rows, t)
            dalpha += tl.where(rows == t, _entry(after, rows, t) * (acc + dA * before), 0.0)
            acc = acc * a_t + _entry(dc, rows, t) * _entry(eta, rows, t)
            before = before * a_t

        # the sweep, forward in t: Q_new = alpha Q - eta k U_t, U_t = k^T Q
        dQ = dP
        for t in range(C):
            Q = tl.load(sq + t * D * D)
            kt = _row(k, rows, t)
            ut = _row(U, rows, t)
            e_t = _entry(eta, rows, t)
            dQk = tl.sum(kt[:, None] * dQ, 0)
            dut = _row(dU, rows, t) - e_t * dQk
            dalpha += tl.where(rows == t, tl.sum(tl.sum(dQ * Q, 1), 0), 0.0)
            deta += tl.where(rows == t, -tl.sum(dQk * ut, 0), 0.0)
            dkt = -e_t * tl.sum(dQ * ut[None, :], 1) + tl.sum(Q * dut[None, :], 1)
            dk += tl.where(rows[:, None] == t, dkt[None, :], 0.0)
            dQ = _entry(alpha, rows, t) * dQ + kt[:, None] * dut[None, :]

        # the tails (rows past the sequence had a fixed rate and retention)
        deta = tl.where(valid, deta, 0.0)
        dalpha = tl.where(valid, dalpha, 0.0)
        if NORM_K:
            dk = sk[:, None] * (dk - k * tl.sum(k * dk, 1)[:, None])
        if NORM_V:
            dv = sv[:, None] * (dv - v * tl.sum(v * dv, 1)[:, None])
        pe = deta * eta * (1 - eta)
        pa = dalpha * alpha * (1 - alpha)
        db_rate += tl.sum(pe, 0)
        db_ret += tl.sum(pa, 0)
        dhc = dk + dv + (pe[:, None] + pa[:, None]) / D + tl.zeros([C, D], tl.float32)

        # the reads r = x + W2 gelu(W1 x)
        for m in tl.static_range(4):
            if m == 0:
                dr = dk
            elif m == 1:
                dr = dv
            elif m == 2:
                dr = pe[:, None] / D + tl.zeros([C, D], tl.float32)
            else:
                dr = pa[:, None] / D + tl.zeros([C, D], tl.float32)
            dr = tl.where(valid[:, None], dr, 0.0)
            w1p = ck1 + base_s + m * S1
            w2p = ck2 + base_s + m * S1
            g1p = dW1 + base_g + m * S1
            g2p = dW2 + base_g + m * S1
            for f0 in range(0, F, BF):
                i1 = (f0 + fr)[:, None] * D + di[None, :]
                i2 = di[:, None] * F + (f0 + fc)[None, :]
                w1 = tl.load(w1p + i1)
                w2 = tl.load(w2p + i2)
                gz, gz1, _ = _gelu3(tl.dot(h_c, tl.trans(w1), input_precision=PREC))
                dz = tl.dot(dr, w2, input_precision=PREC) * gz1
                tl.store(g2p + i2, tl.load(g2p + i2)
                         + tl.dot(tl.trans(dr), gz, input_precision=PREC))
                tl.store(g1p + i1, tl.load(g1p + i1)
                         + tl.dot(tl.trans(dz), h_c, input_precision=PREC))
                dhc += tl.dot(dz, w1, input_precision=PREC)
        tl.store(dh + o, dhc, mask=valid[:, None])
    tl.store(dbias + n * 2, db_rate)
    tl.store(dbias + n * 2 + 1, db_ret)


# --------------------------------------------------------------------------- launch
# (block of F, warps) per kernel, timed on an H200 with Triton 3.6 at Hope's shape (B 16, 8
# heads, T 2048, d 64, F 256, C 16, TF32; benchmarks/hope_group_launch.py, docs/perf.md): the
# forward takes 17.1 ms at (64, 8) against 23.6 at (32, 8), 31.8 to 37.9 at (16, 4 or 8) and
# 15.6 at (128, 8); the backward 62.3 ms at (64, 8) against 80.8 at (32, 8) and 109.5 at
# (16, 8). The larger blocks spill registers (0.6 to 10 KB a thread) and still win: fewer,
# larger products. A block the card cannot hold (128 or more in the backward at d 64) is
# halved until it fits (_launch).
FORWARD_LAUNCH = (64, 8)
BACKWARD_LAUNCH = (64, 8)


_FITTING: dict = {}  # (kernel, shape, meta, device) -> the block that fit


def _launch(kernel, N: int, shape: tuple[int, int], *args, **meta):
    """kernel[(N,)](*args, BF=..., num_warps=..., **meta) at the block of F (meta's F) that
    `shape` asks for, halved while the card's shared memory or registers cannot hold it;
    the block that fit is remembered, so a later call does not fail its way down again."""
    key = (kernel, shape, tuple(sorted(meta.items())), args[0].device)
    block, warps = _FITTING.get(key, min(meta["F"], shape[0])), shape[1]
    while True:
        try:
            done = kernel[(N,)](*args, BF=block, num_warps=warps, **meta)
            _FITTING[key] = block
            return done
        except OutOfResources:
            if block <= 16:
                raise
            block //= 2


def _launch_shape(W1: torch.Tensor, chunk: int):
    N, M, F, D = W1.shape
    if M != 4:
        raise ValueError(f"the fused group kernel takes 4 members (key, value, rate, retention), "
                         f"not {M}")
    for name, n in (("F", F), ("D", D), ("chunk", chunk)):
        if n < 16 or n & (n - 1):
            raise ValueError(f"the fused group kernel needs {name} a power of 2 of at least 16, "
                             f"not {n}")
    return N, F, D


class _GroupChunks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, W1, W2, bias, chunk, norm_k, norm_v, precision):
        N, F, D = _launch_shape(W1, chunk)
        T = h.shape[1]
        n_chunks = -(-T // chunk)
        h = h.contiguous()
        W1n = W1.detach().float().clone(memory_format=torch.contiguous_format)
        W2n = W2.detach().float().clone(memory_format=torch.contiguous_format)
        save = any(ctx.needs_input_grad[:4])
        ck1 = W1n.new_empty((n_chunks, N, 4, F, D) if save else (1,))
        ck2 = W1n.new_empty((n_chunks, N, 4, D, F) if save else (1,))
        k = h.new_empty(N, T, D, dtype=torch.float32)
        v = torch.empty_like(k)
        eta = h.new_empty(N, T, dtype=torch.float32)
        alpha = torch.empty_like(eta)
        bias32 = bias.detach().float().contiguous()
        _launch(_forward_kernel, N, FORWARD_LAUNCH, h, W1n, W2n, ck1, ck2, bias32, k, v, eta,
                alpha, T, n_chunks, N, F=F, D=D, C=chunk, NORM_K=norm_k, NORM_V=norm_v,
                SAVE=save, PREC=precision)
        ctx.save_for_backward(h, ck1, ck2, bias32)
        ctx.config = (chunk, norm_k, norm_v, precision, n_chunks, bias.dtype)
        return k, v, eta, alpha, W1n, W2n

    @staticmethod
    def backward(ctx, dk, dv, deta, dalpha, dW1, dW2):
        h, ck1, ck2, bias = ctx.saved_tensors
        chunk, norm_k, norm_v, precision, n_chunks, bias_dtype = ctx.config
        N, T, D = h.shape
        F = ck1.shape[3]

        def grad(x, shape):
            return (torch.zeros(shape, device=h.device, dtype=torch.float32) if x is None
                    else x.float().contiguous())
        dk, dv = grad(dk, (N, T, D)), grad(dv, (N, T, D))
        deta, dalpha = grad(deta, (N, T)), grad(dalpha, (N, T))
        gW1 = grad(dW1, (N, 4, F, D)).clone()
        gW2 = grad(dW2, (N, 4, D, F)).clone()
        dh = torch.zeros(N, T, D, device=h.device, dtype=torch.float32)
        dbias = torch.zeros(N, 2, device=h.device, dtype=torch.float32)
        scratch = torch.empty(N, chunk, D, D, device=h.device, dtype=torch.float32)
        _launch(_backward_kernel, N, BACKWARD_LAUNCH, h, ck1, ck2, bias, dk, dv, deta, dalpha,
                gW1, gW2, dh, dbias, scratch, T, n_chunks, N, F=F, D=D, C=chunk, NORM_K=norm_k,
                NORM_V=norm_v, PREC=precision)
        return dh.to(h.dtype), gW1, gW2, dbias.to(bias_dtype), None, None, None, None


def group_chunks(h, W1, W2, bias, *, chunk: int, norm_k: bool = True, norm_v: bool = True,
                 precision: str = "ieee"):
    """The whole sequence of the group in one launch each way: h `[N, T, D]` (rows are batch x
    heads), the members' states W1 `[N, 4, F, D]` and W2 `[N, 4, D, F]` at a chunk boundary in
    the order key, value, rate, retention, bias `[N, 2]` (the rate's and the retention's). Returns
    (k `[N, T, D]`, v, eta `[N, T]`, alpha, W1 at the end, W2 at the end), float32."""
    return _GroupChunks.apply(h, W1, W2, bias, chunk, norm_k, norm_v, precision)
