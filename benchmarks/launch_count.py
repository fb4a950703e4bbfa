"""How many ops (kernel launches, on a GPU) one LM training step of a layer spec issues, and
where they come from: forward + backward under torch.profiler, each op attributed to the
innermost nlc runtime or generated function that issued it (backward ops to the function whose
forward op made their autograd node), plus the ops that make the host wait for the device.

    python benchmarks/launch_count.py [examples/hope.nl] [--T 2048 --batch 1 --layers 1]
                                      [--dims d_head=64] [--device cpu|cuda] [--keep]
                                      [--threads 1] [--ops affine_chunk.low_rank]

The LM is benchmarks/lm_throughput.py's (d_model 512, 8 heads of 64, vocabulary 256) with
`--layers` blocks; `--ops FUNCTION` lists the aten ops of one row of the function table.

On the CPU the count is of aten ops that do work (views, allocations and other metadata ops
left out): a PROXY for GPU kernel launches, not a GPU measurement (a CUDA op may launch
more than one kernel, or one fused kernel where the CPU runs several ops). On a CUDA device
(`--device cuda`) the same table is printed, and the profiler's own counts of kernels,
memory copies and synchronizing runtime calls follow it, and the device time of its kernels
by kernel name. Chunks are recomputed in the backward pass (NLC_RECOMPUTE_CHUNKS=1, the CUDA
default) unless `--keep`. Triton kernels run on the CPU under TRITON_INTERPRET=1 (with
NLC_TRITON=force) count as launches, not as the aten ops the interpreter issues to copy
their arguments."""

from __future__ import annotations

import argparse
import collections
import datetime
import functools
import inspect
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIMS = {"hope": "d_head=64", "titans": "d_head=64", "gated_deltanet": "d_k=64,d_v=64",
                "deltanet": "d_k=64,d_v=64"}
LABEL = "nlc::"  # the profiler ranges this script adds around functions and modules
# the range around a Triton launch under TRITON_INTERPRET=1: the interpreter copies every
# tensor argument to the host and back with aten ops (triton/runtime/interpreter.py) that a
# compiled launch does not issue, so nothing below it is counted; each range is one launch
LAUNCH = LABEL + "(triton launch)"

# aten ops that launch no kernel: views, allocations, metadata
NO_KERNEL = {
    "aten::" + name for name in (
        "empty", "empty_strided", "empty_like", "view", "_unsafe_view", "reshape",
        "_reshape_alias", "as_strided", "expand", "expand_as", "transpose", "t", "permute",
        "squeeze", "unsqueeze", "select", "slice", "narrow", "split", "split_with_sizes",
        "unbind", "chunk", "movedim", "moveaxis", "alias", "detach", "detach_",
        "lift_fresh", "resolve_conj", "resolve_neg", "view_as", "unflatten", "flatten",
        "diagonal", "numpy_T", "mT", "matrix_H", "contiguous", "to", "is_same_size", "size",
        "stride", "result_type", "_has_compatible_shallow_copy_type", "set_", "resize_",
        "broadcast_tensors", "broadcast_to", "unsafe_split", "unsafe_chunk", "item",
        "is_nonzero")}
# ops whose result the host reads, so a CUDA stream must drain first
SYNC = {"aten::_local_scalar_dense", "aten::nonzero", "aten::nonzero_static",
        "aten::masked_select", "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim",
        "aten::repeat_interleave", "aten::equal", "aten::allclose", "aten::is_nonzero",
        "aten::item", "aten::_assert_async", "aten::bincount", "aten::histc"}
# ops that create a tensor from nothing: each is a fill kernel on a GPU (a cached constant
# would do); lift_fresh is `torch.tensor(data)` or a number written by indexing: a
# host-to-device copy or a fill on a GPU.
# (aten::scalar_tensor, a Python number wrapped for an op, stays on the host: not counted.)
CREATE = {"aten::arange", "aten::eye", "aten::full", "aten::zeros", "aten::ones",
          "aten::lift_fresh", "aten::linspace", "aten::tril_indices",
          "aten::triu_indices", "aten::randn", "aten::rand"}
# CUDA runtime calls that block the host
CUDA_SYNC = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
             "cudaMemcpy", "cuStreamSynchronize")


def _labelled(fn, name: str):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with record_function(LABEL + name):
            return fn(*args, **kwargs)
    run.__nlc_labelled__ = True
    return run


def label_functions(module, prefix: str) -> int:
    """Wrap every function defined in `module` in a profiler range named after it (calls made
    through the module's globals, as generated code and the runtime make them, go through
    the wrapper). Returns how many."""
    count = 0
    for name, fn in list(vars(module).items()):
        if (inspect.isfunction(fn) and fn.__module__ == module.__name__
                and not getattr(fn, "__nlc_labelled__", False)):
            setattr(module, name, _labelled(fn, f"{prefix}.{name}"))
            count += 1
    return count


def label_modules(model: torch.nn.Module) -> None:
    """A profiler range around every submodule's forward, named after its class."""
    stack = []

    def enter(module, args):
        rf = record_function(LABEL + type(module).__name__)
        rf.__enter__()
        stack.append(rf)

    def leave(module, args, output):
        stack.pop().__exit__(None, None, None)

    for module in model.modules():
        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)


def label_interpreted_launches() -> bool:
    """Under TRITON_INTERPRET=1, put every Triton launch in a LAUNCH range (see LAUNCH)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    from triton.runtime import interpreter
    run = interpreter.GridExecutor.__call__

    @functools.wraps(run)
    def launch(self, *args, **kwargs):
        with record_function(LAUNCH):
            return run(self, *args, **kwargs)
    interpreter.GridExecutor.__call__ = launch
    return True


def runtime_modules():
    """The runtime's library modules (every one generated code or the drivers call into)."""
    import importlib
    import pkgutil

    from nlc.runtime import library
    for info in pkgutil.iter_modules(library.__path__):
        yield importlib.import_module(f"nlc.runtime.library.{info.name}")


def build(args):
    from nlc.runtime.trainer.config import TrainConfig
    from nlc.runtime.trainer.model import LanguageModel

    from nlc.factories import mixer_from_spec
    dims = {n: int(v) for n, v in (d.split("=") for d in args.dims.split(",") if d)}
    factory = mixer_from_spec(args.spec, heads=args.heads, **dims)
    cfg = TrainConfig(task="lm", d_model=args.d_model, n_layers=args.layers, vocab_size=256)
    torch.manual_seed(0)
    return LanguageModel(cfg, factory).to(args.device)


def step(model, tokens, bf16: bool) -> None:
    """One forward + backward (no optimizer step: it is the same for every mixer)."""
    ctx = (torch.autocast(tokens.device.type, dtype=torch.bfloat16) if bf16
           else torch.autocast(tokens.device.type, enabled=False))
    with ctx:
        logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())
    loss.backward()
    model.zero_grad(set_to_none=True)


class Tally:
    """Ops per (form, function, phase) from the profiler's event tree."""

    def __init__(self, events):
        self.events = events
        self.children = collections.defaultdict(list)
        for e in events:
            if e.cpu_parent is not None:
                self.children[id(e.cpu_parent)].append(e)
        self.work: dict[int, bool] = {}
        self.launches: dict[int, bool] = {}

    def launch(self, e) -> bool:
        """Whether `e` stands for a kernel: an aten op that does work, with no such op below."""
        self._work(e)
        return self.launches[id(e)]

    def _work(self, e) -> bool:
        """Whether `e` or an op below it launches a kernel (memoized bottom-up)."""
        key = id(e)
        if key not in self.work:
            below = False
            for c in self.children.get(key, ()):
                below |= self._work(c)
            self.launches[key] = (e.name.startswith("aten::") and e.name not in NO_KERNEL
                                  and not below)
            self.work[key] = below or self.launches[key]
        return self.work[key]

    @staticmethod
    def scopes(e):
        """The labels around `e`, outermost first, and the autograd node it runs in (if any:
        then `e` is backward work, or recomputation when a label lies inside the node)."""
        labels, node, p = [], None, e.cpu_parent
        while p is not None:
            if p.name.startswith(LABEL):
                labels.append(p.name[len(LABEL):])
            elif p.name.startswith("autograd::engine::evaluate_function") and node is None:
                node = (p, len(labels))
            p = p.cpu_parent
        labels.reverse()
        if node is None:
            return labels, None, False
        evaluate, inner = node
        # labels found before the node (inside it) mean a recomputed forward
        return labels, evaluate, inner > 0

    def count(self):
        """(form labels, function labels, phase, op name) for every op that launches work.
        Backward ops take the labels of the forward op whose autograd node runs them; a
        recomputed forward keeps its own function labels and takes its form from the node
        whose saved tensors it rebuilds."""
        by_seq = {}
        rows = []
        for e in self.events:
            if e.name in ("aten::scalar_tensor", LAUNCH):  # host work (see LAUNCH)
                self._skip(e)
        for e in self.events:
            if not e.name.startswith("aten::"):
                continue
            labels, node, recomputed = self.scopes(e)
            if (node is None or recomputed) and e.sequence_nr >= 0:
                by_seq.setdefault((e.thread, e.sequence_nr), labels)
            if not self.launch(e):
                continue
            if node is None:
                rows.append((labels, labels, "forward", e.name))
            else:
                rows.append(((node.fwd_thread, node.sequence_nr), labels,
                             "recompute" if recomputed else "backward", e.name))
        counted = []
        for form, func, phase, name in rows:
            if phase != "forward":
                form = by_seq.get(form, [ACCUMULATE])
                func = func if phase == "recompute" else form
            counted.append((form, func, phase, name))
        return counted

    def _skip(self, e) -> None:
        """`e` and everything below it launch nothing on a GPU."""
        self.work[id(e)] = self.launches[id(e)] = False
        for c in self.children.get(id(e), ()):
            self._skip(c)


ACCUMULATE = "(autograd: gradient accumulation)"


def form_of(labels) -> str:
    """The outermost module and the outermost runtime/generated function inside it."""
    modules = [x for x in labels if "." not in x]
    funcs = [x for x in labels if "." in x]
    inner = modules[-1] if modules else "(no module)"
    if funcs:
        first = next(i for i, x in enumerate(labels) if "." in x)
        owner = [x for x in labels[:first] if "." not in x]
        inner = owner[-1] if owner else "(no module)"
        return f"{inner} / {funcs[0]}"
    return f"{inner} / (its own code)"


def function_of(labels) -> str:
    funcs = [x for x in labels if "." in x]
    return funcs[-1] if funcs else form_of(labels)


def table(title, counter, tokens, top, total):
    print(f"\n{title}\n")
    print("| where | forward | recompute | backward | total | per 1k tokens | share |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    keys = sorted(counter, key=lambda k: -sum(counter[k].values()))
    shown = keys[:top]
    for k in shown:
        c = counter[k]
        n = sum(c.values())
        print(f"| {k} | {c['forward']:,} | {c['recompute']:,} | {c['backward']:,} | {n:,} | "
              f"{n * 1000 / tokens:,.0f} | {100 * n / total:.1f}% |")
    rest = sum(sum(counter[k].values()) for k in keys[top:])
    if rest:
        print(f"| ({len(keys) - top} more) | | | | {rest:,} | {rest * 1000 / tokens:,.0f} | "
              f"{100 * rest / total:.1f}% |")


def cuda_counts(prof) -> None:
    """The profiler's own count of device work and blocking runtime calls (CUDA only)."""
    kernels = copies = 0
    runtime = collections.Counter()
    busy, calls = collections.Counter(), collections.Counter()  # device time (us) by kernel
    spans = collections.Counter()  # device time (us) under each nlc range, nested ranges overlap
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and _annotation(e):
            spans[e.name[:90]] += e.time_range.elapsed_us()
        elif e.device_type == torch.autograd.DeviceType.CUDA:
            busy[e.name[:90]] += e.time_range.elapsed_us()
            calls[e.name[:90]] += 1
            if "memcpy" in e.name.lower() or "memset" in e.name.lower():
                copies += 1
            else:
                kernels += 1
        elif e.name.startswith(("cuda", "cu")) and not e.name.startswith("cudnn"):
            runtime[e.name] += 1
    print(f"\nCUDA (measured by the profiler, not a proxy): {kernels:,} kernels, {copies:,} "
          f"memory copies/sets on the device")
    for name, n in runtime.most_common(12):
        blocking = " (blocks the host)" if name.startswith(CUDA_SYNC) else ""
        print(f"  {name}: {n:,}{blocking}")
    total = sum(busy.values())
    if not total:
        return
    print(f"\nDevice time of the step's kernels: {total / 1e3:,.1f} ms in all (kernels "
          "overlap nothing here: one stream), by kernel name:\n")
    print("| kernel | calls | ms | share |")
    print("|---|---:|---:|---:|")
    for name, us in busy.most_common(20):
        print(f"| `{name}` | {calls[name]:,} | {us / 1e3:,.2f} | {100 * us / total:.1f}% |")
    if spans:
        print("\nDevice time spanned by each nlc range (from its first kernel's start to its last "
              "one's end, summed over calls; ranges nest, so these overlap and include gaps):\n")
        print("| range | ms | of the kernels' total |")
        print("|---|---:|---:|")
        for name, us in spans.most_common(12):
            print(f"| `{name}` | {us / 1e3:,.2f} | {100 * us / total:.0f}% |")


def _annotation(event) -> bool:
    """Whether a device event is a record_function range drawn on the device's timeline (the
    profiler's gpu_user_annotation), not a kernel: those span kernels counted on their own."""
    return getattr(event, "is_user_annotation", False) or event.name.startswith(LABEL)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", nargs="?", default=str(ROOT / "examples" / "hope.nl"))
    p.add_argument("--dims", default=None, help="the spec's head dims, NAME=VALUE,... "
                   "(default for hope/titans d_head=64, for (gated_)deltanet d_k=64,d_v=64)")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (the GPU LM runs)")
    p.add_argument("--keep", action="store_true",
                   help="keep chunk activations (NLC_RECOMPUTE_CHUNKS=0) instead of recomputing")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first (default 1 on CUDA: compile and autotune; 0 on CPU)")
    p.add_argument("--top", type=int, default=25, help="rows of the per-function table")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (on a busy shared CPU, 1 keeps the timing sane)")
    p.add_argument("--ops", default=None, metavar="FUNCTION",
                   help="also list the aten ops one function of the second table issues")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device")
    if not Path(args.spec).is_file():
        p.error(f"{args.spec}: no such spec file")
    if args.dims is None:
        args.dims = DEFAULT_DIMS.get(Path(args.spec).stem, "")
    os.environ["NLC_RECOMPUTE_CHUNKS"] = "0" if args.keep else "1"
    if args.threads:
        torch.set_num_threads(args.threads)

    from nlc import __version__
    model = build(args)
    interpreted = label_interpreted_launches()
    for module in runtime_modules():
        label_functions(module, module.__name__.rsplit(".", 1)[-1])
    for m in {type(m).__module__ for m in model.modules()}:
        if m.startswith(("torch.", "nlc.runtime.trainer")):
            continue
        label_functions(sys.modules[m], Path(args.spec).stem)
    label_modules(model)
    tokens = torch.randint(0, 256, (args.batch, args.T), device=args.device)
    for _ in range(args.warmup if args.warmup is not None else int(args.device == "cuda")):
        step(model, tokens, args.bf16)

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    step(model, tokens, args.bf16)
    sync()
    plain = time.perf_counter() - start
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        step(model, tokens, args.bf16)
        sync()
    rows = Tally(prof.events()).count()

    n_tok = args.batch * args.T
    print(f"{Path(args.spec).name}: LM of {args.layers} layer(s), d_model {args.d_model}, "
          f"{args.heads} heads ({args.dims or 'spec dims'}), batch {args.batch} x {args.T}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, chunks "
          f"{'kept' if args.keep else 'recomputed in backward'}; forward + backward, "
          f"no optimizer step")
    print(f"{args.device}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; nlc {__version__}; "
          f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    if args.device == "cpu":
        print("NOTE: these are CPU aten op counts, a PROXY for GPU kernel launches, not a GPU "
              "measurement.")
    print(f"step time without the profiler: {plain:.2f} s ({n_tok / plain:,.0f} tokens/s on "
          f"{args.device})")

    total = len(rows)
    if interpreted:
        launches = sum(e.name == LAUNCH for e in prof.events())
        print(f"Triton launches (interpreted; their host copies not counted): {launches:,}")
    phases = collections.Counter(phase for _, _, phase, _ in rows)
    syncs = collections.Counter()
    creations = collections.Counter()
    by_form = collections.defaultdict(collections.Counter)
    by_func = collections.defaultdict(collections.Counter)
    for form, func, phase, name in rows:
        by_form[form_of(form)][phase] += 1
        by_func[function_of(func)][phase] += 1
        if name in SYNC:
            syncs[(name, function_of(func), phase)] += 1
    for e in prof.events():
        if e.name in CREATE:
            labels, node, recomputed = Tally.scopes(e)
            phase = "forward" if node is None else "recompute" if recomputed else "backward"
            creations[(e.name, function_of(labels) if labels else "(outside)", phase)] += 1
    print(f"\nops that launch work: {total:,} per step = {total * 1000 / n_tok:,.0f} per 1k "
          f"tokens = {total / args.layers:,.0f} per layer and step "
          f"(forward {phases['forward']:,}, recomputed in backward {phases['recompute']:,}, "
          f"backward {phases['backward']:,})")
    table("By form (module / outermost nlc function):", by_form, n_tok, 40, total)
    table(f"By innermost nlc function (top {args.top}):", by_func, n_tok, args.top, total)

    if args.ops:
        names = collections.defaultdict(collections.Counter)
        for form, func, phase, name in rows:
            if function_of(func) == args.ops:
                names[name][phase] += 1
        table(f"aten ops of {args.ops}:", names, n_tok, 40, total)
    print("\nHost-sync-prone ops (the host waits for the device on each, on a GPU):")
    if not syncs:
        print("  none")
    for (name, where, phase), n in syncs.most_common():
        print(f"  {name}: {n:,} in {where} {phase}")
    print("\nTensors created from nothing (a fill kernel each on a GPU; lift_fresh: a Python "
          "value made a tensor, a host-to-device copy or a fill on a GPU):")
    if not creations:
        print("  none")
    for (name, where, phase), n in creations.most_common(12):
        print(f"  {name}: {n:,} in {where} {phase}")
    if args.device == "cuda":
        cuda_counts(prof)


if __name__ == "__main__":
    main()
