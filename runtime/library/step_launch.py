"""The host side of printed step kernels (`nlc_step_*` modules, templates/step_kernel.py.jinja).

A step kernel runs a level's whole token loop in one program per (sequence, head), its states
in registers, and saves the state every `every` tokens. `StepLauncher.fused_recurrent` is the
module's entry point, a drop-in for `scan.recurrent(step, tokens, state)`:

    fused_recurrent(step, tokens, state, token_names, state_names, every=16) -> (o, final)

tokens as the generated op holds them (`[B, T, H, n, 1]` columns, `[B, T, H, 1, 1]` scalars),
states `[B, H, rows, cols]`, o `[B, T, H, n, 1]` (or `[B, T, H, 1, 1]`). No per-token state
survives the forward pass: the backward pass walks the segments of `every` tokens last first,
each from its checkpoint, in the module's printed backward kernel (`step_backward`: the step
rerun, then its adjoint, token by token, nlc/emit/step_vjp.py), or, in a module without one,
with `step` (the layer's PyTorch step) under autograd.
Inputs the kernel cannot take (a state axis that is not a power of two, more than
`MAX_STATE_ENTRIES` state entries, float64, no tokens) run `scan.recurrent` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from nlc.runtime.library import scan

MAX_STATE_ENTRIES = 65536   # fp32 state entries one program holds in registers (docs/triton.md)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
LAUNCHES = {"forward": 0, "backward": 0}   # kernel launches, for tests that check the Triton path ran

Size = tuple[int, int | None]   # coefficient, and the dim it multiplies (None: a constant)


@dataclass(frozen=True, slots=True)
class StepConfig:
    """The shapes a kernel module's program was printed for, in terms of its dims D0, D1, ..."""

    tokens: tuple[Size | None, ...]     # a column's size, or None for a scalar
    states: tuple[tuple[Size, Size], ...]
    read: Size | None
    dims: int


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def resolve_dims(sizes: list[tuple[Size, int]], count: int) -> list[int] | None:
    """The dims D0.. that make each (printed size, actual size) pair agree, or None when they
    cannot or an axis is not a power of two."""
    found: dict[int, int] = {}
    for (coeff, dim), n in sizes:
        if dim is None:
            if n != coeff:
                return None
        elif n % coeff or found.setdefault(dim, n // coeff) != n // coeff:
            return None
    if len(found) != count or not all(_pow2(n) for _, n in sizes):
        return None
    return [found[i] for i in range(count)]


def num_warps(entries: int) -> int:
    """Warps per program: about 16 state entries a thread, 4 to 32 warps. Compiled for sm_90
    (benchmarks/step_kernel_resources.py), Moneta's program at d_head = 32 (8192 entries, 16
    warps) spills nothing; at d_head = 64 (32768 entries, 32 warps, at most 64 registers a
    thread) it spills about 0.9 KB a thread (docs/triton.md)."""
    warps = 4
    while warps < 32 and warps * 32 * 16 < entries:
        warps *= 2
    return warps


def backward_warps(entries: int) -> int:
    """Warps per program of the backward kernel, which holds the states, their adjoints and
    the step's intermediates with theirs: about 8 state entries a thread. Compiled for sm_90
    (benchmarks/step_kernel_resources.py --kernel backward), Moneta's backward at d_head = 16
    spills 184 B a thread at 4 warps and nothing at 8; at d_head = 32 and 64, 32 warps spill
    less than 16 (docs/perf.md, "Step kernels: registers and spills")."""
    return num_warps(2 * entries)


class StepLauncher:
    def __init__(self, kernel, config: StepConfig, backward=None):
        self.kernel, self.config, self.backward = kernel, config, backward

    def dims(self, tokens: list, states: list) -> list[int] | None:
        """The dims the inputs give, or None when the kernel cannot take them."""
        sizes = [(size, x.shape[-2]) for size, x in zip(self.config.tokens, tokens) if size]
        sizes += [(size, n) for shape, s in zip(self.config.states, states)
                  for size, n in zip(shape, s.shape[-2:])]
        if sum(s.shape[-1] * s.shape[-2] for s in states) > MAX_STATE_ENTRIES \
                or any(x.dtype not in _FLOATS for x in [*tokens, *states]):
            return None
        return resolve_dims(sizes, self.config.dims)

    @scan._float32
    def fused_recurrent(self, step, tokens: dict, state: dict, token_names: tuple,
                        state_names: tuple, every: int = 16):
        xs = [tokens[n] for n in token_names]
        ss = [state[n] for n in state_names]
        dims = self.dims(xs, ss)
        if dims is None or xs[0].shape[1] == 0 or len(state) != len(state_names):
            return scan.recurrent(step, tokens, state)
        B, T, H = torch.broadcast_shapes(*(x.shape[:3] for x in xs))
        xs = [x.expand(B, T, H, *x.shape[3:]) for x in xs]
        ss = [s.expand(B, H, *s.shape[2:]) for s in ss]
        run = _Run(self, step, token_names, state_names, every, dims)
        o, *finals = _StepKernel.apply(run, *xs, *ss)
        return o, dict(zip(state_names, finals))

    def launch(self, run, xs: list, ss: list):
        """The forward kernel: o, the final states and the checkpoints (float32)."""
        B, T, H = xs[0].shape[:3]
        device = xs[0].device
        flat = [x.contiguous() for x in xs]
        states = [s.float().contiguous() for s in ss]
        width = self.config.read[0] * run.dims[self.config.read[1]] if self.config.read else 1
        o = torch.empty(B, T, H, width, device=device, dtype=torch.float32)
        finals = [torch.empty_like(s) for s in states]
        n_saved = -(-T // run.every)
        saved = [s.new_empty(B, H, n_saved, *s.shape[2:]) for s in states]
        pairs = [t for f, c in zip(finals, saved) for t in (f, c)]
        entries = sum(s[0, 0].numel() for s in states)
        self.kernel[(B, H)](*flat, *states, o, *pairs, T, H, run.every, *run.dims,
                            num_warps=num_warps(entries))
        LAUNCHES["forward"] += 1
        return o.unsqueeze(-1), finals, saved  # [B, T, H, n, 1]; a scalar read n = 1

    def launch_backward(self, run, xs: list, saved: list, do, dfinals: list):
        """The printed backward kernel: the gradients of the tokens and of the initial states
        (float32), from the checkpoints; a scratch buffer holds one segment's states."""
        B, T, H = xs[0].shape[:3]
        flat = [x.contiguous() for x in xs]
        width = self.config.read[0] * run.dims[self.config.read[1]] if self.config.read else 1
        g_o = (torch.zeros(B, T, H, width, device=xs[0].device) if do is None
               else do.float().reshape(B, T, H, width).contiguous())
        per_state = []
        for s, d in zip(saved, dfinals):
            start = s[:, :, 0]
            per_state += [s, s.new_empty(B, H, run.every, *s.shape[3:]),
                          torch.zeros_like(start) if d is None else d.float().contiguous(),
                          torch.empty_like(start)]
        g_xs = [torch.empty(x.shape, device=x.device, dtype=torch.float32) for x in xs]
        entries = sum(s[0, 0, 0].numel() for s in saved)
        self.backward[(B, H)](*flat, *per_state, g_o, *g_xs, T, H, run.every, *run.dims,
                              num_warps=backward_warps(entries))
        LAUNCHES["backward"] += 1
        return g_xs, per_state[3::4]


@dataclass(frozen=True)
class _Run:
    launcher: StepLauncher
    step: object
    token_names: tuple
    state_names: tuple
    every: int
    dims: list


class _StepKernel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run: _Run, *tensors):
        n = len(run.token_names)
        xs, ss = list(tensors[:n]), list(tensors[n:])
        o, finals, saved = run.launcher.launch(run, xs, ss)
        ctx.run = run
        ctx.dtypes = [t.dtype for t in tensors]
        ctx.save_for_backward(*xs, *saved)
        dtype = torch.promote_types(xs[0].dtype, ss[0].dtype)
        return (o.to(dtype), *(f.to(s.dtype) for f, s in zip(finals, ss)))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, *dfinals):
        run = ctx.run
        n = len(run.token_names)
        xs, saved = ctx.saved_tensors[:n], ctx.saved_tensors[n:]
        if run.launcher.backward is not None:
            dxs, d_state = run.launcher.launch_backward(run, list(xs), list(saved), do,
                                                        list(dfinals))
        else:
            dxs, d_state = _recompute_backward(run, xs, saved, do, dfinals)
        out = [g.to(dt) for g, dt in zip(dxs + d_state, ctx.dtypes)]
        return (None, *out)


def _recompute_backward(run: _Run, xs, saved, do, dfinals):
    """The backward of a module without a printed one: each segment, last first, rerun from
    its checkpoint with the layer's PyTorch step under autograd."""
    n = len(run.token_names)
    T = xs[0].shape[1]
    grads = [[] for _ in xs]
    d_state = [torch.zeros_like(s[:, :, 0]) if d is None else d.float()
               for d, s in zip(dfinals, saved)]
    for i in reversed(range(len(saved[0][0, 0]))):
        lo, hi = i * run.every, min(T, (i + 1) * run.every)
        with torch.enable_grad():
            part = [x[:, lo:hi].float().requires_grad_() for x in xs]
            start = [s[:, :, i].clone().requires_grad_() for s in saved]
            o, final = scan.recurrent(run.step, dict(zip(run.token_names, part)),
                                      dict(zip(run.state_names, start)))
            outs = [o] + [final[name] for name in run.state_names]
            seeds = [torch.zeros_like(o) if do is None else do[:, lo:hi].float()] + d_state
            found = torch.autograd.grad(outs, part + start, seeds, allow_unused=True)
        for g, x, got in zip(grads, part, found[:n]):
            g.append(torch.zeros_like(x) if got is None else got)
        d_state = [torch.zeros_like(s) if got is None else got
                   for s, got in zip(start, found[n:])]
    dxs = [torch.cat(g[::-1], 1) for g in grads]
    return dxs, d_state
