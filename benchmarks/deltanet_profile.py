"""Where a DeltaNet LM step from examples/deltanet.nl spends its GPU time, beside the same
model on fla-core's chunk_delta_rule (benchmarks/fla_deltanet.py).

    python benchmarks/deltanet_profile.py [--rows 15]

The throughput setting of benchmarks/gpu_train.py (d_model 512, 4 layers, 8 heads of 64,
batch 16 x 2048, bf16 autocast, forward + backward + AdamW): after 3 warm-up steps,
torch.profiler over 3 steps; prints each model's CUDA kernels by total time."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from nlc.runtime.trainer.config import TrainConfig
from nlc.runtime.trainer.model import LanguageModel
from torch.profiler import ProfilerActivity, profile

from nlc.factories import mixer_from_spec

ROOT = Path(__file__).resolve().parents[1]


def step(model, opt, x):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x.flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from fla_deltanet import FlaDeltaNet
    cfg = TrainConfig(task="lm", d_model=512, n_layers=4, vocab_size=256)
    x = torch.randint(0, 256, (16, 2048), device="cuda")
    for label, factory in [("nlc, examples/deltanet.nl", mixer_from_spec(
            str(ROOT / "examples/deltanet.nl"), d_k=64, d_v=64, heads=8)),
            ("fla-core chunk_delta_rule", lambda d: FlaDeltaNet(d, heads=8, head_dim=64))]:
        torch.manual_seed(0)
        model = LanguageModel(cfg, factory).cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for _ in range(3):
            step(model, opt, x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step(model, opt, x)
            torch.cuda.synchronize()
        events = prof.key_averages()
        total = sum(getattr(e, "self_device_time_total", 0) for e in events) / 3e3
        print(f"\n## {label}: {total:.1f} ms of kernels per step\n")
        print(events.table(sort_by="self_device_time_total", row_limit=args.rows,
                           max_name_column_width=70))


if __name__ == "__main__":
    main()
