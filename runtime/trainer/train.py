"""The training loop: one function, `train(config)`, in nanoGPT's order of events.

    RUN/config.json      the config, as run
    RUN/spec.nl          a copy of the spec (when the mixer is a spec file)
    RUN/mlp.nl           a copy of the --mlp spec, RUN/optimizer.nl of the --optimizer spec
                         (when they are spec files): `nlc eval RUN` needs nothing else
    RUN/metrics.jsonl    {"kind": "train", "step", "loss", "lr", "grad_norm", "tokens_per_s", ...}
                         {"kind": "eval", "step", "loss", "accuracy" | "bits_per_byte"}
    RUN/checkpoints/     runtime/trainer/checkpoint.py
    RUN/summary.json     the final numbers

Each step s (from 0) trains on the global batch `task.train_batch(s)`, sliced per rank; the
learning rate is `lr_at(s)`. Metrics count completed steps: the line of step s says
"step": s + 1, and the checkpoint written after it is step_{s+1}. Resuming restores the
weights, optimizer state and RNG and continues at the checkpoint's step, so on the CPU the
loss sequence equals the uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import random
import signal
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from nlc.runtime.trainer import checkpoint as ckpt
from nlc.runtime.trainer import distributed
from nlc.runtime.trainer.config import TrainConfig
from nlc.runtime.trainer.diverged import listed, nonfinite_parameters
from nlc.runtime.trainer.lengths import evaluate_lengths
from nlc.runtime.trainer.memory import build_model, check_fits
from nlc.runtime.trainer.mixers import (
    is_spec_file,
    mixer_factory_for,
    mlp_factory_for,
    sha256_text,
    spec_text,
)
from nlc.runtime.trainer.optim import (
    build_optimizer,
    due,
    lr_at,
    optimizer_class_for,
    set_lr,
    step_levels,
    warmup_steps,
)
from nlc.runtime.trainer.progress import (
    MetricsLog,
    ProgressBar,
    read_metrics,
    strict_json,
    truncate_metrics,
)
from nlc.runtime.trainer.segments import check_carriable, forward_segments, fresh_caches
from nlc.runtime.trainer.tasks import IGNORE, make_task

from nlc import __version__
from nlc.errors import NlcError
from nlc.fileio import write_atomic

try:
    import fcntl
except ImportError:  # not POSIX: run folders are not locked
    fcntl = None


def train(config: TrainConfig, *, mixer_factory=None, mlp_factory=None, optimizer_class=None,
          resume: bool = False, progress: bool = True) -> dict:
    """Train `config` into `config.out`; return the summary (also RUN/summary.json).

    The mixer and block MLP are factories `d_model -> nn.Module`, the optimizer a class
    constructed as `cls(params, lr=...)`. Left out, they are the builtins `config.spec`,
    `config.mlp` and `config.optimizer` name; a spec file named there must be given here,
    compiled (`nlc.factories.factories_for(config)`: the trainer never compiles). With
    `resume`, continue from the run's latest checkpoint (a folder without one is refused).
    """
    config.validate()
    from nlc.runtime.library import scan
    world = distributed.setup(config.device)
    compiling = scan.COMPILE_CHUNKS
    try:
        scan.set_compile_chunks(compiling or config.compile_chunks)  # for this run only
        with contextlib.ExitStack() as held:  # the run folder's lock, until the run ends
            summary = _train(config, world, mixer_factory, mlp_factory, optimizer_class,
                             resume, progress, held)
        # ranks leave together: one that closed its connections while another still wrote
        # its summary could abort the other's transport threads at exit
        distributed.barrier(world)
        return summary
    finally:
        scan.set_compile_chunks(compiling)
        distributed.teardown(world)


def _train(config, world, mixer_factory, mlp_factory, optimizer_class, resume, progress,
           held: contextlib.ExitStack):
    task = make_task(config)
    if config.vocab_size == 0:
        config = dataclasses.replace(config, vocab_size=task.vocab_size)
    elif config.vocab_size < task.vocab_size:
        raise NlcError(f"vocab_size {config.vocab_size} is smaller than the {config.task} "
                       f"task's {task.vocab_size}")
    distributed.local_slice(torch.empty(config.batch_size), world)  # refuse uneven splits early
    if config.cuda_graphs:
        check_graphs(world)
    if config.tf32:
        use_tf32(world)
    spec = spec_record(config)
    # the given modules, else the builtins the config names: refused before the folder exists
    mixer_factory = mixer_factory or mixer_factory_for(config)
    mlp_factory = mlp_factory or mlp_factory_for(config)
    if optimizer_class is None:
        optimizer_class = optimizer_class_for(config)
    out = Path(config.out)
    locked = out.is_dir()
    if locked:  # a folder another run is writing is refused before the model is compiled
        lock_run_folder(out, world, held)
    check_fits(config, mixer_factory, mlp_factory, world.device)
    created = not out.exists()
    make_run_folder(out)
    try:  # a run refused from here on leaves no empty folder it made behind
        # the lock first: a folder another run is writing is refused as such, whatever it holds
        if not locked:
            lock_run_folder(out, world, held)
        latest = _refuse_started(out, resume)
        check_run_folder(out, resume)
        if resume and latest is None:
            refuse_nothing_to_resume(out)
        distributed.barrier(world)  # every rank has looked before rank 0 writes anything

        torch.manual_seed(config.seed)
        random.seed(config.seed)
        model = build_model(config, mixer_factory, mlp_factory, world.device)
        if config.carry_state:
            check_carriable(model)
        optimizer = build_optimizer(model, config, optimizer_class)

        start = 0
        if resume and latest is not None:
            try:
                checkpoint = ckpt.read_checkpoint(
                    latest, config, spec["sha256"],
                    side_specs={name: spec.get(name) for name in ckpt.SIDE_SPECS})
            except NlcError as err:
                raise _with_earlier(err, out, latest) from None
            _refuse_changed_copies(out, spec_copies(config, spec))
            try:
                ckpt.apply_checkpoint(checkpoint, model, optimizer)
            except NlcError as err:  # its tensors do not fit the model, or are not finite
                raise _with_earlier(err, out, latest, always=True) from None
            start = checkpoint.step
    except BaseException:
        if created and world.is_main and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    # resumed a finished run: report it again, and leave its files as they are
    nothing_to_train = start >= config.steps
    if world.is_main and not nothing_to_train:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "config.json", config.to_json())
        for name, text in spec_copies(config, spec).items():
            write_atomic(out / name, text)
        truncate_metrics(out / "metrics.jsonl", start)
    distributed.barrier(world)

    trained = distributed.wrap(model, world, some_unused=config.carry_state > 0)
    if config.compile:
        trained = torch.compile(trained)
    if config.cuda_graphs:
        trained = graphed(model, task.train_batch(start)[0], world, config)
    autocast = autocast_for(config, world.device)
    log = MetricsLog(out / "metrics.jsonl", enabled=world.is_main)
    bar = ProgressBar(config.steps, start, config.log_interval, enabled=progress and world.is_main)
    steps = (f"at step {start} of {config.steps}" if nothing_to_train
             else f"steps {start + 1}..{config.steps}")
    mixer = f"{config.spec} ({config.layer})" if config.layer else config.spec
    bar.message(f"{config.task}: {model.num_parameters():,} parameters, {mixer}, "
                f"{world.world_size} rank(s) on {world.device}, {steps}")
    if getattr(optimizer, "split_note", None):  # a compiled optimizer beside AdamW
        bar.message(f"optimizer: {optimizer.split_note}")
    if warmup_steps(config) < config.warmup:
        bar.message(f"warmup: {warmup_steps(config)} step(s), a tenth of --steps {config.steps} "
                    f"(--warmup {config.warmup} is longer)")
    tokens_per_step = config.batch_size * config.seq_len
    began = window_start = time.perf_counter()
    window_step = start  # the step the rate's window starts after
    last_eval, loss_value = {}, float("nan")
    if nothing_to_train:
        trained_losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")
                          if r.get("kind") == "train" and isinstance(r.get("loss"), float)]
        loss_value = trained_losses[-1] if trained_losses else loss_value
        last_eval = evaluate(model, task, world, autocast)
        bar.message(f"nothing to train: the run is at step {start} of {config.steps}"
                    if start == config.steps else
                    f"nothing to train: the run is at step {start}, past --steps "
                    f"{config.steps} (a resume trains up to --steps; it never goes back); "
                    f"its latest checkpoint is evaluated again")
    done, diverged, divergence = start, None, None

    def log_train():  # this step's train line: the loss over ranks, the rate since the last
        nonlocal loss_value, shown_loss, window_start, window_step
        total = distributed.all_reduce_sums({"loss_sum": loss_sum}, world)
        loss_value = shown_loss = total["loss_sum"] / max(1, n_targets)
        rate = (done - window_step) * tokens_per_step / max(now - window_start, 1e-9)
        window_start, window_step = now, done
        log.write({"kind": "train", "step": done, "loss": loss_value, "lr": lr,
                   "grad_norm": grad_norm, "tokens_per_s": rate, "elapsed_s": now - began})

    stop = _StopAtStepEnd(world) if not nothing_to_train else contextlib.nullcontext()
    with stop:
        for step in range(start, config.steps):
            lr = lr_at(step, config)
            set_lr(optimizer, lr)
            batch = task.train_batch(step)
            loss_sum, n_targets, grad_norm, bad_gradients = train_step(
                trained, model, optimizer, batch, world, config, autocast, step)
            done = step + 1
            if not math.isfinite(grad_norm):  # a non-finite loss or gradient: no update was made
                diverged = done
                loss = loss_sum * world.world_size / max(1, n_targets)
                log.write({"kind": "diverged", "step": done, "loss": loss,
                           **({"nonfinite_gradients": bad_gradients} if bad_gradients else {})})
                divergence = report_divergence(model, batch, world, config, out, done, optimizer,
                                               spec, loss, bad_gradients)
                bar.message(divergence)
                break
            solved = False
            flags = distributed.all_reduce_sums(
                {"late": float(config.time_budget > 0
                               and time.perf_counter() - began > config.time_budget)}, world)
            out_of_time = flags["late"] > 0
            interrupted = getattr(stop, "requested", False)
            last = done == config.steps or out_of_time or interrupted
            now = time.perf_counter()
            # the bar shows every step (it decides when to print): this rank's loss, the mean rate
            shown_loss = loss_sum * world.world_size / max(1, n_targets)
            if done % config.log_interval == 0 or last:
                log_train()
            bar.update(done, shown_loss, lr,
                       (done - start) * tokens_per_step / max(now - began, 1e-9))
            if interrupted:  # save this step and stop: no evaluation to wait for
                bar.message(f"interrupted: saving step {done} of {config.steps}")
            elif last or (config.eval_interval and done % config.eval_interval == 0):
                last_eval = evaluate(model, task, world, autocast)
                log.write({"kind": "eval", "step": done, **last_eval})
                bar.message(f"eval at step {done}: " + format_metrics(last_eval))
                solved = reached(last_eval, config) and not last
                if solved and window_step != done:  # the run ends here: its train line too
                    log_train()
                last = last or solved
                if getattr(stop, "requested", False):  # a Ctrl-C during the eval
                    interrupted = True
                    bar.message(f"interrupted: saving step {done} of {config.steps}")
            if last or interrupted or (config.checkpoint_interval
                                       and done % config.checkpoint_interval == 0):
                bad = nonfinite_parameters(model)  # an update that wrote them: not saved
                if bad:
                    diverged = done
                    log.write({"kind": "diverged", "step": done, "nonfinite_parameters": bad})
                    divergence = _diverged_in_update(
                        config, out, done, f"the weights are not finite after step {done}", bad)
                    bar.message(divergence)
                    break
                if world.is_main:
                    ckpt.save_checkpoint(out, done, model, optimizer, config, spec,
                                         {"next_step": done, "seed": config.seed,
                                          "world_size": world.world_size})
                distributed.barrier(world)
            if interrupted:
                break
            if out_of_time and done < config.steps:
                bar.message(f"time budget of {config.time_budget:g} s spent: stopping at step "
                            f"{done} of {config.steps}")
                break
            if solved:
                bar.message(f"eval accuracy {last_eval['accuracy']:.4f} reached --stop-accuracy "
                            f"{config.stop_accuracy:g}: stopping at step {done} of {config.steps}")
                break
    bar.close()
    if getattr(stop, "requested", False):  # Ctrl-C: the step it came in finished and is saved
        raise KeyboardInterrupt

    elapsed = time.perf_counter() - began
    at_lengths = None  # after the clock: tokens/s is training's
    if config.niah_eval_lengths and diverged is None:
        at_lengths = evaluate_lengths(model, config, world, autocast)
        bar.message("needles found at lengths: " + ", ".join(
            f"{length} {r['accuracy']:.4f}" for length, r in at_lengths.items()))
    summary = {"task": config.task, "spec": config.spec, "steps": done,
               "steps_planned": config.steps, "diverged_at": diverged,
               "divergence": divergence,
               "resumed_from": start, "final_loss": loss_value, "eval": last_eval,
               "parameters": model.num_parameters(), "world_size": world.world_size,
               "device": str(world.device), "elapsed_s": elapsed,
               "tokens_per_s": (done - start) * tokens_per_step / max(elapsed, 1e-9),
               "nlc_version": __version__, "torch_version": torch.__version__,
               "python_version": platform.python_version()}
    if at_lengths is not None:
        summary["eval_lengths"] = at_lengths
    if world.is_main:
        if not nothing_to_train or not (out / "summary.json").exists():
            write_atomic(out / "summary.json",
                         strict_json(summary, indent=2, sort_keys=True) + "\n")
        shown = [f"training loss {loss_value:.4f}"] if math.isfinite(loss_value) else []
        shown += [f"eval {format_metrics(last_eval)}"] if last_eval else []
        shown += [f"diverged at step {diverged}"] if diverged is not None else []
        trained_steps = done - (diverged is not None)  # the diverged step made no update
        steps = f"{trained_steps} step{'' if trained_steps == 1 else 's'}"
        bar.message(f"done: {steps}, {', '.join(shown)}; {out}" if shown
                    else f"done: {steps}; {out}")
    return summary


class _StopAtStepEnd:
    """The first Ctrl-C (SIGINT) or SIGTERM (`kill`, `timeout`, a scheduler's preemption) of
    a single-process run finishes the step it came in, saves a checkpoint of it and then
    stops as a KeyboardInterrupt (an interrupt inside the optimizer's step would leave
    half-updated weights; one before the first checkpoint lost every step, and SIGTERM
    killed the run with nothing saved). A second signal stops at once. Data-parallel ranks
    and other threads keep Python's own handling."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, world):
        self.requested = False
        self.active = world.world_size == 1 and threading.current_thread() is \
            threading.main_thread()
        self.previous: dict = {}

    def __enter__(self):
        if self.active:
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:  # the second one
            self._restore()
            raise KeyboardInterrupt
        self.requested = True

    def _restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def __exit__(self, *exc):
        if self.active:
            self._restore()
        return False


RUN_FILES = ("config.json", "spec.nl", "mlp.nl", "optimizer.nl", "summary.json")


DAMAGED = ("corrupt", "truncated", "missing", "not a complete")


def _with_earlier(err: NlcError, out: Path, latest: Path, always: bool = False) -> NlcError:
    """A damaged latest checkpoint's refusal, with how to resume from the one before it
    (`always`: whatever the message, for a checkpoint whose tensors do not load)."""
    earlier = [d for d in ckpt.checkpoint_dirs(out) if d != latest]
    if err.hint is None and (always or any(word in err.message for word in DAMAGED)):
        err.hint = (f"delete {latest} to resume from {earlier[-1].name}, the checkpoint "
                    "before it" if earlier else f"{latest} is the run's only checkpoint: "
                    "start the run over (another --out)")
    return err


def _refuse_started(out: Path, resume: bool):
    """Refuse a new run into a folder that holds one; return the latest checkpoint (or None)."""
    latest = ckpt.latest_checkpoint(out)
    if not resume and latest is not None:
        raise NlcError(f"{out}: already holds a run; pass --resume to continue it, "
                       "or choose another --out")
    if not resume and (out / "metrics.jsonl").exists():  # killed before its first checkpoint
        raise NlcError(f"{out}: holds the metrics of a run that saved no checkpoint, so it "
                       "cannot be resumed", hint=f"delete {out} to start it over, or choose "
                                                 "another --out")
    return latest


def lock_run_folder(out: Path, world, held: contextlib.ExitStack) -> None:
    """One run at a time in a run folder: rank 0 holds an exclusive `flock` on the folder
    until `held` closes (the run's end). The kernel drops the lock when the process dies, so
    a killed run leaves nothing that blocks the next. A second run into the folder is
    refused before it writes anything; a file system without locks leaves runs unguarded."""
    busy = False
    if world.is_main and fcntl is not None:
        fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
        held.callback(os.close, fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy = True
        except OSError:  # no locks here (some network file systems)
            pass
    if distributed.all_reduce_sums({"busy": float(busy)}, world)["busy"]:
        raise NlcError(f"{out}: another nlc train is running in this run folder",
                       hint="wait for it to end (then --resume continues it), or choose "
                            "another --out")


def refuse_nothing_to_resume(out: Path) -> None:
    """--resume needs a checkpoint. Without one the run would start over at step 0: refused
    when the folder holds a run's metrics (they would be replaced, however far they go) and
    when it holds no run at all (a mistyped --out, or a first launch with --resume)."""
    metrics = out / "metrics.jsonl"
    steps = [r.get("step", 0) for r in read_metrics(metrics)] if metrics.is_file() else []
    start_over = f"choose another --out, or delete {out} to start the run over"
    if steps:
        raise NlcError(f"{out}: holds a run's metrics up to step {max(steps)} but no checkpoint "
                       "to resume from; starting over would replace them", hint=start_over)
    if any((out / name).exists() for name in ("metrics.jsonl", *RUN_FILES)):
        raise NlcError(f"{out}: holds a run that wrote no checkpoint; nothing to resume",
                       hint=start_over)
    raise NlcError(f"{out}: nothing to resume: no run in this folder",
                   hint="check --out, or drop --resume to start a new run")


def make_run_folder(out: Path) -> None:
    """Create the run folder (the lock is taken on it); refuse a --out that is a file, under
    a file or unwritable, before any work."""
    if out.exists() and not out.is_dir():
        raise NlcError(f"{out}: --out names a file, not a folder")
    where = out.resolve()
    if where in (Path.cwd().resolve(), Path(where.anchor), Path.home().resolve()) \
            and not (out / "config.json").is_file():  # (a run's own folder may be the cwd)
        raise NlcError(f"{out}: --out names the current, home or root folder; a run writes "
                       "config.json, metrics.jsonl, summary.json and checkpoints/ into it",
                       hint="pass a folder of its own, e.g. --out runs/NAME")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NlcError(f"{out}: cannot create the run folder ({err.strerror})") from None
    try:  # a file written and removed: os.access says yes to root where writes still fail
        probe, name = tempfile.mkstemp(prefix=".nlc_probe.", dir=out)
        os.close(probe)
        os.unlink(name)
    except OSError as err:
        raise NlcError(f"{out}: the run folder is not writable ({err.strerror})",
                       hint="choose another --out") from None


def check_run_folder(out: Path, resume: bool) -> None:
    """Refuse a run folder whose parts are of the wrong kind, and one holding files a new run
    would overwrite, before any work."""
    # what a run writes, found as something else (a file where its folders go, or the
    # reverse): refused before any work, since writing there would fail or overwrite it
    checkpoints = out / "checkpoints"
    folders = [checkpoints, *checkpoints.glob("step_*")] if checkpoints.is_dir() else [checkpoints]
    wrong = [p for p in folders if p.exists() and not p.is_dir()]
    wrong += [p for p in (out / "metrics.jsonl", *(out / n for n in RUN_FILES))
              if p.exists() and not p.is_file()]
    if wrong:
        raise NlcError(f"{wrong[0]}: is a {'folder' if wrong[0].is_dir() else 'file'}, where "
                       "a run keeps a " + ("file" if wrong[0].is_dir() else "folder"),
                       hint="move it away")
    if not resume and out.is_dir():
        clash = [name for name in RUN_FILES if (out / name).exists()]
        if clash:
            raise NlcError(f"{out}: holds {', '.join(clash)}, which a new run would overwrite; "
                           "choose another --out (or --resume a run)")


def train_step(trained, model, optimizer, batch, world, config, autocast, step: int = 0):
    """Optimizer step `step` (from 0) on this rank's slice of a global batch. Levels of
    parameters that update every k steps sum their gradients until they are due
    (`optim.step_levels`); gradients are clipped over the groups that step now.

    Returns (this rank's summed loss in float64, targets in the global batch, grad norm, the
    parameters whose gradients are not finite when the loss is).
    When any rank's loss is not finite, every rank skips the backward pass and the update,
    so the weights, optimizer state and pending gradients stay those of the last finite step,
    and the grad norm returned is NaN; non-finite gradients also skip the update.
    """
    inputs, targets = batch
    n_targets = int((targets != IGNORE).sum())  # over the global batch: the same on every rank
    inputs = distributed.local_slice(inputs, world).to(world.device)
    targets = distributed.local_slice(targets, world).to(world.device)
    if config.carry_state:
        loss_sum, ok = carried_backward(trained, model, optimizer, inputs, targets, n_targets,
                                        world, config, autocast)
    else:
        with autocast():
            logits = trained(inputs)
        loss_sum, ok = backward(logits, targets, n_targets, world)
    if not ok:
        return loss_sum, n_targets, float("nan"), []
    grad_norm = clip([p for group in optimizer.param_groups if due(group, step)
                      for p in group["params"]], config.grad_clip)
    if not math.isfinite(grad_norm):  # a finite loss with non-finite gradients: no update
        from nlc.runtime.trainer.diverged import nonfinite_gradients
        bad = nonfinite_gradients(model)
        optimizer.zero_grad(set_to_none=True)  # (slower levels lose their pending sums)
        return loss_sum, n_targets, grad_norm, bad
    step_levels(optimizer, step)
    return loss_sum, n_targets, grad_norm, []


def backward(logits, targets, n_targets: int, world) -> tuple[float, bool]:
    """Backpropagate the batch's (or a segment's) share of the mean loss; return its float64
    sum and whether every rank's sum was finite (if not, no rank runs the backward pass)."""
    token_losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                   ignore_index=IGNORE, reduction="none")
    # float64 sum of the per-token losses: the total does not depend on how ranks split them
    loss_sum = float(token_losses.detach().double().sum())
    if distributed.all_reduce_sums({"bad": float(not math.isfinite(loss_sum))}, world)["bad"]:
        return loss_sum, False
    # DDP averages gradients over ranks: scale so the average is d(total loss / n_targets)
    (token_losses.sum() * (world.world_size / max(1, n_targets))).backward()
    return loss_sum, True


def carried_backward(trained, model, optimizer, inputs, targets, n_targets: int, world, config,
                     autocast) -> tuple[float, bool]:
    """`backward` over the segments of `config.carry_state` tokens, the states carried
    (detached) between them: the gradients add up over the segments. `trained` runs the
    model (DDP-wrapped or compiled), `model` is the bare one the caches are made for. After
    a non-finite segment the rest are not backpropagated, and the gradients held before the
    step (slower levels' pending sums) are restored."""
    held = [(p, None if p.grad is None else p.grad.clone())
            for group in optimizer.param_groups for p in group["params"]]
    total, ok = 0.0, True

    def segment(start, end, logits):
        nonlocal total, ok
        if ok:
            loss_sum, ok = backward(logits, targets[:, start:end], n_targets, world)
            total += loss_sum

    with autocast():
        forward_segments(trained, inputs, config.carry_state, fresh_caches(model),
                         on_segment=segment)
    if not ok:
        for p, grad in held:
            p.grad = grad
    return total, ok


def report_divergence(model, batch, world, config, out: Path, done: int, optimizer,
                      spec: dict, loss: float = math.nan, bad_gradients=()) -> str:
    """Say where the first non-finite loss or gradient came from and how to go on; save the
    last finite weights (step done - 1) unless a checkpoint of that step exists, so there is a
    run to evaluate and to resume."""
    from nlc.runtime.trainer.diverged import describe_gradients, locate_nonfinite
    what = "the gradients are" if math.isfinite(loss) else "the loss is"
    bad = nonfinite_parameters(model)
    if bad and done > 1:  # the previous update wrote them: these weights are not finite
        return _diverged_in_update(config, out, done - 1, f"{what} not finite at step {done}",
                                   bad)
    if math.isfinite(loss):  # the forward pass was fine: the backward pass overflowed
        where = describe_gradients(loss, bad_gradients)
    else:
        where = locate_nonfinite(model, distributed.local_slice(batch[0], world).to(world.device))
    last = done - 1
    saved = out / "checkpoints" / f"step_{last:08d}"
    if world.is_main and not saved.is_dir():
        ckpt.save_checkpoint(out, last, model, optimizer, config, spec,
                             {"next_step": last, "seed": config.seed,
                              "world_size": world.world_size})
    distributed.barrier(world)
    source = config.spec if Path(config.spec).is_file() or config.spec.startswith("builtin:") \
        else out / "spec.nl"
    if last == 0:  # no update has been made: the learning rate is not the cause
        return (f"{what} not finite at step 1, before any update: {where}. The initial "
                f"weights are saved as {saved}; look at the spec's rates and gates")
    return (f"{what} not finite at step {done}: the run diverged; {where}. "
            f"Not saving that step; the last finite weights are {saved}. "
            f"To resume from them: nlc train {source} --out {out} --resume "
            f"--lr {config.lr / 10:g} "
            + ("(or a smaller --grad-clip)" if config.grad_clip > 0
               else "(or clip the gradients: --grad-clip 1)"))


def _diverged_in_update(config, out: Path, step: int, lead: str, bad: list[str]) -> str:
    """The optimizer's update of `step` left non-finite parameters (a division by zero in a
    compiled optimizer, eps = 0): nothing is saved, and the latest checkpoint, if any, is the
    one to resume from."""
    latest = ckpt.latest_checkpoint(out)
    text = (f"{lead}: the optimizer's update at step {step} "
            f"made parameters non-finite ({listed(bad)}); look at the "
            f"optimizer ({config.optimizer}: a division by a zero eps, a rate too large). "
            "Not saving these weights; ")
    if latest is None:
        return text + "no checkpoint was saved before them"
    return text + f"the latest checkpoint is {latest}, to resume from with a fixed optimizer"


@torch.no_grad()
def evaluate(model, task, world=None, autocast=None) -> dict:
    """The task's metrics on its fixed eval set; ranks split the set and add their counts."""
    world = world or distributed.World()
    autocast = autocast or contextlib.nullcontext
    was_training = model.training
    model.eval()
    sums = {"loss_sum": 0.0, "tokens": 0, "correct": 0, "counted": 0}
    for inputs, targets in task.eval_batches():
        inputs, targets = inputs[world.rank::world.world_size], targets[world.rank::world.world_size]
        if inputs.shape[0] == 0:
            continue
        with autocast():
            logits = forward(model, inputs.to(world.device), task.config)
        for key, value in task.score(logits, targets.to(world.device)).items():
            sums[key] += value
    model.train(was_training)
    return task.metrics(distributed.all_reduce_sums(sums, world))


def forward(model, inputs: torch.Tensor, config) -> torch.Tensor:
    """The logits of `inputs`, in segments with carried states under `config.carry_state`."""
    segment = getattr(config, "carry_state", 0)
    if not segment:
        return model(inputs)
    return torch.cat(forward_segments(model, inputs, segment)[0], 1)


def spec_record(config) -> dict:
    """What checkpoints store about the specs: the mixer's path, text and sha256, and under
    "mlp" and "optimizer" the same for the --mlp and --optimizer spec files (absent for
    builtins), so that a resumed run compares them by content, not by path."""
    text = spec_text(config.spec)
    record = {"path": config.spec, "text": text, "sha256": sha256_text(text)}
    for name in ckpt.SIDE_SPECS:
        path = getattr(config, name)
        if is_spec_file(path):
            text = spec_text(path)
            record[name] = {"path": path, "text": text, "sha256": sha256_text(text)}
    return record


def spec_copies(config, spec: dict) -> dict:
    """The run folder's copies of the spec files: file name -> text."""
    copies = {} if config.spec.startswith("builtin:") else {"spec.nl": spec["text"]}
    for name in ckpt.SIDE_SPECS:
        if name in spec:
            copies[f"{name}.nl"] = spec[name]["text"]
    return copies


def _refuse_changed_copies(out: Path, copies: dict) -> None:
    """A run resumed from a checkpoint never overwrites its copies of the specs with other
    text: the checkpoints were trained with the copies' text (`nlc eval` compiles them)."""
    for name, text in copies.items():
        copy = out / name
        if copy.is_file() and spec_text(str(copy)) != text:
            raise NlcError(f"{copy}: the run's copy of a spec differs from the spec this run "
                           "resumes with; it is not overwritten",
                           hint=f"resume with the copy as the spec, or move {copy} away")


def autocast_for(config, device: torch.device):
    """A context factory: bf16 autocast on CUDA when `config.bf16`, else nothing. Under CUDA
    graphs autocast's weight-cast cache is off: a graph must not hold casts from its capture."""
    if config.bf16 and device.type == "cuda":
        cache = not config.cuda_graphs
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext


def check_graphs(world) -> None:
    """CUDA graphs need one CUDA device: refused before the run folder exists."""
    if world.device.type != "cuda":
        raise NlcError(f"cuda_graphs needs a CUDA device; this run is on {world.device}",
                       hint="drop --cuda-graphs, or pass --device cuda")
    if world.world_size > 1:
        raise NlcError("cuda_graphs runs on one device; this run has "
                       f"{world.world_size} ranks", hint="drop --cuda-graphs or --nproc")


def use_tf32(world) -> None:
    """`--tf32`: float32 matmuls (cuBLAS) and the dual reads' float32 products
    (runtime/library/dual_triton.py) on TF32 tensor cores, for the rest of this process.
    Titans' LM step ran 1.38x faster so on an H100 (docs/perf.md, "sixth batch"); the effect
    on training is not measured. Refused before the run folder exists off CUDA."""
    if world.device.type != "cuda":
        raise NlcError(f"tf32 needs a CUDA device; this run is on {world.device}",
                       hint="drop --tf32, or pass --device cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    from nlc.runtime.library import dual_triton
    dual_triton.set_float32_precision("tf32")


def graphed(model, sample: torch.Tensor, world, config):
    """The model with its training forward and backward captured as CUDA graphs
    (`torch.cuda.make_graphed_callables`, which warms up on `sample` first). In eval mode it
    runs eagerly, so evaluation may use other shapes; training batches must keep the
    sample's shape."""
    sample = distributed.local_slice(sample, world).to(world.device)
    # the warm-up runs on a side stream, so the first replays' gradient accumulation meets
    # nodes from another stream: expected here, and only noise in the run's log
    if hasattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch"):
        torch.autograd.graph.set_warn_on_accumulate_grad_stream_mismatch(False)
    warnings.filterwarnings("ignore", message="Attempting to run cuBLAS, but there was no "
                            "current CUDA context")
    try:
        with autocast_for(config, world.device)():
            # a level can leave parameters out of a step's graph (a CMS level slower than
            # the sequence never updates): their gradients stay None, as in eager mode
            return torch.cuda.make_graphed_callables(model, (sample,), allow_unused_input=True)
    except RuntimeError as err:  # an op that syncs with the host or allocates per call
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise NlcError(f"cuda_graphs: capturing the model's step failed: {first}",
                       hint="run without --cuda-graphs") from None


def clip(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm` (0: off); return the norm before clipping."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))


def reached(metrics: dict, config) -> bool:
    """Whether an eval reached `config.stop_accuracy` (Zoology stops its MQAR runs at 0.99)."""
    return bool(config.stop_accuracy) and metrics.get("accuracy", 0.0) >= config.stop_accuracy


def format_metrics(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
