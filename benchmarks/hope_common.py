"""What benchmarks/hope_group_kernel.py and benchmarks/hope_walk_kernel.py share: the
generated Hope module, the relative error they report, and forward + backward of one function
timed on a GPU, replayed as a CUDA graph (run from the repository root as
`python benchmarks/NAME.py`, which puts this folder on the import path)."""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def parse(description: str, skip_torch: bool = False):
    """The shape and run options both scripts take (`--skip-torch`: the group script's)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--B", type=int, default=16)
    p.add_argument("--H", type=int, default=8)
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--compile-chunks", action="store_true")
    if skip_torch:
        p.add_argument("--skip-torch", action="store_true", help="time the kernels only")
    p.add_argument("--out", default=None, help="append the table to this file")
    return p.parse_args()


def hope_module():
    spec = importlib.util.spec_from_file_location("hope_generated", ROOT / "generated/hope.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # compiled chunks: Dynamo imports the module by name
    spec.loader.exec_module(module)
    return module


def rel(a, b) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def gradients(fn, leaves, weights):
    leaves = [x.detach().clone().requires_grad_() for x in leaves]
    outs = fn(*leaves)
    loss = sum((o.double() * w).sum() for o, w in zip(outs, weights))
    return outs, torch.autograd.grad(loss, leaves)


def check(label, got, ref):
    """Print and return a table row: max |error| / max |reference| of each output and
    gradient of `got` against `ref` (each a pair of lists, from `gradients`), then the worst."""
    errs = [rel(a, b) for a, b in zip(got[0], ref[0])] + \
        [rel(a, b) for a, b in zip(got[1], ref[1])]
    line = f"| {label} | " + " | ".join(f"{e:.1e}" for e in errs) + f" | {max(errs):.1e} |"
    print(line)
    return line


def timed_step(fn, leaves, weights, repeat):
    """Median ms of forward + backward, replayed as a CUDA graph (eager if capture fails),
    and the peak GiB of one eager step."""
    leaves = [x.detach().clone().requires_grad_() for x in leaves]

    def step():
        outs = fn(*leaves)
        loss = sum((o.float() * w).sum() for o, w in zip(outs, weights))
        return torch.autograd.grad(loss, leaves)

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
    how = "CUDA graph"
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        run = graph.replay
    except Exception as error:  # noqa: BLE001 - reported, then timed eagerly
        how = f"eager (capture failed: {type(error).__name__})"
        run = step
    times = []
    for _ in range(repeat + 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times[1:]), peak, how
