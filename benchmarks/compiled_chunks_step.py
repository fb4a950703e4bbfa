"""One LM step's capture with compiled chunks, with the whole error when it fails (GPU):
benchmarks/lm_throughput.py's row `hope_graphed_compiled_chunks` (examples/hope.nl, d_model
512, 4 layers, 8 heads of 64, bf16 autocast, NLC_COMPILE_CHUNKS=1, chunks recomputed in the
backward pass as on CUDA by default) captured by `torch.cuda.make_graphed_callables` as the
trainer does, then timed over a few steps with AdamW.

    TORCH_LOGS=recompiles python benchmarks/compiled_chunks_step.py [--row ROW] [--batch 2]

The trainer keeps only an error's first line (`cuda_graphs: capturing the model's step
failed: ...`); this prints the traceback and the forward pass it failed in (the capture
warms up with three forward and backward passes first). With TORCH_LOGS=recompiles, stderr
lists every recompilation of a chunk body and its reason (docs/runtime.md, "Chunks
compiled")."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

import torch

os.environ["NLC_COMPILE_CHUNKS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    import lm_throughput
    from nlc.runtime.trainer.config import TrainConfig
    from nlc.runtime.trainer.model import LanguageModel
    from nlc.runtime.trainer.train import autocast_for
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--row", default="hope_graphed_compiled_chunks")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args()
    cfg = TrainConfig(task="lm", d_model=lm_throughput.D_MODEL, n_layers=lm_throughput.LAYERS,
                      vocab_size=256, cuda_graphs=True)
    torch.manual_seed(0)
    model = LanguageModel(cfg, lm_throughput.ROWS[a.row][1]()).cuda()
    x = torch.randint(0, 256, (a.batch, a.seq_len), device="cuda")
    autocast = autocast_for(cfg, torch.device("cuda"))
    calls, start = [0], time.perf_counter()

    def count(*_):  # on the embedding: the graphed module itself must have no hooks
        calls[0] += 1
        print(f"forward pass {calls[0]} at {time.perf_counter() - start:.1f} s", flush=True)
    model.embed.register_forward_pre_hook(count)
    try:
        with autocast():
            step = torch.cuda.make_graphed_callables(model, (x,), allow_unused_input=True)
    except RuntimeError:
        print(f"capture failed after {time.perf_counter() - start:.1f} s, in forward pass "
              f"{calls[0]}", flush=True)
        traceback.print_exc(file=sys.stdout)
        return 1
    print(f"captured in {time.perf_counter() - start:.1f} s", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times, loss = lm_throughput.timed_steps(step, opt, x, autocast, a.steps)
    warm = sorted(times[2:])
    print(f"step s {[round(t, 3) for t in times]}; {a.batch * a.seq_len / warm[len(warm) // 2]:.0f}"
          f" tokens/s (median after 2 warm-up steps); loss {loss:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
