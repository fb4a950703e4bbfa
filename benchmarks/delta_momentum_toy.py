"""Delta momentum against momentum (and delta gradient descent) on the two-minimum toy of
nlc/delta_toy.py, every optimizer compiled from its spec in examples/.

For each (lr, mu) of a small grid, the three optimizers start from the same 15 x 15 grid of
points and take 400 steps; the table gives the share of starts that end in the global basin
(both outputs on the deeper side of the well's barrier). DGD has no mu: its column repeats
per lr. The plot (docs/delta_momentum_toy.png) shows trajectories from four starts at the
demo's setting (nlc/delta_toy.py, SETTING). `python benchmarks/delta_momentum_toy.py`
regenerates the table of docs/results.md and the plot (about 30 s on one core).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from nlc import delta_toy

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [(0.002, 0.9), (0.005, 0.9), (0.01, 0.9), (0.005, 0.95), (0.01, 0.8)]


def run(name: str, starts, steps: int, lr: float, mu: float):
    return delta_toy.run(name, starts, steps, ROOT / "examples", **delta_toy.hypers(name, lr, mu))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=delta_toy.STEPS)
    parser.add_argument("--grid", type=int, default=15)
    parser.add_argument("--plot", default=str(ROOT / "docs" / "delta_momentum_toy.png"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    starts = delta_toy.grid(args.grid)
    names = list(delta_toy.SPECS)
    print(f"| lr | mu | {' | '.join(names)} |")
    print("|---|---|" + "---|" * len(names))
    for lr, mu in SETTINGS:
        shares = [run(n, starts, args.steps, lr, mu).in_global_basin().mean() for n in names]
        print(f"| {lr:g} | {mu:g} | {' | '.join(f'{s:.2f}' for s in shares)} |")
    lr, mu = delta_toy.SETTING
    runs = [run(n, starts, args.steps, lr, mu) for n in names]
    shown = delta_toy.shown_starts(args.grid)
    path = delta_toy.plot(runs, shown, Path(args.plot),
                          f"{args.steps} steps, lr {lr:g}, mu {mu:g}; o start, * end")
    print(f"\nplot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
