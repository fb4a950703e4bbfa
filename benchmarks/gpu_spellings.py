"""The spellings that session 47 moved off the token loop, on a GPU (benchmarks/specs/):
DeltaNet with a [d_k] rate on an l2 step (chunked dplr), MetaLA's inline key 1 - a (chunked
decay per channel), DeltaNet read through an rmsnorm (chunked delta, the norm after it) and a
diagonal memory stepped on l2 (the entrywise scan with signed gates).

Per spec, float32 on CUDA in the default chunked mode (the chunked Triton kernels at T = 2048,
the fused recurrent kernels at T = 100) against float64 on the CPU in mode="recurrent" (the
token loop, the definition): the output, the input's gradient and every parameter's gradient,
max |error| / max |reference|; then the CUDA forward + backward time of the chunked mode next
to the same layer's token loop on CUDA (mode="recurrent"), median of 3.

    python benchmarks/gpu_spellings.py [--T 2048] [--B 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

SPECS = ["deltanet_channel_beta", "metala_key", "deltanet_read_rmsnorm", "diagonal_l2"]
HERE = Path(__file__).resolve().parent


def rel(a, b) -> float:
    return ((a.double().cpu() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def run(layer, x):
    x = x.clone().requires_grad_()
    y = layer(x)
    grads = torch.autograd.grad(y.square().mean(), [x, *layer.parameters()])
    return y, grads


def timed(layer, x, repeat=3) -> float:
    times = []
    for _ in range(repeat + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run(layer, x)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--time-only", default=None,
                   help="a spec of benchmarks/specs: only its CUDA chunked mode's time (to run "
                        "with another tree's nlc on PYTHONPATH: the time before a change)")
    a = p.parse_args()
    from nlc.emit import load_layer
    if a.time_only:
        cls = load_layer(str(HERE / "specs" / f"{a.time_only}.nl"))
        for T in (100, a.T):
            torch.manual_seed(0)
            layer = cls().cuda()
            x = torch.randn(a.B, T, layer.d_model, device="cuda") * 0.7
            print(f"| {a.time_only} | {T} | {timed(layer, x):.1f} ms |", flush=True)
        return
    rows = ["| spec | T | output | input grad | worst param grad | chunked ms | token loop ms | speed-up |",
            "|---|---|---|---|---|---|---|---|"]
    for name in SPECS:
        cls = load_layer(str(HERE / "specs" / f"{name}.nl"))
        for T in (100, a.T):
            torch.manual_seed(0)
            ref = cls(mode="recurrent").double()
            gpu = cls().cuda()
            gpu.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
            x = torch.randn(a.B, T, ref.d_model, dtype=torch.float64) * 0.7
            y64, g64 = run(ref, x)
            y32, g32 = run(gpu, x.float().cuda())
            errs = [rel(y32, y64.detach()), rel(g32[0], g64[0])]
            errs.append(max(rel(g, r) for g, r in zip(g32[1:], g64[1:])))
            ms = timed(gpu, x.float().cuda())
            loop = cls(mode="recurrent").cuda()
            loop.load_state_dict(gpu.state_dict())
            loop_ms = timed(loop, x.float().cuda(), repeat=1)
            rows.append(f"| {name} | {T} | {errs[0]:.1e} | {errs[1]:.1e} | {errs[2]:.1e} | "
                        f"{ms:.1f} | {loop_ms:.1f} | {loop_ms / ms:.1f}x |")
            print(rows[-1], flush=True)
    head = (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, B = {a.B}, "
            "float32 on CUDA against float64 token loop on the CPU")
    text = head + "\n\n" + "\n".join(rows) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
