"""What every `nlc bench` protocol shares: its models (a spec or the builtin attention), its
points (model, width, learning rate, seed), and running each point as one `nlc train`
process, `jobs` at a time.

    for each point:   RUN = OUT/runs/<model>-d<W>-lr<LR>-s<S>
        python -m nlc.train_cli train SPEC --config RUN.json --out RUN --quiet   (> RUN/log.txt)

The protocol (nlc/bench/recall.py, nlc/bench/niah.py) says what a point's `TrainConfig` is.
A run whose folder already holds a summary is read, not rerun, and an interrupted one is
resumed; a folder holding a run of other settings is refused. A run that diverges is
reported as diverged, one that fails as failed with the last line of its log.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nlc.errors import NlcError
from nlc.fileio import read_text

ATTENTION = "builtin:attention"


@dataclass(frozen=True)
class Model:
    """A model of the benchmark: its name in the table and the spec (or builtin) it trains."""

    name: str
    spec: str
    overrides: tuple[tuple[str, float], ...] = ()
    scaled: tuple[tuple[str, float], ...] = ()  # (dim, its ratio to d_model in the spec)

    def dims_at(self, width: int) -> dict[str, float]:
        """The spec's overrides at a width: -D's, and the scaled dims kept at their ratio."""
        return {**dict(self.overrides),
                **{name: float(max(1, round(width * ratio))) for name, ratio in self.scaled}}


@dataclass(frozen=True)
class Point:
    """One training run."""

    model: Model
    width: int
    lr: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.model.name}-d{self.width}-lr{self.lr:g}-s{self.seed}"


def models_for(specs: list[str], overrides: dict[str, float],
               scale: tuple[str, ...] = ()) -> list[Model]:
    """Check every spec names a layer before anything runs; `attention` is the builtin.
    The dims named in `scale` keep their ratio to d_model at every width (in the specs that
    declare them: one name can cover d_k in one spec and d_head in none)."""
    from nlc import pipeline
    from nlc.syntax.ast import DeclKind
    models = []
    for spec in specs:
        if spec in ("attention", ATTENTION):
            models.append(Model("attention", ATTENTION))
            continue
        if spec.startswith("builtin:"):
            raise NlcError(f"unknown builtin '{spec}'; the benchmarks' builtin is "
                           "'attention'")
        if not Path(spec).is_file():
            raise NlcError("no such spec file (or 'attention' for the builtin)", path=spec)
        decls = pipeline.run(spec, "check", {"overrides": overrides})
        layers = [d for d in decls if d.kind in (DeclKind.LAYER, DeclKind.MODEL)]
        if not layers:
            found = ", ".join(sorted({d.kind.value for d in decls})) or "nothing"
            raise NlcError(f"declares {found}, not a layer: the benchmarks train "
                           "layers as sequence mixers", path=spec)
        dims = dict(layers[0].dims) if layers[0].kind is DeclKind.LAYER else {}
        scaled = tuple((n, dims[n] / dims["d_model"]) for n in scale if n in dims)
        models.append(Model(Path(spec).stem, spec, tuple(sorted(overrides.items())), scaled))
    unused = sorted(set(scale) - {n for m in models for n, _ in m.scaled})
    if unused:
        raise NlcError(f"--scale {', '.join(unused)}: no spec declares such a dim")
    if "d_model" in scale or "d_model" in overrides:
        raise NlcError("d_model is the benchmark's width: set it with --widths")
    names = [m.name for m in models]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise NlcError(f"two specs are both named {', '.join(twice)} in the table; "
                       "give each model its own file name")
    return models


def train_config(point: Point, settings, out: Path, device: str, task: str, **fields):
    """The `nlc train` config of one run, from what every protocol's settings hold (widths,
    steps, batch_size, seq_len, n_layers, eval_examples, eval_interval) and the task's own
    `fields`; validated, and the task's generator built once, so bad settings fail before
    any run starts."""
    from nlc.runtime.trainer.config import TrainConfig
    from nlc.runtime.trainer.tasks import make_task
    s = settings
    config = TrainConfig(
        spec=point.model.spec, spec_overrides=point.model.dims_at(point.width), mlp="none",
        task=task, d_model=point.width, n_layers=s.n_layers, steps=s.steps,
        batch_size=s.batch_size, seq_len=s.seq_len, lr=point.lr, seed=point.seed,
        eval_interval=s.eval_interval, eval_examples=s.eval_examples,
        checkpoint_interval=s.eval_interval, log_interval=max(1, min(100, s.steps // 10)),
        keep_last=1, device=device, out=str(out / "runs" / point.name), **fields).validate()
    make_task(config)
    return config


def check_sweep(settings, lists: tuple[str, ...] = ()) -> None:
    """Every list of the sweep holds a value; the numbers are in range."""
    from nlc.runtime.trainer.config import MAX_LR
    s = settings
    for name in ("widths", "lrs", "seeds", "devices", *lists):
        if not getattr(s, name):
            raise NlcError(f"{name}: needs at least one value")
    if min(s.widths) < 1 or min(s.seeds) < 0 or min(s.lrs) <= 0 or s.jobs < 1:
        raise NlcError("widths and --jobs must be positive, learning rates positive, "
                       "seeds not negative")
    if max(s.lrs) > MAX_LR:
        raise NlcError(f"--lrs: learning rates must be at most {MAX_LR:g}, got {max(s.lrs):g}")


class Runner:
    """Run the points, `settings.jobs` processes at a time; one line per start and end,
    and every `heartbeat` seconds the step each running run has reached."""

    def __init__(self, settings, out: Path, config_for: Callable, stream=None,
                 heartbeat=60.0):
        """`config_for(point, settings, out, device)` is the protocol's `TrainConfig`."""
        self.settings, self.out, self.heartbeat = settings, out, heartbeat
        self.config_for = config_for
        self.stream = stream or sys.stdout

    def say(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def run_all(self, points: list[Point]) -> list[dict]:
        total, results, waiting = len(points), {}, list(enumerate(points))
        running: dict[int, tuple[Point, subprocess.Popen, float, object]] = {}
        last_beat = time.monotonic()
        while waiting or running:
            while waiting and len(running) < self.settings.jobs:
                i, point = waiting.pop(0)
                device = self.settings.devices[i % len(self.settings.devices)]
                config = self.config_for(point, self.settings, self.out, device)
                cached = read_summary(Path(config.out), config)
                if cached is not None:
                    results[i] = record(point, cached, "ok", cached.get("elapsed_s", 0.0),
                                        config)
                    self.say(f"[{i + 1}/{total}] {point.name}: {describe(results[i])} "
                             "(already run)")
                    continue
                self.say(f"[{i + 1}/{total}] start {point.name} on {device}")
                running[i] = (point, *self.launch(config), config)
            time.sleep(0.2)
            for i in sorted(running):
                point, process, began, log, config = running[i]
                if process.poll() is None:
                    continue
                log.close()
                del running[i]
                results[i] = finished(point, config, process.returncode, time.time() - began)
                self.say(f"[{i + 1}/{total}] {point.name}: {describe(results[i])} "
                         f"({results[i]['elapsed_s']:.0f} s)")
            if running and time.monotonic() - last_beat >= self.heartbeat:
                last_beat = time.monotonic()
                shown = ", ".join(progress(p, c) for p, _, _, _, c in running.values())
                self.say(f"running: {shown}")
        return [results[i] for i in range(total)]

    def launch(self, config) -> tuple[subprocess.Popen, float, object]:
        run = Path(config.out)
        # a run with a checkpoint resumes; one stopped before its first starts over (the
        # folder is the benchmark's: nlc train refuses to resume or overwrite it)
        resume = any((run / "checkpoints").glob("step_*"))
        if not resume and run.is_dir():
            shutil.rmtree(run)
        run.mkdir(parents=True, exist_ok=True)
        config_file = run.parent / f"{run.name}.json"
        config_file.write_text(config.to_json(), encoding="utf-8")
        argv = [sys.executable, "-m", "nlc.train_cli", "train", config.spec,
                "--config", str(config_file), "--out", str(run), "--quiet"]
        env = dict(os.environ)
        # the runs share the host's cores also on a GPU (the batches, the Python loop):
        # without a limit each run would start a thread per core
        if "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.settings.jobs))
        log = open(run / "log.txt", "a", encoding="utf-8")  # noqa: SIM115 (closed when it ends)
        process = subprocess.Popen(argv + ["--resume"] * resume, stdout=log,
                                   stderr=subprocess.STDOUT, env=env)
        return process, time.time(), log


def read_summary(run: Path, config) -> dict | None:
    """A finished run's summary, if `run` holds one of this config; refuse a folder that
    holds a run of other settings (it would be reported under these)."""
    saved = run / "config.json"
    if not saved.is_file():
        return None
    from nlc.runtime.trainer.config import TrainConfig
    theirs = TrainConfig.from_json(read_text(saved, "config"), str(saved))
    # the device may change between calls; the trainer fills in the task's vocabulary
    theirs = dataclasses.replace(theirs, device=config.device,
                                 vocab_size=config.vocab_size or theirs.vocab_size)
    if dataclasses.replace(config, vocab_size=theirs.vocab_size) != theirs:
        raise NlcError(f"{run}: holds a run with other settings; choose another --out",
                       hint="a run folder is reused only for the very same run")
    summary = run / "summary.json"  # written when a run ends: done, stopped or diverged
    return summary_of(summary) if summary.is_file() else None


def summary_of(path: Path) -> dict:
    """A run's summary.json, or an error naming it when it is not a JSON object."""
    try:
        summary = json.loads(read_text(path, "summary"))
    except json.JSONDecodeError as err:
        raise NlcError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(summary, dict):
        raise NlcError(f"{path}: expected a JSON object, the summary of a run")
    return summary


def finished(point: Point, config, returncode: int, elapsed: float) -> dict:
    summary_path = Path(config.out) / "summary.json"
    try:
        summary = summary_of(summary_path) if summary_path.is_file() else None
    except NlcError:  # reported as a failed run, with its log's last line
        summary = None
    if returncode == 0 and summary is not None:
        return record(point, summary, "ok", elapsed, config)
    if returncode == 1 and summary is not None and summary.get("diverged_at") is not None:
        return record(point, summary, "diverged", elapsed, config)
    log = Path(config.out) / "log.txt"
    lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines() \
        if log.is_file() else []
    rec = record(point, summary or {}, "failed", elapsed, config)
    errors = [line for line in lines if "error:" in line]  # not a hint printed below it
    rec["error"] = (errors or lines or [f"exit status {returncode}"])[-1]
    return rec


def record(point: Point, summary: dict, status: str, elapsed: float, config) -> dict:
    evaluation = summary.get("eval") or {}
    if status == "ok" and summary.get("diverged_at") is not None:
        status = "diverged"
    result = {"model": point.model.name, "spec": point.model.spec, "width": point.width,
              "lr": point.lr, "seed": point.seed, "status": status,
              "accuracy": evaluation.get("accuracy") if status == "ok" else None,
              "steps": summary.get("steps"), "diverged_at": summary.get("diverged_at"),
              "parameters": summary.get("parameters"), "elapsed_s": elapsed,
              "run": config.out}
    if status == "ok" and "eval_lengths" in summary:  # niah at other lengths (niah.py)
        result["eval_lengths"] = summary["eval_lengths"]
    return result


def describe(result: dict) -> str:
    if result["status"] == "ok":
        return f"accuracy {result['accuracy']:.4f} after {result['steps']} steps"
    if result["status"] == "diverged":
        return f"diverged at step {result['diverged_at']}"
    return f"failed: {result.get('error', '')}"


def progress(point: Point, config) -> str:
    """Where a running run is: its step, or its evaluation at other lengths after the last."""
    step = latest_step(Path(config.out))
    last = ", evaluating at lengths" if step == config.steps and config.niah_eval_lengths else ""
    return f"{point.name} step {step}/{config.steps}{last}"


def latest_step(run: Path) -> int:
    from nlc.runtime.trainer.progress import read_metrics
    path = run / "metrics.jsonl"
    steps = [r.get("step", 0) for r in read_metrics(path)] if path.is_file() else []
    return max(steps, default=0)


def check_widths(points: list[Point]) -> None:
    """Refuse, before any run starts, a width the builtin attention cannot take (its default
    heads, one per 64 channels, must split it into heads of even width): each such run would
    fail on its own, with the reason only in its log."""
    from nlc.runtime.trainer.model import attention_heads
    for width in sorted({p.width for p in points if p.model.spec == ATTENTION}):
        try:
            attention_heads(width)
        except ValueError as err:
            raise NlcError(f"--widths {width}: builtin:attention: {err}",
                           hint="an even width under 128, or any multiple of 64, splits "
                                "evenly (one head per 64 channels)") from None


def points_for(models: list[Model], settings) -> list[Point]:
    """Every (model, width, learning rate, seed) of `settings`, in that order."""
    return [Point(m, w, lr, seed) for m in models for w in settings.widths
            for lr in settings.lrs for seed in settings.seeds]
