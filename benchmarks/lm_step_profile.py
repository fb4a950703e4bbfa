"""Where one LM training step's time goes (GPU): the step of benchmarks/gpu_train.py's
throughput part (d_model 512, 4 layers, 8 heads of 64, batch 16 x 2048, bf16 autocast) for a
layer spec, with the kernel path each level took and torch.profiler's top CUDA and CPU rows.

    python benchmarks/lm_step_profile.py examples/deltanet.nl [--steps 4] [--dims d_k=64,d_v=64]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("spec")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--dims", default="d_k=64,d_v=64",
                   help="the spec's head dims, NAME=VALUE,... (Titans: d_head=64)")
    a = p.parse_args()
    from nlc.runtime.library import chunk_decay_triton, chunk_delta_triton, ops
    from nlc.runtime.trainer.config import TrainConfig
    from nlc.runtime.trainer.model import LanguageModel

    from nlc.factories import mixer_from_spec

    calls = {"chunked": 0}
    for kernels, name in ((chunk_delta_triton, "ChunkScalarDecay"),
                          (chunk_decay_triton, "ChunkChannelDecay")):
        fn = getattr(kernels, name)
        apply = fn.apply

        def counted(*args, apply=apply):
            calls["chunked"] += 1
            return apply(*args)
        fn.apply = counted
    cfg = TrainConfig(task="lm", d_model=512, n_layers=4, vocab_size=256)
    torch.manual_seed(0)
    model = LanguageModel(cfg, mixer_from_spec(
        a.spec, heads=8, **{n: int(v) for n, v in (d.split("=") for d in a.dims.split(","))})).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (16, 2048), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(a.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        print(f"step {i}: {time.perf_counter() - t0:.3f} s", flush=True)
    print("chunked kernel calls so far:", calls["chunked"], "recurrent modules loaded:",
          len(ops._KERNELS))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    table = prof.key_averages()
    print(table.table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=50))
    print(table.table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=50))


if __name__ == "__main__":
    main()
