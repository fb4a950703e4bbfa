"""Triton kernels, forward and backward, for the two generic pieces of the dual chunk form
(runtime/library/dual.py): the coefficient scan and the masked [C, C] read products. Each is a
torch.autograd.Function; dual.py sends CUDA tensors here (CPU ones with NLC_TRITON=force,
under TRITON_INTERPRET=1) and keeps its PyTorch forms for everything else.

The coefficient scan. Token t of a chunk maps the states s (n of them) to A_t s + b_t, with
A_t the step matrix `[n, n]` and b_t `[n, d]` the coefficients of its own d terms. Composed
from the chunk start (Phi_{-1} = I, Psi_{-1} = 0):

    Phi_t = A_t Phi_{t-1},      Psi_t[:, j, :] = A_t Psi_{t-1}[:, j, :] + [j = t] b_t.

One program per (batch, head) walks the chunk's tokens in order, holding Phi `[n, n]` and
Psi `[n, C d]` in registers (n, d and C padded to powers of two). The backward program walks
them in reverse with the gradients G of Phi_t and Psi_t: dA_t = G^Phi_t Phi_{t-1}^T +
G^Psi_t Psi_{t-1}^T (from the saved outputs), db_t = G^Psi_t[:, t, :], then G_{t-1} +=
A_t^T G_t. Nothing is stored beyond the outputs.

The read products. For one state and one chunk, with X `[C, K]` the read's columns x_t,
S0_m `[R, K]` the chunk-start states of the state's shape, phi `[C, M]` their coefficients,
and per (column, row) pair p of a term of that shape Col_p `[C, R]`, Row_p `[C, K]` and
psi_p `[C, C]` (the term's coefficients, zero above the diagonal):

    O = sum_m phi_m * (X S0_m^T) + sum_p (psi_p * (X Row_p^T)) Col_p

(`*` by rows for phi_m, elementwise for psi_p). The forward program takes one block of R per
(batch, head); the scores X Row_p^T are `tl.dot` products over K blocks. With dO and the
scores' gradients G_p = dO Col_p^T, the backward pass is

    dphi_m = rowsum(dO * (X S0_m^T)),   dpsi_p = G_p * (X Row_p^T),
    dCol_p = (psi_p * X Row_p^T)^T dO,  dS0_m = (phi_m * dO)^T X,
    dX = sum_m (phi_m * dO) S0_m + sum_p (psi_p * G_p) Row_p,   dRow_p = (psi_p * G_p)^T X,

three kernels: per (batch, head) the [C, C] pieces (dpsi, dphi, and psi * G, psi * S kept in
float32 scratch), per R block dCol and dS0, per K block dX and dRow. The autograd function
keeps its inputs as given (the start states, the pairs, the whole phi and psi: tensors the
graph holds anyway) and stacks them into the kernels' layout for each launch.

dual.py sends float32 inputs only, with exact float32 products (`chunk_triton.dot_precision`):
the half-precision tiles (64 x 64, tensor-core products) made an illegal memory access in the
reads' backward on an H200 (2026-12-05) and are untested there since; the kernels still take
them when called directly, as the interpreter tests do. `LAUNCHES` counts the autograd functions run (the tests check
that the kernels really ran)."""

from __future__ import annotations

import os
from collections import Counter

import torch
import triton
import triton.language as tl
from nlc.runtime.library.chunk_triton import dot_precision, pow2

LAUNCHES: Counter = Counter()

# The scan holds a [n, n, C d] product per token in registers (n, C, d padded): at most this
# many entries (n = 4 states with d = 2 terms: chunks of up to 512 tokens), a warp per 2048
# of them (at 2048 a warp holds 80 registers a thread in the forward, 167 in the backward,
# each loading a token ahead, on sm_90 with Triton 3.6, no spills;
# benchmarks/kernel_resources.py).
SCAN_MAX_ENTRIES = 1 << 14
SCAN_WARP_ENTRIES = 1 << 11
# The reads' [C, C] score tiles: chunks of at most this many tokens.
PRODUCT_MAX_TOKENS = 128


def scan_fits(n: int, d: int, T: int) -> bool:
    return n >= 1 and pow2(n, 2) ** 2 * pow2(T, 2) * pow2(d, 2) <= SCAN_MAX_ENTRIES


def product_fits(T: int) -> bool:
    return 1 <= T <= PRODUCT_MAX_TOKENS


# --------------------------------------------------------------------------- the scan
@triton.jit
def _scan_prologue(T, H: tl.constexpr, N: tl.constexpr, D: tl.constexpr, NP: tl.constexpr,
                   CP: tl.constexpr, DP: tl.constexpr):
    """The start of both scan kernels (one program per (batch, head)): the batch and head, the
    rows i and columns (j, e) of the register tiles, Psi's offsets within a token `[n, T, d]`
    and their mask, and the offsets and mask of an `[n, n]` matrix."""
    i_bh = tl.program_id(0)
    o_i = tl.arange(0, NP)
    o_c = tl.arange(0, CP * DP)
    j, e = o_c // DP, o_c % DP
    p_psi = (o_i[:, None] * T + j[None, :]) * D + e[None, :]
    m_psi = (o_i[:, None] < N) & (j[None, :] < T) & (e[None, :] < D)
    m_nn = (o_i[:, None] < N) & (o_i[None, :] < N)
    return i_bh // H, i_bh % H, o_i, j, e, p_psi, m_psi, o_i[:, None] * N + o_i[None, :], m_nn


@triton.jit
def _scan_token(step, add, tok, t, T, o_i, j, e, p_nn, m_nn, N: tl.constexpr, D: tl.constexpr):
    """Token t's A_t `[n, n]` and b_t, the latter in Psi's columns (t, e) only (zeros for
    t >= T, which the scans load one token ahead)."""
    ok = (o_i * 0 + t)[:, None] < T  # as a tile: a mask must be one
    b_A = tl.load(step + tok * N * N + p_nn, mask=m_nn & ok, other=0.0).to(tl.float32)
    m_b = (o_i[:, None] < N) & (j[None, :] == t) & (e[None, :] < D) & ok
    b_b = tl.load(add + tok * N * D + o_i[:, None] * D + e[None, :], mask=m_b, other=0.0)
    return b_A, b_b.to(tl.float32)


@triton.jit
def _scan_fwd(step, add, phi, psi, T, H: tl.constexpr, N: tl.constexpr, D: tl.constexpr,
              NP: tl.constexpr, CP: tl.constexpr, DP: tl.constexpr):
    """Per (batch, head): Phi_t = A_t Phi_{t-1}, Psi_t = A_t Psi_{t-1} + b_t at column t.
    Each token's inputs load one token ahead, before this token's stores: the compiler may
    not move a load above a store it cannot prove apart, so each step would otherwise wait
    out a load's latency."""
    i_b, i_h, o_i, j, e, p_psi, m_psi, p_nn, m_nn = _scan_prologue(T, H, N, D, NP, CP, DP)
    b_phi = tl.where(o_i[:, None] == o_i[None, :], 1.0, 0.0)
    b_psi = tl.zeros([NP, CP * DP], dtype=tl.float32)
    tok = i_b * T * H + i_h
    b_A, b_b = _scan_token(step, add, tok, 0, T, o_i, j, e, p_nn, m_nn, N, D)
    for t in range(T):
        tok = (i_b * T + t) * H + i_h
        n_A, n_b = _scan_token(step, add, tok + H, t + 1, T, o_i, j, e, p_nn, m_nn, N, D)
        b_phi = tl.sum(b_A[:, :, None] * b_phi[None, :, :], 1)
        b_psi = tl.sum(b_A[:, :, None] * b_psi[None, :, :], 1) + b_b
        tl.store(phi + tok * N * N + p_nn, b_phi, mask=m_nn)
        tl.store(psi + tok * N * T * D + p_psi, b_psi, mask=m_psi)
        b_A, b_b = n_A, n_b


@triton.jit
def _scan_grads_token(step, phi, psi, dphi, dpsi, tok, t, H: tl.constexpr, o_i, p_psi, m_psi,
                      p_nn, m_nn, eye, N: tl.constexpr, D: tl.constexpr, T):
    """What the backward reads at token t (nothing for t < 0, which it loads one token
    ahead): dPhi_t, dPsi_t, A_t and the states before token t, the saved outputs of token
    t - 1 (I and 0 at the start)."""
    ok = (o_i * 0 + t)[:, None] >= 0
    later = (o_i * 0 + t)[:, None] > 0
    b_dphi = tl.load(dphi + tok * N * N + p_nn, mask=m_nn & ok, other=0.0).to(tl.float32)
    b_dpsi = tl.load(dpsi + tok * N * T * D + p_psi, mask=m_psi & ok, other=0.0)
    b_A = tl.load(step + tok * N * N + p_nn, mask=m_nn & ok, other=0.0).to(tl.float32)
    prev = tok - H
    b_phi = tl.load(phi + prev * N * N + p_nn, mask=m_nn & later, other=0.0)
    b_phi = tl.where(later, b_phi.to(tl.float32), eye)
    b_psi = tl.load(psi + prev * N * T * D + p_psi, mask=m_psi & later, other=0.0)
    return b_dphi, b_dpsi.to(tl.float32), b_A, b_phi, b_psi.to(tl.float32)


@triton.jit
def _scan_bwd(step, phi, psi, dphi, dpsi, dstep, dadd, T, H: tl.constexpr, N: tl.constexpr,
              D: tl.constexpr, NP: tl.constexpr, CP: tl.constexpr, DP: tl.constexpr):
    """Per (batch, head), tokens in reverse: dA_t = G^Phi_t Phi_{t-1}^T + G^Psi_t Psi_{t-1}^T,
    db_t = G^Psi_t[:, t], G_{t-1} = dPhi_{t-1} (dPsi_{t-1}) + A_t^T G_t. Loads one token
    ahead, as `_scan_fwd`."""
    i_b, i_h, o_i, j, e, p_psi, m_psi, p_nn, m_nn = _scan_prologue(T, H, N, D, NP, CP, DP)
    eye = tl.where(o_i[:, None] == o_i[None, :], 1.0, 0.0)
    g_phi = tl.zeros([NP, NP], dtype=tl.float32)
    g_psi = tl.zeros([NP, CP * DP], dtype=tl.float32)
    tok = (i_b * T + T - 1) * H + i_h
    b_dphi, b_dpsi, b_A, b_phi, b_psi = _scan_grads_token(
        step, phi, psi, dphi, dpsi, tok, T - 1, H, o_i, p_psi, m_psi, p_nn, m_nn, eye, N, D, T)
    for s in range(T):
        t = T - 1 - s
        tok = (i_b * T + t) * H + i_h
        nxt = _scan_grads_token(step, phi, psi, dphi, dpsi, tok - H, t - 1, H, o_i, p_psi,
                                m_psi, p_nn, m_nn, eye, N, D, T)
        g_phi += b_dphi
        g_psi += b_dpsi
        m_b = (o_i[:, None] < N) & (j[None, :] == t) & (e[None, :] < D)
        tl.store(dadd + tok * N * D + o_i[:, None] * D + e[None, :], g_psi, mask=m_b)
        b_dA = tl.sum(g_phi[:, None, :] * b_phi[None, :, :], 2) \
            + tl.sum(g_psi[:, None, :] * b_psi[None, :, :], 2)
        tl.store(dstep + tok * N * N + p_nn, b_dA, mask=m_nn)
        g_phi = tl.sum(b_A[:, :, None] * g_phi[:, None, :], 0)
        g_psi = tl.sum(b_A[:, :, None] * g_psi[:, None, :], 0)
        b_dphi, b_dpsi, b_A, b_phi, b_psi = nxt


def _scan_launch(step, add) -> dict:
    """The scan kernels' sizes and warps."""
    T, H, n = step.shape[1:4]
    d = add.shape[-1]
    tiles = {"H": H, "N": n, "D": d, "NP": pow2(n, 2), "CP": pow2(T, 2), "DP": pow2(d, 2)}
    entries = tiles["NP"] ** 2 * tiles["CP"] * tiles["DP"]
    return {**tiles, "num_warps": min(8, max(1, entries // SCAN_WARP_ENTRIES))}


def scan_forward(step: torch.Tensor, add: torch.Tensor):
    """`CoefficientScan`'s forward: (Phi, Psi) in the inputs' promoted dtype."""
    B, T, H, n = step.shape[:4]
    d = add.shape[-1]
    dtype = torch.promote_types(step.dtype, add.dtype)
    step, add = step.contiguous(), add.contiguous()
    f32 = {"dtype": torch.float32, "device": step.device}
    phi = torch.empty(B, T, H, n, n, **f32)
    psi = torch.empty(B, T, H, n, T, d, **f32)
    _scan_fwd[(B * H,)](step, add, phi, psi, T, **_scan_launch(step, add))
    LAUNCHES["scan_fwd"] += 1
    return phi.to(dtype), psi.to(dtype)


def scan_backward(step, phi, psi, dphi, dpsi, add_dtype):
    """`CoefficientScan`'s backward from the scan's outputs: (dstep, dadd); a missing output
    gradient counts as zeros. Phi and Psi are the forward's outputs, in the inputs' dtype:
    float32, the only dtype dual.py sends here (`_kernels`), so they are the kernel's own
    values; half-precision inputs would backpropagate through rounded ones."""
    B, T, H, n, _, d = psi.shape
    step, phi, psi = step.contiguous(), phi.float().contiguous(), psi.float().contiguous()
    dphi = torch.zeros_like(phi) if dphi is None else dphi.float().contiguous()
    dpsi = torch.zeros_like(psi) if dpsi is None else dpsi.float().contiguous()
    f32 = {"dtype": torch.float32, "device": step.device}
    dstep = torch.empty(B, T, H, n, n, **f32)
    dadd = torch.empty(B, T, H, n, d, **f32)
    _scan_bwd[(B * H,)](step, phi, psi, dphi, dpsi, dstep, dadd, T,
                        **_scan_launch(step, dadd))
    LAUNCHES["scan_bwd"] += 1
    return dstep.to(step.dtype), dadd.to(add_dtype)


class CoefficientScan(torch.autograd.Function):
    """step `[B, T, H, n, n]`, add `[B, T, H, n, d]` -> Phi `[B, T, H, n, n]`,
    Psi `[B, T, H, n, T, d]` (the module docstring's scan)."""

    @staticmethod
    def forward(ctx, step, add):
        phi, psi = scan_forward(step, add)
        ctx.save_for_backward(step, phi, psi)
        ctx.add_dtype = add.dtype
        return phi, psi

    @staticmethod
    def backward(ctx, dphi, dpsi):
        step, phi, psi = ctx.saved_tensors
        return scan_backward(step, phi, psi, dphi, dpsi, ctx.add_dtype)


def coefficient_scan(step: torch.Tensor, add: torch.Tensor):
    """dual.py's `_coefficients` scan: (Phi `[B, T, H, n, n]`, Psi `[B, T, H, n, T, d]`).
    Code that torch.compile traces calls the kernels as custom ops (dual_ops.py)."""
    if torch.compiler.is_compiling():
        from nlc.runtime.library.dual_ops import dual_scan_op
        return dual_scan_op(step, add)
    return CoefficientScan.apply(step, add)


# --------------------------------------------------------------------------- the reads
@triton.jit
def _tokens(i_bh, T, H: tl.constexpr, CP: tl.constexpr):
    """The chunk's tokens as rows `[B, T, H, ...]` of (batch, head) i_bh, and their mask."""
    i_b, i_h = i_bh // H, i_bh % H
    o_t = tl.arange(0, CP)
    return (i_b * T + o_t) * H + i_h, o_t < T


@triton.jit
def _block(T, H: tl.constexpr, CP: tl.constexpr, N: tl.constexpr, BN: tl.constexpr):
    """The start of a kernel with one program per (block of an axis of N, batch and head):
    (batch, head), the chunk's tokens and their mask, the block's offsets and mask, and the
    [tokens, block] mask."""
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    tok, m_t = _tokens(i_bh, T, H, CP)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    return i_bh, tok, m_t, o_n, m_n, m_t[:, None] & m_n[None, :]


@triton.jit
def _scores(a, b, tok, m_t, p, P: tl.constexpr, N: tl.constexpr, CP: tl.constexpr,
            BN: tl.constexpr, PREC: tl.constexpr):
    """A B_p^T `[C, C]` for A `[B, T, H, N]` and pair p of B `[B, T, H, P, N]`, over N in
    blocks of BN: the scores X Row_p^T (N = K) and their gradients' G_p = dO Col_p^T (N = R)."""
    s = tl.zeros([CP, CP], dtype=tl.float32)
    for n0 in range(0, N, BN):
        o_n = n0 + tl.arange(0, BN)
        m = m_t[:, None] & (o_n[None, :] < N)
        b_a = tl.load(a + tok[:, None] * N + o_n[None, :], mask=m, other=0.0)
        b_b = tl.load(b + (tok[:, None] * P + p) * N + o_n[None, :], mask=m, other=0.0)
        s += tl.dot(b_a.to(tl.float32), tl.trans(b_b.to(tl.float32)), input_precision=PREC)
    return s


@triton.jit
def _start_read(x, starts, tok, m_t, i_bh, m, o_r, m_r, M: tl.constexpr, R: tl.constexpr,
                K: tl.constexpr, CP: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr,
                PREC: tl.constexpr):
    """X S0_m^T `[C, BR]` for the state rows o_r."""
    y = tl.zeros([CP, BR], dtype=tl.float32)
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < K
        b_x = tl.load(x + tok[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                      other=0.0)
        b_s = tl.load(starts + ((i_bh * M + m) * R + o_r[:, None]) * K + o_k[None, :],
                      mask=m_r[:, None] & m_k[None, :], other=0.0)
        y += tl.dot(b_x.to(tl.float32), tl.trans(b_s.to(tl.float32)), input_precision=PREC)
    return y


@triton.jit
def _pair_tile(ptr, tok, m_t, p, P: tl.constexpr, T, CP: tl.constexpr):
    """psi_p (or a scratch tile of its layout) `[C, C]`: tokens t by tokens j."""
    o_j = tl.arange(0, CP)
    m = m_t[:, None] & (o_j[None, :] < T)
    return tl.load(ptr + (tok[:, None] * P + p) * T + o_j[None, :], mask=m, other=0.0)


@triton.jit
def _product_fwd(x, starts, phi, psi, cols, rows, out, T, H: tl.constexpr, M: tl.constexpr,
                 P: tl.constexpr, R: tl.constexpr, K: tl.constexpr, CP: tl.constexpr,
                 BR: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """Per (R block, batch and head): O = sum_m phi_m * (X S0_m^T) + sum_p (psi_p * X Row_p^T) Col_p."""
    i_bh, tok, m_t, o_r, m_r, m_tr = _block(T, H, CP, R, BR)
    acc = tl.zeros([CP, BR], dtype=tl.float32)
    for m in tl.static_range(M):
        y = _start_read(x, starts, tok, m_t, i_bh, m, o_r, m_r, M, R, K, CP, BR, BK, PREC)
        f = tl.load(phi + tok * M + m, mask=m_t, other=0.0).to(tl.float32)
        acc += f[:, None] * y
    for p in tl.static_range(P):
        s = _scores(x, rows, tok, m_t, p, P, K, CP, BK, PREC)
        w = _pair_tile(psi, tok, m_t, p, P, T, CP).to(tl.float32) * s
        c = tl.load(cols + (tok[:, None] * P + p) * R + o_r[None, :], mask=m_tr, other=0.0)
        acc += tl.dot(w, c.to(tl.float32), input_precision=PREC)
    tl.store(out + tok[:, None] * R + o_r[None, :], acc, mask=m_tr)


@triton.jit
def _product_bwd_pairs(x, starts, phi, psi, cols, rows, do, dphi, dpsi, gated, scored, T,
                       H: tl.constexpr, M: tl.constexpr, P: tl.constexpr, R: tl.constexpr,
                       K: tl.constexpr, CP: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr,
                       PREC: tl.constexpr):
    """Per (batch, head): G_p = dO Col_p^T over R blocks, S_p = X Row_p^T; dpsi_p = G_p * S_p,
    and (scratch) psi_p * G_p, psi_p * S_p; dphi_m = rowsum(dO * X S0_m^T)."""
    i_bh = tl.program_id(0)
    tok, m_t = _tokens(i_bh, T, H, CP)
    o_j = tl.arange(0, CP)
    m_tj = m_t[:, None] & (o_j[None, :] < T)
    for p in tl.static_range(P):
        s = _scores(x, rows, tok, m_t, p, P, K, CP, BK, PREC)
        g = _scores(do, cols, tok, m_t, p, P, R, CP, BR, PREC)
        w = _pair_tile(psi, tok, m_t, p, P, T, CP).to(tl.float32)
        p_tj = (tok[:, None] * P + p) * T + o_j[None, :]
        tl.store(dpsi + p_tj, g * s, mask=m_tj)
        tl.store(gated + p_tj, w * g, mask=m_tj)
        tl.store(scored + p_tj, w * s, mask=m_tj)
    for m in tl.static_range(M):
        acc = tl.zeros([CP], dtype=tl.float32)
        for r0 in range(0, R, BR):
            o_r = r0 + tl.arange(0, BR)
            m_r = o_r < R
            y = _start_read(x, starts, tok, m_t, i_bh, m, o_r, m_r, M, R, K, CP, BR, BK, PREC)
            b_do = tl.load(do + tok[:, None] * R + o_r[None, :], mask=m_t[:, None] & m_r[None, :],
                           other=0.0)
            acc += tl.sum(b_do.to(tl.float32) * y, 1)
        tl.store(dphi + tok * M + m, acc, mask=m_t)


@triton.jit
def _product_bwd_rows(x, phi, do, scored, dstarts, dcols, T, H: tl.constexpr, M: tl.constexpr,
                      P: tl.constexpr, R: tl.constexpr, K: tl.constexpr, CP: tl.constexpr,
                      BR: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """Per (R block, batch and head): dCol_p = (psi_p * S_p)^T dO, dS0_m = (phi_m * dO)^T X."""
    i_bh, tok, m_t, o_r, m_r, m_tr = _block(T, H, CP, R, BR)
    b_do = tl.load(do + tok[:, None] * R + o_r[None, :], mask=m_tr, other=0.0).to(tl.float32)
    for p in tl.static_range(P):
        w = _pair_tile(scored, tok, m_t, p, P, T, CP)
        tl.store(dcols + (tok[:, None] * P + p) * R + o_r[None, :],
                 tl.dot(tl.trans(w), b_do, input_precision=PREC), mask=m_tr)
    for m in tl.static_range(M):
        f = tl.load(phi + tok * M + m, mask=m_t, other=0.0).to(tl.float32)
        g = tl.trans(f[:, None] * b_do)
        for k0 in range(0, K, BK):
            o_k = k0 + tl.arange(0, BK)
            m_k = o_k < K
            b_x = tl.load(x + tok[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                          other=0.0)
            tl.store(dstarts + ((i_bh * M + m) * R + o_r[:, None]) * K + o_k[None, :],
                     tl.dot(g, b_x.to(tl.float32), input_precision=PREC),
                     mask=m_r[:, None] & m_k[None, :])


@triton.jit
def _product_bwd_keys(x, starts, phi, rows, do, gated, dx, drows, T, H: tl.constexpr,
                      M: tl.constexpr, P: tl.constexpr, R: tl.constexpr, K: tl.constexpr,
                      CP: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """Per (K block, batch and head): dX = sum_m (phi_m * dO) S0_m + sum_p (psi_p * G_p) Row_p,
    dRow_p = (psi_p * G_p)^T X."""
    i_bh, tok, m_t, o_k, m_k, m_tk = _block(T, H, CP, K, BK)
    b_x = tl.load(x + tok[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
    acc = tl.zeros([CP, BK], dtype=tl.float32)
    for m in tl.static_range(M):
        f = tl.load(phi + tok * M + m, mask=m_t, other=0.0).to(tl.float32)
        for r0 in range(0, R, BR):
            o_r = r0 + tl.arange(0, BR)
            m_r = o_r < R
            b_do = tl.load(do + tok[:, None] * R + o_r[None, :], mask=m_t[:, None] & m_r[None, :],
                           other=0.0).to(tl.float32)
            b_s = tl.load(starts + ((i_bh * M + m) * R + o_r[:, None]) * K + o_k[None, :],
                          mask=m_r[:, None] & m_k[None, :], other=0.0).to(tl.float32)
            acc += tl.dot(f[:, None] * b_do, b_s, input_precision=PREC)
    for p in tl.static_range(P):
        a = _pair_tile(gated, tok, m_t, p, P, T, CP)
        p_rows = rows + (tok[:, None] * P + p) * K + o_k[None, :]
        b_r = tl.load(p_rows, mask=m_tk, other=0.0).to(tl.float32)
        acc += tl.dot(a, b_r, input_precision=PREC)
        tl.store(drows + (tok[:, None] * P + p) * K + o_k[None, :],
                 tl.dot(tl.trans(a), b_x, input_precision=PREC), mask=m_tk)
    tl.store(dx + tok[:, None] * K + o_k[None, :], acc, mask=m_tk)


# Tiles of the reads' kernels, by the products' precision: exact float32 products run on
# the FMA units, whose [C, C] score tiles and accumulators need narrow R and K blocks to stay
# in registers (Titans' [256, 64] layer at a chunk of 64 on sm_90: no spills at 32 x 16 and 8
# warps, up to 11 KB a thread at 64 x 64 and 4; benchmarks/kernel_resources.py); the tensor
# cores' modes take 64 x 64. (R blocks of 128 and K blocks of 32 ran Titans' two reads per
# chunk in 367 us against 390 when timed alone, their inputs in L2, benchmarks/
# dual_read_sweep.py; inside the LM step the backward kernels were 17% slower: docs/perf.md,
# thirteenth batch.)
TILES = {"ieee": (32, 16), "tf32": (64, 64), "tf32x3": (32, 32)}
WARPS = 8
# float32 inputs' products: exact (`ieee`, the default), or on the tensor cores as three TF32
# products (`tf32x3`) or one (`tf32`); NLC_DUAL_PREC or `set_float32_precision` (`nlc train
# --tf32`) asks for one of them
FLOAT32_PREC = "ieee"


def set_float32_precision(precision: str) -> None:
    """The precision of float32 inputs' products from now on: one of TILES' keys."""
    global FLOAT32_PREC
    if precision not in TILES:
        raise ValueError(f"dual reads' precision {precision!r}: expected one of "
                         f"{', '.join(TILES)}")
    FLOAT32_PREC = precision


set_float32_precision(os.environ.get("NLC_DUAL_PREC", "ieee"))


# the narrowest state (rows or columns) whose float32 reads take FLOAT32_PREC's tensor-core
# products: on an H100 with Triton 3.6 the reads of Titans' layer with heads of 8 (states of
# 32 x 8 and 8 x 32) hit an illegal memory access in `tf32` (the forward kernel) and `tf32x3`
# (the backward's pairs kernel), while heads of 64 ran and matched float64
# (benchmarks/layer_precision.py, docs/perf.md "seventh batch"); narrower states keep exact
# products, which such small products lose little by
TENSOR_CORE_MIN_WIDTH = 64


def _product_tiles(T: int, R: int, K: int, dtype) -> dict:
    precision = FLOAT32_PREC if dtype == torch.float32 else dot_precision(dtype)
    if dtype == torch.float32 and min(R, K) < TENSOR_CORE_MIN_WIDTH:
        precision = "ieee"
    BR, BK = TILES[precision]
    return {"R": R, "K": K, "CP": pow2(T), "BR": min(pow2(R), BR), "BK": min(pow2(K), BK),
            "PREC": precision}


def _pointers(tensors):
    """Empty tensors (no pair of the state's shape) as a stand-in the kernels never read
    (their loops over P are empty)."""
    return [t if t.numel() else tensors[0] for t in tensors]


def pack(layout, x, phi, psi, pieces) -> list[torch.Tensor]:
    """The kernels' inputs, in their order, as torch ops: x `[B, T, H, K]`, starts
    `[B, H, M, R, K]`, phi `[B, T, H, M]`, psi `[B, T, H, P, T]`, cols `[B, T, H, P, R]`,
    rows `[B, T, H, P, K]`; views where they can be, not yet contiguous. Compiled code packs
    in the traced graph (`dual_read`), where Inductor fuses the copies and their gradients'
    scatters, instead of inside the kernels' op. `layout`: (the phi column of each start,
    the psi term of each pair, whether the starts come as one stacked tensor: the previous
    chunk's end states, `dual._chunk_end`'s stacks, which then need no copy to stack them,
    in the forward pass nor in the backward's scatter of their gradients)."""
    same, terms, stacked = layout
    M, P = len(same), len(terms)
    first = 1 if stacked else M
    starts, cols, rows = pieces[:first], pieces[first:first + P], pieces[first + P:]
    B, T, H, K = x.shape
    R = starts[0].shape[-2]

    def stack(xs, width):
        return _stack(xs, 3) if xs else x.new_zeros(B, T, H, 0, width)
    return [x, starts[0] if stacked else _stack(starts, 2),
            _stack([phi[..., m] for m in same], -1),
            stack([psi[..., d] for d in terms], T), stack(cols, R), stack(rows, K)]


def _packed(layout, x, phi, psi, pieces) -> list[torch.Tensor]:
    """`pack`'s tensors, contiguous. Eager reads build them for each kernel launch and drop
    them after it: the autograd function keeps its inputs as given (views of tensors the
    graph holds anyway), not these copies. Traced code builds them in the graph."""
    # a stack of permuted tensors keeps their order of strides: make each one contiguous
    return [t.contiguous() for t in pack(layout, x, phi, psi, pieces)]


def _stack(xs, dim):
    """torch.stack, without a copy for a single tensor or for evenly spaced slices of one
    tensor (then `.contiguous()` copies only when the result is not already): a chunk's
    start states are the previous chunk's end states, views of one stacked tensor
    (dual.py, `_chunk_end`), which a stack copied for every read, forward and backward."""
    if len(xs) == 1:
        return xs[0].unsqueeze(dim)
    if torch.compiler.is_compiling():  # traced: Inductor plans the copy, storages are fake
        return torch.stack(xs, dim)
    view = _slices_view(xs, dim)
    return view if view is not None else torch.stack(xs, dim)


def _slices_view(xs, dim):
    """torch.stack(xs, dim) as a strided view when xs share a storage, shape and strides and
    start a fixed positive number of elements apart; else None. Only for inputs a kernel
    reads (the view may overlap itself where a stack would not)."""
    first = xs[0]
    step = xs[1].storage_offset() - first.storage_offset()
    if step <= 0 or any(
            x.shape != first.shape or x.stride() != first.stride() or x.dtype != first.dtype
            or x.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
            or x.storage_offset() != first.storage_offset() + i * step
            for i, x in enumerate(xs)):
        return None
    dim = dim % (first.dim() + 1)
    size, stride = list(first.shape), list(first.stride())
    size.insert(dim, len(xs))
    stride.insert(dim, step)
    return first.as_strided(size, stride, first.storage_offset())


def _scatter(into: torch.Tensor, index, values: torch.Tensor) -> torch.Tensor:
    """into[..., index[i]] = values[..., i]: one copy into a strided view when the indices
    are evenly spaced (a state's columns of phi usually are), else one copy per index."""
    step = index[1] - index[0] if len(index) > 1 else 1
    if step > 0 and list(index) == list(range(index[0], index[-1] + 1, step)):
        into[..., index[0]:index[-1] + 1:step] = values
    else:
        for i, m in enumerate(index):  # no index tensor from a list: nothing to copy from
            into[..., m] = values[..., i]  # the host (a CUDA graph capture refuses that)
    return into


def _read_launch(packed: list) -> tuple:
    """The reads' result dtype and their kernels' sizes and tiles, from `_packed`'s inputs."""
    x, starts, cols = packed[0], packed[1], packed[4]
    _, T, H, K = x.shape
    M, P, R = starts.shape[2], cols.shape[3], starts.shape[-2]
    dtype = torch.result_type(x, cols) if P else torch.result_type(x, starts)
    return dtype, {"H": H, "M": M, "P": P, **_product_tiles(T, R, K, dtype)}


def packed_forward(packed: list) -> torch.Tensor:
    """The read `[B, T, H, R]` in the inputs' result dtype, from `_packed`'s tensors."""
    dtype, dims = _read_launch(packed)
    B, T, H, _ = packed[0].shape
    out = torch.empty(B, T, H, dims["R"], dtype=torch.float32, device=packed[0].device)
    _product_fwd[(triton.cdiv(dims["R"], dims["BR"]), B * H)](
        *_pointers(packed), out, T, **dims, num_warps=WARPS)
    LAUNCHES["product_fwd"] += 1
    return out.to(dtype)


def packed_backward(packed: list, do: torch.Tensor) -> list[torch.Tensor]:
    """The float32 gradients of `_packed`'s six tensors, in their shapes, contiguous."""
    _, dims = _read_launch(packed)
    x, starts, phi, psi, cols, rows = _pointers(packed)
    B, T, H, K = x.shape
    do = do.contiguous()
    f32 = {"dtype": torch.float32, "device": x.device}
    dx, dstarts, dphi, dpsi, dcols, drows = (torch.empty(t.shape, **f32) for t in packed)
    gated, scored = torch.empty_like(dpsi), torch.empty_like(dpsi)
    dpsi_, gated_, scored_, dcols_, drows_ = _pointers(
        [dx, dpsi, gated, scored, dcols, drows])[1:]
    _product_bwd_pairs[(B * H,)](x, starts, phi, psi, cols, rows, do, dphi, dpsi_, gated_,
                                 scored_, T, **dims, num_warps=WARPS)
    _product_bwd_rows[(triton.cdiv(dims["R"], dims["BR"]), B * H)](
        x, phi, do, scored_, dstarts, dcols_, T, **dims, num_warps=WARPS)
    _product_bwd_keys[(triton.cdiv(K, dims["BK"]), B * H)](
        x, starts, phi, rows, do, gated_, dx, drows_, T, **dims, num_warps=WARPS)
    LAUNCHES["product_bwd"] += 1
    return [dx, dstarts, dphi, dpsi, dcols, drows]


def read_forward(layout, x, phi, psi, pieces) -> torch.Tensor:
    """`DualProduct`'s forward: the read `[B, T, H, R]` in the inputs' result dtype."""
    return packed_forward(_packed(layout, x, phi, psi, pieces))


def read_backward(layout, x, phi, psi, pieces, do) -> list:
    """`DualProduct`'s backward: the gradients of x, phi, psi (None when no pair reads it)
    and each piece, each in its input's dtype."""
    same, terms, stacked = layout
    saved = (x, phi, psi, *pieces)
    dx, dstarts, dphi, dpsi, dcols, drows = packed_backward(
        _packed(layout, x, phi, psi, pieces), do)
    f32 = {"dtype": torch.float32, "device": x.device}
    # back to the inputs as given: phi's and psi's columns, one piece per start and pair
    dphi_all = _scatter(torch.zeros(saved[1].shape, **f32), same, dphi)
    dpsi_all = torch.zeros(saved[2].shape, **f32)
    for p, d in enumerate(terms):
        dpsi_all[..., d] += dpsi[:, :, :, p]
    grads = (dx, dphi_all, dpsi_all if terms else None,  # no pair: psi is not read
             *((dstarts,) if stacked else dstarts.unbind(2)), *dcols.unbind(3),
             *drows.unbind(3))
    return [g if g is None else g.to(t.dtype) for g, t in zip(grads, saved, strict=True)]


class DualProduct(torch.autograd.Function):
    """The module docstring's read of one chunk, `[B, T, H, R]`, from x `[B, T, H, K]`, phi
    `[B, T, H, n]`, psi `[B, T, H, T, d]` and the pieces: the M chunk-start states
    `[B, H, R, K]` (or all of them stacked, `[B, H, M, R, K]`), then the P pairs' columns
    `[B, T, H, R]`, then their rows `[B, T, H, K]`. `layout`: `pack`'s."""

    @staticmethod
    def forward(ctx, layout, x, phi, psi, *pieces):
        ctx.save_for_backward(x, phi, psi, *pieces)
        ctx.layout = layout
        return read_forward(layout, x, phi, psi, pieces)

    @staticmethod
    def backward(ctx, do):
        x, phi, psi, *pieces = ctx.saved_tensors
        return (None, *read_backward(ctx.layout, x, phi, psi, pieces, do))


def dual_read(state, x: torch.Tensor) -> torch.Tensor:
    """`DualState.product` (dual.py) by the kernels: S_t @ x_t for every token of the chunk,
    x `[B, T, H, K, 1]` -> `[B, T, H, R, 1]`, from the chunk-start states of the state's
    shape (the state itself among them) and the (column, row) pairs of its terms."""
    from nlc.runtime.library.dual import _full, _matching
    R, K = state.start[state.name].shape[-2:]
    B, H = state.phi.shape[0], state.phi.shape[2]
    same = tuple(m for m, other in enumerate(state.order)
                 if state.start[other].shape[-2:] == (R, K))
    pairs = [(d, col, row) for d, term in enumerate(state.terms)
             for col, row in _matching(state.pairs[term], (R, K))]
    like = state.phi
    stacked = state.stacks.get(same)
    starts = ([stacked] if stacked is not None
              else [state.start[state.order[m]].expand(B, H, R, K) for m in same])
    pieces = [*starts, *(_full(col, like).squeeze(-1) for _, col, _ in pairs),
              *(_full(row, like).squeeze(-2) for _, _, row in pairs)]
    layout = (same, tuple(d for d, _, _ in pairs), stacked is not None)
    x = _full(x, like).squeeze(-1)
    if torch.compiler.is_compiling():  # traced code packs, then calls the kernels' op
        from nlc.runtime.library.dual_ops import dual_read_op
        out = dual_read_op(*_packed(layout, x, state.phi, state.psi, pieces))
    else:
        LAUNCHES["stacked_starts"] += stacked is not None  # (not in traced code: no break)
        out = DualProduct.apply(layout, x, state.phi, state.psi, *pieces)
    return out.unsqueeze(-1)
