"""Variants of Gated DeltaNet and Titans on the demo's MQAR, on the CPU (docs/results.md:
"Gated DeltaNet stays at chance", "Titans stays at chance").

    python benchmarks/demo_variants.py [VARIANT ...] [--steps 800] [--out runs/demo_variants]

Each variant is an example spec with text replaced (VARIANTS: the example and the changes, in
the order applied), trained exactly like `nlc demo`'s models: MQAR of 64 tokens, 4 pairs,
vocabulary 128, d_model 64, 2 layers, heads of 16, 800 steps of 32 sequences, lr 3e-3. With no
VARIANT, all run one after another (minutes each on two cores). Prints one line per variant."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# examples/titans.nl before 2026-12-04 (no memory norm, no alpha bias, std 0.02 initial state):
# the titans_* variants below change that spec, as they did when they were run
TITANS_BEFORE = [
    ("  param b_alpha : [] = constant(-5)\n", ""),
    ("alpha = sigmoid(x @ w_alpha + b_alpha)", "alpha = sigmoid(x @ w_alpha)"),
    ("act = gelu, residual, norm) = learned(scheme = xavier)", "act = gelu, residual) = learned")]
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
THETA_HALF = [("theta = sigmoid(x @ w_theta)", "theta = 0.5 * sigmoid(x @ w_theta)")]
DELTA_STEP = [("    retention weight_decay(alpha)\n", "    retention none\n"),
              ("    algorithm momentum(lr = theta, momentum = eta)\n",
               "    algorithm gd(lr = theta)\n")]
MLP_CHUNK_8 = [("theta = 0.01 * sigmoid", "theta = 0.1 * sigmoid"),
               ("gradients at chunk(64)", "gradients at chunk(8)")]

GDN_GATE_BIAS = [("  param W_g : [d_model, d_v]\n",
                  "  param W_g : [d_model, d_v]\n  param b_g : [d_v] = ones\n"),
                 ("silu(x @ W_g)", "silu(x @ W_g + b_g)")]
GDN_NO_GATE = [("output (rmsnorm(memory) * silu(x @ W_g)) @ W_o", "output rmsnorm(memory) @ W_o")]
GDN_SMALL_GATE = [("param W_g : [d_model, d_v]", "param W_g : [d_model, d_v] = normal(0.02)")]

VARIANTS = {
    "gdn_spec": ("gated_deltanet", []),
    "gdn_gate_bias": ("gated_deltanet", GDN_GATE_BIAS),
    "gdn_no_gate": ("gated_deltanet", GDN_NO_GATE),
    "gdn_gate_init_0.02": ("gated_deltanet", GDN_SMALL_GATE),
    "titans_spec": ("titans", []),
    "titans_earlier_spec": ("titans", TITANS_BEFORE),
    "titans_theta_0.1": ("titans", TITANS_BEFORE + THETA_01),
    "titans_theta_0.1_chunk_8": ("titans", TITANS_BEFORE + THETA_01 + CHUNK_8),
    "titans_alpha_bias": ("titans", TITANS_BEFORE + ALPHA_BIAS),
    "titans_alpha_gate_eta_bias": ("titans", TITANS_BEFORE + ALPHA_BIAS + GATE_BIAS + ETA_BIAS),
    "titans_linear_exact": ("titans", TITANS_BEFORE + LINEAR_EXACT),
    "titans_linear_exact_alpha_bias": ("titans", TITANS_BEFORE + LINEAR_EXACT + ALPHA_BIAS),
    "titans_linear_exact_alpha_gate_bias": (
        "titans", TITANS_BEFORE + LINEAR_EXACT + ALPHA_BIAS + GATE_BIAS),
    "titans_linear_exact_alpha_gate_eta_bias": (
        "titans", TITANS_BEFORE + LINEAR_EXACT + ALPHA_BIAS + GATE_BIAS + ETA_BIAS),
    "titans_linear_exact_all_biases_zero_init": (
        "titans", TITANS_BEFORE + LINEAR_EXACT + ALPHA_BIAS + GATE_BIAS + ETA_BIAS + ZERO_INIT),
    "titans_linear_exact_all_biases_theta_0.5": (
        "titans", TITANS_BEFORE + LINEAR_EXACT + ALPHA_BIAS + GATE_BIAS + ETA_BIAS + THETA_HALF),
    "titans_as_delta_rule": (  # one gd step of rate 2 theta <= 1, no momentum, no decay
        "titans", TITANS_BEFORE + LINEAR_EXACT + ALPHA_BIAS + GATE_BIAS + ETA_BIAS + ZERO_INIT + DELTA_STEP
        + THETA_HALF),
    "titans_alpha_gate_eta_bias_theta_0.1_chunk_8": (
        "titans", TITANS_BEFORE + ALPHA_BIAS + GATE_BIAS + ETA_BIAS + MLP_CHUNK_8),
}
DEMO_DIMS = {"heads": 2.0, "d_head": 16.0, "d_k": 16.0, "d_v": 16.0}  # nlc demo's head sizes


def variant_text(name: str) -> str:
    example, changes = VARIANTS[name]
    text = (ROOT / "examples" / f"{example}.nl").read_text()
    for old, new in changes:
        if old not in text:
            raise SystemExit(f"variant {name}: {old!r} is not in examples/{example}.nl")
        text = text.replace(old, new, 1)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", metavar="VARIANT",
                        help="any of: " + ", ".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--out", default="runs/demo_variants")
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    from nlc.runtime.trainer.config import TrainConfig
    from nlc.runtime.trainer.train import train

    from nlc import pipeline
    from nlc.factories import factories_for
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.variants or list(VARIANTS):
        spec = out / f"{name}.nl"
        spec.write_text(variant_text(name))
        steps = args.steps
        dims = {n for s in pipeline.run(str(spec), "check") for n, _ in s.dims}
        config = TrainConfig(spec=str(spec),
                             spec_overrides={k: v for k, v in DEMO_DIMS.items() if k in dims},
                             task="mqar", steps=steps, batch_size=32, seq_len=64, d_model=64,
                             n_layers=2, mqar_vocab_size=128, mqar_num_kv_pairs=4, lr=3e-3,
                             warmup=max(steps // 10, 1), eval_interval=max(steps // 4, 1),
                             checkpoint_interval=0, eval_examples=256, device="cpu",
                             log_interval=max(steps // 20, 1), out=str(out / name))
        start = time.perf_counter()
        summary = train(config, **factories_for(config), progress=False)
        accuracy = (summary.get("eval") or {}).get("accuracy", float("nan"))
        print(f"{name:<42} accuracy {accuracy:.3f}  train loss {summary['final_loss']:.3f}  "
              f"diverged at {summary['diverged_at']}  {time.perf_counter() - start:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
