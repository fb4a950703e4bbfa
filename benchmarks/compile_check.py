"""Compile every printed Triton kernel in generated/ for sm_90 with the installed Triton,
without a GPU: the fused step kernels (nlc_step_*.py: forward and printed backward) and the
chunk-start terms kernels (nlc_outer_*.py), each with the warps its launcher picks, and the
runtime kernels not yet run on a GPU (the affine combine, runtime/library/affine_triton.py;
the fused group kernels, runtime/library/mlp_group_triton.py;
benchmarks/kernel_resources.py covers the others), and print cuobjdump's registers and
spills, or the compiler's error.

The interpreter (TRITON_INTERPRET=1, how CI runs the kernels) never runs Triton's own
analysis of a kernel's source, so a kernel can pass every test and still fail its first
compile on a GPU: Triton 3.6, the GPU image's version, refused the nested tuple targets the
printed helpers once unpacked (docs/perf.md). Run this with that Triton version installed
before a device call (`pip install triton==3.6.0` in a separate environment).

Usage (no GPU needed; TRITON_INTERPRET must be unset):
    python benchmarks/compile_check.py [--d 64] [MODULE.py ...]   (default: generated/nlc_*.py)
Exits 1 when a kernel does not compile.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import triton
from kernel_resources import compiled  # compiled for sm_90, cuobjdump's resource line
from step_kernel_resources import entries as step_entries
from step_kernel_resources import load
from nlc.runtime.library.step_launch import backward_warps, num_warps

ROOT = Path(__file__).resolve().parents[1]


def outer_entries(config, d: int) -> int:
    """Anchor entries of one terms-kernel program when every dim is d (each size a
    (coefficient, dim) pair)."""
    return sum(rows[0] * d * cols[0] * d for rows, cols in config.anchors)


def kernels(module, d: int):
    """(name, kernel, constants, warps, int32 scalars) of a generated kernel module."""
    dims = {f"D{i}": d for i in range(module.CONFIG.dims)}
    if hasattr(module, "step_forward"):
        n = step_entries(module.CONFIG, d)
        yield "step forward", module.step_forward, {"EVERY": 16, **dims}, num_warps(n), ("H",)
        if module.step_backward is not None:
            yield ("step backward", module.step_backward, {"EVERY": 16, **dims},
                   backward_warps(n), ("H",))
    else:
        n = outer_entries(module.CONFIG, d)
        consts = {"TB": 16, **dims}
        yield ("terms forward", module.outer_forward, consts, num_warps(n),
               _ints(module.outer_forward, consts))
        yield ("terms backward", module.outer_backward, consts, backward_warps(n),
               _ints(module.outer_backward, consts))


def _ints(kernel, consts: dict) -> tuple[str, ...]:
    """A terms kernel's integer arguments (sizes, strides: all but its `*_ptr` pointers),
    each compiled as an int32 not known to be 1 (a launch specializes strides of 1)."""
    params = inspect.signature(kernel.fn).parameters
    return tuple(p for p in params if not p.endswith("_ptr") and p not in consts and p != "T")


def affine_kernels():
    """runtime/library/affine_triton.py's kernels at Hope's shapes (d_head 64: a [256, 64]
    map with its erase, 2 pairs), as `_Layout` tiles them: the group's chunk of 16 (exact
    float32 products) and the main memory's of 64 (`affine_triton.LARGE_CHUNK_PREC`)."""
    from nlc.runtime.library import affine_triton
    for C, prec in ((16, "ieee"), (64, affine_triton.LARGE_CHUNK_PREC)):
        tiles = {"BC": C, "PB": 2 * C, "BN": 64, "BR": 32, "ERASE": True, "PREC": prec}
        for name, kernel, extra in (("forward", affine_triton._forward_kernel, {}),
                                    ("backward", affine_triton._backward_kernel,
                                     {"HAS_GEA": True})):
            params = list(inspect.signature(kernel.fn).parameters)
            ints = tuple(params[params.index("H"):params.index("BC")])
            yield f"affine {name} C={C}", kernel, {**tiles, **extra}, 8, ints


def group_kernels():
    """runtime/library/mlp_group_triton.py's kernels at Hope's shapes (d_head 64, F 256, chunks
    of 16, TF32 products as `nlc train --tf32` runs them), with the launchers' blocks and
    warps."""
    from nlc.runtime.library import mlp_group_triton as m
    shape = {"F": 256, "D": 64, "C": 16, "NORM_K": True, "NORM_V": True, "PREC": "tf32"}
    for name, kernel, (block, warps), extra in (
            ("forward", m._forward_kernel, m.FORWARD_LAUNCH, {"SAVE": True}),
            ("backward", m._backward_kernel, m.BACKWARD_LAUNCH, {})):
        yield f"group {name}", kernel, {**shape, **extra, "BF": block}, warps, ("n_chunks", "N")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*")
    parser.add_argument("--d", default="64", help="d_head values, comma-separated")
    args = parser.parse_args()
    print(f"Triton {triton.__version__} ({triton.__file__}), sm_90")  # which one compiles
    paths = args.modules or sorted(str(p) for pattern in ("nlc_step_*.py", "nlc_outer_*.py")
                                   for p in (ROOT / "generated").glob(pattern))
    print(f"Triton {triton.__version__}, sm_90")
    failed = 0
    runs = [(Path(path).stem, d, kernels(load(path), d)) for path in paths
            for d in map(int, args.d.split(","))]
    if not args.modules:
        runs.append(("runtime", 64, affine_kernels()))
        runs.append(("runtime", 64, group_kernels()))
    for stem, d, found in runs:
        for name, kernel, consts, warps, scalars in found:
            try:
                usage = compiled(kernel, (), consts, num_warps=warps, num_stages=1,
                                 scalars=scalars)[1]
            except Exception as err:  # the compiler's own error, reported per kernel
                failed += 1
                lines = str(err).strip().splitlines() or [type(err).__name__]
                usage = f"FAILED: {type(err).__name__}: {lines[-1][:200]}"
            print(f"{stem} {name} d={d} warps={warps}: {usage}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
