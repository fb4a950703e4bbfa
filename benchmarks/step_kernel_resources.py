"""Registers and spills of the printed step kernels (generated/nlc_step_*.py) on Hopper,
without a GPU: each kernel is compiled for sm_90 with Triton's own ptxas at the given d_head
values, with the warps the launcher picks (runtime/library/step_launch.py `num_warps`, and
`backward_warps` for the backward) or the ones given, and cuobjdump reads the cubin's
resource line. An H200 gives a thread at most 255 registers, and a program at most 65536 (so
64 a thread at 32 warps); STACK is the bytes a thread spills to local memory.

`--kernel backward` compiles the module's printed backward kernel (`step_backward`) instead.

Usage (no GPU needed; TRITON_INTERPRET must be unset):
    python benchmarks/step_kernel_resources.py [--d 8,16,32,64] [--warps 16,32]
        [--kernel forward|backward] MODULE.py ...
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from kernel_resources import compiled  # compiled for sm_90, cuobjdump's resource line
from nlc.runtime.library.step_launch import backward_warps, num_warps


def load(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entries(config, d: int) -> int:
    """State entries of one program when every dim is d."""
    size = [coeff * (d if dim is not None else 1) for shape in config.states
            for coeff, dim in shape]
    return sum(size[i] * size[i + 1] for i in range(0, len(size), 2))


def resources(module, d: int, warps: int, kernel: str = "forward") -> str:
    """cuobjdump's resource line of the module's kernel compiled at d_head = d."""
    consts = {"EVERY": 16, **{f"D{i}": d for i in range(module.CONFIG.dims)}}
    return compiled(getattr(module, f"step_{kernel}"), (), consts, num_warps=warps,
                    num_stages=1, scalars=("H",))[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="+")
    parser.add_argument("--d", default="8,16,32,64")
    parser.add_argument("--warps", default="", help="warps to try (default: the launcher's)")
    parser.add_argument("--kernel", choices=("forward", "backward"), default="forward")
    args = parser.parse_args()
    for path in args.modules:
        module = load(path)
        if getattr(module, f"step_{args.kernel}") is None:
            print(f"{Path(path).stem}: no printed {args.kernel} kernel", flush=True)
            continue
        for d in map(int, args.d.split(",")):
            n = entries(module.CONFIG, d)
            picked = (num_warps if args.kernel == "forward" else backward_warps)(n)
            for warps in (map(int, args.warps.split(",")) if args.warps else [picked]):
                print(f"{Path(path).stem} {args.kernel} d={d} entries={n} warps={warps} "
                      f"{resources(module, d, warps, args.kernel)}", flush=True)


if __name__ == "__main__":
    main()
