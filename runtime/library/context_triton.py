"""Fused Triton kernels, forward and backward, for a layer's context code (issue 16, item 3):

    short_conv:  y = norm(act(conv(x)))      causal depthwise convolution over T, x `[B, T, H, D]`,
                                             weight `[H, D, W]` (the last tap is the current token)
    row_norm:    y = norm(act(x)) * gate_act(g)  over the last axis; the gate is optional

with act and gate_act in {identity, silu, sigmoid}, norm in {none, l2, rms, layer}
(`x / sqrt(sum x^2 + eps)`, `x / sqrt(mean x^2 + eps)`, `(x - mean x) / sqrt(var x + eps)`,
eps = ops.EPS; no learned gain). Eager PyTorch spends several kernels on each of these
forward and more backward; here each is one pass each way, fp32 accumulation, on fp32, bf16
or fp16 inputs. The backward recomputes the convolution (W^2 loads per output, cached)
instead of storing it. `cu_seqlens` packs sequences along T; a token never sees another
sequence's inputs. The weight's gradient is summed per token block, then over blocks (no
atomics: deterministic).

`LAUNCHES` counts the kernels run (the tests check that the fused path really ran)."""

from __future__ import annotations

from collections import Counter

import torch
import triton
import triton.language as tl
from nlc.runtime.library.ops import EPS

ACTS = {None: 0, "silu": 1, "sigmoid": 2}
NORMS = {None: 0, "l2": 1, "rms": 2, "layer": 3}
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_WIDTH = 8                   # the backward unrolls W^2 loads
MAX_DIM = 1024                  # one program holds a whole row (a head's channels)
LAUNCHES: Counter = Counter()


def _count(launch: str) -> None:
    """Counts a launch for the tests that check this path ran; not in code torch.compile
    traces, where a change to the module's counter would break the graph."""
    if not torch.compiler.is_compiling():
        LAUNCHES[launch] += 1


# --------------------------------------------------------------------------- device helpers
@triton.jit
def _act(x, ACT: tl.constexpr):
    if ACT == 1:
        x = x * tl.sigmoid(x)
    elif ACT == 2:
        x = tl.sigmoid(x)
    return x


@triton.jit
def _act_grad(x, dy, ACT: tl.constexpr):
    """dy * act'(x)."""
    if ACT == 1:
        s = tl.sigmoid(x)
        dy = dy * s * (1 + x * (1 - s))
    elif ACT == 2:
        s = tl.sigmoid(x)
        dy = dy * s * (1 - s)
    return dy


@triton.jit
def _normalize(a, m_d, D: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr):
    """(n, r): the rows of a `[rows, BD]` block normalized, n = c r with c = a (l2, rms) or
    a - mean(a) (layer), r = 1 / sqrt(sum c^2 (/ D for rms, layer) + eps). Channels past D
    are zeroed first: an activation makes them nonzero (sigmoid(0) = 1/2)."""
    a = tl.where(m_d[None, :], a, 0.0)
    if NORM == 3:
        a = tl.where(m_d[None, :], a - (tl.sum(a, axis=1) / D)[:, None], 0.0)
    s = tl.sum(a * a, axis=1)
    if NORM >= 2:
        s = s / D
    r = 1 / tl.sqrt(s + EPS)
    return a * r[:, None], r


@triton.jit
def _norm_grad(n, r, dn, D: tl.constexpr, NORM: tl.constexpr):
    """da for n = normalize(a): r (dn - n <dn, n>) (/ D for rms, layer), and for layer minus
    r mean(dn) (the centring)."""
    c = tl.sum(dn * n, axis=1)
    if NORM >= 2:
        c = c / D
    da = r[:, None] * (dn - n * c[:, None])
    if NORM == 3:
        da -= (r * tl.sum(dn, axis=1) / D)[:, None]
    return da


@triton.jit
def _start(starts, tok, ok, T, VARLEN: tl.constexpr):
    """The first token of each token's sequence (packed index)."""
    if VARLEN:
        s = tl.load(starts + tok, mask=ok, other=0).to(tl.int64)
    else:
        s = (tok // T) * T
    return s


@triton.jit
def _conv_at(x, w, tok, start, ok, ch, m_d, i_h, H: tl.constexpr, D: tl.constexpr,
             W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """sum_i w[h, c, W-1-i] x[tok - i, h, c] over taps inside the token's sequence."""
    acc = tl.zeros([BT, BD], dtype=tl.float32)
    for i in tl.static_range(W):
        src = tok - i
        keep = ok & (src >= start)
        xv = tl.load(x + (src * H + i_h)[:, None] * D + ch[None, :],
                     mask=keep[:, None] & m_d[None, :], other=0).to(tl.float32)
        wv = tl.load(w + (i_h * D + ch) * W + (W - 1 - i), mask=m_d, other=0).to(tl.float32)
        acc += xv * wv[None, :]
    return acc


# --------------------------------------------------------------------------- convolution
@triton.jit
def _token_block(N, H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """A convolution program's block (one per BT tokens and head): the head, the tokens and
    channels with their masks, the [BT, BD] mask and the block's offsets `[B T, H, D]`."""
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    tok = i_t * BT + tl.arange(0, BT).to(tl.int64)
    ch = tl.arange(0, BD)
    m_t, m_d = tok < N, ch < D
    return (i_t, i_h, tok, ch, m_t, m_d, m_t[:, None] & m_d[None, :],
            (tok * H + i_h)[:, None] * D + ch[None, :])


@triton.jit
def _conv_fwd(x, w, starts, y, N, T, H: tl.constexpr, D: tl.constexpr, W: tl.constexpr,
              BT: tl.constexpr, BD: tl.constexpr, ACT: tl.constexpr, NORM: tl.constexpr,
              VARLEN: tl.constexpr, EPS: tl.constexpr):
    _, i_h, tok, ch, m_t, m_d, mask, here = _token_block(N, H, D, BT, BD)
    start = _start(starts, tok, m_t, T, VARLEN)
    a = _act(_conv_at(x, w, tok, start, m_t, ch, m_d, i_h, H, D, W, BT, BD), ACT)
    if NORM != 0:
        a, _ = _normalize(a, m_d, D, NORM, EPS)
    tl.store(y + here, a.to(y.dtype.element_ty), mask=mask)


@triton.jit
def _conv_dpre(x, w, starts, dy, dpre, N, T, H: tl.constexpr, D: tl.constexpr,
               W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, ACT: tl.constexpr,
               NORM: tl.constexpr, VARLEN: tl.constexpr, EPS: tl.constexpr):
    """The backward's first pass: dpre[t], the gradient before the activation (float32),
    from the recomputed convolution at t."""
    _, i_h, tok, ch, m_t, m_d, mask, here = _token_block(N, H, D, BT, BD)
    start = _start(starts, tok, m_t, T, VARLEN)
    pre = _conv_at(x, w, tok, start, m_t, ch, m_d, i_h, H, D, W, BT, BD)
    g = tl.load(dy + here, mask=mask, other=0).to(tl.float32)
    if NORM != 0:
        n, r = _normalize(_act(pre, ACT), m_d, D, NORM, EPS)
        g = _norm_grad(n, r, g, D, NORM)
    tl.store(dpre + here, _act_grad(pre, g, ACT), mask=mask)


@triton.jit
def _conv_bwd(x, w, starts, dpre, dx, dw, N, T, H: tl.constexpr, D: tl.constexpr,
              W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, VARLEN: tl.constexpr):
    """dx[t] = sum_j w[W-1-j] dpre[t+j], dw[W-1-j] = sum_t dpre[t+j] x[t], over t + j in t's
    sequence, from `_conv_dpre`'s dpre: recomputing dpre at each t + j here (W convolutions
    of W taps per token) made this pass 6x the forward's time (280 against 48 us in Titans'
    LM step on an H100, docs/perf.md, thirteenth batch)."""
    i_t, i_h, tok, ch, m_t, m_d, mask, here = _token_block(N, H, D, BT, BD)
    xv = tl.load(x + here, mask=mask, other=0).to(tl.float32)
    dxv = tl.zeros([BT, BD], dtype=tl.float32)
    for j in tl.static_range(W):
        later = tok + j
        in_range = m_t & (later < N)
        start = _start(starts, later, in_range, T, VARLEN)
        ok = in_range & (start <= tok)  # t + j is in t's sequence
        g = tl.load(dpre + (later * H + i_h)[:, None] * D + ch[None, :],
                    mask=ok[:, None] & m_d[None, :], other=0)
        wv = tl.load(w + (i_h * D + ch) * W + (W - 1 - j), mask=m_d, other=0).to(tl.float32)
        dxv += g * wv[None, :]
        tl.store(dw + ((i_t * H + i_h) * D + ch) * W + (W - 1 - j), tl.sum(g * xv, axis=0),
                 mask=m_d)
    tl.store(dx + here, dxv.to(dx.dtype.element_ty), mask=mask)


def _tiles(D: int) -> tuple[int, int]:
    """(channel tile, rows per program): a whole row per program, about 4K entries a tile."""
    BD = triton.next_power_of_2(D)
    return BD, max(1, min(64, 4096 // BD))


def _sequence_starts(cu_seqlens, N: int, device):
    """Each token's sequence start (int32 `[N]`), without a device sync."""
    idx = torch.arange(N, device=device)
    bounds = cu_seqlens.to(device=device, dtype=torch.long)
    return bounds[torch.searchsorted(bounds[1:], idx, right=True)].to(torch.int32)


class ShortConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, starts, act, norm):
        B, T, H, D = x.shape
        x = x.contiguous()
        weight = weight.contiguous()
        y = torch.empty_like(x)
        BD, BT = _tiles(D)
        N = B * T
        grid = (triton.cdiv(N, BT), H)
        _conv_fwd[grid](x, weight, starts if starts is not None else x, y, N, T, H, D,
                        weight.shape[-1], BT, BD, ACTS[act], NORMS[norm], starts is not None,
                        EPS)
        _count("short_conv_fwd")
        ctx.save_for_backward(x, weight, starts)
        ctx.act, ctx.norm = act, norm
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, starts = ctx.saved_tensors
        B, T, H, D = x.shape
        W = weight.shape[-1]
        BD, BT = _tiles(D)
        N = B * T
        grid = (triton.cdiv(N, BT), H)
        dx = torch.empty_like(x)
        dw = torch.empty(grid[0], H, D, W, device=x.device, dtype=torch.float32)
        dpre = torch.empty(x.shape, device=x.device, dtype=torch.float32)
        starts_ = starts if starts is not None else x
        _conv_dpre[grid](x, weight, starts_, dy.contiguous(), dpre, N, T, H, D, W, BT, BD,
                         ACTS[ctx.act], NORMS[ctx.norm], starts is not None, EPS)
        _conv_bwd[grid](x, weight, starts_, dpre, dx, dw, N, T, H, D, W, BT, BD,
                        starts is not None)
        _count("short_conv_bwd")
        return dx, dw.sum(0).to(weight.dtype), None, None, None


def short_conv(x, weight, cu_seqlens=None, act=None, norm=None):
    """norm(act(causal depthwise conv of x)), x `[B, T, H, D]`, weight `[H, D, W]`."""
    starts = None if cu_seqlens is None else _sequence_starts(cu_seqlens, x.shape[1], x.device)
    return ShortConv.apply(x, weight, starts, act, norm)


def conv_supported(x, weight) -> bool:
    return (x.dim() == 4 and weight.dim() == 3 and tuple(x.shape[2:]) == tuple(weight.shape[:2])
            and x.dtype in SUPPORTED_DTYPES and weight.dtype in SUPPORTED_DTYPES
            and x.device == weight.device and 1 <= weight.shape[-1] <= MAX_WIDTH
            and x.shape[-1] <= MAX_DIM)


# --------------------------------------------------------------------------- row norms
@triton.jit
def _row_fwd(x, g, y, R, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr,
             ACT: tl.constexpr, NORM: tl.constexpr, GATE: tl.constexpr, EPS: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR).to(tl.int64)
    ch = tl.arange(0, BD)
    m_d = ch < D
    mask = (rows < R)[:, None] & m_d[None, :]
    at = rows[:, None] * D + ch[None, :]
    a = _act(tl.load(x + at, mask=mask, other=0).to(tl.float32), ACT)
    if NORM != 0:
        a, _ = _normalize(a, m_d, D, NORM, EPS)
    if GATE != 0:
        a = a * _act(tl.load(g + at, mask=mask, other=0).to(tl.float32), GATE)
    tl.store(y + at, a.to(y.dtype.element_ty), mask=mask)


@triton.jit
def _row_bwd(x, g, dy, dx, dg, R, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr,
             ACT: tl.constexpr, NORM: tl.constexpr, GATE: tl.constexpr, EPS: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR).to(tl.int64)
    ch = tl.arange(0, BD)
    m_d = ch < D
    mask = (rows < R)[:, None] & m_d[None, :]
    at = rows[:, None] * D + ch[None, :]
    xv = tl.load(x + at, mask=mask, other=0).to(tl.float32)
    dn = tl.load(dy + at, mask=mask, other=0).to(tl.float32)
    n = _act(xv, ACT)
    if NORM != 0:
        n, r = _normalize(n, m_d, D, NORM, EPS)
    if GATE != 0:
        gv = tl.load(g + at, mask=mask, other=0).to(tl.float32)
        tl.store(dg + at, _act_grad(gv, dn * n, GATE).to(dg.dtype.element_ty), mask=mask)
        dn = dn * _act(gv, GATE)
    if NORM != 0:
        dn = _norm_grad(n, r, dn, D, NORM)
    tl.store(dx + at, _act_grad(xv, dn, ACT).to(dx.dtype.element_ty), mask=mask)


class RowNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gate, act, norm, gate_act):
        x = x.contiguous()
        gate = None if gate is None else gate.contiguous()
        D = x.shape[-1]
        R = x.numel() // D
        BD, BR = _tiles(D)
        y = torch.empty_like(x, dtype=x.dtype if gate is None
                              else torch.promote_types(x.dtype, gate.dtype))
        _row_fwd[(triton.cdiv(R, BR),)](x, gate if gate is not None else x, y, R, D, BR, BD,
                                        ACTS[act], NORMS[norm], ACTS[gate_act], EPS)
        _count("row_norm_fwd")
        ctx.save_for_backward(x, gate)
        ctx.act, ctx.norm, ctx.gate_act = act, norm, gate_act
        return y

    @staticmethod
    def backward(ctx, dy):
        x, gate = ctx.saved_tensors
        D = x.shape[-1]
        R = x.numel() // D
        BD, BR = _tiles(D)
        dx = torch.empty_like(x)
        dg = None if gate is None else torch.empty_like(gate)
        _row_bwd[(triton.cdiv(R, BR),)](x, gate if gate is not None else x, dy.contiguous(),
                                        dx, dg if dg is not None else dx, R, D, BR, BD,
                                        ACTS[ctx.act], NORMS[ctx.norm], ACTS[ctx.gate_act],
                                        EPS)
        _count("row_norm_bwd")
        return dx, dg, None, None, None


def row_norm(x, gate=None, act=None, norm=None, gate_act="silu"):
    """norm(act(x)) * gate_act(gate) over the last axis (no gate: norm(act(x)))."""
    return RowNorm.apply(x, gate, act, norm, gate_act if gate is not None else None)


def row_supported(x, gate=None) -> bool:
    return (x.dim() >= 1 and 1 <= x.shape[-1] <= MAX_DIM and x.numel() > 0
            and x.dtype in SUPPORTED_DTYPES
            and (gate is None or (gate.shape == x.shape and gate.dtype in SUPPORTED_DTYPES
                                  and gate.device == x.device)))
