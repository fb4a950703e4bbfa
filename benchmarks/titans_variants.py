"""Titans variants on the demo's MQAR, on the CPU (docs/results.md, "Titans stays at chance").

    python benchmarks/titans_variants.py [VARIANT ...] [--steps 800] [--out runs/titans_variants]

Each variant is examples/titans.nl with text replaced (the changes are listed in VARIANTS, in
the order applied), trained exactly like `nlc demo`'s models: MQAR of 64 tokens, 4 pairs,
vocabulary 128, d_model 64, 2 layers, heads of 16, 800 steps of 32 sequences, lr 3e-3. With no
VARIANT, all run one after another (minutes each on two cores). Prints one line per variant."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

THETA_01 = [("theta = 0.01 * sigmoid", "theta = 0.1 * sigmoid")]
CHUNK_8 = [("gradients at chunk(64)", "gradients at chunk(8)")]
ALPHA_BIAS = [("  param w_theta, w_eta, w_alpha : [d_model]\n",
               "  param w_theta, w_eta, w_alpha : [d_model]\n  param b_alpha : [] = constant(-5)\n"),
              ("alpha = sigmoid(x @ w_alpha)", "alpha = sigmoid(x @ w_alpha + b_alpha)")]
GATE_BIAS = [("  param W_g : [d_model, d_head]\n",
              "  param W_g : [d_model, d_head]\n  param b_g : [d_head] = ones\n"),
             ("silu(x @ W_g)", "silu(x @ W_g + b_g)")]
ETA_BIAS = [("  param b_alpha : [] = constant(-5)\n",   # after ALPHA_BIAS
             "  param b_alpha : [] = constant(-5)\n  param b_eta : [] = constant(-3)\n"),
            ("eta = 0.9 * sigmoid(x @ w_eta)", "eta = 0.9 * sigmoid(x @ w_eta + b_eta)")]
LINEAR_EXACT = [("mlp(d_head -> 4 * d_head -> d_head, act = gelu, residual)",
                 "matrix[d_head, d_head]"),
                ("level memory every 1 token, gradients at chunk(64) {",
                 "level memory every 1 token {"),
                ("theta = 0.01 * sigmoid(x @ w_theta)", "theta = sigmoid(x @ w_theta)")]
ZERO_INIT = [("state M : matrix[d_head, d_head] = learned",
              "state M : matrix[d_head, d_head] = zeros")]

VARIANTS = {
    "spec": [],
    "theta_0.1": THETA_01,
    "theta_0.1_chunk_8": THETA_01 + CHUNK_8,
    "alpha_bias": ALPHA_BIAS,
    "alpha_gate_eta_bias": ALPHA_BIAS + GATE_BIAS + ETA_BIAS,
    "linear_exact": LINEAR_EXACT,
    "linear_exact_alpha_bias": LINEAR_EXACT + ALPHA_BIAS,
    "linear_exact_alpha_gate_bias": LINEAR_EXACT + ALPHA_BIAS + GATE_BIAS,
    "linear_exact_alpha_gate_eta_bias": LINEAR_EXACT + ALPHA_BIAS + GATE_BIAS + ETA_BIAS,
    "linear_exact_all_biases_zero_init": (LINEAR_EXACT + ALPHA_BIAS + GATE_BIAS + ETA_BIAS
                                          + ZERO_INIT),
}


def variant_text(name: str) -> str:
    text = (ROOT / "examples" / "titans.nl").read_text()
    for old, new in VARIANTS[name]:
        if old not in text:
            raise SystemExit(f"variant {name}: {old!r} is not in examples/titans.nl")
        text = text.replace(old, new, 1)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", metavar="VARIANT",
                        help="any of: " + ", ".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--out", default="runs/titans_variants")
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    from nlc.runtime.config import TrainConfig
    from nlc.runtime.train import train
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.variants or list(VARIANTS):
        spec = out / f"titans_{name}.nl"
        spec.write_text(variant_text(name))
        steps = args.steps
        config = TrainConfig(spec=str(spec), spec_overrides={"heads": 2.0, "d_head": 16.0},
                             task="mqar", steps=steps, batch_size=32, seq_len=64, d_model=64,
                             n_layers=2, mqar_vocab_size=128, mqar_num_kv_pairs=4, lr=3e-3,
                             warmup=max(steps // 10, 1), eval_interval=max(steps // 4, 1),
                             checkpoint_interval=0, eval_examples=256, device="cpu",
                             log_interval=max(steps // 20, 1), out=str(out / name))
        start = time.perf_counter()
        summary = train(config, progress=False)
        accuracy = (summary.get("eval") or {}).get("accuracy", float("nan"))
        print(f"{name:<36} accuracy {accuracy:.3f}  train loss {summary['final_loss']:.3f}  "
              f"diverged at {summary['diverged_at']}  {time.perf_counter() - start:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
