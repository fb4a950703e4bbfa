"""The host side of chunk-start terms kernels (`nlc_outer_*` modules,
templates/outer_kernel.py.jinja), for `dual.dual_chunked`.

A dual-form level's `*_outer(inputs)` gives, for every token of a chunk, the (column, row)
factors of the outer products it adds, from the token's inputs and the chunk-start states
(the anchors). `ops.outer_terms` wraps it: the wrapped function takes the same inputs and
returns the same dict, from the two kernels of a module's `LAUNCHER`:

    nl.outer_terms(__file__, module, fallback, token_names, anchor_names, layout)(inputs)
        -> {drive: [(col, row), ...], ...}

tokens as chunk code holds them (`[B, T, H, n, 1]` columns, `[B, T, H, 1, 1]` scalars, any
of B, T, H broadcast; read in place through their strides), anchors
`[B * members|1, 1, H|1, rows, cols]` (members: a group's levels stacked along the batch
that read the same tokens, whose gradients are summed over them); columns come back
`[B * members, T, H, r, 1]`, rows `[B * members, T, H, 1, c]`. Inputs the kernels are not
asked for (`ops.outer_terms`: `chunk_triton.opted_in`, torch.compile, which traces
`fallback`) or do not take (not float32, as `dual_chunked` runs; an axis that is not a power
of two; more than `MAX_STATE_ENTRIES` anchor entries) run `fallback`, the PyTorch function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from nlc.runtime.library.step_launch import (
    MAX_STATE_ENTRIES,
    Size,
    backward_warps,
    num_warps,
    resolve_dims,
)

LAUNCHES = {"forward": 0, "backward": 0}   # kernel launches, for tests that check the path ran
TOKENS_PER_PROGRAM = 16


@dataclass(frozen=True, slots=True)
class OuterConfig:
    """The shapes a module's program was printed for, in terms of its dims D0, D1, ..."""

    tokens: tuple[Size | None, ...]     # a column's size, or None for a scalar
    anchors: tuple[tuple[Size, Size], ...]
    factors: tuple[Size, ...]           # each factor's entries (columns and rows alike)
    dims: int


class OuterLauncher:
    def __init__(self, forward, backward, config: OuterConfig):
        self.forward, self.backward, self.config = forward, backward, config

    def terms(self, fallback, token_names: tuple, anchor_names: tuple, layout: tuple,
              inputs: dict) -> dict:
        """The level's `*_outer(inputs)` from these kernels (module docstring). The tokens'
        batch may be the anchors' divided by a number of members stacked along it (a
        coupled group's, runtime/library/member_batch.py): each member reads the same
        tokens, and their gradients come back summed over the members."""
        xs = [inputs[n] for n in token_names]
        anchors = [inputs[n] for n in anchor_names]
        if any(t.dtype != torch.float32 for t in [*xs, *anchors]):
            return fallback(inputs)
        BX, T, H = torch.broadcast_shapes(*(x.shape[:3] for x in xs),
                                          *((1, 1, a.shape[2]) for a in anchors))
        B = max(BX, *(a.shape[0] for a in anchors))
        if B % BX or any(a.shape[0] not in (1, B) for a in anchors):
            return fallback(inputs)
        # views (stride 0 where broadcast): the kernels read the tokens through strides
        flat = [x.expand(BX, T, H, *x.shape[3:]).flatten(3) if size else
                x.expand(BX, T, H, 1, 1).flatten(2) for x, size in zip(xs, self.config.tokens)]
        held = [a.expand(B, 1, H, *a.shape[3:]).squeeze(1) for a in anchors]
        dims = self.dims(flat, held)
        if dims is None or T == 0:
            return fallback(inputs)
        factors = iter(_OuterKernel.apply(self, dims, len(flat), *flat, *held))
        out = {}
        for name, pairs in layout:
            out[name] = [(next(factors).unsqueeze(-1), next(factors).unsqueeze(-2))
                         for _ in range(pairs)]
        return out

    def dims(self, xs: list, anchors: list) -> list[int] | None:
        sizes = [(size, x.shape[-1]) for size, x in zip(self.config.tokens, xs) if size]
        sizes += [(size, n) for shape, a in zip(self.config.anchors, anchors)
                  for size, n in zip(shape, a.shape[-2:])]
        if sum(a[0, 0].numel() for a in anchors) > MAX_STATE_ENTRIES:
            return None
        return resolve_dims(sizes, self.config.dims)

    def width(self, size: Size, dims: list[int]) -> int:
        coeff, dim = size
        return coeff * (dims[dim] if dim is not None else 1)

    def launch(self, dims, xs, anchors):
        B, H = anchors[0].shape[:2]
        BX, T = xs[0].shape[:2]
        factors = [torch.empty(B, T, H, self.width(s, dims), device=xs[0].device)
                   for s in self.config.factors]
        entries = sum(a[0, 0].numel() for a in anchors)
        grid = (B, H, -(-T // TOKENS_PER_PROGRAM))
        self.forward[grid](*xs, *anchors, *factors, *_strides(xs), T, H, BX,
                           TOKENS_PER_PROGRAM, *dims, num_warps=num_warps(entries))
        LAUNCHES["forward"] += 1
        return factors

    def launch_backward(self, dims, xs, anchors, grads):
        B, H = anchors[0].shape[:2]
        BX, T = xs[0].shape[:2]
        blocks = -(-T // TOKENS_PER_PROGRAM)
        device = xs[0].device
        g_factors = [torch.zeros(B, T, H, self.width(s, dims), device=device)
                     if g is None else _rows(g.float()) for g, s in zip(grads, self.config.factors)]
        g_xs = [torch.empty(B, *x.shape[1:], device=device) for x in xs]  # per member
        g_blocks = [torch.empty(B, H, blocks, *a.shape[2:], device=device) for a in anchors]
        entries = sum(a[0, 0].numel() for a in anchors)
        # one program per member (the grid of the forward pass), each writing its own part of
        # the tokens' gradients: a loop over the members in one program would leave SMs idle
        self.backward[(B, H, blocks)](*xs, *anchors, *g_factors, *g_xs, *g_blocks,
                                      *_strides(xs), *_strides(g_factors), T, H, BX,
                                      blocks, TOKENS_PER_PROGRAM, *dims,
                                      num_warps=backward_warps(entries))
        LAUNCHES["backward"] += 1
        if B != BX:  # the members' parts summed: one op per token input
            g_xs = [g.unflatten(0, (B // BX, BX)).sum(0) for g in g_xs]
        # one block (a chunk of at most TOKENS_PER_PROGRAM tokens) needs no sum
        return g_xs, [g.squeeze(2) if blocks == 1 else g.sum(2) for g in g_blocks]


def _strides(tensors) -> list[int]:
    """The strides over B, T and H of `[B, T, H]` or `[B, T, H, n]` tensors, as the kernels
    take them (a token's n entries lie next to each other: `_rows`)."""
    return [s for t in tensors for s in t.stride()[:3]]


def _rows(x: torch.Tensor) -> torch.Tensor:
    """`x [B, T, H, n]` with each token's entries next to each other, as the kernels load
    them (a vector load; strided entries would be gathered, and the kernels spill more):
    copied only where they are not."""
    return x if x.dim() == 3 or x.shape[-1] == 1 or x.stride(-1) == 1 else x.contiguous()


class _OuterKernel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, launcher: OuterLauncher, dims: list, n: int, *tensors):
        # the tokens as given (read through strides), the anchors laid out as loaded
        tensors = [*(_rows(x) for x in tensors[:n]), *(a.contiguous() for a in tensors[n:])]
        ctx.launcher, ctx.dims, ctx.n = launcher, dims, n
        ctx.save_for_backward(*tensors)
        return tuple(launcher.launch(dims, tensors[:n], tensors[n:]))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        tensors = ctx.saved_tensors
        g_xs, g_anchors = ctx.launcher.launch_backward(ctx.dims, tensors[:ctx.n],
                                                       tensors[ctx.n:], grads)
        return (None, None, None, *g_xs, *g_anchors)
