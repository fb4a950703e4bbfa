"""Traces the chunked and context kernels' autograd functions as `torch.compile` does on a GPU
(dynamo turns each Triton launch into a higher-order op; AOT autograd partitions the joint
graph into forward and backward), on a machine without one, and prints one line per case:
`CASE ok` or `CASE FAIL reason`, then each traced kernel's written arguments.

Run by tests/test_compile_trace.py in a fresh process without TRITON_INTERPRET (the
interpreter's kernels are plain Python to dynamo). No kernel runs: Triton only lowers each
kernel to its IR for an sm_90 target, which torch reads to learn which arguments a launch
writes, and the backend stops after the partition. torch 2.13's partitioner repairs one kind
of bad graph (a forward output that depends on a backward launch through an argument the
launch seems to write) that torch 2.11's (the GPU image's) rejects with "Node ... was invalid,
but is output"; the probe turns the repair off, so that a case fails here as it would there.
"""

from __future__ import annotations

import logging
import sys

import torch
import torch.utils._triton as triton_utils
import triton
from triton.backends.compiler import GPUTarget

triton_utils.has_triton = lambda: True  # dynamo wraps Triton launches only where it sees a GPU


class _Sm90:
    """The one thing tracing asks the driver: the target to lower the kernels for."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


triton.runtime.driver.set_active(_Sm90())

from functorch.compile import min_cut_rematerialization_partition
from torch._dynamo.backends.common import aot_autograd
from torch._functorch import partitioners
from torch._higher_order_ops import triton_kernel_wrap as kernel_wrap

# as torch 2.11: no repair (a renamed function would leave the repair on: say so)
assert hasattr(partitioners, "_find_input_for_invalid_output"), "torch changed: update the probe"
partitioners._find_input_for_invalid_output = lambda node, env: None

WRITES: dict[str, set] = {}
_mutated = kernel_wrap.get_mutated_tensors


def _spy(kernel_idx, constant_args_idx, kwargs, tma):
    names = _mutated(kernel_idx, constant_args_idx, kwargs, tma)
    kernel = kernel_wrap.kernel_side_table.get_kernel(kernel_idx)
    fn = getattr(kernel, "fn", kernel)
    WRITES.setdefault(f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}", set()).update(names)
    return names


kernel_wrap.get_mutated_tensors = _spy

UNREAD: set[str] = set()  # kernels whose IR torch could not read (it then takes every
_ttir = kernel_wrap.generate_ttir  # argument as written)


def _lowered(kernel, kwargs, *args):
    try:
        return _ttir(kernel, kwargs, *args)
    except Exception:
        UNREAD.add(getattr(kernel, "fn", kernel).__name__)
        raise


kernel_wrap.generate_ttir = _lowered


class _Unread(logging.Handler):
    """torch's warning when its reading of a kernel fails after the lowering."""

    def emit(self, record):
        if "assuming every input is mutated" in record.getMessage():
            UNREAD.add("(a kernel, after lowering: see the warning above)")


kernel_wrap.log.addHandler(_Unread())


class Partitioned(Exception):
    """Raised by the backend once AOT autograd has split the joint graph."""


class Unpartitioned(Exception):
    """Raised by the inference compiler: the graph needed no backward, so no partition ran."""


def _stopped(e: BaseException | None) -> bool:
    """Whether `e` is, or was raised from, the backend's stop after the partition (through
    the exceptions that wrap it, not through one raised while handling it)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, Partitioned):
            return True
        seen.add(id(e))
        e = getattr(e, "inner_exception", None) or e.__cause__
    return False


def _stop(gm, example_inputs):
    raise Partitioned


def _no_backward(gm, example_inputs):
    raise Unpartitioned


BACKEND = aot_autograd(fw_compiler=_stop, bw_compiler=_stop, inference_compiler=_no_backward,
                       partition_fn=min_cut_rematerialization_partition)


def _cases():
    from nlc.runtime.library import context_triton as ctx
    from nlc.runtime.library.chunk_decay_triton import chunk_channel
    from nlc.runtime.library.chunk_delta_triton import chunk_scalar
    from nlc.runtime.library.chunk_dplr_triton import chunk_dplr
    from nlc.runtime.library.chunk_joint_triton import chunk_joint
    from nlc.runtime.library.chunk_kda_triton import chunk_kda
    from nlc.runtime.library.chunk_rows_triton import chunk_rows

    B, T, H, D, n = 1, 40, 2, 16, 2

    def r(*shape):
        return torch.randn(*shape, requires_grad=True)

    q, k, v = r(B, T, H, D), r(B, T, H, D), r(B, T, H, D)
    beta, g, gk = r(B, T, H), r(B, T, H), r(B, T, H, D)
    h0 = r(B, H, D, D)
    a, b, conv = r(B, T, H, D), r(B, T, H, D), r(H, D, 4)
    values, P, Q, X0 = r(B, T, H, n, D), r(B, T, H, n, n), r(B, T, H, n, n), r(B, H, n, D, D)
    kw = {"chunk_size": 16}
    yield "delta", lambda: chunk_scalar(q, k, v, beta, **kw)
    yield "gated delta, initial state", lambda: chunk_scalar(q, k, v, beta, g,
                                                             initial_state=h0, **kw)
    # (the chunked families read packed sequences' bounds on the host, so a compiled model
    # breaks its graph there: not a case for one graph)
    yield "scalar decay", lambda: chunk_scalar(q, k, v, None, g, initial_state=h0, **kw)
    yield "channel decay", lambda: chunk_channel(q, k, v, None, gk, initial_state=h0, **kw)
    yield "kda", lambda: chunk_kda(q, k, v, beta, gk, initial_state=h0, **kw)
    yield "row decay delta", lambda: chunk_rows(q, k, v, beta, gk, initial_state=h0, **kw)
    yield "row decay", lambda: chunk_rows(q, k, v, None, gk, initial_state=h0, **kw)
    yield "dplr", lambda: chunk_dplr(q, k, v, a, b, gk,
                                     initial_state=h0, **kw)
    yield "joint", lambda: chunk_joint(q, k, values, P, Q, initial_state=X0, **kw)
    yield "short conv", lambda: (ctx.short_conv(q, conv, act="silu", norm="l2"),)
    packed = torch.tensor([0, 13, 40])
    yield "short conv, packed sequences", lambda: (ctx.short_conv(q, conv, packed,
                                                                  act="silu"),)
    yield "row norm", lambda: (ctx.row_norm(q, v, norm="rms"),)


def main(only: list[str]) -> int:
    failed = 0
    for name, case in _cases():
        if only and name not in only:
            continue
        torch._dynamo.reset()
        fn = torch.compile(lambda case=case: sum(x.sum() for x in case() if x is not None),
                           backend=BACKEND, fullgraph=True)
        try:
            fn()
        except Exception as e:  # noqa: BLE001 (the probe reports every failure by name)
            if not _stopped(e):
                failed += 1
                print(f"{name} FAIL {type(e).__name__}: {' '.join(str(e).split())[:400]}")
                continue
        else:
            failed += 1
            print(f"{name} FAIL the backend never ran")
            continue
        print(f"{name} ok")
    if UNREAD:
        failed += 1
        print(f"unread FAIL torch could not lower {', '.join(sorted(UNREAD))} (every argument "
              f"passed? a kernel's own defaults are not)")
    for kernel, names in sorted(WRITES.items()):
        print(f"writes {kernel} {' '.join(sorted(names))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
