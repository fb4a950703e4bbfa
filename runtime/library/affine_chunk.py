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

import torch


def _per_head(x):
    """A per-token tensor `[B, C, H, ...]` as `[B, H, C, ...]`."""
    return x.movedim(1, 2)


def _coefficient(x, like, shape):
    """A per-token scalar `[B, C, H, 1, 1]` (or a number) as `[B, H, C]`."""
    x = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    if x.dim():
        x = x.movedim(1, 2).squeeze((-2, -1))  # a view: no select_backward to fill
    return x.expand(shape)


def _retentions(c):
    """R `[B, H, C, C + 1]` from c `[B, H, C]`: R[t, s + 1] = c_{s+1} ... c_t for s <= t
    (column 0 is the chunk start, s = -1; 1 where s = t) and 0 for s > t. Cumulative
    products of the retentions, never quotients."""
    C = c.shape[-1]
    u = torch.arange(C, device=c.device)
    s = torch.arange(-1, C, device=c.device)
    # row s + 1 holds c_u for u > s and 1 elsewhere: its running product along u is R[u, s]
    grid = torch.where(u[None, :] > s[:, None], c[..., None, :], 1.0)
    R = torch.cumprod(grid, dim=-1).transpose(-1, -2)
    return torch.where(u[:, None] >= s[None, :], R, 0.0)


def _before(R):
    """R[t-1, s]: the retentions up to the state token t's erase meets (R's rows moved down by
    one; the chunk start's own, s = t - 1 = -1, is 1)."""
    B, H, C = R.shape[:3]
    before = torch.cat([R.new_zeros(B, H, 1, C + 1), R[..., :-1, :]], dim=2)
    before[..., 0, 0] = 1.0
    return before


def _erase_columns(W0, before, e, u, w, inputs_u):
    """a_t = W_{t-1} u_t `[B, H, C, r]` from the unit lower-triangular system of the module's
    docstring; `inputs_u` is the inputs' part of its right side, sum_{s<t} R[t-1, s] B_s u_t."""
    rhs = before[..., 0, None] * (u @ W0.mT) + inputs_u
    lower = -before[..., 1:] * e[..., None, :] * (u @ w.mT)     # -R[t-1, s] e_s (w_s . u_t)
    eye = torch.eye(u.shape[-2], dtype=W0.dtype, device=W0.device)
    return torch.linalg.solve_triangular(eye + lower, rhs, upper=False, unitriangular=True)


def states(W0, retain, erase, left, right, inputs, *, every_token: bool):
    """The chunk's states from its start W0 `[B, H, r, n]`: every token's `[B, C, H, r, n]`
    (`every_token`, else None) and the last one. `retain`, `erase` `[B, C, H, 1, 1]` or
    numbers; `left` `[B, C, H, n, 1]`, `right` `[B, C, H, 1, n]` (all three None without an
    erase); `inputs` `[B, C, H, r, n]`."""
    Bm = _per_head(inputs).expand(W0.shape[0], W0.shape[1], -1, *W0.shape[2:])
    B, H, C, r, n = Bm.shape
    R = _retentions(_coefficient(retain, W0, (B, H, C)))         # [B, H, C, C + 1]
    start, within = R[..., 0], R[..., 1:]                         # R[t, -1]; R[t, s]
    D = Bm
    if erase is not None:
        e = _coefficient(erase, W0, (B, H, C))
        u = _per_head(left).squeeze(-1)                       # [B, H, C, n]
        w = _per_head(right).squeeze(-2)                       # [B, H, C, n]
        before = _before(R)
        Bu = torch.einsum("bhsrn,bhtn->bhtsr", Bm, u)             # B_s u_t
        a = _erase_columns(W0, before, e, u, w,
                           torch.einsum("bhts,bhtsr->bhtr", before[..., 1:], Bu))
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


def low_rank(W0, retain, erase, left, right, pairs, *, read_before: bool | None):
    """`states` with the inputs as outer products, pairs of (column `[B, C, H, r, 1]`, row
    `[B, C, H, 1, n]`): nothing of size [C, r, n] is built. Returns the reads' states (an
    `AffineStates` before or after each token's write; None when `read_before` is None) and
    the chunk's last state."""
    B, H = W0.shape[:2]
    C = pairs[0][0].shape[1]
    cols = [_per_head(p).expand(B, H, C, -1, -1).squeeze(-1) for p, _ in pairs]  # [B,H,C,r]
    rows = [_per_head(q).expand(B, H, C, -1, -1).squeeze(-2) for _, q in pairs]  # [B,H,C,n]
    R = _retentions(_coefficient(retain, W0, (B, H, C)))
    before = _before(R) if erase is not None or read_before else None
    pairs = list(zip(cols, rows))
    if erase is not None:
        e = _coefficient(erase, W0, (B, H, C))
        u = _per_head(left).expand(B, H, C, -1, -1).squeeze(-1)
        w = _per_head(right).expand(B, H, C, -1, -1).squeeze(-2)
        inputs_u = sum((before[..., 1:] * (u @ row.mT)) @ col for col, row in pairs)
        pairs.append((e[..., None] * _erase_columns(W0, before, e, u, w, inputs_u), w))
    last = R[..., -1, 0, None, None] * W0
    for col, row in pairs:
        last = last + (R[..., -1, 1:, None] * col).mT @ row
    if read_before is None:
        return None, last
    start, within = (before[..., 0], before[..., 1:]) if read_before else (R[..., 0], R[..., 1:])
    return AffineStates(W0, start, within, pairs), last
