"""Why Titans diverged in byte-level LM runs with its earlier bounds (docs/results.md): the
inner optimization of its MLP memory, not a numerical error in the generated code.

Trains the byte-level LM of docs/results.md (d_model 128, 2 layers, 512-byte sequences) on
the CPU in float32 with batch 4 (lr 2e-3, 50 warm-up steps, the trainer's AdamW and
schedule), once with the spec as it was when it diverged (theta at most 0.1, eta at most 1,
no memory norm, no alpha bias, a std-0.02 initial state) and once with examples/titans.nl.
At the first non-finite loss (or at the last step), it goes back to the weights before that
step and runs the failing batch 64 tokens at a time, carrying the Titans level's state, and
prints each layer's largest memory weight at every chunk start: the anchors at which a
chunk's gradients are all taken.

    python benchmarks/titans_divergence.py [--steps 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 64


def earlier_bounds(text: str) -> str:
    """examples/titans.nl as it was before 2026-11-26: theta at most 0.1 and eta at most 1,
    and (before 2026-12-04) no memory norm, no alpha bias, a std-0.02 initial state."""
    sys.path.insert(0, str(Path(__file__).parent))
    from demo_variants import TITANS_BEFORE
    for old, new in TITANS_BEFORE:
        if old not in text:
            raise SystemExit(f"examples/titans.nl no longer says `{old}`: update this script")
        text = text.replace(old, new)
    for old, new in (("theta = 0.01 * sigmoid(x @ w_theta)", "theta = 0.1 * sigmoid(x @ w_theta)"),
                     ("eta = 0.9 * sigmoid(x @ w_eta)", "eta = sigmoid(x @ w_eta)")):
        if old not in text:
            raise SystemExit(f"examples/titans.nl no longer says `{old}`: update this script")
        text = text.replace(old, new)
    return text


def anchors(model, tokens: torch.Tensor) -> list[list[float]]:
    """Per block, the largest |weight| of the Titans memory at each chunk start, running the
    blocks 64 tokens at a time with each layer's state carried in its cache."""
    caches = [{} for _ in model.blocks]
    rows = [[] for _ in model.blocks]
    with torch.no_grad():
        for start in range(0, tokens.shape[1], CHUNK):
            x = model.embed(tokens[:, start:start + CHUNK])
            for i, block in enumerate(model.blocks):
                states = caches[i].get("states")
                if states is not None:
                    rows[i].append(max(s.abs().max().item() for _, s in _memory(states)))
                h = block.norm1(x) if block.norm1 is not None else x
                x = x + block.mixer(h, cache=caches[i])
                if block.mlp is not None:
                    x = x + block.mlp(block.norm2(x))
    return rows


def _memory(states):
    """The MLP memory's weights (not its momentum) among a level's states."""
    for level in states.values():
        for name, s in level.items():
            if torch.is_tensor(s) and not name.endswith("_mom") and not name.endswith("_0"):
                yield name, s


def run(spec: Path, steps: int, label: str):
    from nlc.runtime.trainer.config import TrainConfig
    from nlc.runtime.trainer.model import LanguageModel
    from nlc.runtime.trainer.optim import build_optimizer, lr_at
    from nlc.runtime.trainer.tasks import make_task

    from nlc.factories import mixer_from_spec
    cfg = TrainConfig(task="lm", d_model=128, n_layers=2, seq_len=512, batch_size=4, lr=2e-3,
                      warmup=50, steps=steps, device="cpu", bf16=False)
    task = make_task(cfg)
    cfg.vocab_size = task.vocab_size
    torch.manual_seed(0)
    model = LanguageModel(cfg, mixer_from_spec(str(spec)))
    opt = build_optimizer(model, cfg)  # the trainer's AdamW groups and schedule
    before = None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = task.train_batch(step)
        before = copy.deepcopy(model.state_dict())
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        if not math.isfinite(loss.item()):
            print(f"{label}: loss not finite at step {step}")
            break
        if step % 5 == 0 or step == steps - 1:
            print(f"{label}: step {step} loss {loss.item():.3f}", flush=True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    else:
        print(f"{label}: finite through step {steps - 1}")
    model.load_state_dict(before)
    for i, row in enumerate(anchors(model, x)):
        shown = ", ".join(f"{a:.3g}" for a in row)
        print(f"{label}: block {i}, largest memory weight at chunk starts 64..{x.shape[1] - 64}: "
              f"{shown}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    example = ROOT / "examples" / "titans.nl"
    with tempfile.TemporaryDirectory() as tmp:
        variant = Path(tmp) / "titans_earlier_bounds.nl"
        variant.write_text(earlier_bounds(example.read_text()))
        run(variant, a.steps, "earlier spec")
    run(example, a.steps, "examples/titans.nl")


if __name__ == "__main__":
    main()
