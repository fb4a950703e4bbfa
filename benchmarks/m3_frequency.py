"""Several momenta at different frequencies against the same momenta at different learning
rates (Nested Learning's M3 claim), on a small byte-level LM, CPU.

Every arm is one optimizer spec compiled with other constants, and trains the same model on
the same data for the same number of steps and schedule, at each learning rate of a small
grid; only the optimizer's slow momentum differs. Two specs (--spec):

  sums  examples/m3.nl, the paper's Algorithm 1 (momenta that add b g, no decay):
    frequencies     fast momentum every step (b1 = 0.9), slow every 8 steps (b3 = 0.1): M3
    learning rates  both every step, the slow one with b3 / 8
    one momentum    alpha = 0 (the slow momentum unused)
  ema   benchmarks/specs/m3_ema.nl, the same with moving averages (m = b m + (1 - b) g), so
        that a momentum's learning rate 1 - b sets how far back it remembers:
    frequencies     fast every step (1 - b1 = 0.1), slow every 8 steps with 1 - b3 = 0.0125
                    per step (0.1 per chunk, of the chunk's mean gradient; ~80 steps back)
    learning rates  both every step, the slow one with 1 - b3 = 0.0125 (~80 steps back)
    frequency only  slow every 8 steps with the fast one's 1 - b3 = 0.1 (0.8 per chunk)
    one momentum    alpha = 0

The model's matrices take the spec's optimizer; its vectors (norm gains) take AdamW with the
same learning rate (nlc.runtime.trainer.spec_optim). The metric is the held-out loss in bits
per byte at the end, mean and standard deviation over the seeds. `python
benchmarks/m3_frequency.py --spec sums` and `--spec ema` regenerate the tables of
docs/results.md (about 10 and 15 minutes on two busy cores); --steps, --seeds and --lrs scale
them up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SPECS = {"sums": ROOT / "examples" / "m3.nl", "ema": ROOT / "benchmarks" / "specs" / "m3_ema.nl"}
ARMS = {  # spec -> arm -> overrides of the spec's constants
    "sums": {"frequencies": {"f": 8, "b3": 0.1},
             "learning rates": {"f": 1, "b3": 0.1 / 8},
             "one momentum": {"f": 1, "alpha": 0.0}},
    "ema": {"frequencies": {"f": 8, "b3": 0.9875},
            "learning rates": {"f": 1, "b3": 0.9875},
            "frequency only": {"f": 8, "b3": 0.9},
            "one momentum": {"f": 1, "alpha": 0.0}},
}
LRS = {"sums": [1e-3, 2e-3, 3e-3], "ema": [7.5e-5, 1.5e-4, 3e-4]}


def config(spec: str, seed: int, steps: int, lr: float, out: Path):
    from nlc.runtime.trainer.config import TrainConfig
    return replace(TrainConfig(), task="lm", d_model=64, n_layers=2, seq_len=64,
                   batch_size=16, steps=steps, lr=lr, warmup=steps // 10, seed=seed,
                   eval_interval=0, eval_examples=64, log_interval=50, checkpoint_interval=0,
                   optimizer=str(SPECS[spec]), out=str(out), device="cpu")


def run_arm(spec: str, arm: str, seed: int, steps: int, lr: float, out: Path) -> float:
    from nlc.runtime.trainer.train import train

    from nlc.emit import load_optimizer
    from nlc.factories import factories_for
    cfg = config(spec, seed, steps, lr, out / f"{arm.replace(' ', '_')}-seed{seed}")
    given = factories_for(replace(cfg, optimizer="adamw"))  # the model's; the optimizer:
    given["optimizer_class"] = load_optimizer(str(SPECS[spec]), **ARMS[spec][arm])
    summary = train(cfg, **given, progress=False)
    return summary["eval"]["bits_per_byte"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--spec", choices=sorted(SPECS), default="sums")
    parser.add_argument("--lrs", type=float, nargs="+", help="default: per spec, LRS")
    parser.add_argument("--out", default="runs/m3_frequency")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lrs = args.lrs or LRS[args.spec]
    out = Path(args.out) / args.spec
    results = {arm: {str(lr): [run_arm(args.spec, arm, s, args.steps, lr, out / f"lr{lr:g}")
                               for s in args.seeds] for lr in lrs} for arm in ARMS[args.spec]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results, ARMS[args.spec], lrs))
    return 0


def table(results: dict, arms: dict, lrs: list[float]) -> str:
    """Mean +- standard deviation over the seeds per arm and learning rate; each arm's best
    learning rate in bold."""
    lines = [f"| arm | slow momentum | {' | '.join(f'lr {lr:g}' for lr in lrs)} |",
             "|---|---|" + "---|" * len(lrs)]
    for arm, by_lr in results.items():
        o = arms[arm]
        slow = ("unused (alpha = 0)" if o.get("alpha") == 0 else
                f"every {o['f']} step{'s' if o['f'] > 1 else ''}, b3 = {o['b3']:g}")
        means = {lr: statistics.mean(by_lr[str(lr)]) for lr in lrs}
        best = min(means, key=means.get)
        cells = []
        for lr in lrs:
            cell = f"{means[lr]:.3f} ± {statistics.stdev(by_lr[str(lr)]):.3f}"
            cells.append(f"**{cell}**" if lr == best else cell)
        lines.append(f"| {arm} | {slow} | {' | '.join(cells)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
