"""Where a frozen-gradient MLP memory's chunks run on the walk kernels
(runtime/library/mlp_walk_triton.py): a level whose state is an MLP `[x +] W2 act(W1 x)`, read
before each token's write at one token input x, whose transitions are affine with a retention
per map, at most one rank-one erase on W1, and one outer product per map and token as its
drive (Hope's main memory, examples/hope.nl).

The compiler proposes the form (nlc/emit/fused_walk.py): which states are W1 and W2, the
activation, whether the read adds x, and x's name, printed as `nl.MLPWalk(...)`. Before the
kernels take a level's chunks, `verified` runs one chunk both ways on a float64 copy of the
chunk's own inputs, with a random start state: the level's chunked form as printed (its
transitions, drives and read) and the walk token by token (`walk_reference`, the kernels'
mathematics), and compares every read and last state. A level that differs anywhere keeps
its chunked form, as one that was never named.

The kernels run where asked: NLC_WALK_KERNEL=1 on CUDA tensors (not by default: on an H100
they are 1.30x slower than the PyTorch chunked form, docs/perf.md's twenty-third batch), any
device with NLC_TRITON=force (how the tests run them under TRITON_INTERPRET=1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from nlc.runtime.library import affine_chunk
from nlc.runtime.library.chunk_triton import opted_in


@dataclass(frozen=True)
class MLPWalk:
    """A level in the walk kernels' form, as the compiler found it."""
    first: str       # W1 `[F, d]`, the map that takes x
    second: str      # W2 `[d, F]`
    act: str         # gelu, silu or identity
    residual: bool   # the read adds x
    token: str       # the read's input


_VERIFIED: dict = {}


def _scalar(x, like: torch.Tensor, B: int, C: int, H: int) -> torch.Tensor:
    """A per-token scalar `[B, C, H, 1, 1]` (or a number) as `[B H, C]`."""
    x = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return x.reshape(x.shape[:3] if x.dim() else ()).expand(B, C, H).movedim(2, 1) \
        .reshape(B * H, C)


def _column(x: torch.Tensor, B: int, C: int, H: int) -> torch.Tensor:
    """A per-token column `[B, C, H, r, 1]` or row `[B, C, H, 1, r]` as `[B H, C, r]`."""
    r = x.shape[-1] if x.shape[-2] == 1 else x.shape[-2]
    return x.reshape(*x.shape[:3], r).expand(B, C, H, r).movedim(2, 1).reshape(B * H, C, r)


def _pieces(walk: MLPWalk, transitions: dict, pairs: dict):
    """The kernels' operands from the chunk's transitions and drives, or None where the
    level's transitions are not the form (more than one drive per map, an erase on W2)."""
    if set(transitions) != {walk.first, walk.second}:
        return None
    out = {}
    for name in (walk.first, walk.second):
        retain, erase, left, right, inputs = transitions[name]
        weighted = affine_chunk.weighted(inputs, pairs)
        if len(weighted) != 1 or (erase is not None and name == walk.second):
            return None
        out[name] = (retain, erase, left, right, weighted[0])
    return out


def chunk(walk: MLPWalk, state: dict, x: torch.Tensor, transitions: dict, pairs: dict,
          reference: bool = False):
    """One chunk on the kernels (`reference`: token by token in PyTorch): the reads
    `[B, C, H, d, 1]` and the last states; None where the operands are not the form."""
    from nlc.runtime.library import mlp_walk_triton
    pieces = _pieces(walk, transitions, pairs)
    if pieces is None:
        return None
    W1, W2 = state[walk.first], state[walk.second]
    B, C, H, d, _ = x.shape
    B = max(B, W1.shape[0])
    F = W1.shape[-2]
    c1, e, u, w, (col1, row1) = pieces[walk.first]
    c2, _, _, _, (col2, row2) = pieces[walk.second]
    args = [W1.expand(B, H, F, d).reshape(B * H, F, d),
            W2.expand(B, H, d, F).reshape(B * H, d, F), _column(x, B, C, H),
            _scalar(c1, x, B, C, H), _scalar(c2, x, B, C, H)]
    if e is None:
        args += [None, None, None]
    else:
        args += [_scalar(e, x, B, C, H), _column(u, B, C, H), _column(w, B, C, H)]
    args += [_column(t, B, C, H) for t in (col1, row1, col2, row2)]
    run = mlp_walk_triton.walk_reference if reference else mlp_walk_triton.walk
    y, W1n, W2n = run(*args, act=walk.act)
    y = y.reshape(B, H, C, d).movedim(1, 2)[..., None].to(x.dtype)
    if walk.residual:
        y = y + x
    return y, {walk.first: W1n.reshape(B, H, F, d), walk.second: W2n.reshape(B, H, d, F)}


def _double(x):
    return x.detach().to("cpu", torch.float64) if torch.is_tensor(x) else x


def verified(walk: MLPWalk, level, printed, consts: dict, state: dict, part: dict) -> bool:
    """Whether the level's printed chunked form and the walk agree on one chunk (float64,
    on a copy of this chunk's first row and first tokens, from a random start state; once per
    level (`level`: what names it, its printed functions), form and shape).
    `printed(state, part, consts)` runs the printed form and returns (reads, transitions,
    pairs, last states)."""
    W1, W2 = state[walk.first], state[walk.second]
    key = (level, walk, tuple(W1.shape[-2:]), tuple(W2.shape[-2:]))
    if key in _VERIFIED:
        return _VERIFIED[key]
    g = torch.Generator().manual_seed(0)
    T = min(next(iter(part.values())).shape[1], 6)
    small = {k: _double(v[:1, :T]) if torch.is_tensor(v) and v.dim() > 1 else _double(v)
             for k, v in part.items()}
    own = {k: _double(v) for k, v in consts.items()}
    start = {name: torch.randn(1, *s.shape[1:], generator=g, dtype=torch.float64) * 0.3
             for name, s in state.items()}
    ok = False
    try:
        reads, transitions, pairs, last = printed(start, small, own)
        ran = chunk(walk, start, small[walk.token], transitions, pairs, reference=True)
        if ran is not None:
            y, states = ran
            close = [torch.allclose(y, reads.expand_as(y), rtol=1e-9, atol=1e-11)]
            close += [torch.allclose(states[n], last[n].expand_as(states[n]), rtol=1e-9,
                                     atol=1e-11) for n in states]
            ok = all(close)
    except Exception:  # noqa: BLE001 - any failure of the proposal is a failed check
        ok = False
    _VERIFIED[key] = ok
    return ok


def wanted(walk: MLPWalk | None, x: torch.Tensor) -> bool:
    """Whether the kernels are asked for on these tokens (`opted_in`), float32 or half
    precision (float64 keeps the PyTorch form)."""
    return (walk is not None and x.dtype != torch.float64
            and opted_in(x, "NLC_WALK_KERNEL") and not torch.compiler.is_compiling())
