"""Chunked Triton kernels, forward and backward, for n states that are jointly affine per token
(a momentum delta rule's (S, M); runtime/library/joint.py is the PyTorch form and derives the
algebra):

    X_i' = sum_j X_j (P_t[j, i] I + Q_t[j, i] k_t k_t^T) + v_{t,i} k_t^T,   o_t = X_read q_t,

X = [X_1, ..., X_n] the joint state `[V, n K]`. Per chunk, joint.py's pieces give, from the
mixings' products T[s, t] = P_s ... P_{t-1} (`transfers`), the triangular system over the
chunk's C n columns (`intra`: W = U + w X_0^T), each token's read (`outputs`: o = a X_0^T + b W)
and the end state (`state_pass`: X_C = X_0 (mix (x) I) + W^T r). Those per-chunk pieces are
independent of the state and run for all chunks at once, in float32, differentiated by
autograd: T by joint_transfers_triton.py's kernels (one launch each way, where joint.py's
column loop is C launches forward and more backward), batched PyTorch products with the
n x n ones as broadcast sums (joint.py's `small_matmul`), and (I - L)^-1 over the chunk's
C n columns by `UnitLowerInverse` (chunk_inverse_triton.py's block inverse on diagonal blocks
of up to 64, block substitution below them). r = T[s+1, C] (x) k_s is not formed: the
kernels take its factors (the n x n `tail` T[s+1, C] and the keys), the forward state pass
builds r's rows in registers, and the backward builds r once for its own pass. What passes
the state from chunk to chunk, and reads it, runs here:

  states (sequential, per V block):  W = U + w X^T,  X' = X (mix (x) I) + W^T r
  output (per chunk):                O = a X^T + b W
  backward (sequential, reversed):   dW = b^T dO + r dX'^T,
                                     dX = dO^T a + dX' (mix^T (x) I) + dW^T w

and the pieces' gradients are batched products over the value axis (dU = dW, dw = dW X,
da = dO X, db = dO W^T, dr = W dX' folded onto r's factors, dmix from X and dX'). One
state per chunk is stored and nothing per token but W. Tokens are gathered into whole chunks
(a chunk never spans two sequences of `cu_seqlens`); the missing tokens of a sequence's last
chunk get P = I, Q = 0 and no value, so they carry the state through unchanged. The mixing
X (mix (x) I) works on the state as n blocks of K columns."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from nlc.runtime.library.chunk_inverse_triton import _solve_kernel
from nlc.runtime.library.chunk_state_triton import _carried
from nlc.runtime.library.chunk_triton import (
    JOINT_MAX_STATES,
    boundaries,
    check_dims,
    check_tensors,
    chunk_table,
    dot_precision,
    joint_fits,
    pow2,
    state_launch,
)
from nlc.runtime.library.joint import intra, outputs
from nlc.runtime.library.joint_transfers_triton import Transfers


# --------------------------------------------------------------------------- device helpers
@triton.jit
def _mixed(X, mix, n: tl.constexpr, NP: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr,
           TRANSPOSE: tl.constexpr):
    """X (m (x) I) for X `[BV, NP BK]` in blocks of BK columns, m = mix (or mix^T): block i
    of the result is sum_j X_j m[j, i]."""
    o = tl.arange(0, NP)
    m_n = (o[:, None] < n) & (o[None, :] < n)
    if TRANSPOSE:
        m = tl.load(mix + o[None, :] * n + o[:, None], mask=m_n, other=0.0)
    else:
        m = tl.load(mix + o[:, None] * n + o[None, :], mask=m_n, other=0.0)
    X3 = tl.reshape(X, (BV, NP, BK))
    out = tl.sum(X3[:, :, None, :] * m.to(tl.float32)[None, :, :, None], 1)
    return tl.reshape(out, (BV, NP * BK))


@triton.jit
def _state_columns(K: tl.constexpr, n: tl.constexpr, BK: tl.constexpr, NP: tl.constexpr):
    """The joint state's columns as the kernels tile them (n blocks of BK, each K wide):
    their offsets in a `[..., n K]` tensor and their mask."""
    o_d = tl.arange(0, NP * BK)
    block, col = o_d // BK, o_d % BK
    return block * K + col, (block < n) & (col < K)


@triton.jit
def _joint_block(H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, n: tl.constexpr,
                 BK: tl.constexpr, NP: tl.constexpr, BV: tl.constexpr):
    """This program's block of the joint state `[S, H, V, n K]` (one program per (V block,
    sequence, head)), as chunk_state_triton.py's `_state_block`: the sequence, the head, the
    state's columns, the value offsets, the masks and the block's offsets. No tensor: the
    kernels load the chunk table and the carried state themselves (chunk_state_triton.py
    says why)."""
    i_v, i_sh = tl.program_id(0), tl.program_id(1)
    i_s, i_h = i_sh // H, i_sh % H
    a_d, m_d = _state_columns(K, n, BK, NP)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    m_vd = m_v[:, None] & m_d[None, :]
    p_state = (i_sh * V + o_v[:, None]) * (n * K) + a_d[None, :]
    return i_s, i_h, a_d, m_d, o_v, m_v, m_vd, p_state


@triton.jit
def _end_rows(tail, k, base, rows, m_r, m_d, C: tl.constexpr, K: tl.constexpr,
              n: tl.constexpr, BK: tl.constexpr, NP: tl.constexpr):
    """Rows `rows` of the chunk's r = T[s+1, C] (x) k_s (`[C n, n K]`: row s n + j, column
    block i), built from its factors: `tail` `[..., C, n, n]` (T[s+1, C]) and the keys
    `[..., C, K]`, both float32, so the forward never stores r (33 KiB a chunk at n = 2,
    K = 128, where r takes 128)."""
    o_d = tl.arange(0, NP * BK)
    s, j = rows // n, rows % n
    m = m_r[:, None] & m_d[None, :]
    b_c = tl.load(tail + ((base * C + s) * n + j)[:, None] * n + (o_d // BK)[None, :], mask=m,
                  other=0.0)
    b_k = tl.load(k + (base * C + s)[:, None] * K + (o_d % BK)[None, :], mask=m, other=0.0)
    return b_c * b_k


# --------------------------------------------------------------------------- forward
@triton.jit
def _states_kernel(u, w, tail, k, mix, h, wout, x0, xt, offsets,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, n: tl.constexpr,
                   C: tl.constexpr, R: tl.constexpr, BR: tl.constexpr, RB: tl.constexpr,
                   BK: tl.constexpr, NP: tl.constexpr, BV: tl.constexpr,
                   HAS_X0: tl.constexpr, PREC: tl.constexpr):
    """Per (V block, sequence, head), chunk after chunk: the state at each chunk's start (h),
    the chunk's W = U + w X^T (wout), X' = X (mix (x) I) + W^T r, and the final state. The
    chunk's R = C n rows go in blocks of RB."""
    D: tl.constexpr = n * K
    i_s, i_h, a_d, m_d, o_v, m_v, m_vd, p_state = _joint_block(H, K, V, n, BK, NP, BV)
    first, last = tl.load(offsets + i_s), tl.load(offsets + i_s + 1)
    b_X = _carried(x0, p_state, m_vd, HAS_X0, BV, NP * BK)
    o_r = tl.arange(0, RB)
    for i_c in range(first, last):
        base = i_c * H + i_h
        tl.store(h + (base * V + o_v[:, None]) * D + a_d[None, :], b_X, mask=m_vd)
        b_new = _mixed(b_X, mix + base * n * n, n, NP, BV, BK, False)
        for r0 in range(0, BR, RB):
            rows = r0 + o_r
            m_r = rows < R
            p_rd = (base * R + rows[:, None]) * D + a_d[None, :]
            p_rv = (base * R + rows[:, None]) * V + o_v[None, :]
            b_w = tl.load(w + p_rd, mask=m_r[:, None] & m_d[None, :], other=0.0)
            b_W = tl.load(u + p_rv, mask=m_r[:, None] & m_v[None, :], other=0.0) \
                + tl.dot(b_w, tl.trans(b_X), input_precision=PREC)
            tl.store(wout + p_rv, b_W, mask=m_r[:, None] & m_v[None, :])
            b_r = _end_rows(tail, k, base, rows, m_r, m_d, C, K, n, BK, NP)
            b_new += tl.dot(tl.trans(b_W), b_r, input_precision=PREC)
        b_X = b_new
    tl.store(xt + p_state, b_X, mask=m_vd)


@triton.jit
def _output_kernel(a, b, h, wout, o,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, n: tl.constexpr,
                   C: tl.constexpr, R: tl.constexpr, BR: tl.constexpr, RB: tl.constexpr,
                   BK: tl.constexpr, NP: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """Per (V block, chunk, head): O = a X^T + b W."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    base = i_c * H + i_h
    D: tl.constexpr = n * K
    a_d, m_d = _state_columns(K, n, BK, NP)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    o_t = tl.arange(0, C)
    b_X = tl.load(h + (base * V + o_v[:, None]) * D + a_d[None, :],
                  mask=m_v[:, None] & m_d[None, :], other=0.0)
    b_a = tl.load(a + (base * C + o_t[:, None]) * D + a_d[None, :], mask=m_d[None, :],
                  other=0.0)
    b_o = tl.dot(b_a, tl.trans(b_X), input_precision=PREC)
    o_r = tl.arange(0, RB)
    for r0 in range(0, BR, RB):
        rows = r0 + o_r
        m_r = rows < R
        b_b = tl.load(b + (base * C + o_t[:, None]) * R + rows[None, :], mask=m_r[None, :],
                      other=0.0)
        b_W = tl.load(wout + (base * R + rows[:, None]) * V + o_v[None, :],
                      mask=m_r[:, None] & m_v[None, :], other=0.0)
        b_o += tl.dot(b_b, b_W, input_precision=PREC)
    tl.store(o + (base * C + o_t[:, None]) * V + o_v[None, :], b_o, mask=m_v[None, :])


# --------------------------------------------------------------------------- backward
@triton.jit
def _state_grads_kernel(a, b, w, r, mix, do, dh, dw, dxt, dx0, offsets,
                        H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, n: tl.constexpr,
                        C: tl.constexpr, R: tl.constexpr, BR: tl.constexpr,
                        RB: tl.constexpr, BK: tl.constexpr, NP: tl.constexpr,
                        BV: tl.constexpr, HAS_DXT: tl.constexpr, PREC: tl.constexpr):
    """Per (V block, sequence, head), chunks in reverse: dX' of each chunk (dh), its
    dW = b^T dO + r dX'^T (dw), dX = dO^T a + dX' (mix^T (x) I) + dW^T w, and the initial
    state's gradient."""
    D: tl.constexpr = n * K
    i_s, i_h, a_d, m_d, o_v, m_v, m_vd, p_state = _joint_block(H, K, V, n, BK, NP, BV)
    first, last = tl.load(offsets + i_s), tl.load(offsets + i_s + 1)
    b_dX = _carried(dxt, p_state, m_vd, HAS_DXT, BV, NP * BK)
    o_t = tl.arange(0, C)
    o_r = tl.arange(0, RB)
    for j in range(first, last):
        i_c = last - 1 - (j - first)
        base = i_c * H + i_h
        tl.store(dh + (base * V + o_v[:, None]) * D + a_d[None, :], b_dX, mask=m_vd)
        b_do = tl.load(do + (base * C + o_t[:, None]) * V + o_v[None, :], mask=m_v[None, :],
                       other=0.0)
        b_a = tl.load(a + (base * C + o_t[:, None]) * D + a_d[None, :], mask=m_d[None, :],
                      other=0.0)
        b_new = _mixed(b_dX, mix + base * n * n, n, NP, BV, BK, True) \
            + tl.dot(tl.trans(b_do), b_a, input_precision=PREC)
        for r0 in range(0, BR, RB):
            rows = r0 + o_r
            m_r = rows < R
            m_rd = m_r[:, None] & m_d[None, :]
            p_rd = (base * R + rows[:, None]) * D + a_d[None, :]
            b_b = tl.load(b + (base * C + o_t[:, None]) * R + rows[None, :], mask=m_r[None, :],
                          other=0.0)
            b_r = tl.load(r + p_rd, mask=m_rd, other=0.0)
            b_dW = tl.dot(tl.trans(b_b), b_do, input_precision=PREC) \
                + tl.dot(b_r, tl.trans(b_dX), input_precision=PREC)
            tl.store(dw + (base * R + rows[:, None]) * V + o_v[None, :], b_dW,
                     mask=m_r[:, None] & m_v[None, :])
            b_w = tl.load(w + p_rd, mask=m_rd, other=0.0)
            b_new += tl.dot(tl.trans(b_dW), b_w, input_precision=PREC)
        b_dX = b_new
    tl.store(dx0 + p_state, b_dX, mask=m_vd)


# --------------------------------------------------------------------------- the triangular system
class UnitLowerInverse(torch.autograd.Function):
    """(I + A)^-1 for strictly lower A `[..., R, R]` (the chunk's C n columns, float32):
    diagonal blocks of up to 64 by chunk_inverse_triton.py's block inverse (`_solve_kernel`,
    tensor cores), the blocks below them by block substitution, row block i at once:
    T[i, :i] = -T[i, i] A[i, :i] T[:i, :i]. Backward: dA = strict_lower(-T^T dT T^T)."""

    @staticmethod
    def forward(ctx, A):
        R = A.shape[-1]
        B = min(pow2(R), 64)
        Rp = -(-R // B) * B
        a = (F.pad(A, (0, Rp - R, 0, Rp - R)) if Rp > R else A).reshape(-1, Rp, Rp).contiguous()
        nb = Rp // B
        diag = torch.stack([a[:, i * B:(i + 1) * B, i * B:(i + 1) * B] for i in range(nb)], 1)
        blocks = torch.empty_like(diag)
        _solve_kernel[(diag.shape[0] * nb, 1)](diag.contiguous(), blocks, H=1, BT=B,
                                                BATCHED=False, num_warps=1)
        T = torch.zeros_like(a)
        for i in range(nb):
            rows = slice(i * B, (i + 1) * B)
            T[:, rows, rows] = blocks[:, i]
            if i:
                T[:, rows, :i * B] = -blocks[:, i] @ (a[:, rows, :i * B] @ T[:, :i * B, :i * B])
        T = T[:, :R, :R].reshape(A.shape)
        ctx.save_for_backward(T)
        return T

    @staticmethod
    def backward(ctx, dT):
        T, = ctx.saved_tensors
        return (-(T.mT @ dT @ T.mT)).tril(-1)


# --------------------------------------------------------------------------- host side
# Blocks: the state's n key blocks whole (NP BK columns: 256 at n = 2, K = 128), values in
# blocks of state_launch's width (at most 32 here), and a chunk's C n rows in blocks of
# RB = 32, so no tile is larger than [32, 256] float32 (32 KiB). The sequential kernels run
# one pipeline stage: their row loop loads w and r, 64 KiB a stage in float32. They hold
# the [BV, n K] float32 state and its update at once, so they take 8 warps: with
# state_launch's 4 they spilled 304 and 768 bytes a thread at BV = 32 (the block the timed
# (8, 2048, 16, 128) got), none and 64 with 8 (benchmarks/kernel_resources.py).
ROW_BLOCK = 32
SEQUENTIAL_WARPS = 8


def _tiles(K: int, V: int, n: int, R: int):
    return pow2(K), min(pow2(V), 32), pow2(n, 2), pow2(R), min(pow2(R), ROW_BLOCK)


def _pass(u, w, a, b, mix, tail, k, x0, offsets, shape, prec):
    NC, H, R, V = u.shape
    K, n, S, C = shape
    BK, BV, NP, BR, RB = _tiles(K, V, n, R)
    f32 = {"dtype": torch.float32, "device": u.device}
    h = torch.empty(NC, H, V, n * K, **f32)
    wout = torch.empty(NC, H, R, V, **f32)
    xt = torch.empty(S, H, V, n * K, **f32)
    BVs = state_launch(BV, S * H)[0]
    dims = {"H": H, "K": K, "V": V, "n": n, "R": R, "BR": BR, "RB": RB, "BK": BK, "NP": NP,
            "PREC": prec}
    _states_kernel[(triton.cdiv(V, BVs), S * H)](
        u, w, tail, k, mix, h, wout, x0, xt, offsets, C=C, BV=BVs, HAS_X0=x0 is not None,
        **dims, num_warps=SEQUENTIAL_WARPS, num_stages=1)
    o = torch.empty(NC, H, C, V, **f32)
    _output_kernel[(triton.cdiv(V, BV), NC, H)](a, b, h, wout, o, C=C, BV=BV, **dims,
                                                num_warps=4)
    return o, xt, h, wout


def _end_matrix(tail, k):
    """joint.py's r = T[s+1, C] (x) k_s `[..., C n, n K]` from its factors (the backward's
    state pass reads it whole: built in-kernel there, as the forward does, it spilled
    3 KiB a thread)."""
    return (tail[..., None] * k[..., :, None, None, :]).flatten(-2).flatten(-3, -2)


class JointStatePass(torch.autograd.Function):
    """The prepared pieces `[NC, H, ...]` (float32) -> (each chunk's reads `[NC, H, C, V]`,
    the final joint states `[S, H, V, n K]`); see the module docstring."""

    @staticmethod
    def forward(ctx, u, w, a, b, mix, tail, k, x0, offsets, K, n, prec):
        S = offsets.numel() - 1
        C = a.shape[2]
        o, xt, h, wout = _pass(u, w, a, b, mix, tail, k, x0, offsets, (K, n, S, C), prec)
        ctx.save_for_backward(w, a, b, mix, tail, k, offsets, h, wout)
        ctx.meta = (K, n, prec, x0 is not None)
        return o, xt

    @staticmethod
    def backward(ctx, do, dxt):
        w, a, b, mix, tail, k, offsets, h, wout = ctx.saved_tensors
        K, n, prec, has_x0 = ctx.meta
        _, H, R, V = wout.shape
        C, S = a.shape[2], offsets.numel() - 1
        BK, BV, NP, BR, RB = _tiles(K, V, n, R)
        do = do.contiguous()
        dh = torch.empty_like(h)
        dw = torch.empty_like(wout)
        dx0 = torch.empty(S, H, V, n * K, dtype=torch.float32, device=do.device)
        BVs = state_launch(BV, S * H)[0]
        _state_grads_kernel[(triton.cdiv(V, BVs), S * H)](
            a, b, w, _end_matrix(tail, k), mix, do, dh, dw,
            dxt.contiguous() if dxt is not None else None, dx0,
            offsets, H=H, K=K, V=V, n=n, C=C, R=R, BR=BR, RB=RB, BK=BK, NP=NP, BV=BVs,
            HAS_DXT=dxt is not None, PREC=prec, num_warps=SEQUENTIAL_WARPS, num_stages=1)
        # the pieces' gradients: products over the value axis, every chunk at once
        d_w = dw @ h
        d_a = do @ h
        d_b = do @ wout.mT
        d_r = (wout @ dh).unflatten(-2, (C, n)).unflatten(-1, (n, K))  # [s, j, i, k]
        d_tail = torch.einsum("...sjik,...sk->...sji", d_r, k)
        d_k = torch.einsum("...sjik,...sji->...sk", d_r, tail)
        d_mix = torch.einsum("chvjk,chvik->chji", h.unflatten(-1, (n, K)),
                             dh.unflatten(-1, (n, K)))
        return (dw, d_w, d_a, d_b, d_mix, d_tail, d_k, dx0 if has_x0 else None, None, None,
                None, None)


def _check(q, k, values, P, Q, read, initial_state, sequences):
    if q.dim() != 4 or values.dim() != 5:
        raise ValueError(f"q must be [B, T, H, K] and values [B, T, H, n, V], got "
                         f"{list(q.shape)}, {list(values.shape)}")
    B, T, H, K = q.shape
    n, V = values.shape[-2:]
    expect = {"k": (k, [B, T, H, K]), "values": (values, [B, T, H, n, V]),
              "P": (P, [B, T, H, n, n]), "Q": (Q, [B, T, H, n, n]),
              "initial_state": (initial_state, [sequences, H, n, V, K])}
    check_tensors(q, expect)
    if not joint_fits(n, K):
        raise ValueError(f"the joint kernels take 2 to {JOINT_MAX_STATES} states of at most "
                         f"512 columns together (n x K, each rounded up to a power of two), "
                         f"got n = {n}, K = {K}")
    if not 0 <= read < n:
        raise ValueError(f"read must name one of the {n} states, got {read}")


def _chunks(x, index, valid, fill):
    """Tokens `[N, H, *]` gathered into whole chunks `[NC, H, C, *]` (the kernels' layout:
    joint.py's pieces take any leading dimensions, so they come out in it and need no
    transposed copy); a missing token gets `fill`."""
    got = x[index.clamp_max(x.shape[0] - 1)]                  # [NC, C, H, *]
    keep = valid.view(*valid.shape, *[1] * (got.dim() - 2))
    return torch.where(keep, got, fill).transpose(1, 2).contiguous()


def chunk_joint(q, k, values, P, Q, *, read=0, initial_state=None, read_before=False,
                cu_seqlens=None, chunk_size=64):
    """n jointly affine states, chunked on the GPU (runtime/library/joint.py's calling
    convention): q, k `[B, T, H, K]`, values `[B, T, H, n, V]` (v_{t,i}), P, Q
    `[B, T, H, n, n]`, `read` the state the output reads, initial_state `[B, H, n, V, K]`
    (or `[S, H, n, V, K]` for S packed sequences with `cu_seqlens`, B = 1). Returns
    `(o [B, T, H, V], final states [., H, n, V, K] float32)`."""
    B, T, H, K = q.shape
    bounds = boundaries(B, T, cu_seqlens)
    _check(q, k, values, P, Q, read, initial_state, len(bounds) - 1)
    n, V = values.shape[-2:]
    check_dims(K, V, chunk_size)
    table = chunk_table(bounds, chunk_size, q.device)
    index = table.starts[:, None].long() + torch.arange(chunk_size, device=q.device)
    valid = index < table.ends[:, None]
    eye = torch.eye(n, dtype=torch.float32, device=q.device)

    def chunked(x, fill=0.0):
        return _chunks(x.float().reshape(B * T, *x.shape[2:]), index, valid, fill)

    qc, kc, vc, Qc = (chunked(x) for x in (q, k, values, Q))
    Tm = Transfers.apply(chunked(P, eye))
    U, w = intra(kc, Qc, vc, Tm, inverse=UnitLowerInverse.apply)
    a, b = outputs(qc, kc, Tm, read, read_before)
    mix, tail = Tm[..., 0, chunk_size, :, :], Tm[..., 1:, chunk_size, :, :]  # r's factors
    x0 = None
    if initial_state is not None:
        x0 = initial_state.float().movedim(2, 3).flatten(-2).contiguous()  # [S, H, V, n K]
    pieces = (x.contiguous() for x in (U, w, a, b, mix, tail, kc))  # float32 already
    o, xt = JointStatePass.apply(*pieces, x0, table.offsets, K, n, dot_precision(q.dtype))
    o = o.transpose(1, 2)[valid]                             # [N, H, V], in token order
    return (o.to(values.dtype).reshape(B, T, H, V),
            xt.unflatten(-1, (n, K)).movedim(3, 2))
