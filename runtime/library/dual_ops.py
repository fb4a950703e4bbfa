"""The dual chunk form's Triton kernels (dual_triton.py) as torch.library custom ops, for code
that torch.compile traces.

A compiled chunk (`NLC_COMPILE_CHUNKS=1`, `--compile-chunks`) calls the reads through these
ops, and a compiled model (`nlc train --compile`) the reads and the scan (which runs before
the chunk loop, outside compiled chunks): opaque calls inside the compiled graph, with
their own forward and backward (the backward a second op, wired by `register_autograd`) and
shapes from the fake implementations below. So compiled chunks read through the kernels and
take `--tf32`'s products there. Titans' LM step on an H200 (docs/perf.md, eighth batch):
CUDA graphs 60.9k tokens/s, with `--tf32` 87.2k, with compiled chunks through these ops and
`--tf32` 123.5k. `NLC_COMPILE_DUAL_KERNELS=0` traces the PyTorch forms instead (dual.py,
`_kernels`), which Inductor fuses (on an H100, compiled chunks with `--tf32` that way gave
1.20x over graphs alone). Each op counts its calls in `dual_triton.LAUNCHES` ("read_op",
"scan_op").
"""

from __future__ import annotations

import torch

from nlc.runtime.library import dual_triton as kernels


@torch.library.custom_op("nlc::dual_read", mutates_args=())
def dual_read_op(x: torch.Tensor, starts: torch.Tensor, phi: torch.Tensor, psi: torch.Tensor,
                 cols: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The read of `dual_triton.pack`'s six tensors (contiguous), as `DualProduct`'s
    forward. The traced code packs them, so Inductor plans those copies and the scatters of
    their gradients with the code around them. Inside the op they were 4,280 copy launches
    in a step of Titans' LM; packed in the graph, 1,072 copies and Inductor's stack kernels,
    with the step's time unchanged (docs/perf.md, twelfth batch)."""
    kernels.LAUNCHES["read_op"] += 1
    return kernels.packed_forward([x, starts, phi, psi, cols, rows])


@dual_read_op.register_fake
def _(x, starts, phi, psi, cols, rows):
    other = cols if cols.shape[3] else starts
    return x.new_empty(*x.shape[:3], starts.shape[-2], dtype=torch.result_type(x, other))


@torch.library.custom_op("nlc::dual_read_grads", mutates_args=())
def dual_read_grads_op(x: torch.Tensor, starts: torch.Tensor, phi: torch.Tensor,
                       psi: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor,
                       do: torch.Tensor) -> list[torch.Tensor]:
    """`dual_read_op`'s backward: the float32 gradients of its six inputs."""
    return kernels.packed_backward([x, starts, phi, psi, cols, rows], do)


@dual_read_grads_op.register_fake
def _(x, starts, phi, psi, cols, rows, do):
    return [t.new_empty(t.shape, dtype=torch.float32) for t in (x, starts, phi, psi, cols, rows)]


def _dense(t: torch.Tensor) -> torch.Tensor:
    """An empty tensor of t's shape and dtype, contiguous, as the kernels' outputs are
    (`empty_like` would copy t's strides, which Inductor then asserts)."""
    return t.new_empty(t.shape)


def _read_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _read_backward(ctx, do):
    inputs = ctx.saved_tensors
    grads = dual_read_grads_op(*inputs, do)
    return tuple(g.to(t.dtype) for g, t in zip(grads, inputs, strict=True))


dual_read_op.register_autograd(_read_backward, setup_context=_read_context)


@torch.library.custom_op("nlc::dual_scan", mutates_args=())
def dual_scan_op(step: torch.Tensor, add: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`dual_triton.CoefficientScan`'s forward."""
    kernels.LAUNCHES["scan_op"] += 1
    return kernels.scan_forward(step, add)


@dual_scan_op.register_fake
def _(step, add):
    B, T, H, n = step.shape[:4]
    dtype = torch.promote_types(step.dtype, add.dtype)
    return (step.new_empty(B, T, H, n, n, dtype=dtype),
            step.new_empty(B, T, H, n, T, add.shape[-1], dtype=dtype))


@torch.library.custom_op("nlc::dual_scan_grads", mutates_args=())
def dual_scan_grads_op(step: torch.Tensor, phi: torch.Tensor, psi: torch.Tensor,
                       dphi: torch.Tensor, dpsi: torch.Tensor,
                       add_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """`dual_triton.CoefficientScan`'s backward."""
    return kernels.scan_backward(step, phi, psi, dphi, dpsi, add_dtype)


@dual_scan_grads_op.register_fake
def _(step, phi, psi, dphi, dpsi, add_dtype):
    return _dense(step), psi.new_empty(*step.shape[:4], psi.shape[-1], dtype=add_dtype)


def _scan_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], *output)
    ctx.add_dtype = inputs[1].dtype


def _scan_backward(ctx, dphi, dpsi):
    step, phi, psi = ctx.saved_tensors
    dphi = torch.zeros_like(phi) if dphi is None else dphi
    dpsi = torch.zeros_like(psi) if dpsi is None else dpsi
    return dual_scan_grads_op(step, phi, psi, dphi, dpsi, ctx.add_dtype)


dual_scan_op.register_autograd(_scan_backward, setup_context=_scan_context)
