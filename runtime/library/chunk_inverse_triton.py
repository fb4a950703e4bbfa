"""A chunk's unit lower-triangular inverse T = (I + A)^-1 on the GPU, for the chunked kernels
of the delta rule and its relatives (chunk_delta_triton.py, chunk_rows_triton.py,
chunk_kda_triton.py, chunk_dplr_triton.py, chunk_joint_triton.py).

A is strictly lower triangular, [BT, BT] for a chunk of BT in {16, 32, 64} tokens. T is built by
blocks of 16: each diagonal block by forward substitution (15 dependent steps; with BATCHED, the
diagonal blocks as one batch, one chain of 15 steps), the blocks below by block substitution on
tensor cores, T_ij = -T_ii sum_{j <= m < i} A_im T_mj, and the zero blocks above written too, so
that T needs no zeroed buffer. `_solve_kernel` reads A from memory (the families whose A
another kernel builds); `_prepare_kernel` builds the delta rule's A = strict_lower(b_t
Gamma[t, s] k_t.k_s) in registers and inverts it in the same pass."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _gamma(g, rows, cols, STRICT: tl.constexpr):
    """e^{g_t - g_s} where s <= t (s < t if STRICT), 0 elsewhere; masked before exp."""
    if STRICT:
        keep = rows[:, None] > cols[None, :]
    else:
        keep = rows[:, None] >= cols[None, :]
    return tl.exp(tl.where(keep, g[:, None] - g[None, :], float("-inf")))


@triton.jit
def _unit_lower_inverse(A, rows, cols, BT: tl.constexpr):
    """(I + A)^-1 for a strictly lower-triangular [BT, BT] A, by forward substitution:
    row i of the inverse is e_i - sum_{j<i} A[i, j] row_j (rows before i are final)."""
    eye = tl.where(rows[:, None] == cols[None, :], 1.0, 0.0)
    inv = eye
    for i in range(1, BT):
        a_i = tl.sum(tl.where(rows[:, None] == i, A, 0.0), 0)  # A[i, :], along columns
        r = tl.sum(a_i[:, None] * inv, 0)                       # sum_j A[i, j] inv[j, :]
        inv = tl.where(rows[:, None] == i, eye - r[None, :], inv)
    return inv


@triton.jit
def _block(x, base, i0, j0, BT: tl.constexpr):
    """The [16, 16] block of a chunk's [BT, BT] matrix at rows i0.., columns j0.."""
    r = tl.arange(0, 16)
    return tl.load(x + base + (i0 + r)[:, None] * BT + (j0 + r)[None, :])


@triton.jit
def _put(x, base, i0, j0, value, BT: tl.constexpr):
    r = tl.arange(0, 16)
    tl.store(x + base + (i0 + r)[:, None] * BT + (j0 + r)[None, :],
             value.to(x.dtype.element_ty))


@triton.jit
def _mm(a, b):
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _unit_lower_inverses(A):
    """`_unit_lower_inverse` of a batch [NB, 16, 16] of blocks at once: one chain of 15
    dependent steps for all of them, not one each."""
    r = tl.arange(0, 16)
    rows = r[None, :, None]
    eye = tl.where(r[:, None] == r[None, :], 1.0, 0.0)[None, :, :]
    inv = eye + tl.zeros_like(A)
    for i in range(1, 16):
        a_i = tl.sum(tl.where(rows == i, A, 0.0), 1)        # A_b[i, :]
        r_i = tl.sum(a_i[:, :, None] * inv, 1)              # sum_j A_b[i, j] inv_b[j, :]
        inv = tl.where(rows == i, eye - r_i[:, None, :], inv)
    return inv


@triton.jit
def _diagonal_inverses(A00, A11, A22, A33, BT: tl.constexpr, BATCHED: tl.constexpr):
    """(I + A_ii)^-1 for the diagonal blocks before BT, one after another or (BATCHED) stacked
    into one [BT / 16, 16, 16] batch by tl.join and split back."""
    r = tl.arange(0, 16)
    T00, T11, T22, T33 = A00, A11, A22, A33
    if BT == 16 or not BATCHED:
        T00 = _unit_lower_inverse(A00, r, r, 16)
        if BT >= 32:
            T11 = _unit_lower_inverse(A11, r, r, 16)
        if BT == 64:
            T22 = _unit_lower_inverse(A22, r, r, 16)
            T33 = _unit_lower_inverse(A33, r, r, 16)
    elif BT == 32:  # join's last axis p: [i, j, p] = block p
        T = _unit_lower_inverses(tl.permute(tl.join(A00, A11), (2, 0, 1)))
        T00, T11 = tl.split(tl.permute(T, (1, 2, 0)))
    else:  # [i, j, p, q] = block 2 q + p
        stack = tl.permute(tl.join(tl.join(A00, A11), tl.join(A22, A33)), (3, 2, 0, 1))
        T = _unit_lower_inverses(tl.reshape(stack, (4, 16, 16)))
        T01, T23 = tl.split(tl.permute(tl.reshape(T, (2, 2, 16, 16)), (2, 3, 1, 0)))
        T00, T11 = tl.split(T01)
        T22, T33 = tl.split(T23)
    return T00, T11, T22, T33


@triton.jit
def _store_inverse(tinv, base, A00, A10, A11, A20, A21, A22, A30, A31, A32, A33,
                   BT: tl.constexpr, BATCHED: tl.constexpr):
    """Stores T = (I + A)^-1 for a strictly lower A given by its [16, 16] blocks A_ij (i >= j;
    those past BT unused), the zero blocks above the diagonal included. The diagonal blocks by
    forward substitution (`_diagonal_inverses`), the rest by block substitution on tensor
    cores: T_ij = -T_ii sum_{j <= m < i} A_im T_mj."""
    zero = tl.zeros([16, 16], dtype=tl.float32)
    T00, T11, T22, T33 = _diagonal_inverses(A00, A11, A22, A33, BT, BATCHED)
    _put(tinv, base, 0, 0, T00, BT)
    if BT >= 32:
        T10 = -_mm(T11, _mm(A10, T00))
        _put(tinv, base, 16, 16, T11, BT)
        _put(tinv, base, 16, 0, T10, BT)
        _put(tinv, base, 0, 16, zero, BT)
        if BT == 64:
            T21 = -_mm(T22, _mm(A21, T11))
            T20 = -_mm(T22, _mm(A20, T00) + _mm(A21, T10))
            T32 = -_mm(T33, _mm(A32, T22))
            T31 = -_mm(T33, _mm(A31, T11) + _mm(A32, T21))
            T30 = -_mm(T33, _mm(A30, T00) + _mm(A31, T10) + _mm(A32, T20))
            _put(tinv, base, 32, 32, T22, BT)
            _put(tinv, base, 32, 16, T21, BT)
            _put(tinv, base, 32, 0, T20, BT)
            _put(tinv, base, 48, 48, T33, BT)
            _put(tinv, base, 48, 32, T32, BT)
            _put(tinv, base, 48, 16, T31, BT)
            _put(tinv, base, 48, 0, T30, BT)
            _put(tinv, base, 0, 32, zero, BT)
            _put(tinv, base, 0, 48, zero, BT)
            _put(tinv, base, 16, 32, zero, BT)
            _put(tinv, base, 16, 48, zero, BT)
            _put(tinv, base, 32, 48, zero, BT)


@triton.jit
def _solve_kernel(amat, tinv, H: tl.constexpr, BT: tl.constexpr, BATCHED: tl.constexpr):
    """Per (chunk, head): T = (I + A)^-1 by blocks of 16 (`_store_inverse`), every entry of
    `tinv` written (it may start uninitialized)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    base = (i_c * H + i_h) * BT * BT
    z = tl.zeros([16, 16], dtype=tl.float32)
    A10, A11, A20, A21, A22, A30, A31, A32, A33 = z, z, z, z, z, z, z, z, z
    if BT >= 32:
        A10 = _block(amat, base, 16, 0, BT)
        A11 = _block(amat, base, 16, 16, BT)
    if BT == 64:
        A20 = _block(amat, base, 32, 0, BT)
        A21 = _block(amat, base, 32, 16, BT)
        A22 = _block(amat, base, 32, 32, BT)
        A30 = _block(amat, base, 48, 0, BT)
        A31 = _block(amat, base, 48, 16, BT)
        A32 = _block(amat, base, 48, 32, BT)
        A33 = _block(amat, base, 48, 48, BT)
    _store_inverse(tinv, base, _block(amat, base, 0, 0, BT), A10, A11, A20, A21, A22, A30,
                   A31, A32, A33, BT, BATCHED)


@triton.jit
def _rows16(ld, beta, gc, bos, eos, i_h, i0, carry, H: tl.constexpr, HAS_G: tl.constexpr,
            FLOOR: tl.constexpr):
    """Rows i0.. i0 + 15 of a chunk: their tokens, mask, cumulative log decays g (`carry`,
    the g of row i0 - 1, plus the block's own cumulative sum; stored in gc) and rates b."""
    tok = bos + i0 + tl.arange(0, 16)
    m = tok < eos
    if HAS_G:
        b_ld = tl.load(ld + tok * H + i_h, mask=m, other=0.0).to(tl.float32)
        b_g = carry + tl.cumsum(tl.maximum(b_ld, FLOOR), 0)
    else:
        b_g = tl.zeros([16], dtype=tl.float32)
    tl.store(gc + tok * H + i_h, b_g, mask=m)
    b_b = tl.load(beta + tok * H + i_h, mask=m, other=0.0).to(tl.float32)
    return tok, m, b_g, b_b


@triton.jit
def _last16(g):
    return tl.sum(tl.where(tl.arange(0, 16) == 15, g, 0.0), 0)


@triton.jit
def _keys16(k, tok, m, i_h, o_k, H: tl.constexpr, K: tl.constexpr):
    return tl.load(k + (tok * H + i_h)[:, None] * K + o_k[None, :],
                   mask=m[:, None] & (o_k < K)[None, :], other=0.0)


@triton.jit
def _below(A, b_i, g_i, g_j):
    """A block below the diagonal (rows after all its columns): b_t e^{g_t - g_s} A[t, s]."""
    return A * b_i[:, None] * tl.exp(g_i[:, None] - g_j[None, :])


@triton.jit
def _prepare_kernel(k, beta, ld, gc, tinv, starts, ends,
                    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                    HAS_G: tl.constexpr, FLOOR: tl.constexpr, PREC: tl.constexpr,
                    BATCHED: tl.constexpr):
    """Per (chunk, head), delta only: g, and T = (I + A)^-1 with A = strict_lower(b_t
    Gamma[t, s] k_t.k_s) built in registers by [16, 16] blocks (the key axis in slices of
    BK), never stored: `_kkt_kernel` and `_solve_kernel` in one pass."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos = tl.load(starts + i_c)
    eos = tl.load(ends + i_c)
    r = tl.arange(0, 16)
    tok0, m0, g0, b0 = _rows16(ld, beta, gc, bos, eos, i_h, 0, 0.0, H, HAS_G, FLOOR)
    if BT >= 32:
        tok1, m1, g1, b1 = _rows16(ld, beta, gc, bos, eos, i_h, 16, _last16(g0), H, HAS_G,
                                   FLOOR)
    if BT == 64:
        tok2, m2, g2, b2 = _rows16(ld, beta, gc, bos, eos, i_h, 32, _last16(g1), H, HAS_G,
                                   FLOOR)
        tok3, m3, g3, b3 = _rows16(ld, beta, gc, bos, eos, i_h, 48, _last16(g2), H, HAS_G,
                                   FLOOR)
    z = tl.zeros([16, 16], dtype=tl.float32)
    A00, A10, A11, A20, A21, A22, A30, A31, A32, A33 = z, z, z, z, z, z, z, z, z, z
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        k0 = _keys16(k, tok0, m0, i_h, o_k, H, K)
        A00 = tl.dot(k0, tl.trans(k0), A00, input_precision=PREC)
        if BT >= 32:
            k1 = _keys16(k, tok1, m1, i_h, o_k, H, K)
            A10 = tl.dot(k1, tl.trans(k0), A10, input_precision=PREC)
            A11 = tl.dot(k1, tl.trans(k1), A11, input_precision=PREC)
        if BT == 64:
            k2 = _keys16(k, tok2, m2, i_h, o_k, H, K)
            k3 = _keys16(k, tok3, m3, i_h, o_k, H, K)
            A20 = tl.dot(k2, tl.trans(k0), A20, input_precision=PREC)
            A21 = tl.dot(k2, tl.trans(k1), A21, input_precision=PREC)
            A22 = tl.dot(k2, tl.trans(k2), A22, input_precision=PREC)
            A30 = tl.dot(k3, tl.trans(k0), A30, input_precision=PREC)
            A31 = tl.dot(k3, tl.trans(k1), A31, input_precision=PREC)
            A32 = tl.dot(k3, tl.trans(k2), A32, input_precision=PREC)
            A33 = tl.dot(k3, tl.trans(k3), A33, input_precision=PREC)
    A00 = A00 * b0[:, None] * _gamma(g0, r, r, True)
    if BT >= 32:
        A10 = _below(A10, b1, g1, g0)
        A11 = A11 * b1[:, None] * _gamma(g1, r, r, True)
    if BT == 64:
        A20 = _below(A20, b2, g2, g0)
        A21 = _below(A21, b2, g2, g1)
        A22 = A22 * b2[:, None] * _gamma(g2, r, r, True)
        A30 = _below(A30, b3, g3, g0)
        A31 = _below(A31, b3, g3, g1)
        A32 = _below(A32, b3, g3, g2)
        A33 = A33 * b3[:, None] * _gamma(g3, r, r, True)
    _store_inverse(tinv, (i_c * H + i_h) * BT * BT, A00, A10, A11, A20, A21, A22, A30, A31,
                   A32, A33, BT, BATCHED)
