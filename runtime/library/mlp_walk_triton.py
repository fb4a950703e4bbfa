"""Triton kernels, forward and backward, for one chunk of an MLP memory read before each
token's write: Hope's main memory (examples/hope.nl, level `memory`), whose frozen-gradient
chunk otherwise meets its unbuilt per-token states through `nl.mm` in dozens of small
products (runtime/library/affine_chunk.py).

The memory is `f(x) = [x +] W2 act(W1 x)`, W1 `[F, D]`, W2 `[D, F]`. Its chunk-start terms (the
drives, computed at the anchors) arrive as one outer product per map and token, and the
transitions are those of the frozen split (docs/design.md, "Kernel families"):

    W1_t = c1_t W1_{t-1} + e_t (W1_{t-1} u_t) w_t^T + col1_t row1_t^T
    W2_t = c2_t W2_{t-1} + col2_t row2_t^T
    y_t  = W2_{t-1} act(W1_{t-1} x_t)                      (the read, before the write)

Every line is separable over the hidden width F: a row of W1 and the same column of W2 need
nothing from other rows (the erase's column `W1 u` is a row-wise product). So a program
takes one batch x head row and BF of the F hidden units, holds its blocks of W1 and W2 in
registers and walks the chunk's tokens; its share of each read is a partial sum over its
hidden units (`y_part` `[N, F / BF, C, D]`, summed by the caller). No per-token state leaves
the chip in the forward pass.

The backward pass recomputes the walk from the chunk-start blocks, keeping each token's
blocks in a scratch of the chunk (`[N, F / BF, C, BF, D]` per map, freed after the chunk),
then walks the tokens back with the state gradients in registers. Each step's adjoint is
written beside it in `_backward_kernel`. Partial sums over F (the gradients of x, u, w, row1,
col2 and the scalars) are summed by the caller. `walk_reference` is the same walk token by
token in PyTorch: the tests compare the kernels with it, and with the level's own token loop,
in float64 (tests/test_mlp_walk.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ACTS = ("gelu", "silu", "identity")


@triton.jit
def _act2(x, ACT: tl.constexpr):
    """act(x) and act'(x): 0 gelu (erf), 1 silu, 2 identity."""
    if ACT == 0:
        cdf = 0.5 * (1 + tl.erf(x * 0.7071067811865476))
        pdf = tl.exp(-0.5 * x * x) * 0.3989422804014327
        return x * cdf, cdf + x * pdf
    elif ACT == 1:
        s = tl.sigmoid(x)
        return x * s, s * (1 + x * (1 - s))
    else:
        return x, x * 0.0 + 1.0


@triton.jit
def _write(w1, w2, tok, c1, c2, e, u, w, col1, row1, col2, row2, fr, di, F: tl.constexpr,
           D: tl.constexpr, ERASE: tl.constexpr):
    """One token's write of the blocks: W1 c1 + e (W1 u) w^T + col1 row1^T, W2 c2 + col2
    row2^T."""
    drive1 = tl.load(col1 + tok * F + fr)[:, None] * tl.load(row1 + tok * D + di)[None, :]
    w1_next = tl.load(c1 + tok) * w1 + drive1
    if ERASE:
        a = tl.sum(w1 * tl.load(u + tok * D + di)[None, :], 1)
        w1_next += tl.load(e + tok) * a[:, None] * tl.load(w + tok * D + di)[None, :]
    w2_next = (tl.load(c2 + tok) * w2
               + tl.load(col2 + tok * D + di)[:, None] * tl.load(row2 + tok * F + fr)[None, :])
    return w1_next, w2_next


@triton.jit
def _write_adjoint(g, w, col, row):
    """For W' = c W + col row^T + ..., given G = dL/dW': dL/dc = <G, W>, dL/dcol = G row and
    dL/drow = G^T col (either map's blocks)."""
    return tl.sum(tl.sum(g * w, 1), 0), tl.sum(g * row[None, :], 1), tl.sum(g * col[:, None], 0)


@triton.jit
def _forward_kernel(W1, W2, x, c1, c2, e, u, w, col1, row1, col2, row2, y_part, C,
                    F: tl.constexpr, D: tl.constexpr, BF: tl.constexpr, ERASE: tl.constexpr,
                    ACT: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    NB: tl.constexpr = F // BF
    fr = blk * BF + tl.arange(0, BF)
    di = tl.arange(0, D)
    p1 = W1 + n * F * D + fr[:, None] * D + di[None, :]
    p2 = W2 + n * D * F + di[:, None] * F + fr[None, :]
    w1 = tl.load(p1)
    w2 = tl.load(p2)
    for t in range(C):
        tok = n * C + t
        xt = tl.load(x + tok * D + di)
        z = tl.sum(w1 * xt[None, :], 1)
        h, _ = _act2(z, ACT)
        tl.store(y_part + ((n * NB + blk) * C + t) * D + di, tl.sum(w2 * h[None, :], 1))
        w1, w2 = _write(w1, w2, tok, c1, c2, e, u, w, col1, row1, col2, row2, fr, di, F, D,
                        ERASE)
    tl.store(p1, w1)
    tl.store(p2, w2)


@triton.jit
def _backward_kernel(W1, W2, x, c1, c2, e, u, w, col1, row1, col2, row2, dy, G1, G2,
                     keep1, keep2, dx, dc1, dc2, de, du, dw, dcol1, drow1, dcol2, drow2, C,
                     F: tl.constexpr, D: tl.constexpr, BF: tl.constexpr, ERASE: tl.constexpr,
                     ACT: tl.constexpr):
    """W1, W2: the chunk-start states (read); G1, G2: the last states' gradients on entry,
    the chunk-start states' on exit (in place). Partial sums over F go to
    `[N, F / BF, C, ...]`; dcol1 and drow2, whole per hidden unit, to `[N, C, F]`."""
    n = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    NB: tl.constexpr = F // BF
    fr = blk * BF + tl.arange(0, BF)
    bi = tl.arange(0, BF)
    di = tl.arange(0, D)
    p1 = n * F * D + fr[:, None] * D + di[None, :]
    p2 = n * D * F + di[:, None] * F + fr[None, :]
    k1 = keep1 + (n * NB + blk) * C * BF * D + bi[:, None] * D + di[None, :]
    k2 = keep2 + (n * NB + blk) * C * D * BF + di[:, None] * BF + bi[None, :]
    w1 = tl.load(W1 + p1)
    w2 = tl.load(W2 + p2)
    for t in range(C):  # the walk again, each token's blocks before its write kept
        tok = n * C + t
        tl.store(k1 + t * BF * D, w1)
        tl.store(k2 + t * D * BF, w2)
        w1, w2 = _write(w1, w2, tok, c1, c2, e, u, w, col1, row1, col2, row2, fr, di, F, D,
                        ERASE)
    g1 = tl.load(G1 + p1)
    g2 = tl.load(G2 + p2)
    for i in range(C):
        t = C - 1 - i
        tok = n * C + t
        part = (n * NB + blk) * C + t
        w1 = tl.load(k1 + t * BF * D)   # W1_{t-1}, W2_{t-1}: the states this token reads
        w2 = tl.load(k2 + t * D * BF)
        ct1 = tl.load(c1 + tok)
        ct2 = tl.load(c2 + tok)
        # W2_t = c2 W2 + col2 row2^T
        d_c, d_col, d_row = _write_adjoint(g2, w2, tl.load(col2 + tok * D + di),
                                           tl.load(row2 + tok * F + fr))
        tl.store(dc2 + part, d_c)
        tl.store(dcol2 + part * D + di, d_col)
        tl.store(drow2 + tok * F + fr, d_row)
        g2 = ct2 * g2
        # W1_t = c1 W1 + e (W1 u) w^T + col1 row1^T
        d_c, d_col, d_row = _write_adjoint(g1, w1, tl.load(col1 + tok * F + fr),
                                           tl.load(row1 + tok * D + di))
        tl.store(dc1 + part, d_c)
        tl.store(dcol1 + tok * F + fr, d_col)
        tl.store(drow1 + part * D + di, d_row)
        g1_prev = ct1 * g1
        if ERASE:
            ut = tl.load(u + tok * D + di)
            wt = tl.load(w + tok * D + di)
            et = tl.load(e + tok)
            a = tl.sum(w1 * ut[None, :], 1)                  # W1 u
            gw = tl.sum(g1 * wt[None, :], 1)                 # G1 w
            tl.store(de + part, tl.sum(a * gw, 0))
            tl.store(dw + part * D + di, et * tl.sum(g1 * a[:, None], 0))
            da = et * gw
            tl.store(du + part * D + di, tl.sum(w1 * da[:, None], 0))
            g1_prev += da[:, None] * ut[None, :]
        g1 = g1_prev
        # y = W2 act(z), z = W1 x, both at the states before the write
        xt = tl.load(x + tok * D + di)
        z = tl.sum(w1 * xt[None, :], 1)
        h, h1 = _act2(z, ACT)
        dyt = tl.load(dy + tok * D + di)
        g2 += dyt[:, None] * h[None, :]
        dz = h1 * tl.sum(w2 * dyt[:, None], 0)
        g1 += dz[:, None] * xt[None, :]
        tl.store(dx + part * D + di, tl.sum(w1 * dz[:, None], 0))
    tl.store(G1 + p1, g1)
    tl.store(G2 + p2, g2)


def fits(F: int, D: int) -> bool:
    """Powers of two (the blocks' widths), D at most 128 and F at least 16."""
    def power(n):
        return n >= 1 and n & (n - 1) == 0
    return power(F) and power(D) and 16 <= F and D <= 128


def _block(F: int) -> int:
    return min(F, 32)


def _work(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (the tests' precision); anything else runs in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _flat(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype).contiguous()


class _Walk(torch.autograd.Function):
    """Inputs: W1 `[N, F, D]`, W2 `[N, D, F]`, x, u, w, row1, col2 `[N, C, D]`, c1, c2, e
    `[N, C]`, col1, row2 `[N, C, F]` (u, w, e None without an erase); returns y `[N, C, D]`
    (the reads without the residual) and the last states."""

    @staticmethod
    def forward(ctx, W1, W2, x, c1, c2, e, u, w, col1, row1, col2, row2, act):
        N, F, D = W1.shape
        C = x.shape[1]
        BF = _block(F)
        erase = e is not None
        work = _work(W1)
        ins = [_flat(t, work) for t in (x, c1, c2)]
        ins += [_flat(t, work) for t in (e, u, w)] if erase else [ins[1]] * 3
        ins += [_flat(t, work) for t in (col1, row1, col2, row2)]
        W1n, W2n = _flat(W1.detach(), work).clone(), _flat(W2.detach(), work).clone()
        y_part = x.new_empty(N, F // BF, C, D, dtype=work)
        _forward_kernel[(N, F // BF)](W1n, W2n, *ins, y_part, C, F=F, D=D, BF=BF,
                                      ERASE=erase, ACT=ACTS.index(act))
        ctx.save_for_backward(W1, W2, *ins)
        ctx.setup = (act, erase, [None if t is None else t.dtype for t in (
            W1, W2, x, c1, c2, e, u, w, col1, row1, col2, row2)])
        y = y_part.sum(1)
        return y.to(x.dtype), W1n.to(W1.dtype), W2n.to(W2.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dW1, dW2):
        W1, W2, x, c1, c2, e, u, w, col1, row1, col2, row2 = ctx.saved_tensors
        act, erase, dtypes = ctx.setup
        N, F, D = W1.shape
        C = x.shape[1]
        BF = _block(F)
        NB = F // BF
        work = x.dtype
        like = {"dtype": work, "device": x.device}
        G1 = torch.zeros(N, F, D, **like) if dW1 is None else _flat(dW1, work).clone()
        G2 = torch.zeros(N, D, F, **like) if dW2 is None else _flat(dW2, work).clone()
        dy = torch.zeros(N, C, D, **like) if dy is None else _flat(dy, work)
        keep1 = torch.empty(N, NB, C, BF, D, **like)
        keep2 = torch.empty(N, NB, C, D, BF, **like)
        parts = {name: torch.zeros(N, NB, C, *shape, **like) for name, shape in (
            ("dx", (D,)), ("dc1", ()), ("dc2", ()), ("de", ()), ("du", (D,)), ("dw", (D,)),
            ("drow1", (D,)), ("dcol2", (D,)))}
        dcol1 = torch.empty(N, C, F, **like)
        drow2 = torch.empty(N, C, F, **like)
        _backward_kernel[(N, NB)](
            _flat(W1, work), _flat(W2, work), x, c1, c2, e, u, w, col1, row1,
            col2, row2, dy, G1, G2, keep1, keep2, parts["dx"], parts["dc1"], parts["dc2"],
            parts["de"], parts["du"], parts["dw"], dcol1, parts["drow1"], parts["dcol2"],
            drow2, C, F=F, D=D, BF=BF, ERASE=erase, ACT=ACTS.index(act))
        s = {name: p.sum(1) for name, p in parts.items()}
        grads = [G1, G2, s["dx"], s["dc1"], s["dc2"]]
        grads += [s["de"], s["du"], s["dw"]] if erase else [None] * 3
        grads += [dcol1, s["drow1"], s["dcol2"], drow2]
        grads = [g if g is None else g.to(dt) for g, dt in zip(grads, dtypes)]
        return (*grads, None)


def walk(W1, W2, x, c1, c2, e, u, w, col1, row1, col2, row2, act: str = "gelu"):
    """The chunk on the kernels: (y, W1_C, W2_C), shapes as `_Walk`."""
    return _Walk.apply(W1, W2, x, c1, c2, e, u, w, col1, row1, col2, row2, act)


def walk_reference(W1, W2, x, c1, c2, e, u, w, col1, row1, col2, row2, act: str = "gelu"):
    """The same chunk token by token in PyTorch (autograd gives its gradients)."""
    fn = {"gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu,
          "identity": lambda z: z}[act]
    ys = []
    for t in range(x.shape[1]):
        z = torch.einsum("nfd,nd->nf", W1, x[:, t])
        ys.append(torch.einsum("ndf,nf->nd", W2, fn(z)))
        W1_next = c1[:, t, None, None] * W1 + col1[:, t, :, None] * row1[:, t, None, :]
        if e is not None:
            a = torch.einsum("nfd,nd->nf", W1, u[:, t])
            W1_next = W1_next + e[:, t, None, None] * a[:, :, None] * w[:, t, None, :]
        W1 = W1_next
        W2 = c2[:, t, None, None] * W2 + col2[:, t, :, None] * row2[:, t, None, :]
    return torch.stack(ys, 1), W1, W2
