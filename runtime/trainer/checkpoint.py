"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

    RUN/checkpoints/step_00000100/
        model.safetensors       the model's state_dict
        optimizer.safetensors   the optimizer's tensors, keyed "PARAM_INDEX.NAME"
        state.json              format, nlc version, step, config, spec text and sha256,
                                optimizer class / param groups / non-tensor state,
                                RNG states, data position, and the size and sha256 of
                                both .safetensors files

A checkpoint is written into a hidden temporary folder, every file fsynced, the folder
fsynced, then renamed to its final name and the parent fsynced: a folder named `step_*` is
complete, whatever killed the writer. The last `keep_last` are kept.

Loading reads and checks everything first (sizes, hashes, spec, config shape, tensor names
and shapes) and only then assigns, so a refused checkpoint leaves the model untouched. Every
refusal is an `NlcError` naming the file and what is wrong.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from nlc.runtime.trainer.checkpoint_state import (TENSOR_FILES, check_optimizer_tensors,
                                                  check_state, finite_number)

from nlc import __version__
from nlc.errors import NlcError
from nlc.fileio import read_text

FORMAT = "nlc-checkpoint/1"


@dataclass
class Checkpoint:
    """A checkpoint read and checked, not yet applied."""

    path: Path
    state: dict  # state.json
    model: dict  # name -> tensor
    optimizer: dict | None  # the optimizer's state_dict, rebuilt (None: not read)

    @property
    def step(self) -> int:
        return self.state["step"]


# ---- writing ---------------------------------------------------------------------------

PENDING = "pending_grad"  # optimizer-file key of a slower level's summed gradient


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, config, spec: dict,
                    data: dict | None = None) -> Path:
    """Write RUN/checkpoints/step_NNNNNNNN atomically; keep the last `config.keep_last`."""
    from safetensors.torch import save_file

    folder = Path(run_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{step:08d}"
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()

    weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    opt_tensors, opt_state = split_optimizer_state(optimizer)
    save_file(weights, str(tmp / "model.safetensors"))
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    files = {}
    for name in TENSOR_FILES:
        fsync_file(tmp / name)
        files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
    state = {
        "format": FORMAT, "nlc_version": __version__, "step": step,
        "config": json.loads(config.to_json()), "spec": spec,
        "optimizer": opt_state, "rng": rng_state(),
        "data": data or {"next_step": step, "seed": config.seed},
        "files": files,
    }
    with open(tmp / "state.json", "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    if final.exists():  # the same step written again: only when a run is re-saved by hand
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(folder)
    prune(folder, config.keep_last)
    return final


def prune(folder: Path, keep_last: int) -> None:
    """Remove all but the newest `keep_last` checkpoints and any leftover temporary folders.

    Each old checkpoint is first renamed to a hidden trash name, durably, and only then
    deleted: a writer killed while deleting leaves a `.trash-*` folder (removed by the next
    prune), never a partly deleted `step_*`."""
    for stale in [*folder.glob(".step_*.tmp-*"), *folder.glob(".trash-step_*")]:
        shutil.rmtree(stale, ignore_errors=True)
    doomed = []
    for old in checkpoint_dirs(folder.parent)[:-keep_last]:
        trash = folder / f".trash-{old.name}-{os.getpid()}"
        os.rename(old, trash)
        doomed.append(trash)
    fsync_dir(folder)
    for trash in doomed:
        shutil.rmtree(trash, ignore_errors=True)
    fsync_dir(folder)


def split_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(tensors keyed "INDEX.NAME", JSON: class, param groups, scalars, param shapes)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in sd["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, p in enumerate(params):  # gradients a slower level sums until it steps
        if p.grad is not None:
            tensors[f"{index}.{PENDING}"] = p.grad.detach().to("cpu", copy=True).contiguous()
    cls = type(optimizer)
    return tensors, {"class": f"{cls.__module__}.{cls.__qualname__}",
                     "param_groups": sd["param_groups"], "scalars": scalars,
                     "param_shapes": [list(p.shape) for p in params]}


def rng_state() -> dict:
    """The generators' states as JSON: torch's (CPU, CUDA) as base64 bytes, Python's as lists."""
    def encode(t: torch.Tensor) -> str:
        return base64.b64encode(bytes(t.tolist())).decode()
    state = {"torch": encode(torch.get_rng_state()),
             "python": json.loads(json.dumps(random.getstate()))}
    if torch.cuda.is_available():
        state["cuda"] = [encode(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])),
                                         dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.frombuffer(bytearray(base64.b64decode(s)),
                                                       dtype=torch.uint8) for s in state["cuda"]])


# ---- reading ---------------------------------------------------------------------------

def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step_*") if p.is_dir() and p.name[5:].isdigit())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def read_checkpoint(path: str | Path, config=None, spec_sha256: str | None = None,
                    side_specs: dict | None = None, optimizer: bool = True) -> Checkpoint:
    """Read and check a checkpoint folder; refuse (NlcError) anything incomplete or foreign.

    With `config`, its shape fields (config.SHAPE_FIELDS) must equal the checkpoint's; with
    `spec_sha256`, so must the spec's hash. `side_specs` maps "mlp" and "optimizer" to the
    record of the spec file used now (`{"path", "text", "sha256"}`, None for a builtin):
    those are compared by content rather than by path (`check_side_specs`). Without
    `optimizer` (an evaluation) the optimizer's tensors are neither read nor checked.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    state_file = path / "state.json"
    if not path.is_dir():
        siblings = sorted(p.name for p in path.parent.glob("step_*")) if path.parent.is_dir() \
            else []
        raise NlcError(f"{path}: no such checkpoint folder", hint=(
            f"{path.parent} holds {', '.join(siblings[-3:])}" if siblings else
            "a checkpoint is a folder RUN/checkpoints/step_NNNNNNNN"))
    if not state_file.is_file():
        why = "not a regular file" if state_file.exists() else "missing"
        raise NlcError(f"{state_file}: {why}; {path} is not a complete checkpoint")
    try:
        state = json.loads(read_text(state_file, "checkpoint metadata"))
    except json.JSONDecodeError as err:
        raise NlcError(f"{state_file}: corrupt or truncated checkpoint metadata "
                       f"({err.__class__.__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise NlcError(f"{state_file}: not an nlc checkpoint (format "
                       f"{state.get('format') if isinstance(state, dict) else None!r}, "
                       f"expected {FORMAT!r})")
    missing = [key for key in ("step", "config", "spec", "optimizer", "rng", "files")
               if key not in state]
    if missing:
        raise NlcError(f"{state_file}: corrupt checkpoint metadata (missing "
                       f"{', '.join(missing)})")
    check_state(state_file, state)
    files = TENSOR_FILES if optimizer else ("model.safetensors",)
    for name in files:
        check_file(path / name, state["files"][name])
    if spec_sha256 is not None and state["spec"].get("sha256") != spec_sha256:
        raise NlcError(f"{state_file}: written for another spec: trained on "
                       f"{state['spec'].get('path')!r} as it was then (sha256 "
                       f"{str(state['spec'].get('sha256'))[:16]}...), the spec given now has "
                       f"sha256 {spec_sha256[:16]}... (the whole text counts, comments too)",
                       hint=f"`nlc eval RUN` and `nlc train --out RUN --resume` compile the "
                            f"run's own copy, {Path(path).parent.parent}/spec.nl; if that copy "
                            f"was edited, the text trained on is in {state_file} ('spec', "
                            "'text'); or train into a new --out folder")
    if config is not None:
        check_shape(state_file, state["config"], config, skip=tuple(side_specs or ()))
        if side_specs:
            check_side_specs(state_file, state, config, side_specs)
    tensors = {}
    for name in files:
        try:
            tensors[name] = load_file(str(path / name))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise NlcError(f"{path / name}: corrupt checkpoint tensors ({err})") from None
    if not optimizer:
        return Checkpoint(path, state, tensors["model.safetensors"], None)
    check_optimizer_tensors(path / "optimizer.safetensors", tensors["optimizer.safetensors"],
                            state["optimizer"]["param_shapes"])
    return Checkpoint(path, state, tensors["model.safetensors"],
                      rebuild_optimizer_state(state["optimizer"], tensors["optimizer.safetensors"],
                                              state_file))


def check_file(path: Path, expected: dict) -> None:
    if not path.is_file():
        raise NlcError(f"{path}: missing from the checkpoint")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise NlcError(f"{path}: truncated or overwritten checkpoint file "
                       f"({size} bytes, state.json records {expected['bytes']})")
    if sha256_file(path) != expected["sha256"]:
        raise NlcError(f"{path}: corrupt checkpoint file (sha256 differs from state.json)")


def _setting(value) -> str:
    """A config value as a user writes it: the spec's overrides as -D flags, whole floats
    without their '.0' ({'heads': 4.0} is `-D heads=4`)."""
    def number(v):
        return f"{v:g}" if isinstance(v, float) else repr(v)
    if isinstance(value, dict):
        return " ".join(f"-D {k}={number(v)}" for k, v in sorted(value.items())) or "none"
    return number(value)


def check_shape(state_file: Path, saved: dict, config, skip: tuple = ()) -> None:
    from nlc.runtime.trainer.config import SHAPE_FIELDS, TrainConfig
    # a field newer than the checkpoint (`layer`) had its default when it was written
    defaults = {name: getattr(TrainConfig(), name) for name in SHAPE_FIELDS}
    differ = [f"{name} {_setting(saved.get(name, defaults[name]))} in the checkpoint, "
              f"{_setting(getattr(config, name))} now"
              for name in SHAPE_FIELDS
              if name not in skip and saved.get(name, defaults[name]) != getattr(config, name)]
    if differ:
        refuse_shape(state_file, differ)


def refuse_shape(state_file: Path, differ: list[str]):
    raise NlcError(f"{state_file}: written for another model shape: " + "; ".join(differ),
                   hint="train into a new --out folder, or use the run's config")


SIDE_SPECS = ("mlp", "optimizer")  # spec files besides the mixer's; a run copies each to NAME.nl


def check_side_specs(state_file: Path, state: dict, config, side_specs: dict) -> None:
    """The --mlp and --optimizer specs must be those the checkpoint was trained with. A spec
    file is compared by the sha256 of its text, whatever its path (the run's own copy
    RUN/mlp.nl is the same spec as the file it was copied from); a builtin by its name. A
    checkpoint that records no hash (written before nlc recorded them) is compared with the
    run's copy, else by path."""
    from nlc.runtime.trainer.mixers import is_spec_file, sha256_text, spec_text
    run = state_file.parent.parent.parent
    for name, record in side_specs.items():
        before, now = state["config"].get(name), getattr(config, name)
        saved = state["spec"].get(name)
        copy = run / f"{name}.nl"
        if isinstance(saved, dict) and isinstance(saved.get("sha256"), str):
            trained = saved["sha256"]
        elif isinstance(before, str) and is_spec_file(before) and copy.is_file():
            trained = sha256_text(spec_text(str(copy)))
        else:
            trained = None
        if record is None or trained is None:  # a builtin, or nothing to compare but names
            if before != now:
                refuse_shape(state_file, [f"{name} {before!r} in the checkpoint, {now!r} now"])
            continue
        if trained != record["sha256"]:
            shown = f"its copy {copy}" if copy.is_file() else f"recorded in {state_file}"
            raise NlcError(
                f"{now}: differs from the --{name} spec the run {run} was trained with "
                f"({shown}; sha256 {trained[:16]}... there, {record['sha256'][:16]}... now)",
                hint=(f"resume with --{name} {copy} (the run's copy), or restore {now}"
                      if copy.is_file() else f"restore {now}")
                + "; to train the changed spec, choose another --out")


def rebuild_optimizer_state(saved: dict, tensors: dict, where: Path) -> dict:
    state: dict = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entries in saved["scalars"].items():
        both = sorted(set(entries) & set(state.get(int(index), {})))
        if both:  # a number standing in for a tensor of the optimizer's state
            raise NlcError(f"{where}: corrupt checkpoint metadata: "
                           f"'optimizer.scalars.{index}.{both[0]}' "
                           f"is also a tensor of parameter {index} in optimizer.safetensors")
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": saved["param_groups"]}


def apply_checkpoint(checkpoint: Checkpoint, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = True) -> None:
    """Check the tensors against `model` and `optimizer`, then assign them (all or nothing)."""
    where = checkpoint.path / "model.safetensors"
    expected = model.state_dict()
    missing = sorted(set(expected) - set(checkpoint.model))
    unexpected = sorted(set(checkpoint.model) - set(expected))
    if missing or unexpected:
        foreign = str(checkpoint.state.get("config", {}).get("spec", "")).startswith("builtin:")
        raise NlcError(f"{where}: tensors do not match the model (missing: "
                       f"{', '.join(missing[:5]) or '-'}; unexpected: {', '.join(unexpected[:5]) or '-'})",
                       hint="the model is rebuilt from the run's config.json (its spec, mlp and "
                            "dims); a run trained from Python with a mixer_factory of its own "
                            "records spec = builtin:attention, and is evaluated or resumed from "
                            "Python with the same factory (docs/runtime.md)" if foreign else None)
    for name, tensor in expected.items():
        if tuple(checkpoint.model[name].shape) != tuple(tensor.shape):
            raise NlcError(f"{where}: tensor {name} has shape {list(checkpoint.model[name].shape)},"
                           f" the model has {list(tensor.shape)}")
        if checkpoint.model[name].dtype != tensor.dtype:  # refused, never silently cast
            raise NlcError(f"{where}: tensor {name} has dtype {checkpoint.model[name].dtype}, "
                           f"the model has {tensor.dtype}")
    check_finite(where, checkpoint.model)
    if optimizer is not None:
        check_optimizer(checkpoint, optimizer)
        check_finite(checkpoint.path / "optimizer.safetensors",
                     {f"state {i} {k}": v for i, entries in checkpoint.optimizer["state"].items()
                      for k, v in dict(entries).items()})
    model.load_state_dict(checkpoint.model, strict=True)
    if optimizer is not None:
        saved = dict(checkpoint.optimizer)
        pending, state = {}, {}
        for index, entries in saved["state"].items():
            entries = dict(entries)
            if PENDING in entries:
                pending[int(index)] = entries.pop(PENDING)
            if entries:  # a slow parameter before its first step has only its pending sum
                state[index] = entries
        optimizer.load_state_dict({**saved, "state": state})
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for index, grad in pending.items():
            params[index].grad = grad.to(params[index].device, params[index].dtype)
    if restore_rng:
        set_rng_state(checkpoint.state["rng"])


def check_finite(where: Path, tensors: dict) -> None:
    """Refuse a checkpoint whose floating tensors hold NaN or inf: nothing trained or
    evaluated from it could be finite (a resume blamed the optimizer's first step for it)."""
    for name, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
            raise NlcError(f"{where}: corrupt checkpoint: tensor {name} holds non-finite "
                           "values (NaN or inf), so nothing resumed or evaluated from it can be "
                           "finite")


def check_optimizer(checkpoint: Checkpoint, optimizer: torch.optim.Optimizer) -> None:
    saved = checkpoint.state["optimizer"]
    where = checkpoint.path / "optimizer.safetensors"
    cls = type(optimizer)
    if class_key(saved["class"]) != class_key(f"{cls.__module__}.{cls.__qualname__}"):
        raise NlcError(f"{where}: state of optimizer {saved['class']}, this run uses "
                       f"{cls.__module__}.{cls.__qualname__}")
    shapes = [list(p.shape) for group in optimizer.param_groups for p in group["params"]]
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    if saved["param_shapes"] != shapes or [len(g["params"]) for g in saved["param_groups"]] != sizes:
        raise NlcError(f"{where}: optimizer state for other parameters "
                       f"({len(saved['param_shapes'])} saved, {len(shapes)} now, or other shapes)")
    check_groups(checkpoint.path / "state.json", saved, optimizer)


# group settings a resume takes from the checkpoint as saved: the learning rate (the
# schedule's) and its starting value
SCHEDULED = frozenset({"lr", "initial_lr"})


def check_groups(where: Path, saved: dict, optimizer: torch.optim.Optimizer) -> None:
    """The saved parameter groups against this run's optimizer, built from the same config:
    each group lists its parameters in order, has the same settings, each a value of the same
    kind (a finite number, a list of as many, or a flag or None equal to this run's: a saved
    `maximize: true` would climb the loss, `every` freeze a level), and each parameter's
    non-tensor state (`scalars`) finite numbers not named like its tensors."""
    def refuse(what: str):
        raise NlcError(f"{where}: corrupt checkpoint metadata: {what}")
    start = 0
    for i, (theirs, mine) in enumerate(zip(saved["param_groups"], optimizer.param_groups)):
        if theirs["params"] != list(range(start, start + len(mine["params"]))):
            refuse(f"'optimizer.param_groups[{i}].params' must be "
                   f"{list(range(start, start + len(mine['params'])))}")
        start += len(mine["params"])
        keys = set(mine) - {"params"}
        if set(theirs) - {"params"} - SCHEDULED != keys - SCHEDULED:
            refuse(f"'optimizer.param_groups[{i}]' has settings "
                   f"{sorted(set(theirs) - {'params'})}, this run's optimizer "
                   f"{sorted(keys)}")
        for key in sorted(keys - SCHEDULED):
            if not _same_kind(theirs[key], mine[key]):
                refuse(f"'optimizer.param_groups[{i}].{key}' is {theirs[key]!r}; this run's "
                       f"optimizer has {mine[key]!r}")
    for index, values in saved["scalars"].items():
        for name, value in values.items():
            if not finite_number(value):
                refuse(f"'optimizer.scalars.{index}.{name}' must be a finite number")


def _same_kind(saved, mine) -> bool:
    """Whether a saved group setting can stand for this run's: numbers for numbers (finite),
    lists of as many numbers for tuples, anything else (flags, None, the period) equal."""
    if isinstance(mine, (tuple, list)):
        return isinstance(saved, (tuple, list)) and len(saved) == len(mine) and all(
            finite_number(a) for a in saved)
    if isinstance(mine, float) and math.isfinite(mine):
        return finite_number(saved)
    return saved == mine and type(saved) is type(mine)


def class_key(name: str) -> str:
    """An optimizer class's name as checkpoints compare it. A class compiled from a spec lives
    in a module named after the spec's file (`nlc_generated_o.SGDMomentum` for o.nl), which
    differs for the run's copy optimizer.nl: that name is left out, since the spec's text is
    compared by hash (`check_side_specs`)."""
    module, _, qualname = name.rpartition(".")
    return f"nlc_generated.{qualname}" if module.startswith("nlc_generated_") else name


# ---- files -----------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable (POSIX; a no-op where folders can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
