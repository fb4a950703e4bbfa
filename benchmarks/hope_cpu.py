"""CPU timing of Hope (self-modifying Titans -> CMS) against Gated DeltaNet, forward + backward.

    python benchmarks/hope_cpu.py [--T 1024] [--B 2] [--repeat 3] [--threads N]

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


def once(layers, x) -> float:
    """Seconds of one forward + backward through `layers` applied in order."""
    start = time.perf_counter()
    y = x
    for layer in layers:
        y = layer(y)
    y.square().mean().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=1024)
    parser.add_argument("--B", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (on a machine shared with other jobs, 1 keeps "
                             "OpenMP's spinning threads from stalling each other)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
          f"{torch.__version__}, {torch.get_num_threads()} threads, nlc {__version__}, "
          f"{datetime.date.today()}; fp32, B = {args.B}, T = {args.T}, median of "
          f"{args.repeat}, the rows taking turns\n")
    times: dict = {name: [] for name, _ in rows}
    for turn in range(args.repeat + 1):  # the first turn warms up; turns spread a busy spell
        for name, layers in rows:
            seconds = once(layers, x)
            if turn:
                times[name].append(seconds)
    print("| layer | parameters | forward + backward (s) |")
    print("|---|---|---|")
    results = {name: statistics.median(t) for name, t in times.items()}
    for name, layers in rows:
        count = sum(p.numel() for layer in layers for p in layer.parameters())
        print(f"| {name} | {count:,} | {results[name]:.3f} |", flush=True)
    ratio = results[rows[0][0]] / results["Gated DeltaNet"]
    print(f"\nHope / Gated DeltaNet: {ratio:.1f}x")


if __name__ == "__main__":
    main()
