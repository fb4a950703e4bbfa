"""The functions generated modules call, as `from nlc.runtime.library import ops as nl`.

Two conventions meet here (see nlc/emit/torch_printer.py):
- context generation works on `[B, T, H, *shape]` tensors (a scalar per head and token is
  `[B, T, H, 1]`; the layer input `x` is `[B, T, 1, d_model]`, shared by the heads; a
  parameter is `[H, *shape]`);
- the memory's math works on matrices in the last two axes: `[..., rows, cols]`, with
  columns `[..., d, 1]` and scalars `[..., 1, 1]`.

Everything here is plain PyTorch and differentiable; the family algorithms live in
`scan.py` (one token at a time, frozen-gradient chunks) and `chunked.py` (exact chunked
forms of the affine families)."""

from __future__ import annotations

import functools
import itertools
import math
import os

import torch
import torch.nn.functional as F
from nlc.runtime.library.attention import attention
from nlc.runtime.library.chunk_triton import (
    CHUNKED_MIN_TOKENS,
    SUPPORTED_DTYPES,
    has_chunked_kernel,
    opted_in,
    triton_enabled,
)
from nlc.runtime.library.chunked import decay_chunked, delta_chunked, dplr_chunked
from nlc.runtime.library.dual import dual_chunked, mm, outer_sum, token_sum
from nlc.runtime.library.entrywise_scan import scan_chunked, states_before
from nlc.runtime.library.fused_group import FusedGroup
from nlc.runtime.library.fused_walk import MLPWalk
from nlc.runtime.library.joint import joint_chunked, joint_values, mixing
from nlc.runtime.library.op_inputs import op_shapes
from nlc.runtime.library.rows import row_decay_chunked
from nlc.runtime.library.scan import (
    PIECE_TOKENS,
    Member,
    coupled,
    coupled_chunked,
    frozen_chunked,
    mid_chunk,
    recurrent,
    segment_mode,
    segments,
    state_from,
    varlen,
    weights_from,
)
from nlc.runtime.library.solve import ridge_chunked, shifted_solve
from nlc.runtime.library.substeps import substeps

EPS = 1e-6


# --------------------------------------------------------------- input checks
def whole_div(a: int, b: int) -> int:
    """a / b for a size spelled as a quotient of dims (`d_model / heads`): it must divide."""
    if a % b:
        raise ValueError(f"a size is {a} / {b}, which is not a whole number")
    return a // b


def check_sizes(layer: str, sizes: dict) -> None:
    """Refuse a layer size that is not a positive whole number, with a ValueError."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{layer}: {name} must be a positive int, got {value!r}")


def check_compiled_sizes(layer: str, sizes: dict) -> None:
    """Refuse, with a ValueError, a size that a level's period or gradient chunk is spelled
    with (`every C tokens`) given other than its compiled value: the generated code holds
    those as numbers, so another value would be silently ignored. `sizes`: name -> (given,
    compiled)."""
    for name, (given, compiled) in sizes.items():
        if given != compiled:
            raise ValueError(f"{layer}: {name} = {given}, but a level's period or gradient "
                             f"chunk was compiled with {name} = {compiled}: compile the spec "
                             f"with -D {name}={given} instead")


def check_equal_sizes(layer: str, why: str, left: int, right: int) -> None:
    """Refuse, with a ValueError that says why, dims under which two sizes the spec keeps
    equal differ (a generate transfer's read and the weights it fills)."""
    if left != right:
        raise ValueError(f"{layer}: {why}; with these dims they are {left} and {right}")


def check_step_input(x, d_model: int) -> None:
    """Refuse a `step()` input that is not one token per sequence, `[B, d_model]`, saying so
    about the tensor given (forward's check would see it with a token axis added)."""
    if isinstance(x, torch.Tensor) and x.dim() != 2:
        raise ValueError(f"step() decodes one token: expected x as [B, {d_model}], got shape "
                         f"{list(x.shape)}" + (" (use forward() for a sequence [B, T, "
                                               f"{d_model}])" if x.dim() == 3 else ""))


def check_input(x, d_model: int, cu_seqlens=None) -> None:
    """Refuse a layer input that the generated code would misread, with a ValueError that
    says what was expected (called once, first thing, by every generated `forward`).

    x must be a floating `[B, T, d_model]` tensor with B, T >= 1. `cu_seqlens` (packed
    sequences) must be a 1-D integer tensor `[0, ..., T]`, strictly increasing, with B = 1: bad
    bounds would otherwise give silently wrong outputs (or, for softmax attention, an output
    of another length). Under torch.compile only the shapes are checked: the bounds' values
    would need a device sync."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(  # noqa: TRY004 (a ValueError like every other bad input)
            f"expected the input x as a torch.Tensor [B, T, {d_model}], got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"expected the input x as [B, T, {d_model}] (3 axes), got shape "
                         f"{list(x.shape)}" + (" (use step() for one token [B, d_model])"
                                               if x.dim() == 2 else ""))
    B, T, width = x.shape
    if width != d_model:
        raise ValueError(f"expected the input's last axis to be d_model = {d_model}, got "
                         f"shape {list(x.shape)}")
    if B == 0 or T == 0:
        raise ValueError(f"expected at least one sequence and one token, got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point input, got {x.dtype}")
    if cu_seqlens is not None:
        _check_cu_seqlens(cu_seqlens, B, T)


def _check_cu_seqlens(cu_seqlens, B: int, T: int) -> None:
    if not isinstance(cu_seqlens, torch.Tensor):
        raise ValueError(  # noqa: TRY004 (a ValueError like every other bad input)
            f"expected cu_seqlens as a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError("expected cu_seqlens as a 1-D tensor [0, ..., T] of at least 2 "
                         f"bounds, got shape {list(cu_seqlens.shape)}")
    if cu_seqlens.dtype == torch.bool or cu_seqlens.is_floating_point() or cu_seqlens.is_complex():
        raise ValueError(f"expected cu_seqlens of an integer dtype (torch.int32 or torch.int64), "
                         f"got {cu_seqlens.dtype}")
    if B != 1:
        raise ValueError(f"with cu_seqlens the batch size must be 1 (sequences packed along T), "
                         f"got {B}")
    if torch.compiler.is_compiling():
        return
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != T:
        raise ValueError(f"expected cu_seqlens to start at 0 and end at T = {T}, got "
                         f"{bounds[0]} ... {bounds[-1]}")
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        if b <= a:  # an empty sequence has no state to carry: the scans cannot join it
            raise ValueError(f"expected cu_seqlens to be strictly increasing (each packed "
                             f"sequence at least one token), got {a} then {b} (at index {i + 1})")


# --------------------------------------------------------------- context generation
def head_projections(a: torch.Tensor, *weights: torch.Tensor) -> list[torch.Tensor]:
    """`head_matmul(a, W)` for each W at once, a `[..., 1, m]` (the layer's input, shared by
    the heads): one matrix product with every W's heads side by side, its result split into
    one contiguous piece per W. Under autocast a is cast once and kept once for the backward
    pass, whose input gradient is one product rather than one per W summed in float32
    (docs/runtime.md)."""
    wide = [_side_by_side(w) for w in weights]
    if len(wide) == 1:
        pieces = [a[..., 0, :] @ wide[0]]
    else:  # each its own copy: an op that keeps a view for its backward pass keeps only it
        out = a[..., 0, :] @ torch.cat(wide, 1)
        pieces = [p.contiguous() for p in out.split([w.shape[1] for w in wide], -1)]
    return [p.unflatten(-1, (w.shape[0], w.shape[2])) if w.dim() == 3 else p.unsqueeze(-1)
            for p, w in zip(pieces, weights)]


def _side_by_side(w: torch.Tensor) -> torch.Tensor:
    """W `[H, m]` or `[H, m, n]` as `[m, H]` or `[m, H * n]`: its heads side by side."""
    if w.dim() == 2:
        return w.mT
    return w.permute(1, 0, 2).reshape(w.shape[1], w.shape[0] * w.shape[2])


def head_matmul(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`a @ W` per head: a `[..., H|1, m]`, W `[H, m]` (-> `[..., H, 1]`) or `[H, m, n]`."""
    heads = max(a.shape[-2], w.shape[0])
    if a.shape[-2] == 1 and w.shape[0] == heads:
        # one input for every head (the layer's x): one matrix product with the heads' weights
        # side by side, instead of a copy of the input per head
        return head_projections(a, w)[0]
    a = a.expand(*a.shape[:-2], heads, a.shape[-1])
    if w.dim() == 2:
        return torch.einsum("...hm,hm->...h", a, w.expand(heads, -1)).unsqueeze(-1)
    # einsum, not a broadcast `@`: its backward would materialize one [m, n] product per token
    return torch.einsum("...hm,hmn->...hn", a, w.expand(heads, -1, -1))


def head_matmul_sum(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum over the heads of `a @ W` per head, a `[..., H|1, m]`, W `[H, m, n]` -> `[..., n]`:
    the heads' inputs side by side times their weights stacked, one matrix product (a layer's
    output projection), without the per-head products."""
    a = a.expand(*a.shape[:-2], w.shape[0], a.shape[-1])
    return a.flatten(-2) @ w.flatten(0, 1)


def short_conv(x: torch.Tensor, weight: torch.Tensor, cu_seqlens=None, cache=None,
               key: str = "", act: str | None = None, norm: str | None = None) -> torch.Tensor:
    """Causal depthwise convolution along T: x `[B, T, H, D]`, weight `[H, D, W]`; the last
    tap multiplies the current token. Packed sequences (`cu_seqlens`) do not see each other.
    With a `cache` dict (decoding), the previous W-1 inputs are kept under `key`.
    `act` ("silu", "sigmoid") and then `norm` ("l2") apply to the result: without a cache,
    `l2norm(silu(conv(x)))` is one fused Triton kernel each way on CUDA (context_triton.py),
    the PyTorch ops elsewhere."""
    if cache is None and fused_context(x):
        from nlc.runtime.library import context_triton
        if context_triton.conv_supported(x, weight):
            return context_triton.short_conv(x, weight, cu_seqlens, act, norm)
    return _activate(_short_conv(x, weight, cu_seqlens, cache, key), act, norm)


# the activations the fused context kernels apply (context_triton.ACTS)
ACTIVATIONS = {None: lambda x: x, "silu": F.silu, "sigmoid": torch.sigmoid}


def _activate(x: torch.Tensor, act: str | None, norm: str | None) -> torch.Tensor:
    x = ACTIVATIONS[act](x)
    return l2norm(x) if norm == "l2" else x


def _short_conv(x, weight, cu_seqlens, cache, key) -> torch.Tensor:
    width = weight.shape[-1]
    B, T, H, D = x.shape
    if cache is not None and width > 1:
        if cu_seqlens is not None:
            return _packed_conv_cached(x, weight, cu_seqlens, cache, key)
        past = _conv_past(cache, key, x, B, width)
        x = torch.cat([past, x], dim=1)
        cache[key] = x[:, -(width - 1):]
    if cu_seqlens is None and H == weight.shape[0]:
        # one depthwise convolution over the channels, as flash-linear-attention's layers do;
        # a cache already holds the W-1 inputs before x (zeros at the start)
        h = x.reshape(B, x.shape[1], H * D).transpose(1, 2)
        if cache is None:
            h = F.pad(h, (width - 1, 0))
        out = F.conv1d(h, weight.reshape(H * D, 1, width).to(h.dtype), groups=H * D)
        return out.transpose(1, 2).reshape(B, T, H, D)
    pos = positions(x.shape[1], cu_seqlens, x.device)
    out = x * weight[..., width - 1]
    for j in range(1, width):
        shifted = F.pad(x, (0, 0, 0, 0, j, 0))[:, : x.shape[1]]
        keep = (pos >= j).to(x.dtype)[None, :, None, None]
        out = out + shifted * keep * weight[..., width - 1 - j]
    return out[:, x.shape[1] - T:]


def _conv_past(cache, key, x, rows: int, width: int) -> torch.Tensor:
    """The W-1 inputs a cache holds before each of `rows` sequences, `[rows, W-1, H, D]`
    (zeros where the cache has none yet)."""
    past = cache.get(key)
    if past is None:
        return x.new_zeros(rows, width - 1, *x.shape[2:])
    if past.shape != (rows, width - 1, *x.shape[2:]):
        raise ValueError(f"the cache's convolution inputs {key!r} are {list(past.shape)}, "
                         f"but this call's are [sequences, W-1, H, D] = "
                         f"{[rows, width - 1, *x.shape[2:]]}: a cache continues only the "
                         "sequences and the layer (heads and sizes) that filled it")
    return past


def _packed_conv_cached(x, weight, cu_seqlens, cache, key) -> torch.Tensor:
    """The convolution of packed sequences (x `[1, T, H, D]`) continuing a cache that holds
    each sequence's W-1 earlier inputs (`[sequences, W-1, H, D]`, as the memories' states are
    kept one per sequence); the cache then holds each sequence's last W-1 inputs."""
    width, T = weight.shape[-1], x.shape[1]
    cu = cu_seqlens.to(x.device).long()
    past = _conv_past(cache, key, x, len(cu) - 1, width)
    pos = positions(T, cu, x.device)
    seq = torch.searchsorted(cu[1:], torch.arange(T, device=x.device), right=True)
    out = x * weight[..., width - 1]
    for j in range(1, width):
        shifted = F.pad(x, (0, 0, 0, 0, j, 0))[0, :T]
        earlier = past[seq, (width - 1 - j + pos).clamp(max=width - 2)]  # before its start
        term = torch.where((pos >= j)[:, None, None], shifted, earlier)
        out = out + term[None] * weight[..., width - 1 - j]
    lengths, rows = cu[1:] - cu[:-1], torch.arange(len(cu) - 1, device=x.device)
    last = []
    for i in range(width - 1):  # the i-th of the W-1 inputs kept: inputs or the cache's
        back = width - 1 - i  # tokens before each sequence's end
        idx = (cu[1:] - back).clamp(min=0)
        last.append(torch.where((lengths >= back)[:, None, None], x[0, idx],
                                past[rows, (i + lengths).clamp(max=width - 2)]))
    cache[key] = torch.stack(last, dim=1)
    return out


def positions(T: int, cu_seqlens, device) -> torch.Tensor:
    """Each token's position inside its sequence."""
    pos = torch.arange(T, device=device)
    if cu_seqlens is None:
        return pos
    starts = torch.zeros(T, dtype=torch.long, device=device)
    for s in cu_seqlens[1:-1].tolist():
        starts[s:] = s
    return pos - starts


def l2norm(x, act: str | None = None):
    """x / sqrt(sum x^2 + eps) over the last axis, of `act(x)` with act "silu" or "sigmoid"
    (one fused Triton kernel each way on CUDA)."""
    if fused_context(x):
        from nlc.runtime.library import context_triton
        if context_triton.row_supported(x):
            return context_triton.row_norm(x, act=act, norm="l2")
    x = ACTIVATIONS[act](x)
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + EPS)


def rmsnorm(x):
    if fused_context(x):
        from nlc.runtime.library import context_triton
        if context_triton.row_supported(x):
            return context_triton.row_norm(x, norm="rms")
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + EPS)


def gated_norm(x, gate, norm: str = "rms", act: str = "silu"):
    """`NORM(x) * ACT(gate)` (norm "rms" or "layer", act "silu" or "sigmoid"), a layer's gated
    output norm: one fused Triton kernel each way on CUDA when x and the gate have one shape,
    the PyTorch ops otherwise."""
    if fused_context(x):
        from nlc.runtime.library import context_triton
        if context_triton.row_supported(x, gate):
            return context_triton.row_norm(x, gate, norm=norm, gate_act=act)
    return (rmsnorm(x) if norm == "rms" else layernorm(x)) * ACTIVATIONS[act](gate)


def fused_context(x) -> bool:
    """Whether the context ops (short_conv, l2norm, rmsnorm, gated_norm) run their fused
    Triton kernels: on CUDA tensors unless NLC_CONTEXT_TRITON=0 or NLC_TRITON=0;
    NLC_CONTEXT_TRITON=force sends CPU tensors too (with TRITON_INTERPRET=1: how the tests run
    them). Under torch.compile the PyTorch ops are traced, and Inductor fuses them itself."""
    if not isinstance(x, torch.Tensor) or torch.compiler.is_compiling():
        return False
    flag = os.environ.get("NLC_CONTEXT_TRITON", "1")
    if flag == "force":
        return True
    if flag == "0" or os.environ.get("NLC_TRITON", "1") == "0" or not x.is_cuda:
        return False
    return _has_triton()


@functools.cache
def _has_triton() -> bool:
    import importlib.util
    return importlib.util.find_spec("triton") is not None


def layernorm(x):
    return F.layer_norm(x, x.shape[-1:], eps=EPS)


def softmax(x):
    return torch.softmax(x, dim=-1)


def elu1(x):
    return F.elu(x) + 1


def gelu(x):
    return F.gelu(x)


def gelu_grad(x):
    """gelu'(x) = Phi(x) + x phi(x): the derivative an MLP memory's backward uses. As aten's
    own gelu backward (of a gradient of ones): one kernel where the formula took ten, with
    its derivative (aten's gelu double backward) a few more; the same values to rounding."""
    return torch.ops.aten.gelu_backward(torch.ones_like(x), x)


def silu_grad(x):
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def sigmoid_grad(x):
    s = torch.sigmoid(x)
    return s * (1 - s)


def tanh_grad(x):
    return 1 - torch.tanh(x) ** 2


def total(x):
    return x.sum(-1, keepdim=True)


def inner(a, b):
    return (a * b).sum(-1, keepdim=True)


def log_gate(alpha: torch.Tensor) -> torch.Tensor:
    """log of a decay gate for the chunked forms. A gate that underflowed to exactly 0 gets
    the log of the dtype's smallest normal number instead of -inf (a decay of 1e-38 is 0 to
    every later product), and with it a zero gradient instead of 0 * inf = NaN. A constant
    gate's log is taken in float64 (the caller casts it to the inputs' dtype)."""
    alpha = alpha if isinstance(alpha, torch.Tensor) else torch.tensor(alpha, dtype=torch.float64)
    return torch.log(alpha.clamp_min(torch.finfo(alpha.dtype).tiny))


# --------------------------------------------------------------- memory math
def mean(x):
    """Mean of a column's entries: `[..., d, 1] -> [..., 1, 1]`."""
    return x.mean(-2, keepdim=True)


def dot(a, b):
    return (a * b).sum(-2, keepdim=True)


def sqnorm(a):
    return (a * a).sum(-2, keepdim=True)


def trace(x):
    return x.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]


def as_matrix(x: torch.Tensor) -> torch.Tensor:
    """A parameter-shaped tensor as the matrix an optimizer's step sees: a matrix as it is,
    a vector as a column, a scalar as [1, 1], more axes flattened after the first (a view
    where the tensor's layout allows)."""
    if x.dim() == 2:
        return x
    return x.reshape(-1, 1) if x.dim() < 2 else x.reshape(x.shape[0], -1)


def like_param(x, param: torch.Tensor) -> torch.Tensor:
    """An optimizer's value in `as_matrix(param)`'s shape (or broadcasting to it) back in the
    parameter's own shape."""
    return torch.broadcast_to(torch.as_tensor(x, dtype=param.dtype, device=param.device),
                              as_matrix(param).shape).reshape(param.shape)


def entries_sum(x):
    """The sum of all of x's entries, a 0-dim tensor: an optimizer's `total`, `dot` and
    `sqnorm`, which see the parameter as one vector."""
    return x.sum()


def sum_all(x):
    return x.sum((-2, -1), keepdim=True)


NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Muon's quintic Newton-Schulz (Jordan et al., 2024)


def newton_schulz(x: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T of x = U S V^T, by `steps` quintic iterations from x / ||x||_F."""
    a, b, c = NS_COEFFS
    y = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    transpose = y.shape[-2] > y.shape[-1]
    if transpose:
        y = y.mT
    for _ in range(steps):
        g = y @ y.mT
        y = a * y + (b * g + c * g @ g) @ y
    return y.mT if transpose else y


# --------------------------------------------------------------- layouts
def column(x: torch.Tensor) -> torch.Tensor:
    """`[B, T, H, D]` -> `[B, T, H, D, 1]`."""
    return x.unsqueeze(-1)


def scalar(x: torch.Tensor) -> torch.Tensor:
    """`[B, T, H]` -> `[B, T, H, 1, 1]`."""
    return x[..., None, None]


def reference(tokens: dict) -> torch.Tensor:
    """A tensor of the broadcast `[B, T, H]` of a level's inputs (for shapes, dtype, device)."""
    values = list(tokens.values())
    shape = torch.broadcast_shapes(*(v.shape[:3] for v in values))
    return values[0].new_empty(shape)


def vec(x, like: torch.Tensor | None = None) -> torch.Tensor:
    """A column `[B, T, H, D, 1]` -> `[B, T, H, D]`, broadcast to `like`'s `[B, T, H]`."""
    x = torch.as_tensor(x, dtype=like.dtype if like is not None else None,
                        device=like.device if like is not None else None).squeeze(-1)
    if like is None:
        return x
    while x.dim() < 4:
        x = x.unsqueeze(0)
    return x.expand(*like.shape[:3], x.shape[-1])


def flat(x, like: torch.Tensor) -> torch.Tensor:
    """A scalar `[B, T, H, 1, 1]` (or a number) -> `[B, T, H]` shaped like `like`'s `[B, T, H]`."""
    x = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    if x.dim() >= 2:
        x = x[..., 0, 0]
    return x.expand(*like.shape[:3])


def param(p: torch.Tensor, rank: int) -> torch.Tensor:
    """A parameter `[H, *shape]` in the memory's layout: a scalar `[H, 1, 1]`, a vector
    `[H, d, 1]`, a matrix `[H, m, n]`."""
    return p[:, None, None] if rank == 0 else p[..., None] if rank == 1 else p


def output(o: torch.Tensor, kind: str) -> torch.Tensor:
    """A level's read `[B, T, H, r, 1]` -> `[B, T, H, r]` (a scalar read -> `[B, T, H]`)."""
    return o[..., 0, 0] if kind == "scalar" else o[..., 0]


def per_token(value, like: torch.Tensor, keep_precision: bool = False) -> torch.Tensor:
    """Broadcast a context value to `[B, T, H, last]` (e.g. a per-head constant `[H, 1]`), in
    like's dtype; with `keep_precision` a floating tensor keeps its own (a bf16 value under
    autocast stays bf16 for an op that casts it where it uses it: the dual chunk form)."""
    if keep_precision and torch.is_tensor(value) and value.is_floating_point():
        value = value.to(like.device)
    else:
        value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    while value.dim() < 4:
        value = value.unsqueeze(0)
    return value.expand(*like.shape[:3], value.shape[-1])


def init_state(init: str, shape, batch: int, heads: int, like: torch.Tensor):
    """A level's default initial state `[B, H, *shape]`: the identity or zeros (a layer
    broadcasts its learned initial states over the batch itself)."""
    if init == "identity":
        eye = torch.eye(shape[-2], shape[-1], dtype=like.dtype, device=like.device)
        return eye.expand(batch, heads, *shape).clone()
    return torch.zeros(batch, heads, *shape, dtype=like.dtype, device=like.device)


def inv_softplus_uniform(shape, low: float, high: float) -> torch.Tensor:
    """Mamba's dt bias: softplus^-1 of a log-uniform draw in [low, high]."""
    dt = torch.exp(torch.rand(shape) * (math.log(high) - math.log(low)) + math.log(low))
    return dt + torch.log(-torch.expm1(-dt))


def log_uniform(shape, low: float, high: float) -> torch.Tensor:
    """Mamba's A_log: log of a uniform draw in [low, high]."""
    return torch.log(torch.empty(shape).uniform_(low, high))


KEY_TILE = 256  # the recurrent kernels hold the key axis in one tile (docs/triton.md)


def use_triton(ref: torch.Tensor, chunked: str | None = None, key_width: int = 0) -> bool:
    """Whether a level's fused recurrent Triton kernel runs: CUDA tensors go to Triton unless
    NLC_TRITON=0; NLC_TRITON=force sends CPU tensors too (with TRITON_INTERPRET=1: how CI tests
    the dispatch). `chunked` ("family/decay", e.g. "delta/scalar") names the level's chunked
    form: training-length inputs then skip the recurrent kernel, and the chunked form
    (`delta_chunked`, `decay_chunked`, `dplr_chunked`) runs its chunked Triton kernels instead. A state
    wider than `KEY_TILE` keys runs the PyTorch forms, and so do float64 tokens (the kernels
    take half precision and float32: a float64 layer on a GPU raised their dtype error)."""
    if not triton_enabled(ref) or key_width > KEY_TILE or ref.dtype not in SUPPORTED_DTYPES:
        return False
    if chunked is not None and ref.shape[1] >= CHUNKED_MIN_TOKENS:
        return not has_chunked_kernel(*chunked.split("/"))
    return True


_KERNELS: dict = {}


def kernels(module_file: str, name: str):
    """The Triton kernel module generated next to `module_file` (imported once)."""
    import importlib.util
    from pathlib import Path
    path = Path(module_file).with_name(f"{name}.py")
    if path not in _KERNELS:
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: `nlc compile` writes it next to "
                                    f"{Path(module_file).name}")
        spec = importlib.util.spec_from_file_location(f"nlc_kernels_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _KERNELS[path] = module
    return _KERNELS[path]


def outer_terms(module_file: str, name: str, fallback, token_names: tuple, anchor_names: tuple,
                layout: tuple):
    """A dual-form level's chunk-start terms (`fallback`, its PyTorch `*_outer`) with the
    Triton kernels of the module `name` next to `module_file` behind them where they run
    (runtime/library/outer_launch.py); the same inputs, the same dict of (column, row)
    pairs. The kernels run only when asked (`chunk_triton.opted_in`: NLC_TERMS_TRITON=1 on
    CUDA): on an H100 they made the Titans and Hope LM steps slower (docs/perf.md)."""
    def terms(inputs: dict) -> dict:
        if torch.compiler.is_compiling() or not opted_in(inputs[token_names[0]],
                                                          "NLC_TERMS_TRITON"):
            return fallback(inputs)
        return kernels(module_file, name).LAUNCHER.terms(fallback, token_names, anchor_names,
                                                         layout, inputs)
    return terms


def shared_outer_terms(module_file: str, name: str, fallback, token_names: tuple,
                       layout: tuple):
    """`outer_terms` for a function several levels share, which takes its anchors as
    arguments: `fallback(inputs, *anchors)` (Hope's MLP memories' pairs, called per level
    and for a group's members stacked). Members stacked (`inputs` a member_batch.Repeated)
    give the kernels their tokens once, not repeated: the kernels read them for every member
    and sum their gradients over the members; only the PyTorch terms read them repeated."""
    def terms(inputs, *anchors) -> dict:
        names = tuple(f"A{i}" for i in range(len(anchors)))
        once = getattr(inputs, "once", inputs.__getitem__)
        given = {n: once(n) for n in token_names} | dict(zip(names, anchors))
        return outer_terms(module_file, name, lambda _: fallback(inputs, *anchors),
                           token_names, names, layout)(given)
    return terms


class LinearRecorder:
    """Records, for every `nn.Linear` of a model, the inputs of the last forward pass and the
    gradients of its outputs (what a level `over gradients u, inputs x` sees, e.g. DGD)."""

    def __init__(self, model: torch.nn.Module):
        self.inputs: dict[int, torch.Tensor] = {}
        self.grads: dict[int, torch.Tensor] = {}
        self.handles = []
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                self.handles.append(module.register_forward_hook(self._forward))

    def _forward(self, module, args, output):
        key = id(module.weight)
        self.inputs[key] = args[0].detach().reshape(-1, args[0].shape[-1])
        if output.requires_grad:
            output.register_hook(lambda g: self.grads.__setitem__(
                key, g.detach().reshape(-1, g.shape[-1])))

    def samples(self, param: torch.Tensor):
        """(x `[in, 1]`, u `[out, 1]`) for each recorded sample of the layer owning `param`."""
        key = id(param)
        if key not in self.inputs or key not in self.grads:
            return
        for x, u in zip(self.inputs[key], self.grads[key]):
            yield x[:, None], u[:, None]

    def close(self):
        for handle in self.handles:
            handle.remove()


def earlier(x: torch.Tensor, shifts: int, cu_seqlens=None, history=None,
            key: str = "") -> tuple[torch.Tensor, ...]:
    """x `[B, T, H, ...]` one, two, ... `shifts` tokens back (an omega window's `k_m1`,
    `k_m2`, ...), zeros before a sequence's first token: Atlas's window over the available
    tokens, whose terms vanish at zero context (nlc/plan/layer.py checks that they do).
    Packed sequences (`cu_seqlens`) do not see each other's tokens. With a `history` dict
    (a cache), each sequence's last `shifts` inputs are kept under `key` and come before
    the next call's first token, so a continuation equals one long call."""
    rest = tuple(x.shape[2:])
    if cu_seqlens is None:
        parts = [x]
    else:
        bounds = cu_seqlens.tolist()
        parts = [x[:, s:e] for s, e in itertools.pairwise(bounds)]
    count = x.shape[0] if cu_seqlens is None else len(parts)
    past = None if history is None else history.get(key)
    if past is None:
        past = x.new_zeros(count, shifts, *rest)
    elif tuple(past.shape) != (count, shifts, *rest):
        raise ValueError(f"the cache's earlier tokens {key!r} are {list(past.shape)}, but this "
                         f"call's are {[count, shifts, *rest]}: a cache continues only the "
                         "batch (or packed sequences) and the layer that filled it")
    befores = [past] if cu_seqlens is None else list(past.split(1))
    shifted, kept = [[] for _ in range(shifts)], []
    for part, before in zip(parts, befores):
        full = torch.cat([before.to(part.dtype), part], dim=1)
        T = part.shape[1]
        for j in range(1, shifts + 1):
            shifted[j - 1].append(full[:, shifts - j: shifts - j + T])
        kept.append(full[:, T:])
    if history is not None:
        history[key] = torch.cat(kept)
    return tuple(torch.cat(s, dim=1) for s in shifted)


__all__ = [
    "PIECE_TOKENS",
    "LinearRecorder",
    "FusedGroup",
    "MLPWalk",
    "Member",
    "attention",
    "check_compiled_sizes",
    "check_equal_sizes",
    "check_input",
    "check_step_input",
    "check_sizes",
    "column",
    "coupled",
    "coupled_chunked",
    "decay_chunked",
    "delta_chunked",
    "dot",
    "dplr_chunked",
    "dual_chunked",
    "earlier",
    "elu1",
    "flat",
    "frozen_chunked",
    "fused_context",
    "gated_norm",
    "gelu",
    "gelu_grad",
    "head_matmul",
    "head_matmul_sum",
    "head_projections",
    "init_state",
    "inner",
    "inv_softplus_uniform",
    "joint_chunked",
    "joint_values",
    "kernels",
    "l2norm",
    "layernorm",
    "log_gate",
    "log_uniform",
    "mean",
    "mid_chunk",
    "mixing",
    "mm",
    "newton_schulz",
    "op_shapes",
    "outer_sum",
    "output",
    "param",
    "per_token",
    "positions",
    "recurrent",
    "reference",
    "ridge_chunked",
    "rmsnorm",
    "row_decay_chunked",
    "scalar",
    "scan_chunked",
    "segment_mode",
    "segments",
    "shifted_solve",
    "short_conv",
    "sigmoid_grad",
    "silu_grad",
    "softmax",
    "sqnorm",
    "state_from",
    "states_before",
    "substeps",
    "sum_all",
    "tanh_grad",
    "token_sum",
    "total",
    "trace",
    "use_triton",
    "varlen",
    "vec",
    "weights_from",
    "whole_div",
]
