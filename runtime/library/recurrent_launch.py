"""The host side of the generated fused recurrent Triton kernels, shared by every kernel module.

A generated `nlc_kernel_*` module (templates/triton_recurrent.py.jinja) holds what its rule
decides: three `@triton.jit` kernels (forward, backward, decoding step) and a `RecurrentConfig`
naming the per-token inputs they take. `RecurrentLauncher` does what is the same for all of
them: input checks, the launch configuration, output and gradient buffers, the launches and
the autograd Function. The module's public functions are the launcher's methods:

    fused_recurrent(q, k, v, g=None, beta=None, a=None, b=None, *, initial_state=None,
                    output_final_state=False, cu_seqlens=None, **error_params) -> (o, final_state)
    step(q, k, v, g=None, beta=None, a=None, b=None, *, state, **error_params) -> (o, new_state)

Layouts, the kernels' passes and the launch heuristic: docs/triton.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

import torch
import triton

# Largest key dimension: the whole key axis of S is one register tile.
MAX_K = 256
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_TENSORS = ("q", "k", "v", "g", "beta", "a", "b")  # the order of the public arguments


@dataclass(frozen=True, slots=True)
class RecurrentConfig:
    """The inputs one kernel module's kernels take, and the buffers they need."""

    decay: str                  # "none" | "scalar": g [.., H] | "channel": g [.., H, K]
    beta: str | None            # None: no rate | "token": beta [.., H] | "row": beta [.., H, V]
    rank_one: bool              # a, b [.., H, K]: the dplr family's transition factors
    saves: bool                 # the forward saves one V-vector per token for the backward
    scratch: bool               # backward pass 1 hands pass 2 one V-vector per token
    error_params: tuple[str, ...] = ()  # the error signal's keyword-only float parameters

    def __post_init__(self):
        if self.decay not in ("none", "scalar", "channel"):
            raise ValueError(f"decay {self.decay!r} is not 'none', 'scalar' or 'channel'")
        if self.beta not in (None, "token", "row"):
            raise ValueError(f"beta {self.beta!r} is not None, 'token' or 'row'")
        if not all(isinstance(name, str) and name.isidentifier() for name in self.error_params):
            raise ValueError(f"error parameters {self.error_params!r} are not identifiers")

    @property
    def inputs(self) -> tuple[str, ...]:
        """The per-token tensors the kernels take, in the order of their signatures."""
        return ("q", "k", "v", *("g",) * (self.decay != "none"),
                *("beta",) * (self.beta is not None), *("a", "b") * self.rank_one)


class RecurrentLauncher:
    """Checks, launches and differentiates one module's kernels. `tuning` is the module's
    namespace: its `BLOCK_V` and `NUM_WARPS` (None: the heuristic) are read at each launch,
    so benchmarks and tests set them on the module."""

    def __init__(self, config: RecurrentConfig, fwd_kernel, bwd_kernel, step_kernel, tuning):
        self.config = config
        self.fwd_kernel, self.bwd_kernel, self.step_kernel = fwd_kernel, bwd_kernel, step_kernel
        self.tuning = tuning
        # (q, k, v, g, beta, a, b) -> the ones the kernels take
        self._present = itemgetter(*(_TENSORS.index(name) for name in config.inputs))
        self._param_names = frozenset(config.error_params)

    def fused_recurrent(self, q, k, v, g=None, beta=None, a=None, b=None, *, initial_state=None,
                        output_final_state=False, cu_seqlens=None, **error_params):
        """The rule over a sequence -> (o, final_state).

        o is [B, T, H, V] in the dtype of v; final_state is [N, H, V, K] float32 when
        output_final_state is set, else None. Error parameters are Python floats.
        Differentiable with respect to every tensor argument, initial_state included.
        """
        K, V = self._check_inputs(q, k, v, g, beta, a, b, "[B, T, H, D]")
        B, T, H = q.shape[:3]
        if T == 0:
            raise ValueError("q, k, v have no tokens (T = 0)")
        N = B
        if cu_seqlens is not None:
            if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 \
                    or cu_seqlens.numel() < 2:
                raise ValueError("cu_seqlens must be a 1-D tensor [N + 1] of sequence offsets")
            if cu_seqlens.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
            if B != 1:
                raise ValueError(f"with cu_seqlens the batch size must be 1 (sequences packed "
                                 f"along T), got {B}")
            N = cu_seqlens.numel() - 1
            cu_seqlens = cu_seqlens.to(q.device).contiguous()
        if initial_state is not None:
            _check("initial_state", initial_state, (N, H, V, K))
        params = self._params(error_params, "fused_recurrent")
        tensors = [x.contiguous() if x is not None else None
                   for x in (q, k, v, g, beta, a, b, initial_state)]
        if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors):
            return _FusedRecurrent.apply(self, *tensors, cu_seqlens, output_final_state, params)
        q, k, v, g, beta, a, b, h0 = tensors
        if beta is None and self.config.beta is not None:
            beta = self._unit_rate(q, V)
        o, ht, _ = self._forward(q, k, v, g, beta, a, b, h0, cu_seqlens, params,
                                 output_final_state, save=False)
        return o, ht

    def step(self, q, k, v, g=None, beta=None, a=None, b=None, *, state, **error_params):
        """One decoding step: q, k [B, H, K], v [B, H, V], state [B, H, V, K] -> (o, new state).

        The new state has the dtype of `state`. With autograd on, the step runs through the
        differentiable fused recurrent op (T = 1) instead of the step kernel.
        """
        K, V = self._check_inputs(q, k, v, g, beta, a, b, "[B, H, D]")
        B, H = q.shape[:2]
        _check("state", state, (B, H, V, K))
        tensors = (q, k, v, g, beta, a, b, state)
        if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors):
            one = [x.unsqueeze(1) if x is not None else None for x in tensors[:7]]
            o, new_state = self.fused_recurrent(*one, initial_state=state,
                                                output_final_state=True, **error_params)
            return o.squeeze(1), new_state.to(state.dtype)
        params = self._params(error_params, "step")
        q, k, v, g, beta, a, b, state = [x.contiguous() if x is not None else None
                                         for x in tensors]
        if beta is None and self.config.beta is not None:
            beta = self._unit_rate(q, V)
        BK, BV, NV, num_warps = self._launch_config(K, V, B * H, q.device, backward=False)
        o = torch.empty_like(v)
        new_state = torch.empty_like(state)
        self.step_kernel[(NV * B * H,)](
            *self._present((q, k, v, g, beta, a, b)), state, o, new_state, *params,
            K=K, V=V, BK=BK, BV=BV, NV=NV, num_warps=num_warps, num_stages=1)
        return o, new_state

    # -- checks -----------------------------------------------------------------------------

    def _check_inputs(self, q, k, v, g, beta, a, b, where):
        """Validate the per-token tensors against `where` ("[B, T, H, D]" or "[B, H, D]").

        Returns (K, V); g, beta are checked against the leading axes of q (B, T, H or B, H).
        """
        ndim = where.count(",") + 1
        for name, x in (("q", q), ("k", k), ("v", v)):
            if not isinstance(x, torch.Tensor) or x.dim() != ndim:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"{name} must be a tensor of shape {where}, got {got}")
        lead = tuple(q.shape[:-1])
        K, V = q.shape[-1], v.shape[-1]
        if K > MAX_K:
            raise ValueError(f"key dimension {K} exceeds MAX_K = {MAX_K} (one register tile)")
        _check("q", q, (*lead, K))
        _check("k", k, (*lead, K))
        _check("v", v, (*lead, V))
        if k.dtype != q.dtype or v.dtype != q.dtype:
            raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
        config = self.config
        if config.decay == "none":
            if g is not None:
                raise ValueError("g must be None: this rule has no decay")
        elif g is None:
            raise ValueError("g (the log of the decay) is required")
        else:
            _check("g", g, lead if config.decay == "scalar" else (*lead, K))
        if config.beta is None:
            if beta is not None:
                raise ValueError("beta must be None: this rule takes v already scaled by its "
                                 "rate")
        elif beta is not None:
            _check("beta", beta, (*lead, V) if config.beta == "row" else lead)
        if config.rank_one:
            if a is None or b is None:
                raise ValueError("a and b (the rank-one factors of the transition) are required")
            _check("a", a, (*lead, K))
            _check("b", b, (*lead, K))
        elif a is not None or b is not None:
            raise ValueError("a and b must be None: they belong to the dplr family")
        devices = {x.device for x in (q, k, v, g, beta, a, b) if x is not None}
        if len(devices) != 1:
            raise ValueError(f"all tensors must be on one device, got "
                             f"{sorted(map(str, devices))}")
        return K, V

    def _params(self, params: dict, where: str) -> tuple[float, ...]:
        """The error parameters as floats, in the kernels' order; exactly the module's names."""
        if not params and not self._param_names:
            return ()
        if params.keys() != self._param_names:
            missing = sorted(self._param_names - params.keys())
            extra = sorted(params.keys() - self._param_names)
            raise TypeError(f"{where}() takes the error parameter(s) "
                            f"{list(self.config.error_params)} as keywords: "
                            + ", ".join([f"missing {missing}"] * bool(missing)
                                        + [f"unexpected {extra}"] * bool(extra)))
        for name, value in params.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
        return tuple(float(params[name]) for name in self.config.error_params)

    def _unit_rate(self, q, V):
        """beta = 1 where the caller gave None: one per token, or one per row."""
        shape = (*q.shape[:-1], V) if self.config.beta == "row" else q.shape[:-1]
        return torch.ones(shape, dtype=torch.float32, device=q.device)

    # -- launches ---------------------------------------------------------------------------

    def _launch_config(self, K, V, rows, device, backward):
        """(BK, BV, NV, num_warps) for `rows` (sequence, head) pairs; BLOCK_V / NUM_WARPS
        override.

        The loop over T is latency-bound. BV starts at 2048 / BK rows and halves while there
        are fewer than four programs per SM (one per warp scheduler), down to 4 rows (forward,
        step) or 8 (backward, whose [NV, ...] partial sums grow with NV); one warp per program
        keeps the row reductions inside a warp. Tuned on an H100 at D = 128 (docs/triton.md).
        The interpreter (CPU) prefers few, large programs.
        """
        BK = triton.next_power_of_2(K)
        block_v = self.tuning["BLOCK_V"]
        if block_v is not None:
            BV = min(block_v, triton.next_power_of_2(V))
        elif device.type != "cuda":
            BV = min(triton.next_power_of_2(V), max(16, 8192 // BK))
        else:
            BV = min(triton.next_power_of_2(V), max(4, 2048 // BK))
            floor = 8 if backward else 4
            while BV > floor and rows * triton.cdiv(V, BV) < 4 * _sm_count(device):
                BV //= 2
        num_warps = self.tuning["NUM_WARPS"] or (
            1 if BV * BK <= 4096 else 2 if BV * BK <= 16384 else 4)
        return BK, BV, triton.cdiv(V, BV), num_warps

    def _forward(self, q, k, v, g, beta, a, b, h0, cu_seqlens, params, output_final_state,
                 save):
        B, T, H, K = q.shape
        V = v.shape[-1]
        N = B if cu_seqlens is None else cu_seqlens.numel() - 1
        BK, BV, NV, num_warps = self._launch_config(K, V, N * H, q.device, backward=False)
        o = torch.empty_like(v)
        ht = q.new_empty(N, H, V, K, dtype=torch.float32) if output_final_state else None
        saved = q.new_empty(B, T, H, V, dtype=torch.float32) if save and self.config.saves \
            else None
        self.fwd_kernel[(NV * N * H,)](
            *self._present((q, k, v, g, beta, a, b)), h0, o, ht, saved, cu_seqlens, *params,
            T, B * T, H=H, K=K, V=V, BK=BK, BV=BV, NV=NV,
            USE_H0=h0 is not None, STORE_HT=output_final_state, SAVE=save,
            IS_VARLEN=cu_seqlens is not None, num_warps=num_warps, num_stages=1)
        return o, ht, saved

    def _backward(self, q, k, v, g, beta, a, b, h0, saved, cu_seqlens, params, do, dht):
        """Gradients of (q, k, v, g, beta, a, b, initial state), None where there is no input."""
        config = self.config
        B, T, H, K = q.shape
        V = v.shape[-1]
        N = B if cu_seqlens is None else cu_seqlens.numel() - 1
        BK, BV, NV, num_warps = self._launch_config(K, V, N * H, q.device, backward=True)
        f32 = {"dtype": torch.float32, "device": q.device}
        # key-axis gradients are partial sums per block of V rows: [NV, ...], added below
        dq = torch.empty(NV, B, T, H, K, **f32)
        dk = torch.empty(NV, B, T, H, K, **f32)
        dv = torch.empty(B, T, H, V, **f32)
        dg = dbeta = da = db = None
        if config.decay == "scalar":
            dg = torch.empty(NV, B, T, H, **f32)
        elif config.decay == "channel":
            dg = torch.empty(NV, B, T, H, K, **f32)
        if config.beta == "token":
            dbeta = torch.empty(NV, B, T, H, **f32)
        elif config.beta == "row":  # one program writes each row: no partial sums
            dbeta = torch.empty(B, T, H, V, **f32)
        if config.rank_one:
            da = torch.empty(NV, B, T, H, K, **f32)
            db = torch.empty(NV, B, T, H, K, **f32)
        dh0 = torch.empty(N, H, V, K, **f32) if h0 is not None else None
        scratch = torch.empty(B, T, H, V, **f32) if config.scratch else None
        self.bwd_kernel[(NV * N * H,)](
            *self._present((q, k, v, g, beta, a, b)), h0, saved, do, dht, dq, dk, dv,
            *(x for x in (dg, dbeta, da, db) if x is not None), dh0, scratch,
            cu_seqlens, *params, T, B * T, H=H, K=K, V=V, BK=BK, BV=BV, NV=NV,
            USE_H0=h0 is not None, USE_DHT=dht is not None,
            IS_VARLEN=cu_seqlens is not None, num_warps=num_warps, num_stages=1)
        if config.beta == "token":
            dbeta = dbeta.sum(0)
        return (dq.sum(0), dk.sum(0), dv, None if dg is None else dg.sum(0), dbeta,
                None if da is None else da.sum(0), None if db is None else db.sum(0), dh0)


class _FusedRecurrent(torch.autograd.Function):
    @staticmethod
    def forward(ctx, launcher, q, k, v, g, beta, a, b, initial_state, cu_seqlens,
                output_final_state, params):
        ctx.set_materialize_grads(False)
        ctx.launcher, ctx.params, ctx.has_beta = launcher, params, beta is not None
        if beta is None and launcher.config.beta is not None:
            beta = launcher._unit_rate(q, v.shape[-1])
        o, ht, saved = launcher._forward(q, k, v, g, beta, a, b, initial_state, cu_seqlens,
                                         params, output_final_state, save=True)
        ctx.save_for_backward(q, k, v, g, beta, a, b, initial_state, saved, cu_seqlens)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, beta, a, b, h0, saved, cu_seqlens = ctx.saved_tensors
        if do is None:
            do = torch.zeros_like(v)
        grads = ctx.launcher._backward(q, k, v, g, beta, a, b, h0, saved, cu_seqlens,
                                       ctx.params, do.contiguous(),
                                       None if dht is None else dht.contiguous())
        inputs = (q, k, v, g, beta if ctx.has_beta else None, a, b, h0)
        out = [None if x is None or dx is None else dx.to(x.dtype).view(x.shape)
               for x, dx in zip(inputs, grads)]
        return (None, *out, None, None, None)


def _check(name, x, shape):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"{name} has dtype {x.dtype}; expected float16, bfloat16 or float32")


_SM_COUNTS = {}


def _sm_count(device):
    if device.index not in _SM_COUNTS:
        props = torch.cuda.get_device_properties(device)
        _SM_COUNTS[device.index] = props.multi_processor_count
    return _SM_COUNTS[device.index]
