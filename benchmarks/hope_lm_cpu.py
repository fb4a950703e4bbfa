"""Hope trained to a number: a small byte-level LM on the CPU, Hope (examples/hope.nl: the
self-modifying Titans level followed by its continuum memory) next to Gated DeltaNet and
Titans as the mixer of the same model, same data, steps and schedule.

    python benchmarks/hope_lm_cpu.py [--steps 200] [--seeds 0] [--lr 3e-3] [--seq-len 256]

d_model 64, 2 blocks, 2 heads of 32 (each spec's `heads` and per-head dims overridden to
that), batch 8, fp32, one torch thread, the trainer's AdamW and schedule (warmup a tenth of
the steps). The metric is the held-out loss in bits per byte at the end; a run that diverges
counts as such. Prints a markdown table (docs/results.md records it) and the seconds per
step."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"Hope": ("hope.nl", {"heads": 2, "d_head": 32}),
          "Gated DeltaNet": ("gated_deltanet.nl", {"heads": 2, "d_k": 32, "d_v": 32}),
          "Titans": ("titans.nl", {"heads": 2, "d_head": 32})}


def run(name: str, seed: int, steps: int, lr: float, seq_len: int, out: Path):
    """(held-out bits per byte or "diverged at step N", seconds per step)."""
    from nlc.runtime.trainer.config import TrainConfig
    from nlc.runtime.trainer.train import train

    from nlc.factories import factories_for
    spec, dims = MODELS[name]
    cfg = replace(TrainConfig(), task="lm", spec=str(ROOT / "examples" / spec), d_model=64,
                  n_layers=2, seq_len=seq_len, batch_size=8, steps=steps, lr=lr,
                  warmup=steps // 10, seed=seed, eval_interval=0, eval_examples=32,
                  log_interval=50, checkpoint_interval=0, spec_overrides=dims,
                  out=str(out / f"{name.replace(' ', '_')}-seed{seed}"), device="cpu")
    start = time.perf_counter()
    summary = train(cfg, **factories_for(cfg), progress=False)
    per_step = (time.perf_counter() - start) / steps
    if summary.get("diverged_at"):
        result = f"diverged at step {summary['diverged_at']}"
    else:
        result = summary["eval"]["bits_per_byte"]
    shown = result if isinstance(result, str) else f"{result:.4f} bits per byte"
    print(f"{name:15s} seed {seed}: {shown}, {per_step:.2f} s per step", flush=True)
    return result, per_step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", default="runs/hope_lm_cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.models:
        results = [run(name, s, args.steps, args.lr, args.seq_len, Path(args.out))
                   for s in args.seeds]
        finite = [r for r, _ in results if not isinstance(r, str)]
        bpb = f"{statistics.mean(finite):.3f}" if finite else "-"
        if len(finite) < len(results):
            bpb += f" ({len(results) - len(finite)} of {len(results)} diverged)"
        seconds = statistics.mean(t for _, t in results)
        rows.append(f"| {name} | {bpb} | {seconds:.2f} |")
    print(f"\n{args.steps} steps, lr {args.lr:g}, seeds {args.seeds}\n")
    print("| mixer | held-out bits per byte | s per step |\n|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
