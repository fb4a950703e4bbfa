"""Operators per chunk of Titans' layer, forward + backward: a CPU proxy for GPU launches.

    python benchmarks/titans_ops.py [--B 1] [--T 256] [--d-model 256] [--forms torch,triton]

Runs the layer of examples/titans.nl (its memory level in `nl.dual_chunked`, chunks of 64)
forward and backward under torch.profiler on the CPU, with NLC_RECOMPUTE_CHUNKS=1 (each chunk
recomputed in the backward pass) and =0 (its activations kept), and counts the operators that
would each be a kernel launch on a GPU: leaf aten operators that do work (views, `empty` and
other metadata-only operators are left out) and Triton kernel launches. Two forms:
`torch`, the PyTorch forms of the coefficient scan and the reads (NLC_TRITON=0), and `triton`,
their Triton kernels (what CUDA tensors run; here NLC_TRITON=force under TRITON_INTERPRET=1,
each launch counted once).

Each operator is attributed to the piece of the level that ran it, by profiler ranges put
around the runtime's functions (this script wraps them; nothing is changed in the library):
the MLP at the anchors and its error signals (the generated `memory_outer`), the coefficients
(the combine on basis vectors and the scan), the reads (the dual products, and the rest of
the generated `memory_read`), the chunk-end states, and the driver's glue. Backward operators
go to the piece whose forward operator made their autograd node (profiler sequence numbers);
operators a recomputed chunk runs again in the backward pass are counted as `recompute`.
"per chunk" divides the level's operators by the number of chunks; the context and output of
the layer (projections, convolutions, norms) are reported per step.

These are CPU operator counts: a GPU runs one or more kernels for most of them (a fused
Triton kernel is one), and the count says nothing of the kernels' sizes.
Prints markdown tables with the machine, versions and date: docs/perf.md records them."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import os
import platform
from collections import Counter
from pathlib import Path

import torch
import triton
from torch.profiler import ProfilerActivity, profile, record_function

from nlc import __version__
from nlc.emit import load_module

ROOT = Path(__file__).resolve().parents[1]
TAG = "nlc::"

# aten operators that launch nothing on a GPU: views, metadata, allocation without a fill
NO_KERNEL = {
    "aten::view", "aten::_unsafe_view", "aten::unsqueeze", "aten::squeeze", "aten::expand",
    "aten::expand_as", "aten::permute", "aten::transpose", "aten::t", "aten::numpy_T",
    "aten::matrix_H", "aten::mT", "aten::mH", "aten::select", "aten::slice", "aten::narrow",
    "aten::split", "aten::split_with_sizes", "aten::unbind", "aten::as_strided",
    "aten::alias", "aten::detach", "aten::detach_", "aten::reshape", "aten::_reshape_alias",
    "aten::unflatten", "aten::flatten", "aten::diagonal", "aten::view_as", "aten::empty",
    "aten::empty_like", "aten::empty_strided", "aten::contiguous", "aten::to",
    "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg", "aten::chunk",
    "aten::movedim", "aten::broadcast_to", "aten::result_type", "aten::is_nonzero",
    "aten::_has_compatible_shallow_copy_type", "aten::set_", "aten::conj",
    "aten::_conj", "aten::_neg_view", "aten::squeeze_", "aten::unsqueeze_",
    "aten::resize_", "aten::as_strided_", "aten::transpose_", "aten::t_",
    "aten::broadcast_tensors", "aten::promote_types",
}
# operators that are one kernel on a GPU but call helpers on the CPU (a reduction's fill, a
# CPU bmm's copies of its operands): counted once, their helpers not
ONE_KERNEL = {"aten::sum", "aten::mean", "aten::bmm", "aten::mm", "aten::addmm",
              "aten::baddbmm", "aten::pow", "aten::zero_", "aten::constant_pad_nd",
              "aten::mkldnn_convolution"}
SYNCS = {"aten::item", "aten::_local_scalar_dense"}
CONSTANTS = {"aten::eye", "aten::zeros", "aten::ones", "aten::arange", "aten::full",
             "aten::zeros_like", "aten::ones_like", "aten::full_like", "aten::scalar_tensor",
             "aten::tensor", "aten::new_zeros", "aten::new_ones", "aten::new_full"}


META = "meta"  # a pass on meta tensors (what a combine reads): no kernels, not counted
LAUNCHED = ("_fwd", "_bwd", "_bwd_pairs", "_bwd_rows", "_bwd_keys")


def labelled(fn, label: str):
    """`fn` inside a profiler range named `label` (also when a recomputed chunk calls it)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with record_function(TAG + label):
            return fn(*args, **kwargs)
    run.__wrapped_by_titans_ops__ = True
    return run


class Launch:
    """A Triton kernel whose every launch is one profiler range (`kernel[grid](...)`)."""

    def __init__(self, kernel, name: str):
        self.kernel, self.name = kernel, name

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            with record_function("triton::" + self.name):
                return launch(*args, **kwargs)
        return run


# (module, attribute, label): the runtime's pieces, innermost label wins; names missing
# from a version of the runtime are skipped
PIECES = [
    ("dual", "dual_chunked", "driver"),
    ("dual", "_dual_chunk", "chunk glue"),
    ("dual", "_coefficients", "coefficient scan"),
    ("dual", "_scan", "coefficient scan"),
    ("dual", "_before", "coefficient scan"),
    ("dual", "_transitions", "transitions (combine on basis vectors)"),
    ("dual", "_combine_reads", META),
    ("dual", "_chunk_end", "chunk-end state"),
    ("dual", "_fused_chunk_end", "chunk-end state"),
]
GENERATED = [("memory_outer", "MLP at the anchors and error signals"),
             ("memory_combine", "combine"),
             ("memory_read", "read (MLP at q, norm)")]


@contextlib.contextmanager
def instrumented(module):
    """Profiler ranges around the pieces (module: the generated Titans module)."""
    from nlc.runtime.library import dual, dual_triton
    mods = {"dual": dual}
    undo = []

    def patch(owner, name, value):
        undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)
    for mod, name, label in PIECES:
        if hasattr(mods[mod], name):
            patch(mods[mod], name, labelled(getattr(mods[mod], name), label))
    patch(dual.DualState, "product", labelled(dual.DualState.product, "reads (dual products)"))
    for name, label in GENERATED:
        patch(module, name, labelled(getattr(module, name), label))
    for name in dir(dual_triton):
        value = getattr(dual_triton, name)
        # the launched kernels (jitted, or interpreted), not the helpers they call
        if isinstance(value, triton.runtime.jit.KernelInterface) and name.endswith(LAUNCHED):
            patch(dual_triton, name, Launch(value, name.lstrip("_")))
    # the chunk-start terms kernels (an nlc_outer_* module next to the generated one), and the
    # function the generated code gets from `nl.outer_terms` in place of `memory_outer`
    from nlc.runtime.library import ops

    def outer_terms(*args, **kwargs):
        return labelled(terms(*args, **kwargs), GENERATED[0][1])
    terms = ops.outer_terms
    patch(ops, "outer_terms", outer_terms)
    for path in Path(module.__file__).parent.glob("nlc_outer_*.py"):
        launcher = ops.kernels(module.__file__, path.stem).LAUNCHER
        patch(launcher, "forward", Launch(launcher.forward, "outer_forward"))
        patch(launcher, "backward", Launch(launcher.backward, "outer_backward"))
    try:
        yield
    finally:
        for owner, name, value in reversed(undo):
            setattr(owner, name, value)


def ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def classify(events) -> Counter:
    """(phase, piece, kind, name) -> operators that launch, from the profiler's events: an
    aten operator that is not a view or an allocation and calls no such operator itself
    (`matmul` counts as its `bmm`, `contiguous` as its `copy_`), or a Triton launch."""
    ops = [e for e in events if e.name.startswith(("aten::", "triton::"))]
    works = {}

    def working(e) -> bool:  # e or an operator below it launches
        if id(e) not in works:
            # every child is visited (no short cut): each one's own count is recorded
            below = [working(c) for c in e.cpu_children
                     if c.name.startswith(("aten::", "triton::"))]
            below = not _opaque(e) and any(below)
            works[id(e)] = below or e.name not in NO_KERNEL
            counted[id(e)] = not below and e.name not in NO_KERNEL
        return works[id(e)]
    counted = {}
    for e in ops:
        working(e)
    leaves = [e for e in ops if counted[id(e)]
              and not any(_opaque(a) or a.name == TAG + META for a in ancestors(e))]
    # forward operators (and autograd functions' applies): the nodes they made, by sequence
    label_of_node = {}
    for e in events:
        if not e.name.startswith(TAG) and e.sequence_nr >= 0:
            label, _ = _context(e)
            if label is not None:
                label_of_node.setdefault((e.thread, e.sequence_nr), label)
    counts = Counter()
    for e in leaves:
        label, engine = _context(e)
        if engine is None:
            phase = "forward"
        elif label is not None:
            phase = "recompute"
        else:
            phase = "backward"
            label = label_of_node.get((engine.fwd_thread, engine.sequence_nr))
        names = {e.name, *(a.name for a in _above(e))}
        kind = "sync" if names & SYNCS else "constant" if names & CONSTANTS else \
            "triton" if e.name.startswith("triton::") else "op"
        counts[phase, label or "outside the level", kind, e.name] += 1
    return counts


def _opaque(event) -> bool:
    """One launch, whatever it calls: a Triton kernel or a ONE_KERNEL operator."""
    return event.name.startswith("triton::") or event.name in ONE_KERNEL


def _above(event):
    """The ranges above `event` up to the innermost autograd engine range."""
    for a in ancestors(event):
        if a.name.startswith("autograd::engine::evaluate_function"):
            return
        yield a


def _context(event):
    """The innermost piece label above `event` that is not above an autograd engine range,
    and the innermost engine range (backward), if any."""
    label = None
    for a in ancestors(event):
        if a.name.startswith("autograd::engine::evaluate_function"):
            return label, a
        if label is None and a.name.startswith(TAG):
            label = a.name[len(TAG):]
    return label, None


def inputs(layer, B: int, T: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, T, layer.d_model, generator=g)


def measure(module, B: int, T: int, d_model: int, recompute: str, form: str) -> Counter:
    os.environ["NLC_RECOMPUTE_CHUNKS"] = recompute
    os.environ["NLC_TRITON"] = "force" if form == "triton" else "0"
    torch.manual_seed(0)
    layer = module.Titans(d_model=d_model, heads=d_model // 64, d_head=64)
    x = inputs(layer, B, T).requires_grad_(True)
    with instrumented(module):
        layer(x).square().mean().backward()  # warm-up (Triton's first launch, caches)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            layer(x).square().mean().backward()
    return classify(prof.events())


def table(counts: dict, chunks: int) -> str:
    """One row per piece: operators per chunk, forward / recompute / backward, per recompute
    flag and form."""
    pieces = sorted({p for c in counts.values() for (_, p, _, _) in c},
                    key=lambda p: (p == "outside the level", p))
    runs = list(counts)
    head = "| piece | " + " | ".join(f"{f}, recompute={r}: fwd / recomp. / bwd" for r, f in runs)
    lines = [head + " |", "|---" * (len(runs) + 1) + "|"]
    for piece in [*pieces, "total"]:
        cells = []
        for run in runs:
            c = counts[run]
            per = 1 if piece == "outside the level" else chunks
            n = [sum(v for (ph, p, _, _), v in c.items()
                     if ph == phase and (p == piece or piece == "total"
                                         and p != "outside the level"))
                 for phase in ("forward", "recompute", "backward")]
            cells.append(" / ".join(f"{x / per:.1f}".rstrip("0").rstrip(".") for x in n))
        name = piece + (" (per step)" if piece == "outside the level" else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(counts: dict, chunks: int) -> str:
    lines = [("| form, recompute | level ops per chunk | of which constants built / host syncs "
              "/ Triton launches | ops per step (layer) |"), "|---|---|---|---|"]
    for (r, f), c in counts.items():
        level = sum(v for (_, p, _, _), v in c.items() if p != "outside the level")
        kinds = [sum(v for (_, p, k, _), v in c.items() if k == kind and p != "outside the level")
                 for kind in ("constant", "sync", "triton")]
        lines.append(f"| {f}, {r} | {level / chunks:.1f} | "
                     + " / ".join(f"{k / chunks:.1f}" for k in kinds)
                     + f" | {sum(c.values())} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--B", type=int, default=2)
    parser.add_argument("--T", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--forms", default="torch,triton",
                        help="comma-separated: torch (PyTorch forms), triton (the kernels, "
                             "interpreted on the CPU)")
    parser.add_argument("--ops", action="store_true",
                        help="list the operators of each piece")
    args = parser.parse_args()
    forms = args.forms.split(",")
    if "triton" in forms and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("--forms triton needs TRITON_INTERPRET=1 on the CPU")
    torch.set_num_threads(1)
    module = load_module(str(ROOT / "examples" / "titans.nl"))
    chunks = -(-args.T // 64)
    counts = {}
    for form in forms:
        for recompute in ("1", "0"):
            print(f"profiling: form {form}, NLC_RECOMPUTE_CHUNKS={recompute}", flush=True)
            counts[recompute, form] = measure(module, args.B, args.T, args.d_model,
                                              recompute, form)
    print(f"\nCPU ({platform.machine()}, 1 thread), torch {torch.__version__}, Python "
          f"{platform.python_version()}, nlc {__version__}, {datetime.date.today()}. "
          f"Titans layer (examples/titans.nl) at d_model {args.d_model}, "
          f"{args.d_model // 64} heads of 64, B={args.B}, T={args.T} ({chunks} chunks of 64), "
          f"fp32, forward + backward. CPU operators that launch (views and allocations left "
          f"out), a proxy for GPU launches.\n")
    print(summary(counts, chunks) + "\n")
    print(table(counts, chunks))
    if args.ops:
        for (recompute, form), c in counts.items():
            print(f"\noperators per chunk, {form}, recompute={recompute}:")
            for piece in sorted({p for (_, p, _, _) in c}):
                for phase in ("forward", "recompute", "backward"):
                    names = Counter({n: v for (ph, p, _, n), v in c.items()
                                     if p == piece and ph == phase})
                    if names:
                        per = 1 if piece == "outside the level" else chunks
                        print(f"  {piece}, {phase}: " + ", ".join(
                            f"{n.removeprefix('aten::')} {v / per:g}"
                            for n, v in names.most_common()))


if __name__ == "__main__":
    main()
