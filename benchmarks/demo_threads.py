"""`nlc demo`'s training on one thread against the default thread count.

    python benchmarks/demo_threads.py [--model deltanet] [--steps 150]

Trains one of the demo's models under `nlc demo --quick`'s budget twice, with
`torch.set_num_threads(1)` and with torch's default, and prints both times. The demo trains
on one thread because of this measurement: its models are too small to gain from intra-op
threads, and on a shared CPU the default's spinning threads cost several-fold."""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from nlc.demo import QUICK, _train_one

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deltanet")
    parser.add_argument("--steps", type=int, default=QUICK.steps)
    args = parser.parse_args()
    budget = dataclasses.replace(QUICK, steps=args.steps)
    spec = ROOT / "examples" / f"{args.model}.nl"
    default = torch.get_num_threads()
    for threads in (1, default):
        torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            _, accuracy, _, _ = _train_one(args.model, spec, Path(tmp) / "run", budget)
            print(f"{args.model}: {threads} thread(s): {time.perf_counter() - start:.1f} s "
                  f"(accuracy {accuracy:.3f})", flush=True)


if __name__ == "__main__":
    main()
