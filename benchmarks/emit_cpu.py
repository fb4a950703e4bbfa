"""CPU timings of the generated PyTorch ops: chunked vs recurrent, forward + backward.

    python benchmarks/emit_cpu.py [--T 2048] [--out docs/perf-emit.md]

fp32, B=2, H=4, D=64 (the issue's shapes); each example compiled with its own dims except
the head count and width (-D). Also times `nlc compile` of every example. Prints a markdown
table; `--out` also writes it."""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from nlc import __version__
from nlc.emit import compile_spec, load_module

NOT_YET: dict[str, str] = {}
FAMILIES = [  # (family, example, dims)
    ("decay (scalar)", "mamba2", {"d_head": 64, "d_state": 64}),
    ("decay (channel)", "gla", {"d_k": 64, "d_v": 64}),
    ("delta", "gated_deltanet", {"d_k": 64, "d_v": 64}),
    ("delta", "deltanet", {"d_k": 64, "d_v": 64}),
    ("frozen-gradient (linear, chunk 16)", "ttt_linear", {"d_head": 64}),
    # Titans' MLP memory (d 64 -> 256) takes minutes per recurrent pass at T = 2048 here
]


def inputs(op, B, T, H, D, g):
    import inspect
    args = []
    for name, p in inspect.signature(op).parameters.items():
        if p.kind is not p.POSITIONAL_OR_KEYWORD:
            break
        if name in ("q", "k", "v"):
            x = torch.randn(B, T, H, D, generator=g)
            args.append(x / x.norm(dim=-1, keepdim=True) if name != "v" else x)
        elif name == "alpha" and "gla" in op.__module__:
            args.append(torch.rand(B, T, H, D, generator=g) * 0.1 + 0.9)
        else:
            args.append(torch.rand(B, T, H, generator=g) * 0.5 + 0.4)
    return [a.requires_grad_() for a in args]


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--T", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    B, H, D, T = 2, 4, 64, args.T
    torch.manual_seed(0)
    rows = []
    for family, name, dims in FAMILIES:
        module = load_module(f"examples/{name}.nl", {"heads": 4, **dims})
        op = module.memory_op
        g = torch.Generator().manual_seed(0)
        xs = inputs(op, B, T, H, D, g)
        result = {}
        for mode in ("recurrent", "chunked"):
            def run():
                o, _ = op(*xs, mode=mode)
                o.sum().backward()
            run()  # warm up
            result[mode] = timed(run, args.repeat)
        rows.append((family, name, result["recurrent"], result["chunked"],
                     result["recurrent"] / result["chunked"]))
        print(f"{name}: recurrent {result['recurrent']:.3f} s, chunked {result['chunked']:.3f} s",
              flush=True)
    compile_times = []
    for path in sorted(glob.glob("examples/*.nl")):
        if Path(path).stem in NOT_YET:
            compile_times.append((Path(path).stem, float("nan"), NOT_YET[Path(path).stem]))
            continue
        start = time.perf_counter()
        try:
            compile_spec(path)
            compile_times.append((Path(path).stem, time.perf_counter() - start, ""))
        except Exception as err:  # report, don't hide
            compile_times.append((Path(path).stem, time.perf_counter() - start,
                                  f"fails: {type(err).__name__}"))
    lines = [
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}, Python {platform.python_version()}, nlc {__version__}, "
        f"{datetime.date.today()}, load average {os.getloadavg()[0]:.1f} at the end. fp32, "
        f"B={B}, T={T}, H={H}, D={D}; forward + backward of the level op; median of "
        f"{args.repeat} after one warm-up.", "",
        "| family | example | recurrent (s) | chunked (s) | speed-up |", "|---|---|---|---|---|"]
    lines += [f"| {f} | {n} | {r:.3f} | {c:.3f} | {s:.1f}x |" for f, n, r, c, s in rows]
    lines += ["", "`nlc compile` per example (s, in-process, after imports):", "",
              "| example | compile (s) | |", "|---|---|---|"]
    lines += [f"| {n} | {t:.2f} | {note} |" for n, t, note in compile_times]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
