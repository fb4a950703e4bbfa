"""Launch shapes of the fused group kernels (runtime/library/mlp_group_triton.py), timed:
each (block of F, warps) of the forward and of the backward kernel at Hope's shape, by
triton.testing.do_bench (median ms, CUDA time), TF32 products. The constants
FORWARD_LAUNCH / BACKWARD_LAUNCH were first chosen from the compiler's register counts; this
timed them (docs/perf.md, twenty-first batch; the shapes there came from three calls, each a
part of the lists below, and OutOfResources rows are shapes the card cannot hold).

    python benchmarks/hope_group_launch.py [--B 16 --H 8 --T 2048 --d 64]"""

from __future__ import annotations

import argparse

import torch
import triton
from nlc.runtime.library import mlp_group_triton as group

FORWARD = [(16, 4), (16, 8), (32, 4), (32, 8), (64, 4), (64, 8), (64, 16), (128, 4),
           (128, 8), (128, 16)]
BACKWARD = [(16, 4), (16, 8), (32, 4), (32, 8), (32, 16), (64, 4), (64, 8), (64, 16),
            (128, 4), (128, 8)]


def leaves(B, H, T, d):
    N, F = B * H, 4 * d
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(N, T, d, device="cuda", generator=g) * 0.5
    W1 = torch.randn(N, 4, F, d, device="cuda", generator=g) * 0.5 / d ** 0.5
    W2 = torch.randn(N, 4, d, F, device="cuda", generator=g) * 0.5 / F ** 0.5
    bias = torch.tensor([-4.0, 5.0], device="cuda").repeat(N, 1)
    return [x.requires_grad_() for x in (h, W1, W2, bias)]


def run(xs, precision):
    return group.group_chunks(*xs, chunk=16, precision=precision)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("B", 16), ("H", 8), ("T", 2048), ("d", 64)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--precision", default="tf32")
    a = p.parse_args()
    xs = leaves(a.B, a.H, a.T, a.d)
    chosen = group.FORWARD_LAUNCH, group.BACKWARD_LAUNCH
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}, B {a.B} H {a.H} "
          f"T {a.T} d {a.d}, {a.precision}\n\n| kernel | BF | warps | ms |\n|---|---:|---:|---:|")
    for bf, warps in FORWARD:
        group.FORWARD_LAUNCH = (bf, warps)
        try:
            ms = triton.testing.do_bench(lambda: run(xs, a.precision), warmup=2, rep=20)
            print(f"| forward | {bf} | {warps} | {ms:.1f} |", flush=True)
        except Exception as error:  # noqa: BLE001 - a shape that does not compile is a row
            print(f"| forward | {bf} | {warps} | {type(error).__name__} |", flush=True)
    group.FORWARD_LAUNCH = chosen[0]
    outs = run(xs, a.precision)
    weights = [torch.randn_like(o) for o in outs]
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    for bf, warps in BACKWARD:
        group.BACKWARD_LAUNCH = (bf, warps)
        try:
            ms = triton.testing.do_bench(
                lambda: torch.autograd.grad(loss, xs, retain_graph=True), warmup=2, rep=20)
            print(f"| backward | {bf} | {warps} | {ms:.1f} |", flush=True)
        except Exception as error:  # noqa: BLE001
            print(f"| backward | {bf} | {warps} | {type(error).__name__} |", flush=True)
    group.BACKWARD_LAUNCH = chosen[1]


if __name__ == "__main__":
    main()
