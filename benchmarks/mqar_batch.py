"""Time of one MQAR training batch (runtime/trainer/mqar.py), on the CPU, at a vocabulary of
1024 and of 8192.

    python benchmarks/mqar_batch.py [--batch 64] [--seq-len 256] [--pairs 16] [--repeat 20]
                                    [--module FILE]

`--module` times the `mqar_batch` of another copy of mqar.py, e.g. an earlier version:
`git show fb26f6f:runtime/trainer/mqar.py > /tmp/mqar_before.py` (its multinomial draw).

The batch is drawn on the host before every training step, so its time adds to each step of
every run (docs/perf.md, the recall sweep of the second H200 batch of 2026-12-05)."""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import platform
import time

import torch
from nlc.runtime.trainer.mqar import mqar_batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--module", default=None, help="a mqar.py file to time instead")
    a = p.parse_args()
    batch = mqar_batch
    if a.module:
        spec = importlib.util.spec_from_file_location("mqar_timed", a.module)
        if spec is None:
            p.error(f"--module {a.module}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        batch = module.mqar_batch
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{datetime.date.today()}; batch {a.batch} x {a.seq_len}, {a.pairs} pairs, mean of "
          f"{a.repeat}; {a.module or 'runtime/trainer/mqar.py'}\n")
    print("| vocabulary | ms per batch |\n|---|---|")
    generator = torch.Generator().manual_seed(0)
    for vocab in (1024, 8192):
        batch(generator, a.batch, a.seq_len, vocab, a.pairs)  # warm-up
        start = time.perf_counter()
        for _ in range(a.repeat):
            batch(generator, a.batch, a.seq_len, vocab, a.pairs)
        print(f"| {vocab} | {(time.perf_counter() - start) / a.repeat * 1e3:.2f} |")


if __name__ == "__main__":
    main()
