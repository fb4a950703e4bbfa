"""Where a coupled group runs on the fused group kernels (runtime/library/mlp_group_triton.py).

The compiler names a group that has the kernels' form (nlc/emit/fused_group.py): four MLP
memories whose reads at the chunk start are the group's key, value, rate and retention, each
taking one gd step per token on l2(f(key), f(value)) with the decay and the erase. What it
reads from the derived rules is a proposal. Before the kernels take a group's tokens for the
first time, `verified` runs the group's own token loop (`scan.coupled`, the members' printed
steps: the definition) and the kernels' closed form (runtime/library/mlp_group.py) on the same
random float64 input, with random biases, and compares every read and last state. A group
that differs anywhere runs its PyTorch chunked form, as one that was never named.

The kernels run by default on CUDA tensors (`opted_in` with default: unless
NLC_GROUP_KERNEL=0 or NLC_TRITON=0; every device with NLC_TRITON=force), on float32 or
half-precision tokens (float64 keeps the PyTorch form): on an H200 they took Hope's LM step
from 27.8k to 34.4k tokens/s (docs/perf.md, twenty-first batch). They
take every whole chunk but the last; the last chunk (whole or not) runs the PyTorch chunked
form, which leaves the final state's anchors and position as it always does."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from nlc.runtime.library.chunk_triton import opted_in


@dataclass(frozen=True)
class FusedGroup:
    """A coupled group in the fused kernels' form, as the compiler found it."""
    members: tuple[str, str, str, str]   # the levels whose reads are key, value, rate, retention
    states: tuple[tuple[str, str], ...]  # per member: its first map W1 [F, d], second W2 [d, F]
    token: str                           # the one token input the reads take
    norms: tuple[bool, bool]             # whether the key's and the value's reads are l2norms
    biases: tuple[str, str]              # the parameters added in the rate's and retention's reads

    def closed_form_group(self):
        """The mlp_group.Group of the kernels' closed form."""
        from nlc.runtime.library import mlp_group
        tails = tuple("l2norm" if n else "none" for n in self.norms)
        return mlp_group.Group(tails=(*tails, ("sigmoid_mean", 0), ("sigmoid_mean", 1)),
                               key=0, value=1, rate=2, retention=3)


_VERIFIED: dict = {}


def _rows(x: torch.Tensor) -> torch.Tensor:
    """A read `[B, T, H, r, 1]` -> `[B H, T, r]`; a scalar one `[B, T, H, 1, 1]` -> `[B H, T]`."""
    B, T, H, r, _ = x.shape
    out = x[..., 0].permute(0, 2, 1, 3).reshape(B * H, T, r)
    return out[..., 0] if r == 1 else out


def _biases(fused: FusedGroup, consts: dict, B: int, H: int, like: torch.Tensor) -> torch.Tensor:
    """The rate's and retention's biases per row `[B H, 2]` (parameters `[H, 1, 1]`, or
    numbers), float32 on like's device."""
    per_head = torch.stack([torch.as_tensor(consts[b], device=like.device).float()
                            .reshape(-1).expand(H) for b in fused.biases], -1)
    return per_head.repeat(B, 1)


def verified(fused: FusedGroup, members: list, consts: dict, H: int, d: int, F: int,
             chunk: int) -> bool:
    """Whether the members' own token loop and the kernels' closed form agree (float64, once
    per group, shape and chunk)."""
    from nlc.runtime.library import mlp_group
    from nlc.runtime.library.scan import coupled
    key = (tuple(id(m.step) for m in members), fused, H, d, F, chunk)
    if key in _VERIFIED:
        return _VERIFIED[key]
    g = torch.Generator().manual_seed(0)
    f64 = torch.float64
    T = chunk + 3
    h = torch.randn(1, T, H, d, 1, generator=g, dtype=f64)
    W1 = torch.randn(H, 4, F, d, generator=g, dtype=f64) / d ** 0.5
    W2 = torch.randn(H, 4, d, F, generator=g, dtype=f64) / F ** 0.5
    states = {name: {s1: W1[:, i][None], s2: W2[:, i][None]}
              for i, (name, (s1, s2)) in enumerate(zip(fused.members, fused.states))}
    bias = torch.randn(H, 2, generator=g, dtype=f64)
    own = {k: (v.detach().to("cpu", f64) if torch.is_tensor(v) else v) for k, v in consts.items()}
    for j, b in enumerate(fused.biases):
        own[b] = bias[:, j, None, None]
    try:
        reads, finals = coupled(members, {fused.token: h}, states, consts=own)
    except (KeyError, RuntimeError, ValueError):  # the proposal does not fit the members
        _VERIFIED[key] = False
        return False
    closed = fused.closed_form_group()
    W1c, W2c, hc = W1, W2, _rows(h)
    outs = []
    for c0 in range(0, T, chunk):
        o, W1c, W2c = mlp_group.chunk_forward(closed, W1c, W2c, hc[:, c0:c0 + chunk], bias)
        outs.append(o)
    errors = []
    for i, (name, (s1, s2)) in enumerate(zip(fused.members, fused.states)):
        got = torch.cat([o[i] for o in outs], 1)
        errors += [_relative(got, _rows(reads[name])),
                   _relative(W1c[:, i], finals[name][s1][0]),
                   _relative(W2c[:, i], finals[name][s2][0])]
    _VERIFIED[key] = ok = max(errors) < 1e-9
    return ok


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def _pow2(n: int) -> bool:
    return n >= 16 and not n & (n - 1)


def run(fused: FusedGroup, members: list, tokens: dict, current: dict, consts: dict,
        chunk: int):
    """The group's reads for every whole chunk but the last on the fused kernels, and the
    states after them: `(reads {level: [B, T', H, r, 1]}, states, T')`; None where the
    kernels do not run (not asked for, a shape they do not take, a group that failed
    `verified`)."""
    if set(tokens) != {fused.token}:
        return None
    h = tokens[fused.token]
    if not opted_in(h, "NLC_GROUP_KERNEL", default=True) or h.dtype == torch.float64:
        return None  # (the kernels compute in float32: float64 keeps the PyTorch form)
    B, T, H, d, _ = h.shape
    done = (T - 1) // chunk * chunk
    first = current[fused.members[0]][fused.states[0][0]]
    F = first.shape[-2]
    if done == 0 or not (_pow2(d) and _pow2(F) and _pow2(chunk)):
        return None
    for name, (s1, s2) in zip(fused.members, fused.states):
        if set(current[name]) != {s1, s2} or current[name][s1].shape[-2:] != (F, d) \
                or current[name][s2].shape[-2:] != (d, F):
            return None
    if not verified(fused, members, consts, H, d, F, chunk):
        return None
    from nlc.runtime.library import mlp_group_triton
    N = B * H
    rows = h[:, :done, ..., 0].float().permute(0, 2, 1, 3).reshape(N, done, d)
    W1 = torch.stack([current[n][s1].float().expand(B, H, F, d)
                      for n, (s1, _) in zip(fused.members, fused.states)], 2).reshape(N, 4, F, d)
    W2 = torch.stack([current[n][s2].float().expand(B, H, d, F)
                      for n, (_, s2) in zip(fused.members, fused.states)], 2).reshape(N, 4, d, F)
    tf32 = h.is_cuda and torch.backends.cuda.matmul.allow_tf32
    k, v, eta, alpha, W1n, W2n = mlp_group_triton.group_chunks(
        rows, W1, W2, _biases(fused, consts, B, H, h), chunk=chunk,
        norm_k=fused.norms[0], norm_v=fused.norms[1], precision="tf32" if tf32 else "ieee")
    reads = {}
    for name, o in zip(fused.members, (k, v, eta, alpha)):
        o = o.reshape(B, H, done, -1).permute(0, 2, 1, 3)[..., None]
        reads[name] = o.to(h.dtype)
    states = {n: {s1: W1n[:, i].reshape(B, H, F, d).to(first.dtype),
                  s2: W2n[:, i].reshape(B, H, d, F).to(first.dtype)}
              for i, (n, (s1, s2)) in enumerate(zip(fused.members, fused.states))}
    return reads, states, done
