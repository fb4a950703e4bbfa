"""`nlc demo`: the README's main job, on the CPU.

Check every example, derive and classify each level, verify the examples that claim a
published model, compile every example, then train linear attention, DeltaNet, Gated
DeltaNet and softmax attention, each built from its spec, on a small MQAR under one budget;
print the accuracy table and write a plot; last, the delta-momentum toy (nlc/delta_toy.py:
momentum, delta momentum and DGD compiled from their specs on a loss with two minima, a few
seconds) with its plot. `--toy` runs the toy alone. `--quick` trains on a smaller MQAR for fewer steps
(CI runs the demo that way): about a minute on two cores, and softmax attention still solves
it. Each run shows its progress (step, loss, tokens/s, ETA) on stderr and writes a checkpoint
at each evaluation. Run again over the same --out, the demo reports the runs it finished before
(evaluated again, not retrained) and continues an interrupted run from its latest checkpoint;
an earlier run with other settings (another --steps, --quick or spec text), or one stopped
before its first checkpoint, is never replaced: the demo refuses, naming its folder, before
any work."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from nlc.errors import NlcError
from nlc.fileio import writable_folder

TRAINED = ("linear_attention", "deltanet", "gated_deltanet", "softmax_attention")
# small per-head sizes so that four models train in a few minutes on two cores
DEMO_DIMS = {"heads": 2, "d_k": 16, "d_v": 16}


@dataclass(frozen=True)
class Budget:
    """The MQAR task and training budget every model of the demo gets."""
    steps: int
    seq_len: int
    vocab_size: int
    batch_size: int
    lr: float
    num_kv_pairs: int = 4

    def describe(self) -> str:
        return (f"seq {self.seq_len}, {self.num_kv_pairs} key-value pairs, vocab "
                f"{self.vocab_size}; d_model 64, 2 layers, heads of {DEMO_DIMS['d_k']}; "
                f"{self.steps} steps of {self.batch_size} sequences, lr {self.lr:g}, CPU")


FULL = Budget(steps=800, seq_len=64, vocab_size=128, batch_size=32, lr=3e-3)
# Short sequences and a small vocabulary: softmax attention solves this in ~100 steps and
# linear attention passes 0.5 by 150, so the quick run shows learning, not just the plumbing.
QUICK = Budget(steps=150, seq_len=32, vocab_size=64, batch_size=16, lr=1e-2)


def find_examples(folder: str | None) -> list[Path]:
    candidates = [Path(folder)] if folder else [Path("examples"),
                                                Path(__file__).resolve().parents[1] / "examples"]
    for c in candidates:
        files = sorted(c.glob("*.nl"))
        if files:
            return files
    if folder:
        raise NlcError(f"--examples {folder}: no *.nl specs there")
    raise NlcError("no examples/*.nl found; run from the repository root or pass --examples DIR")


def run_demo(examples: str | None = None, quick: bool = False,
             out: str = "runs/demo", steps: int | None = None, toy_only: bool = False) -> int:
    from nlc import pipeline
    from nlc.syntax import parse
    from nlc.verify.report import verify_table
    from nlc.verify.verify import verify_module

    if steps is not None and steps < 1:  # refused before minutes of work, as is the --out
        raise NlcError(f"--steps must be at least 1, got {steps}")
    if toy_only and (steps is not None or quick):  # the toy trains no model: they would do nothing
        raise NlcError(f"--toy runs the delta-momentum toy alone, which takes no "
                       f"{'--steps' if steps is not None else '--quick'}",
                       hint="drop it, or drop --toy to train the example models")
    if Path(out).exists() and not Path(out).is_dir():
        raise NlcError(f"--out {out}: a file is there, not a folder",
                       hint="choose another --out")
    start = stage_start = time.perf_counter()
    files = find_examples(examples)
    writable_folder(Path(out), "the --out folder")  # under a file, read-only: refused now
    if toy_only:
        return 0 if delta_momentum_toy(files[0].parent, Path(out)) else 1
    budget = QUICK if quick else FULL
    budget = replace(budget, steps=steps or budget.steps)
    refuse_replacing_runs(files, Path(out), budget)
    print(f"nlc demo: {len(files)} example specs in {files[0].parent}\n")
    print("1. check + derive + classify")
    underived = []
    for i, path in enumerate(files, 1):  # an MLP memory derives for 10-30 s: say which
        print(f"   [{i}/{len(files)}] {path.stem}", file=sys.stderr, flush=True)
        try:
            items = pipeline.run(str(path), "classify")
        except NlcError as err:  # a construct the engine does not derive yet: say which
            underived.append(path.stem)
            print(f"   {path.stem:<18} not derived: {err.render().splitlines()[0]}")
            continue
        families = ", ".join(f"{c.rule.level}: {c.family.family.value}"
                             for _, found in items for c in found) or "-"
        print(f"   {path.stem:<18} {families}")
    stage_start = _stage_done(stage_start)
    print("\n2. verify against the catalog (symbolic at dims 2/3, float64 at 4/7/16)")
    reports = []
    for i, path in enumerate(files, 1):
        if path.stem in underived:
            continue
        print(f"   [{i}/{len(files)}] {path.stem}", file=sys.stderr, flush=True)
        reports += verify_module(parse(path.read_text(), str(path)), str(path))
    sys.stdout.write(verify_table(reports, []))
    stage_start = _stage_done(stage_start)
    compiled = compile_examples(files, Path(out) / "generated")
    stage_start = _stage_done(stage_start)
    trained = train_examples(files, Path(out), budget)
    stage_start = _stage_done(stage_start)
    toy = delta_momentum_toy(files[0].parent, Path(out))
    _stage_done(stage_start)
    print(f"\ndone in {time.perf_counter() - start:.1f} s")
    ok = all(r.claim_holds for r in reports) and compiled and trained and toy
    return 0 if ok else 1


def _stage_done(since: float) -> float:
    now = time.perf_counter()
    print(f"   ({now - since:.1f} s)")
    return now


def compile_examples(files: list[Path], out: Path) -> bool:
    from nlc.emit import compile_files
    print(f"\n3. compile (PyTorch modules and Triton kernels into {out})")
    ok = True
    for path in files:
        start = time.perf_counter()
        try:
            written = compile_files([str(path)], str(out))
        except NlcError as err:
            print(f"   {path.stem:<18} not compiled: {err.render().splitlines()[0]}")
            ok = False
            continue
        names = ", ".join(w.name for w in written)
        print(f"   {path.stem:<18} {time.perf_counter() - start:5.2f} s  {names}")
    return ok


def train_examples(files: list[Path], out: Path, budget: Budget) -> bool:
    """Each model on the same small MQAR, the same steps, batch and learning rate."""
    import torch
    by_name = {p.stem: p for p in files}
    names = [n for n in TRAINED if n in by_name]
    print(f"\n4. train on MQAR ({budget.describe()})")
    rows, runs = [], []
    # One thread: these models are too small to gain from intra-op threads, and on a shared
    # CPU two spinning threads made the same run 5x slower (benchmarks/demo_threads.py).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in names:
            rows.append(_train_one(name, by_name[name], out / f"mqar_{name}", budget))
            runs.append(out / f"mqar_{name}")
    finally:
        torch.set_num_threads(threads)
    print(f"   {'model':<18} {'accuracy':>9} {'train loss':>11} {'time':>8}")
    for name, acc, loss, secs in rows:  # a run finished before: no time of this call's
        shown = f"{secs:>7.1f}s" if secs is not None else f"{'before':>8}"
        print(f"   {name:<18} {acc:>9.3f} {loss:>11.3f} {shown}")
    values = budget.vocab_size - budget.vocab_size // 2
    print(f"   chance: {1 / values:.3f} (any of the {values} values), "
          f"{1 / budget.num_kv_pairs:.3f} (any value in the context); docs/results.md "
          "discusses these numbers (why a model scores low at this budget)")
    try:
        from nlc.runtime.trainer.plot import plot_runs
        png = plot_runs(runs, out / "mqar.png", title="MQAR, nlc demo")
        print(f"   plot: {png}")
    except NlcError as err:  # matplotlib missing: say so, the numbers stand
        print(f"   no plot: {err.render().splitlines()[0]}")
    return bool(rows)


def delta_momentum_toy(examples: Path, out: Path) -> bool:
    """Momentum, delta momentum and DGD, each compiled from its spec, from the same grid of
    starts on the two-minimum loss of nlc/delta_toy.py; the share of starts that end in the
    global basin, and a plot of four trajectories each."""
    from nlc import delta_toy
    names = [n for n, spec in delta_toy.SPECS.items() if (examples / spec).exists()]
    if len(names) < len(delta_toy.SPECS):
        print("\n5. delta-momentum toy: skipped (needs "
              f"{', '.join(delta_toy.SPECS.values())} in {examples})")
        return True
    lr, mu = delta_toy.SETTING
    n = 15
    print(f"\n5. delta-momentum toy ({n * n} starts, {delta_toy.STEPS} steps, lr {lr:g}, "
          f"mu {mu:g}; nlc/delta_toy.py)")
    runs = []
    for name in names:
        hypers = delta_toy.hypers(name, lr, mu)
        runs.append(delta_toy.run(name, delta_toy.grid(n), delta_toy.STEPS, examples, **hypers))
        print(f"   {name:<24} {runs[-1].in_global_basin().mean():>5.0%} of starts end in the "
              f"global basin  ({delta_toy.SPECS[name]})")
    try:
        png = delta_toy.plot(runs, delta_toy.shown_starts(n), out / "delta_momentum.png",
                             f"{delta_toy.STEPS} steps, lr {lr:g}, mu {mu:g}; o start, * end")
        print(f"   plot: {png}")
    except ImportError as err:  # matplotlib missing: say so, the numbers stand
        print(f"   no plot: {err}")
    return all(np.isfinite(r.points[-1]).all() for r in runs)


def _train_one(name: str, path: Path, run: Path, budget: Budget) -> tuple:
    """(name, accuracy, final train loss, seconds; None for a run finished before) of one
    model trained under `budget`; a run started before with the same settings is resumed
    from its latest checkpoint: a finished one is evaluated and reported again, an
    interrupted one trains on to the end (refuse_replacing_runs has refused any other
    earlier run)."""
    from nlc.factories import factories_for
    from nlc.runtime.trainer.checkpoint import latest_checkpoint
    from nlc.runtime.trainer.train import train
    config = demo_config(path, run, budget)
    start = time.perf_counter()
    summary = train(config, **factories_for(config), resume=latest_checkpoint(run) is not None)
    accuracy = (summary.get("eval") or {}).get("accuracy", float("nan"))
    finished_before = summary.get("resumed_from") == summary.get("steps")
    return (name, accuracy, summary.get("final_loss", float("nan")),
            None if finished_before else time.perf_counter() - start)


def _dims_of(path: Path) -> set[str]:
    from nlc import pipeline
    return {n for spec in pipeline.run(str(path), "check") for n, _ in spec.dims}


def demo_config(path: Path, run: Path, budget: Budget):
    """The TrainConfig of the demo's run of the spec `path` into `run`."""
    from nlc.runtime.trainer.config import TrainConfig
    dims = {k: float(v) for k, v in DEMO_DIMS.items() if k in _dims_of(path)}
    steps = budget.steps
    return TrainConfig(spec=str(path), spec_overrides=dims, task="mqar", steps=steps,
                       batch_size=budget.batch_size, seq_len=budget.seq_len, d_model=64,
                       n_layers=2, mqar_vocab_size=budget.vocab_size,
                       mqar_num_kv_pairs=budget.num_kv_pairs, lr=budget.lr,
                       warmup=max(steps // 10, 1), eval_interval=max(steps // 5, 1),
                       checkpoint_interval=max(steps // 5, 1), eval_examples=256, device="cpu",
                       log_interval=max(steps // 10, 1), out=str(run))


def refuse_replacing_runs(files: list[Path], out: Path, budget: Budget) -> None:
    """Before any work: refuse when a run folder the demo trains into holds an earlier run
    it would neither report again nor continue (other settings or spec text, or stopped
    before its first checkpoint), naming the folder. The demo never deletes or restarts a
    run. How often runs are checkpointed is not a setting compared (earlier demos wrote only a
    final checkpoint)."""
    from nlc.fileio import read_text
    from nlc.runtime.trainer.checkpoint import latest_checkpoint
    from nlc.runtime.trainer.config import TrainConfig
    by_name = {p.stem: p for p in files}
    for name in (n for n in TRAINED if n in by_name):
        run = out / f"mqar_{name}"
        if not run.is_dir() or not any(run.iterdir()):
            continue
        hint = f"choose another --out, or delete {run} to train it again"
        if not (run / "config.json").is_file() or latest_checkpoint(run) is None:
            raise NlcError(f"{run}: holds an earlier run stopped before its first checkpoint "
                           "(nothing to continue from); the demo does not replace it",
                           hint=hint)
        now = demo_config(by_name[name], run, budget)
        then = TrainConfig.from_json(read_text(run / "config.json", "config"),
                                     str(run / "config.json"))
        differ = [f"{k} {getattr(then, k)!r} there, {getattr(now, k)!r} now"
                  for k in (f.name for f in fields(now))
                  if k not in ("spec", "out", "vocab_size", "checkpoint_interval")
                  and getattr(then, k) != getattr(now, k)]
        copy = run / "spec.nl"
        if copy.is_file() and copy.read_text() != by_name[name].read_text():
            differ.append(f"the text of {by_name[name]} differs from the run's copy {copy}")
        if differ:
            raise NlcError(f"{run}: holds an earlier demo run with other settings ("
                           f"{'; '.join(differ)}); the demo does not replace it", hint=hint)
