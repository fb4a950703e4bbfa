"""Our Titans layer beside titans-pytorch's `NeuralMemory`, forward + backward (issue 17).

    python benchmarks/titans_pytorch.py [--B 4] [--T 2048] [--dim 512] [--heads 4]
        [--dim-heads 512,128] [--device cuda] [--repeat 5] [--threads N] [--out FILE]

One process times, for each head width, lucidrains' titans-pytorch `NeuralMemory(dim, heads,
chunk_size=64, dim_head)` with every other argument at its default, and the layer compiled
from examples/titans.nl at d_model = dim, the same heads and d_head = dim_head; on CUDA ours
twice, with whole chunks recomputed in the backward pass (the CUDA default) and kept
(`NLC_RECOMPUTE_CHUNKS`, runtime/library/scan.py), and with --fast a third time as the
LM's fastest setting runs it: chunks compiled (`--compile-chunks`, calling the dual kernels
as custom ops), TF32 (`--tf32`), and the forward and backward captured as CUDA graphs
(`--cuda-graphs`; TF32 also for titans-pytorch's row there, which --fast adds). fp32 unless
--amp (bf16 autocast). Each
row: tokens/s (B*T over the median of --repeat forward + backward passes after one warm-up),
peak memory (CUDA: torch.cuda.max_memory_allocated over the timed passes; "-" on the CPU) and
the bytes a forward pass leaves alive (its output and what autograd keeps for the backward
pass; on any device, `kept_bytes`). Ours is checked: output and gradients finite, and the
chunked form against the token-by-token recurrence (float64, B = 1, first 128 tokens).

titans-pytorch's defaults (neural_memory.py of titans-pytorch 0.5.5, read 2026-12-05):
`dim_head` defaults to `dim`, so "dim 512, 4 heads" is 4 heads of 512 (inner width 2048), not
of 128: --dim-heads defaults to dim; pass 128 for dim / heads. The memory is
`ResidualNorm(MemoryMLP(dim_head, depth=2, expansion_factor=4))`. Its weights are learned
per head; momentum on; batch_size None.

What differs (also printed with the table):
- Memory MLP, per head, both d -> 4d -> d with GELU, a residual and a LayerNorm. theirs:
  x + (1 + gamma) LN(gelu(x W1) W2), gamma a learned per-head vector that is part of the
  memory (updated by the inner loop too: three tensors), LN eps 1e-5; ours:
  x + LN(W2 gelu(W1 x)), no gamma (two tensors), eps 1e-6. Initial weights learned per
  head in both: theirs xavier-uniform, the same draw for every head; ours normal at the
  xavier scale, drawn per head.
- Where gradients are taken. theirs (batch_size None): every chunk's at the learned initial
  weights, so all chunks' gradients run at once and the memory's updates never feed back
  into its gradients within a call; ours: at each chunk's start state (Titans' mini-batch
  form, examples/titans.nl `gradients at chunk(64)`), chunk after chunk.
- Rates and the update. theirs: the learning rate per token (sigmoid, at most 1) weighting
  a loss that is a mean over the head's features; momentum and decay once per chunk, from
  the chunk's mean input; the weights materialized once per chunk (n_chunks copies of the
  MLP per batch row and head); token t reads the weights after the first floor((t + 1) / 64)
  chunks (a chunk's last token reads weights that include its own chunk, the others those
  from before it).
  ours: theta <= 0.01, eta <= 0.9 and alpha per token, a loss summed over features (no
  1/2); momentum and weight decay per token; token t reads its own state M_t, evaluated by
  the dual form (runtime/library/dual.py) without per-token weights.
- Around the memory. theirs: a learned RMSNorm on the input (one for storing, one for
  reading), linear q, k, v (no activation, no convolution, no q/k norm by default), rates
  from linear maps with biases, a sigmoid gate per head and token on the read, heads merged
  by a linear map (dim_head * heads -> dim). ours: per-head q, k, v projections, a causal
  convolution of width 4 and SiLU, q and k L2-normalized; rates from x by per-head linear
  maps (a bias on alpha only); the read RMS-normalized per head (no learned scale), gated
  by silu(x W_g) per feature, then W_o per head, summed over heads.

Wheels for a machine without internet (benchmarks/gpu_session26.sh installs them): the
gitignored folder .carry/whl_titans/ holds titans-pytorch 0.5.5 and its dependencies that
are not torch, triton or nvidia packages, nor torch's own (sympy, mpmath, networkx, jinja2,
filelock, fsspec, typing_extensions): accelerated-scan 0.3.1, assoc-scan 0.0.6,
axial-positional-embedding 0.3.12, cloudpickle 3.1.3, einops 0.8.2, einx 0.4.3,
frozendict 2.5.1, hyper-connections 0.4.11, loguru 0.7.3, ninja 1.13.2, numpy 2.4.6 (cp312),
packaging 26.4, pyvers 0.2.3, rotary-embedding-torch 0.9.1, tensordict 0.15.3 (needs
torch >= 2.11), torch-einops-utils 0.2.0, tqdm 4.70.1, x-transformers 2.31.10. Fetched with
`pip download --python-version 3.12 --platform manylinux_2_28_x86_64 --only-binary=:all:
--no-deps NAME==VERSION` each (ninja: --platform manylinux2014_x86_64). titans-pytorch is a
benchmark-only dependency, not in pyproject.toml: without it, ours is timed alone."""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from nlc import __version__
from nlc.emit import load_module

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 64  # examples/titans.nl: `gradients at chunk(64)`; titans-pytorch's chunk_size
DIFFERENCES = __doc__.split("What differs (also printed with the table):\n")[1].split("\n\n")[0]


@dataclass
class Row:
    name: str
    dim_head: int
    params: int | None = None  # those that receive a gradient
    seconds: float | None = None
    peak: float | None = None  # bytes, CUDA only
    kept: int | None = None  # bytes alive after a forward pass
    check: str = ""  # finite output and gradients; for ours, the error against the recurrence


def titans_pytorch_layer(dim: int, heads: int, dim_head: int):
    """titans-pytorch's NeuralMemory at its defaults but for the sizes, or None (and why)."""
    here = str(Path(__file__).resolve().parent)  # this file's name shadows the package
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(here)]
    try:
        from titans_pytorch import NeuralMemory
    except ImportError as err:
        return None, (f"titans_pytorch is not importable ({err}); timing ours alone. Install it "
                      "in a separate environment (`pip install titans-pytorch`) or from "
                      ".carry/whl_titans (benchmarks/gpu_session26.sh).")
    try:
        return NeuralMemory(dim=dim, chunk_size=CHUNK, heads=heads, dim_head=dim_head), None
    except (AssertionError, RuntimeError) as err:  # it asserts, e.g., dim_head == dim at 1 head
        return None, f"titans-pytorch refused dim {dim}, {heads} heads of {dim_head}: {err!r}"


def our_layer(dim: int, heads: int, dim_head: int) -> torch.nn.Module:
    dims = {"d_model": dim, "heads": heads, "d_head": dim_head}
    overrides = {name: float(value) for name, value in dims.items()}
    module = load_module(str(ROOT / "examples" / "titans.nl"), overrides)
    return module.Titans(**dims)


def kept_bytes(forward: Callable[[], torch.Tensor], device: str) -> int:
    """Bytes allocated during one forward pass and still alive at its end: the output and what
    autograd keeps for the backward pass. CUDA counts them with torch.cuda.memory_allocated,
    the CPU with torch.profiler's memory records (saved-tensor hooks would see them too, but
    torch.func, which titans-pytorch's gradients use, refuses those hooks)."""
    if device == "cuda":
        before = torch.cuda.memory_allocated()
        y = forward()  # held: its graph holds what the backward pass needs
        kept = torch.cuda.memory_allocated() - before
        del y
        return kept
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        y = forward()
    del y
    return sum(event.self_cpu_memory_usage for event in prof.events())


def timed(forward, params, repeat: int, device: str) -> tuple[float, bool]:
    """Median seconds of `repeat` forward + backward passes after one warm-up, and whether the
    last pass's output and gradients are finite."""
    times = []
    for _ in range(repeat + 1):
        for p in params:
            p.grad = None
        _sync(device)
        start = time.perf_counter()
        y = forward()
        y.square().mean().backward()
        _sync(device)
        times.append(time.perf_counter() - start)
    finite = bool(torch.isfinite(y).all()) and all(
        p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)
    return statistics.median(times[1:]), finite


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def recurrence_error(layer: torch.nn.Module, x: torch.Tensor) -> float:
    """Relative max error of the chunked form (what is timed) against the token-by-token
    recurrence, both in float64 on the first 128 tokens of one sequence."""
    exact = copy.deepcopy(layer).double()
    xs = x[:1, :128].detach().double()
    with torch.no_grad():
        chunked = exact(xs)
        exact.mode = "recurrent"
        recurrent = exact(xs)
    return float((chunked - recurrent).abs().max() / recurrent.abs().max())


def measure(row: Row, layer, x, args, amp) -> Row:
    params = [p for p in layer.parameters() if p.requires_grad]

    def forward():
        with amp():
            y = layer(x)
        return y[0] if isinstance(y, tuple) else y  # NeuralMemory returns (read, state)

    try:
        row.kept = kept_bytes(forward, args.device)
        if args.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        row.seconds, finite = timed(forward, [*params, x], args.repeat, args.device)
        row.check = ("finite" if finite else "NOT FINITE") + row.check
        if args.device == "cuda":
            row.peak = torch.cuda.max_memory_allocated()
        # titans-pytorch keeps an unused template of the memory's weights: count what learns
        row.params = sum(p.numel() for p in params if p.grad is not None)
    except torch.OutOfMemoryError:
        row.check = "out of memory" + row.check
    except RuntimeError as err:  # e.g. titans-pytorch on a torch it was not written for
        row.check = f"failed: {str(err).splitlines()[0][:100]}"
    for p in [*params, x]:
        p.grad = None
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return row


def run(args) -> tuple[list[Row], list[str]]:
    amp = ((lambda: torch.autocast("cuda" if args.device == "cuda" else "cpu", torch.bfloat16))
           if args.amp else contextlib.nullcontext)
    rows, notes = [], []
    for dim_head in args.dim_heads:
        torch.manual_seed(0)
        x = torch.randn(args.B, args.T, args.dim, device=args.device, requires_grad=True)
        theirs, why = titans_pytorch_layer(args.dim, args.heads, dim_head)
        if why is not None and why not in notes:
            notes.append(why)
        if theirs is not None:
            theirs = theirs.to(args.device)
            rows.append(measure(Row("titans-pytorch NeuralMemory", dim_head), theirs, x, args,
                                amp))
            del theirs
        ours = our_layer(args.dim, args.heads, dim_head).to(args.device)
        try:
            check = f"; {recurrence_error(ours, x):.0e} vs recurrence"
        except RuntimeError as err:  # still time it; the table says the check did not run
            check = f"; recurrence check failed: {str(err).splitlines()[0][:100]}"
        settings = ("1", "0") if args.device == "cuda" else ("0",)
        for flag in settings:
            os.environ["NLC_RECOMPUTE_CHUNKS"] = flag
            name = "ours, examples/titans.nl" + (
                f" (chunks {'recomputed' if flag == '1' else 'kept'})" if len(settings) > 1 else "")
            rows.append(measure(Row(name, dim_head, check=check), ours, x, args, amp))
        if args.fast and args.device == "cuda":
            rows.extend(fast_rows(args, dim_head, ours, x, amp, check))
        del ours
    return rows, notes


def fast_rows(args, dim_head, ours, x, amp, check) -> list[Row]:
    """--fast: titans-pytorch with TF32 matmuls, and ours with compiled chunks, TF32 and its
    forward and backward as CUDA graphs (what `nlc train --compile-chunks --tf32
    --cuda-graphs` runs), after the plain rows (TF32 stays on for the rest of the process)."""
    from nlc.runtime.library import scan
    from nlc.runtime.trainer.distributed import World
    from nlc.runtime.trainer.train import use_tf32
    use_tf32(World(device=torch.device("cuda")))  # as `--tf32`: cuBLAS and the dual reads
    rows = []
    theirs = titans_pytorch_layer(args.dim, args.heads, dim_head)[0]
    if theirs is not None:
        rows.append(measure(Row("titans-pytorch NeuralMemory, TF32", dim_head),
                            theirs.to(args.device), x, args, amp))
        del theirs
    os.environ["NLC_RECOMPUTE_CHUNKS"] = "1"
    scan.set_compile_chunks(True)
    name = "ours, compiled chunks, TF32, CUDA graphs"
    try:
        with amp():
            graphed = torch.cuda.make_graphed_callables(ours, (x,), allow_unused_input=True)
    except RuntimeError as err:
        rows.append(Row(name, dim_head, check=f"failed: {str(err).splitlines()[0][:100]}"))
    else:
        rows.append(measure(Row(name, dim_head, check=check), graphed, x, args, amp))
    finally:
        scan.set_compile_chunks(False)
    return rows


def table(rows: list[Row], args) -> str:
    base = {r.dim_head: r.seconds for r in rows if r.name.startswith("titans-pytorch")}
    lines = [("| layer | heads x d_head | parameters | forward + backward (ms) | tokens/s | "
              "speed-up over titans-pytorch | peak GiB | kept after forward (MiB) | check |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = "-" if r.seconds is None else f"{r.seconds * 1e3:.1f}"
        tps = "-" if r.seconds is None else f"{args.B * args.T / r.seconds:,.0f}"
        ref = base.get(r.dim_head)
        ratio = "-" if r.seconds is None or ref is None else f"{ref / r.seconds:.2f}x"
        peak = "-" if r.peak is None else f"{r.peak / 2**30:.2f}"
        kept = "-" if r.kept is None else f"{r.kept / 2**20:.1f}"
        params = "-" if r.params is None else f"{r.params / 1e6:.2f}M"
        lines.append(f"| {r.name} | {args.heads} x {r.dim_head} | {params} | {ms} "
                     f"| {tps} | {ratio} | {peak} | {kept} | {r.check} |")
    return "\n".join(lines)


def header(args) -> str:
    device = (torch.cuda.get_device_name() if args.device == "cuda"
              else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)")
    try:
        theirs = f"titans-pytorch {metadata.version('titans-pytorch')}"
    except metadata.PackageNotFoundError:
        theirs = "titans-pytorch not installed"
    return (f"{device}, torch {torch.__version__}, Python {platform.python_version()}, "
            f"nlc {__version__}, {theirs}, {datetime.date.today()}. dim {args.dim}, "
            f"{args.heads} heads, chunk {CHUNK}, B = {args.B}, T = {args.T}, "
            f"{'bf16 autocast' if args.amp else 'fp32'}; forward + backward of "
            f"mean(y^2), median of {args.repeat} after one warm-up.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--B", type=int, default=4)
    parser.add_argument("--T", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim-heads", default="",
                        help="comma-separated head widths; default dim (titans-pytorch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (fp32 otherwise)")
    parser.add_argument("--fast", action="store_true",
                        help="CUDA: also time both with TF32, ours with compiled chunks and "
                             "CUDA graphs too")
    parser.add_argument("--out", help="also write the markdown report to this file")
    args = parser.parse_args()
    try:
        args.dim_heads = [int(d) for d in args.dim_heads.split(",")] if args.dim_heads else [args.dim]
    except ValueError:
        parser.error(f"--dim-heads takes comma-separated integers, got {args.dim_heads!r}")
    if min(args.B, args.T, args.dim, args.heads, *args.dim_heads) < 1:
        parser.error("--B, --T, --dim, --heads and --dim-heads must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, notes = run(args)
    report = "\n\n".join([*notes, header(args), table(rows, args),
                          "What differs between the two layers:\n\n" + DIFFERENCES])
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
