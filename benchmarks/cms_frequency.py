"""Continuum memory: update frequencies against learning rates (Nested Learning's CMS claim),
on a small byte-level LM, CPU.

Each block of the model is a DeltaNet mixer (examples/deltanet.nl) followed by a two-level
CMS in the MLP's place. Two arms, the same parameters, data, steps and schedule
(benchmarks/specs/):

  frequencies  cms_frequencies.nl: levels updated every 16 and every 64 tokens, each update
               the sum of its chunk's gradient steps at rate eta (taken at the chunk start)
  rates        cms_rates.nl: the same levels updated every token, at eta / 16 and eta / 64,
               gradients also taken at the start of chunks of 16 and 64 tokens

and a reference without a CMS (the trainer's MLP, `--mlp` default), at each inner rate eta
(--etas; each spec is written out with that `hyper eta`). The metric is the held-out loss in
bits per byte at the end, mean and standard deviation over the seeds; a run that diverges
counts as such (the trainer stops it and names the levels). `python benchmarks/cms_frequency.py` regenerates the table in
docs/results.md; --steps, --seeds, --lrs and --seq-len scale it up.
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
SPECS = ROOT / "benchmarks" / "specs"
ARMS = {"frequencies": str(SPECS / "cms_frequencies.nl"), "rates": str(SPECS / "cms_rates.nl"),
        "no CMS (MLP)": "builtin:mlp"}


def spec_with_eta(arm: str, eta: float, out: Path) -> str:
    """The arm's spec with `hyper eta` set to `eta`, written under `out`."""
    if ARMS[arm].startswith("builtin:"):
        return ARMS[arm]
    text = Path(ARMS[arm]).read_text()
    if "  hyper eta = 0.001\n" not in text:
        raise SystemExit(f"{ARMS[arm]}: expected 'hyper eta = 0.001'")
    path = out / f"{Path(ARMS[arm]).stem}-eta{eta:g}.nl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("  hyper eta = 0.001\n", f"  hyper eta = {eta!r}\n"))
    return str(path)


def config(arm: str, eta: float, seed: int, steps: int, lr: float, seq_len: int, out: Path):
    from nlc.runtime.trainer.config import TrainConfig
    return replace(TrainConfig(), task="lm", spec=str(ROOT / "examples" / "deltanet.nl"),
                   mlp=spec_with_eta(arm, eta, out), d_model=64, n_layers=2, seq_len=seq_len, batch_size=8,
                   steps=steps, lr=lr, warmup=steps // 10, seed=seed, eval_interval=0,
                   eval_examples=32, log_interval=50, checkpoint_interval=0,
                   spec_overrides={"heads": 2}, out=str(out), device="cpu")


def run_arm(arm: str, eta: float, seed: int, steps: int, lr: float, seq_len: int,
            out: Path) -> float | str:
    """Held-out bits per byte, or "diverged at step N"."""
    from nlc.runtime.trainer.train import train

    from nlc.factories import factories_for
    cfg = config(arm, eta, seed, steps, lr, seq_len,
                 out / f"{arm.split()[0]}-eta{eta:g}-lr{lr:g}-seed{seed}")
    summary = train(cfg, **factories_for(cfg), progress=False)
    if summary.get("diverged_at"):
        result = f"diverged at step {summary['diverged_at']}"
    else:
        result = summary["eval"]["bits_per_byte"]
    shown = result if isinstance(result, str) else f"{result:.4f} bits per byte"
    print(f"{arm:13s} eta {eta:g} lr {lr:g} seed {seed}: {shown}", flush=True)
    return result


def cell(values: list) -> str:
    """Mean +- standard deviation over the seeds; diverged runs are counted, not averaged."""
    finite = [v for v in values if not isinstance(v, str)]
    text = ""
    if finite:
        spread = statistics.stdev(finite) if len(finite) > 1 else 0.0
        text = f"{statistics.mean(finite):.3f} ± {spread:.3f}"
    if len(finite) < len(values):
        text += f"{'; ' if text else ''}{len(values) - len(finite)} of {len(values)} diverged"
    return text


def table(results: dict) -> str:
    """One row per arm and inner rate, one column per outer learning rate."""
    lrs = sorted({lr for by_eta in results.values() for by_lr in by_eta.values() for lr in by_lr})
    lines = [f"| arm | eta | {' | '.join(f'lr {float(lr):g}' for lr in lrs)} |",
             "|---|---|" + "---|" * len(lrs)]
    for arm, by_eta in results.items():
        for eta, by_lr in by_eta.items():
            shown = "-" if ARMS[arm].startswith("builtin:") else eta
            lines.append(f"| {arm} | {shown} | {' | '.join(cell(by_lr[lr]) for lr in lrs)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--etas", type=float, nargs="+", default=[1e-3, 1e-4])
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-3])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--out", default="runs/cms_frequency")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    results = {}
    for arm in args.arms:
        etas = args.etas[:1] if ARMS[arm].startswith("builtin:") else args.etas
        results[arm] = {f"{eta:g}": {str(lr): [run_arm(arm, eta, s, args.steps, lr,
                                                         args.seq_len, out)
                                                 for s in args.seeds] for lr in args.lrs}
                        for eta in etas}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
