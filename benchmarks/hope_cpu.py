"""CPU timing of Hope (self-modifying Titans -> CMS) against Gated DeltaNet, forward + backward.

    python benchmarks/hope_cpu.py [--T 1024] [--B 2] [--repeat 3]

Both layers at the specs' own dims (d_model 256, 4 heads of 64; Hope's CMS hidden 1024), fp32,
the generated modules in their default ("chunked") mode. Prints a markdown table with the
machine, versions and date: docs/perf.md records it."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from nlc import __version__
from nlc.emit import load_module

ROOT = Path(__file__).resolve().parents[1]


def timed(layers, x, repeat: int) -> float:
    """Median seconds of forward + backward through `layers` applied in order."""
    times = []
    for _ in range(repeat + 1):  # the first run warms up
        start = time.perf_counter()
        y = x
        for layer in layers:
            y = layer(y)
        y.square().mean().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=1024)
    parser.add_argument("--B", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    hope = load_module(str(ROOT / "examples" / "hope.nl"))
    gdn = load_module(str(ROOT / "examples" / "gated_deltanet.nl"))
    x = torch.randn(args.B, args.T, 256, requires_grad=True)
    rows = [
        ("Hope (self-modifying Titans -> CMS)", [hope.SelfModifyingTitans(), hope.ContinuumMemory()]),
        ("  self-modifying Titans alone", [hope.SelfModifyingTitans()]),
        ("  CMS alone", [hope.ContinuumMemory()]),
        ("Gated DeltaNet", [gdn.GatedDeltaNet()]),
    ]
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch "
          f"{torch.__version__}, nlc {__version__}, {datetime.date.today()}; fp32, "
          f"B = {args.B}, T = {args.T}, median of {args.repeat}\n")
    print("| layer | parameters | forward + backward (s) |")
    print("|---|---|---|")
    results = {}
    for name, layers in rows:
        seconds = timed(layers, x, args.repeat)
        results[name] = seconds
        count = sum(p.numel() for layer in layers for p in layer.parameters())
        print(f"| {name} | {count:,} | {seconds:.3f} |", flush=True)
    ratio = results[rows[0][0]] / results["Gated DeltaNet"]
    print(f"\nHope / Gated DeltaNet: {ratio:.1f}x")


if __name__ == "__main__":
    main()
