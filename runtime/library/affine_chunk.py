"""A frozen-gradient level's chunk without its per-token loop, when every state's combine is
affine with a scalar retention and at most one rank-one erase (Hope's self-modifying
memories: W' = W (alpha I - eta k k^T) + drive, docs/design.md, "Kernel families").

Per token and state, with the chunk-start terms (the drives) already computed for every token:

    W_t = c_t W_{t-1} + e_t (W_{t-1} u_t) w_t^T + B_t,

c_t the retention, e_t the erase's coefficient, u_t its column and w_t^T its row (none: e = 0),
B_t the token's input term. With R[t, s] = c_{s+1} ... c_t (a product of retentions, never a
quotient: a retention of 0 stays exact) and a_t = W_{t-1} u_t, the chunk unrolls to

    W_t = R[t, -1] W_0 + sum_{s<=t} R[t, s] D_s,    D_s = B_s + e_s a_s w_s^T,
    a_t - sum_{s<t} R[t-1, s] e_s (w_s . u_t) a_s
        = R[t-1, -1] W_0 u_t + sum_{s<t} R[t-1, s] B_s u_t,

a unit lower-triangular system for the a's (the delta rule's UT transform, runtime/library/
chunked.py, with the erase column free of the retention), then every token's state is one
matrix product of R with the D's. Tensors: `[B, C, H, ...]` per token (a chunk of C), states
`[B, H, r, n]`."""

from __future__ import annotations

import functools

import torch
from nlc.runtime.library.chunk_triton import opted_in


def _per_head(x):
    """A per-token tensor `[B, C, H, ...]` as `[B, H, C, ...]`."""
    return x.movedim(1, 2)


def _coefficient(x, like, shape):
    """A per-token scalar `[B, C, H, 1, 1]` (or a number) as `[B, H, C]`."""
    x = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    if x.dim():
        x = x.movedim(1, 2).squeeze((-2, -1))  # a view: no select_backward to fill
    return x.expand(shape)


@functools.cache
def _masks(C: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For `_products`, made once per chunk size and device (not per chunk: each would be a
    kernel on a GPU): `later[s, u]`, u > s, and `lower[t, s]`, s <= t, over the indices
    -1 .. C - 1."""
    i = torch.arange(-1, C, device=device)
    return i[None, :] > i[:, None], i[:, None] >= i[None, :]


class _Products(torch.autograd.Function):
    """The retention products from c `[B, H, C]`. Over the indices -1 .. C - 1 (-1 the chunk
    start), P[t, s] = c_{s+1} ... c_t for s <= t (1 where s = t) and 0 for s > t: products of
    the retentions, never quotients, so a retention of 0 stays exact. Returned as the four
    pieces the chunk uses, R[t, -1], R[t, s >= 0] (rows t = 0 .. C - 1) and the same one
    row earlier, R[t-1, -1] and R[t-1, s] (each piece one view: chains of views cost a
    zero-filled gradient each in the backward pass).

    The backward is products too: dP[t, s] / dc_u = P[u - 1, s] P[t, u] for s < u <= t, so
    dc_u = sum_t P[t, u] (G P^T)[t, u - 1]. (torch.cumprod's own backward reads on the host
    whether its input holds a zero: a device sync per chunk, and no CUDA graph.)"""

    @staticmethod
    def forward(ctx, c):
        later, lower = _masks(c.shape[-1], c.device)
        ones = torch.ones_like(c[..., :1])
        # row s + 1 holds c_u for u > s and 1 elsewhere: its running product along u is P[u, s]
        grid = torch.where(later, torch.cat([ones, c], -1)[..., None, :], 1.0)
        P = torch.where(lower, torch.cumprod(grid, dim=-1).mT, 0.0)
        ctx.save_for_backward(P)
        return P[..., 1:, 0], P[..., 1:, 1:], P[..., :-1, 0], P[..., :-1, 1:]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        (P,) = ctx.saved_tensors
        G = torch.zeros_like(P)
        for (rows, cols), g in zip(((slice(1, None), 0), (slice(1, None), slice(1, None)),
                                    (slice(None, -1), 0), (slice(None, -1), slice(1, None))),
                                   grads):
            if g is not None:
                G[..., rows, cols] += g
        M = G @ P.mT                                               # M[t, u - 1], u = 1 .. C
        return (P[..., 1:] * M[..., :-1]).sum(-2)


def _products(retain, like, shape, shared: dict | None = None):
    """`_Products` of a retention (`_coefficient`'s forms), once per retention tensor among
    the states of one chunk (`shared`: Hope's two MLP maps share their decay). The retention
    is found again by `is`, not by its `id()`: in a compiled chunk (NLC_COMPILE_CHUNKS) the
    id of an input pins the compiled code to that tensor object, so every chunk compiled
    anew, and once torch.compile's recompile limit was hit the chunks ran eagerly."""
    seen = shared.setdefault(("products", shape), []) if shared is not None else []
    for known, pieces in seen:
        if known is retain:
            return pieces
    pieces = _Products.apply(_coefficient(retain, like, shape))
    seen.append((retain, pieces))
    return pieces


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors are views of the same memory with the same layout (the erase's row
    and a pair's row are both `k^T` in Hope): then they are equal, and a product with one is
    a product with the other. Decided on the host, without reading the values."""
    if a is b:
        return True
    if torch.compiler.is_compiling():  # traced tensors have no data pointer
        return False
    return (a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype
            and a.device == b.device and a.data_ptr() == b.data_ptr())


def _erase_columns(W0, before, e, u, w, inputs_u, gram=None):
    """a_t = W_{t-1} u_t `[B, H, C, r]` from the unit lower-triangular system of the module's
    docstring; `before` the pieces R[t-1, -1], R[t-1, s]; `inputs_u` is the inputs' part of
    its right side, sum_{s<t} R[t-1, s] B_s u_t; `gram` u @ w^T when the caller has it. The
    solve reads only the strictly lower part (`unitriangular`): no identity is added."""
    start, within = before
    rhs = start[..., None] * (u @ W0.mT) + inputs_u
    gram = u @ w.mT if gram is None else gram
    lower = (within * e[..., None, :]) * gram                   # R[t-1, s] e_s (w_s . u_t)
    return torch.linalg.solve_triangular(lower.neg(), rhs, upper=False, unitriangular=True)


def states(W0, retain, erase, left, right, inputs, *, every_token: bool,
           shared: dict | None = None):
    """The chunk's states from its start W0 `[B, H, r, n]`: every token's `[B, C, H, r, n]`
    (`every_token`, else None) and the last one. `retain`, `erase` `[B, C, H, 1, 1]` or
    numbers; `left` `[B, C, H, n, 1]`, `right` `[B, C, H, 1, n]` (all three None without an
    erase); `inputs` `[B, C, H, r, n]`. `shared`: a dict kept across the states of one chunk,
    for what they share (`_products`)."""
    Bm = _per_head(inputs).expand(W0.shape[0], W0.shape[1], -1, *W0.shape[2:])
    B, H, C, r, n = Bm.shape
    start, within, *before = _products(retain, W0, (B, H, C), shared)  # R[t, -1]; R[t, s]
    D = Bm
    if erase is not None:
        e = _coefficient(erase, W0, (B, H, C))
        u = _per_head(left).squeeze(-1)                       # [B, H, C, n]
        w = _per_head(right).squeeze(-2)                       # [B, H, C, n]
        Bu = torch.einsum("bhsrn,bhtn->bhtsr", Bm, u)             # B_s u_t
        a = _erase_columns(W0, before, e, u, w,
                           torch.einsum("bhts,bhtsr->bhtr", before[1], Bu))
        D = Bm + (e[..., None] * a)[..., :, None] * w[..., None, :]
    flat = D.reshape(B, H, C, r * n)
    if every_token:
        every = start[..., None, None] * W0[:, :, None] + (within @ flat).reshape(B, H, C, r, n)
        return every.movedim(2, 1), every[:, :, -1]
    last = start[..., -1, None, None] * W0 + (within[..., -1:, :] @ flat).reshape(B, H, r, n)
    return None, last


class AffineStates:
    """Every token's state of a chunk without building it: W_t = start_t W_0 + sum_s
    within[t, s] sum_j col_j,s row_j,s^T (the inputs and the erase as outer products).
    `nl.mm(W, x)` reads it (`product`), as a read that meets the state only as `W @ x_t`
    does."""

    def __init__(self, W0, start, within, pairs):
        self.W0, self.start, self.within, self.pairs = W0, start, within, pairs

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """W_t @ x_t for every token: x `[B, C, H, n, 1]` -> `[B, C, H, r, 1]`."""
        x = x.expand(self.W0.shape[0], -1, self.W0.shape[1], -1, -1).squeeze(-1).movedim(1, 2)
        out = self.start[..., None] * (x @ self.W0.mT)               # [B, H, C, r]
        for col, row in self.pairs:
            out = out + (self.within * (x @ row.mT)) @ col
        return out.movedim(2, 1)[..., None]

    def materialize(self) -> torch.Tensor:
        """Every token's state `[B, C, H, r, n]`."""
        every = self.start[..., None, None] * self.W0[:, :, None]
        for col, row in self.pairs:
            every = every + torch.einsum("bhts,bhsr,bhsn->bhtrn", self.within, col, row)
        return every.movedim(2, 1)


def weighted(inputs: dict, pairs: dict) -> list:
    """A state's input term as outer products: `inputs` maps each drive to its coefficient
    in the transition, `pairs` each drive to its (column, row) pairs; a coefficient of the
    number 1 is no product (it would be a kernel for nothing)."""
    return [(col if isinstance(coef, (int, float)) and coef == 1 else coef * col, row)
            for drive, coef in inputs.items() for col, row in pairs[drive]]


def low_rank(W0, retain, erase, left, right, pairs, *, read_before: bool | None,
             shared: dict | None = None):
    """`states` with the inputs as outer products, pairs of (column `[B, C, H, r, 1]`, row
    `[B, C, H, 1, n]`): nothing of size [C, r, n] is built. Returns the reads' states (an
    `AffineStates` before or after each token's write; None when `read_before` is None) and
    the chunk's last state. `shared` as in `states`. Where they run (`_kernels`), the
    combine's products, solve and last state are two Triton kernels (affine_triton.py)."""
    B, H = W0.shape[:2]
    C = pairs[0][0].shape[1]

    def per_head(x, axis):  # [B, H, C, r] or [B, H, C, n], laid out once for every product
        return _per_head(x).expand(B, H, C, -1, -1).squeeze(axis)

    cols = [per_head(p, -1) for p, _ in pairs]
    rows = [per_head(q, -2) for _, q in pairs]
    w = None if erase is None else per_head(right, -2)
    start, within, *before = _products(retain, W0, (B, H, C), shared)  # R[t, -1]; R[t, s]
    e = None if erase is None else _coefficient(erase, W0, (B, H, C))
    u = None if erase is None else per_head(left, -1)
    operands = [*cols, *rows, *([] if erase is None else [e, u, w])]
    kernels = _kernels(W0, [start, within, *before], operands, len(pairs), erase is not None)
    if kernels is not None:
        if read_before is not None:  # the reads take them too: laid out once
            cols, rows = [c.contiguous() for c in cols], [q.contiguous() for q in rows]
        products = [start, within, *(before if erase is not None else (None, None))]
        ea, last = kernels.combine(W0, products, e, u, w, cols, rows)
        pairs = list(zip(cols, rows)) + ([] if ea is None else [(ea, w)])
    else:
        pairs, last = _low_rank_torch(W0, start, within, before, e, u, w, cols, rows)
    if read_before is None:
        return None, last
    if read_before:
        start, within = before
    return AffineStates(W0, start, within, pairs), last


def _low_rank_torch(W0, start, within, before, e, u, w, cols, rows):
    """`low_rank`'s pairs (the erase pair last) and last state in PyTorch."""
    same = [w is not None and _same(row, w) for row in rows]       # a row that is the erase's
    w = None if w is None else w.contiguous()
    cols = [c.contiguous() for c in cols]
    rows = [w if alike else row.contiguous() for row, alike in zip(rows, same)]
    pairs = list(zip(cols, rows))
    if e is not None:
        u = u.contiguous()
        gram = u @ w.mT                                                  # w_s . u_t
        inputs_u = sum((before[1] * (gram if alike else u @ row.mT)) @ col
                       for (col, row), alike in zip(pairs, same))
        a = _erase_columns(W0, before, e, u, w, inputs_u, gram)
        pairs.append((e[..., None] * a, w))
    last = start[..., -1, None, None] * W0
    for col, row in pairs:
        last = last + (within[..., -1, :, None] * col).mT @ row
    return pairs, last


def _kernels(W0: torch.Tensor, products: list, operands: list, pairs: int, erase: bool):
    """affine_triton.py when its kernels take this chunk and are asked for
    (`chunk_triton.opted_in`: CUDA tensors with NLC_AFFINE_TRITON=1, any with
    NLC_TRITON=force, with TRITON_INTERPRET=1 how the tests run them); float32 only
    (`affine_triton.fits`). Under torch.compile the PyTorch form is traced instead. Not on
    by default: the kernels have not passed their tests on a GPU yet (docs/perf.md)."""
    if not opted_in(W0, "NLC_AFFINE_TRITON") or torch.compiler.is_compiling():
        return None
    try:
        from nlc.runtime.library import affine_triton
    except ImportError:  # no triton on this machine
        return None
    fits = affine_triton.fits(W0, products, pairs, erase)
    return affine_triton if fits and all(x.dtype == W0.dtype for x in operands) else None
