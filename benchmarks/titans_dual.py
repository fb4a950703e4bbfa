"""Titans' memory level: the dual chunk form against the per-token loop form, forward + backward.

    python benchmarks/titans_dual.py [--B 64] [--T 256] [--repeat 3] [--device cuda] [--triton]

The level op of examples/titans.nl (4 heads of 64, an MLP memory with hidden 256, gradients
at chunks of 64), fp32, random inputs shaped like a layer's: l2-normalized q and k, gates in
(0, 1). Rows: `nl.dual_chunked` (what the generated op runs) in its PyTorch form
(NLC_TRITON=0), with `--triton` the same with its scan and reads as Triton kernels
(runtime/library/dual_triton.py; on a CPU only under TRITON_INTERPRET=1, slowly),
`nl.frozen_chunked` on the same generated `memory_outer / memory_combine / memory_read` (the
form before: a loop over each chunk's tokens on per-token MLP weights, built from the outer
products) and, when cheap enough,
the token-by-token recurrence.
Each is checked before timing against the token-by-token recurrence in float64 (relative max
error of the output, on 2 sequences of the first `--check-tokens` tokens); the float32
recurrence is a row of that check too, the floor the others can reach. The check is short
because on these random inputs an error in float32 grows about tenfold every 256 tokens, in
every form alike (the forms agree to 3e-12 at T = 1024 in float64): past a few hundred tokens
the comparison measures the inputs' conditioning, not the forms.
"saved for backward" counts the distinct storages autograd keeps from the forward pass to the
backward pass, on any device; what a checkpointed region recomputes is not kept, and neither
is counted what the checkpoints themselves hold (the per-token loop checkpoints every chunk:
its column reads about 0).
Prints a markdown table with the machine, versions and date: docs/perf.md records it."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from nlc.runtime.library import ops as nl

from nlc import __version__
from nlc.emit import load_module

ROOT = Path(__file__).resolve().parents[1]


def inputs(B: int, T: int, device: str, dtype=torch.float32) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    q = torch.nn.functional.normalize(rand(B, T, 4, 64), dim=-1)
    k = torch.nn.functional.normalize(rand(B, T, 4, 64), dim=-1)
    return {"q": q, "k": k, "v": rand(B, T, 4, 64),
            "alpha": torch.sigmoid(rand(B, T, 4)) * 0.1,
            "eta": torch.sigmoid(rand(B, T, 4)) * 0.9,
            "theta": torch.sigmoid(rand(B, T, 4)) * 0.01}


@contextlib.contextmanager
def triton_flag(flag: str | None):
    """NLC_TRITON=flag while a row runs, its forward and its backward pass (the dispatch reads
    it at each call, also when a chunk recomputed in the backward pass runs again)."""
    before = os.environ.get("NLC_TRITON")
    if flag is not None:
        os.environ["NLC_TRITON"] = flag
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("NLC_TRITON", None)
        else:
            os.environ["NLC_TRITON"] = before


def forms(module, triton: bool):
    """name -> function(inputs, state) -> output of the level op."""
    anchors = (("M_W1_0", "M_W1"), ("M_W2_0", "M_W2"))

    def drive(inputs):  # each token's terms as matrices, from the generated outer products
        return {name: sum(col @ row for col, row in pairs)
                for name, pairs in module.memory_outer(inputs).items()}

    def loop(x, state):
        tokens = {n: nl.column(x[n]) if x[n].dim() == 4 else nl.scalar(x[n]) for n in x}
        o, _ = nl.frozen_chunked(drive, module.memory_combine,
                                 module.memory_read, tokens, state, anchors=anchors, chunk=64)
        return nl.output(o, "vector")

    def dual(x, s):
        return module.memory_op(**x, initial_state=s)[0]

    kernels = {"dual, Triton kernels (dual_triton.py)": dual} if triton else {}
    return {
        "dual (nl.dual_chunked)": dual,
        **kernels,
        "per-token loop (nl.frozen_chunked)": loop,
        "recurrent": lambda x, s: module.memory_op(**x, initial_state=s, mode="recurrent")[0],
    }


def flag_of(name: str) -> str | None:
    """The NLC_TRITON a row runs with: the kernels' row forces them, the others are off."""
    return "force" if "Triton" in name else None if name == "recurrent" else "0"


def timed(fn, x, state, repeat: int, device: str) -> float:
    times = []
    for _ in range(repeat + 1):  # the first run warms up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(x, state).square().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def kernel_check(chosen: dict, x: dict, state: dict, tokens: int) -> str:
    """The Triton row against the PyTorch dual form on the first two sequences' first `tokens`
    tokens: relative (Frobenius) errors of the output and of the gradients of every input and
    initial state."""
    def run(name):
        fn = chosen[name]
        leaves = {n: t[:2, :tokens].detach().clone().requires_grad_(True) for n, t in x.items()}
        start = {n: s[:2].detach().clone().requires_grad_(True) for n, s in state.items()}
        with triton_flag(flag_of(name)):
            o = fn(leaves, start)
            grads = torch.autograd.grad(o.square().mean(), [*leaves.values(), *start.values()],
                                        allow_unused=True)
        return o, grads

    def rel(a, b):
        a, b = a.detach().double(), b.detach().double()
        return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    (o, grads), (ref, ref_grads) = (run(name) for name in (
        "dual, Triton kernels (dual_triton.py)", "dual (nl.dual_chunked)"))
    names = [*x, *state]
    errors = {n: rel(g, r) for n, g, r in zip(names, grads, ref_grads) if r is not None}
    worst = max(errors, key=errors.get)
    return (f"Triton kernels vs the PyTorch dual form (B=2, T={tokens}): output "
            f"{rel(o, ref):.1e}, "
            f"worst gradient {errors[worst]:.1e} ({worst}; relative, Frobenius)")


def saved_mib(fn, x, state) -> float:
    """MiB of the distinct storages a forward pass keeps for its backward pass (the inputs
    included), on any device."""
    storages = {}

    def keep(t):
        storage = t.untyped_storage()
        storages[(storage.device, storage.data_ptr())] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        fn(x, state)
    return sum(storages.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--B", type=int, default=4)
    parser.add_argument("--T", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-recurrent", action="store_true")
    parser.add_argument("--check-tokens", type=int, default=256,
                        help="tokens of the correctness checks (see the docstring)")
    parser.add_argument("--triton", action="store_true",
                        help="add a row with the dual form's Triton kernels")
    args = parser.parse_args()
    module = load_module(str(ROOT / "examples" / "titans.nl"))
    layer = module.Titans().to(args.device)
    state = {n: s.detach().clone().requires_grad_(True)
             for n, s in layer.initial_state(args.B)["memory"].items()}
    x = {n: t.requires_grad_(True) for n, t in inputs(args.B, args.T, args.device).items()}
    chosen = forms(module, args.triton)
    tokens = min(args.T, args.check_tokens)
    with torch.no_grad():
        small = {n: t[:2, :tokens] for n, t in x.items()}
        small_state = {n: s[:2] for n, s in state.items()}
        reference = chosen["recurrent"]({n: t.double() for n, t in small.items()},
                                        {n: s.double() for n, s in small_state.items()})
        errors = {}
        for name, fn in chosen.items():
            with triton_flag(flag_of(name)):
                errors[name] = float((fn(small, small_state).double() - reference).abs().max()
                                     / reference.abs().max())
    rows = []
    for name, fn in chosen.items():
        if name == "recurrent" and args.skip_recurrent:
            continue
        if args.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            with triton_flag(flag_of(name)):
                seconds = timed(fn, x, state, args.repeat, args.device)
        except torch.OutOfMemoryError:
            seconds = float("nan")
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
        if args.device == "cuda":
            torch.cuda.empty_cache()
        with triton_flag(flag_of(name)):
            rows.append((name, seconds, errors[name], peak, saved_mib(fn, x, state)))
    device = torch.cuda.get_device_name() if args.device == "cuda" else \
        f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"{device}, torch {torch.__version__}, Python {platform.python_version()}, "
          f"nlc {__version__}, {datetime.date.today()}. Titans' memory op, fp32, B={args.B}, "
          f"T={args.T}, 4 heads of 64, MLP hidden 256, chunk 64; forward + backward, median of "
          f"{args.repeat} after one warm-up; error: relative max vs the float64 recurrence at B=2, "
          f"T={tokens}.\n")
    if args.triton:
        print(kernel_check(chosen, x, state, tokens) + "\n")
    base = rows[0][1]
    print("| form | forward + backward (ms) | vs dual | rel. error | peak GPU memory (GiB) "
          "| saved for backward (MiB) |")
    print("|---|---|---|---|---|---|")
    for name, seconds, err, peak, saved in rows:
        memory = "-" if peak is None else f"{peak:.1f}"
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds / base:.1f}x | {err:.1e} | {memory} "
              f"| {saved:.1f} |")


if __name__ == "__main__":
    main()
