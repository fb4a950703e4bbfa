"""The dual form's read kernels (runtime/library/dual_triton.py) at Titans' LM shapes, over
their tiles and warps: forward + backward of one chunk's two reads, timed on a GPU.

    python benchmarks/dual_read_sweep.py [--B 16] [--H 8] [--d 64] [--chunk 64]

Titans' memory (examples/titans.nl at d_head d) reads two states per chunk: W1 `[4d, d]`
with x the query (R = 4d, K = d) and W2 `[d, 4d]` with x the first read's gelu (R = d,
K = 4d); each with M = 2 start states of its shape (the weights and their momentum) and one
(column, row) pair. For each setting of (BR, BK, warps) the two reads' forward and backward
are timed (CUDA events, median of 50 after warm-up, float32 inputs, TF32 products as
`nlc train --tf32`), each checked against the default setting's results. Prints a table,
fastest first."""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch
from nlc.runtime.library import dual_triton as kernels
from triton.runtime.errors import OutOfResources


def packed_inputs(B, T, H, R, K, M=2, P=1, device="cuda"):
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device)

    causal = torch.ones(T, T, device=device).tril()[None, :, None, None, :]  # j <= t
    return [rand(B, T, H, K), rand(B, H, M, R, K) / K ** 0.5, rand(B, T, H, M),
            rand(B, T, H, P, T) * causal / T, rand(B, T, H, P, R), rand(B, T, H, P, K) / K ** 0.5]


def run_both(reads):
    outs = []
    for packed in reads:
        o = kernels.packed_forward(packed)
        outs.append(o)
        outs.extend(kernels.packed_backward(packed, torch.ones_like(o)))
    return outs


def timed(fn, repeat=50) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, default=16)
    p.add_argument("--H", type=int, default=8)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--chunk", type=int, default=64)
    a = p.parse_args()
    kernels.set_float32_precision("tf32")
    reads = [packed_inputs(a.B, a.chunk, a.H, 4 * a.d, a.d),
             packed_inputs(a.B, a.chunk, a.H, a.d, 4 * a.d)]
    default = (kernels.TILES["tf32"], kernels.WARPS)
    ref = run_both(reads)
    rows = []
    for br, bk, warps in itertools.product((32, 64, 128), (32, 64, 128), (4, 8)):
        kernels.TILES["tf32"], kernels.WARPS = (br, bk), warps
        try:
            outs = run_both(reads)
            err = max(((o - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
                      for o, r in zip(outs, ref))
            us = timed(lambda: run_both(reads))
            rows.append((us, br, bk, warps, err))
        except OutOfResources as e:  # a tile too large for the chip's shared memory
            print(f"BR {br} BK {bk} warps {warps}: {type(e).__name__}: {str(e)[:100]}")
    kernels.TILES["tf32"], kernels.WARPS = default
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"Triton {__import__('triton').__version__}; B {a.B}, H {a.H}, chunk {a.chunk}, "
          f"reads [4d, d] and [d, 4d] at d {a.d}; forward + backward of both, us; default "
          f"BR, BK {default[0]}, warps {default[1]}")
    print("| BR | BK | warps | us | max rel. diff vs default |")
    print("|---|---|---|---|---|")
    for us, br, bk, warps, err in sorted(rows):
        print(f"| {br} | {bk} | {warps} | {us:.1f} | {err:.1e} |")


if __name__ == "__main__":
    main()
