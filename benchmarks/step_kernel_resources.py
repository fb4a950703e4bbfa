"""Registers and spills of the printed step kernels (generated/nlc_step_*.py) on Hopper,
without a GPU: each kernel is compiled for sm_90 with Triton's own ptxas at the given d_head
values, with the warps the launcher picks (runtime/library/step_launch.py `num_warps`) or
the ones given, and cuobjdump reads the cubin's resource line. An H200 gives a thread at most
255 registers, and a program at most 65536 (so 64 a thread at 32 warps); STACK is the bytes a
thread spills to local memory.

Usage (no GPU needed; TRITON_INTERPRET must be unset):
    python benchmarks/step_kernel_resources.py [--d 8,16,32,64] [--warps 16,32] MODULE.py ...
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import subprocess
import tempfile
from pathlib import Path

import triton
from nlc.runtime.library.step_launch import num_warps
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                         "cuobjdump")


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


def resources(module, d: int, warps: int) -> str:
    """cuobjdump's resource line of the module's kernel compiled at d_head = d."""
    kernel = module.step_forward
    params = list(inspect.signature(kernel.fn).parameters)
    consts = {"EVERY": 16, **{f"D{i}": d for i in range(module.CONFIG.dims)}}
    signature = {p: "constexpr" if p in consts else "i32" if p in ("T", "H") else "*fp32"
                 for p in params}
    source = ASTSource(kernel, signature,
                       constexprs={(params.index(n),): v for n, v in consts.items()})
    binary = triton.compile(source, target=TARGET,
                            options={"num_warps": warps, "num_stages": 1})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(binary.asm["cubin"])
        f.flush()
        dump = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name],
                              capture_output=True, text=True, check=True).stdout
    usage = next(line.strip() for line in dump.splitlines() if "REG:" in line)
    return " ".join(usage.split()[:2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="+")
    parser.add_argument("--d", default="8,16,32,64")
    parser.add_argument("--warps", default="", help="warps to try (default: the launcher's)")
    args = parser.parse_args()
    for path in args.modules:
        module = load(path)
        for d in map(int, args.d.split(",")):
            n = entries(module.CONFIG, d)
            for warps in (map(int, args.warps.split(",")) if args.warps else [num_warps(n)]):
                print(f"{Path(path).stem} d={d} entries={n} warps={warps} "
                      f"{resources(module, d, warps)}", flush=True)


if __name__ == "__main__":
    main()
