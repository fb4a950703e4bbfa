"""The checks a generated functional op makes of its inputs before any math.

An op takes per-token tensors in flash-linear-attention's layout: a vector per head and
token `[B, T, H, D]`, a scalar `[B, T, H]`; its parameters are per head `[H, ...]`; an initial
state is `{name: [B, H, rows, cols]}`. B, T, H and the D of each input come from the inputs
(a layer built with other sizes calls the same op); inputs that share a dim must agree on
it. A mismatch is a ValueError that says what was expected, not a broadcasting error deep
in the math."""

from __future__ import annotations

import torch


def op_shapes(op: str, tokens: dict, sizes: dict, params: dict, initial_state,
              cu_seqlens, param_dims: dict | None = None) -> tuple[int, int, dict]:
    """Check an op's inputs; returns (batch, heads, dims). `sizes` gives, per token, the dim
    that is its D, "" for a vector whose D is not one dim, None for a scalar; `param_dims`,
    per parameter, the dim of each axis after the heads ("": a spelled size); `dims` maps
    each dim to the size the inputs give it."""
    lead, dims, seen = None, {}, {}
    for name, x in tokens.items():
        dim = sizes[name]
        want = "[B, T, H]" if dim is None else f"[B, T, H, {dim or 'D'}]"
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a tensor {want}, got {type(x).__name__}")
        if x.dim() != (3 if dim is None else 4):
            raise ValueError(f"{op}: {name} must be {want}, got {list(x.shape)}")
        if dim:
            _agree(op, dims, seen, dim, x.shape[-1], name, x)
        if lead is None or (lead[1][2] == 1 and x.shape[2] != 1):
            lead = (name, tuple(x.shape[:3]))
    for name, x in tokens.items():  # H = 1 is shared by every head (the layer's input x)
        if tuple(x.shape[:2]) != lead[1][:2] or x.shape[2] not in (1, lead[1][2]):
            raise ValueError(f"{op}: {name} is {list(x.shape)} but {lead[0]} has "
                             f"[B, T, H] = {list(lead[1])}: all inputs share B and T, and H "
                             "(or have H = 1, shared by the heads)")
    batch, length, heads = lead[1]
    if length == 0:
        raise ValueError(f"{op}: the inputs hold no tokens (T = 0)")
    for name, p in params.items():
        if p.dim() == 0 or p.shape[0] != heads:
            raise ValueError(f"{op}: parameter {name} is {list(p.shape)}; it must be per head, "
                             f"[{heads}, ...], for inputs with H = {heads}")
        axes = (param_dims or {}).get(name, ())
        if axes and p.dim() != len(axes) + 1:
            raise ValueError(f"{op}: parameter {name} is {list(p.shape)}; it must be "
                             f"[H, {', '.join(d or '_' for d in axes)}]")
        for dim, size in zip(axes, p.shape[1:]):
            if dim:
                _agree(op, dims, seen, dim, size, f"parameter {name}", p)
    if cu_seqlens is not None:
        batch = len(cu_seqlens) - 1
    for level, state in _states(initial_state):
        for name, s in state.items():
            if isinstance(s, torch.Tensor) and s.dim() >= 2 and tuple(s.shape[:2]) != (
                    batch, heads):
                raise ValueError(f"{op}: initial_state{level}[{name!r}] is {list(s.shape)}; "
                                 f"it must start with [B, H] = [{batch}, {heads}]")
    return batch, heads, dims


def _agree(op: str, dims: dict, seen: dict, dim: str, size: int, who: str, x) -> None:
    """Record that input `who` (tensor x) gives `dim` the size `size`; an input that gave it
    another size first makes this a ValueError naming both."""
    if dim in dims and dims[dim] != size:
        raise ValueError(f"{op}: {who} is {list(x.shape)} but {seen[dim]} has "
                         f"{dim} = {dims[dim]}: inputs that share a dim agree on it")
    dims.setdefault(dim, size)
    seen.setdefault(dim, who)


def _states(initial_state):
    """(label, state dict) for an op's initial state, or a group's {level: state}."""
    if not initial_state:
        return []
    if all(isinstance(v, dict) for v in initial_state.values()):
        return [(f"[{k!r}]", v) for k, v in initial_state.items()]
    return [("", initial_state)]
