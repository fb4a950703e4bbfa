"""What a checkpoint's state.json must hold before anything in it is used.

state.json is plain JSON a person can edit; every value the loader will use is checked
here, each refusal an `NlcError` naming the file and the field: the step (a whole number
>= 0, the one in the folder's name), the file records, the optimizer's class, groups
(`every` a whole number >= 1), scalars and parameter shapes, and the RNG states (decodable,
of the right sizes). The tensors' names, shapes and dtypes are checked against the model
and optimizer when applied (runtime/trainer/checkpoint.py)."""

from __future__ import annotations

import base64
import binascii
import math
import random
from pathlib import Path

import torch

from nlc.errors import NlcError

TENSOR_FILES = ("model.safetensors", "optimizer.safetensors")
MT_STATE_WORDS = 625  # Python's Mersenne Twister state: 624 words and a position


def _whole(value, at_least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= at_least


def finite_number(value) -> bool:
    """A JSON number (not a flag) that is finite."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def check_state(state_file: Path, state: dict) -> None:
    def refuse(what: str):
        raise NlcError(f"{state_file}: corrupt checkpoint metadata: {what}")

    step = state["step"]
    if not _whole(step):
        refuse(f"'step' must be a whole number >= 0, got {step!r}")
    folder = state_file.parent.name
    if folder.startswith("step_") and folder[5:].isdigit() and int(folder[5:]) != step:
        refuse(f"'step' is {step}, the folder is {folder}")
    files = state["files"]
    if not isinstance(files, dict):
        refuse(f"'files' must be an object, got {type(files).__name__}")
    for name in TENSOR_FILES:
        record = files.get(name)
        if not (isinstance(record, dict) and _whole(record.get("bytes"))
                and isinstance(record.get("sha256"), str)):
            refuse(f"'files' needs {name}: {{\"bytes\": N, \"sha256\": HEX}}")
    if not isinstance(state["config"], dict):
        refuse("'config' must be an object")
    spec = state["spec"]  # {} when saved without a spec record (a caller's own module)
    if not isinstance(spec, dict) or not isinstance(spec.get("sha256", ""), str):
        refuse("'spec' must be an object, its 'sha256' a string")
    _check_optimizer(state["optimizer"], refuse)
    _check_rng(state["rng"], refuse)


def _check_optimizer(saved, refuse) -> None:
    if not isinstance(saved, dict):
        refuse("'optimizer' must be an object")
    if not isinstance(saved.get("class"), str):
        refuse("'optimizer.class' must be a string")
    shapes = saved.get("param_shapes")
    if not (isinstance(shapes, list) and all(isinstance(s, list) and all(_whole(d) for d in s)
                                             for s in shapes)):
        refuse("'optimizer.param_shapes' must be a list of shapes")
    groups = saved.get("param_groups")
    if not (isinstance(groups, list) and all(isinstance(g, dict) for g in groups)):
        refuse("'optimizer.param_groups' must be a list of objects")
    for i, group in enumerate(groups):
        params = group.get("params")
        if not (isinstance(params, list) and all(_whole(p) and p < len(shapes) for p in params)):
            refuse(f"'optimizer.param_groups[{i}].params' must list parameter indices "
                   f"below {len(shapes)}")
        if "every" in group and not _whole(group["every"], 1):
            refuse(f"'optimizer.param_groups[{i}].every' must be a whole number >= 1, "
                   f"got {group['every']!r}")
        if "lr" in group and not finite_number(group["lr"]):
            refuse(f"'optimizer.param_groups[{i}].lr' must be a finite number")
    scalars = saved.get("scalars")
    if not (isinstance(scalars, dict) and all(
            isinstance(v, dict) and k.isdigit() and int(k) < len(shapes)
            for k, v in scalars.items())):
        refuse("'optimizer.scalars' must map parameter indices to objects")


def check_optimizer_tensors(where: Path, tensors: dict, shapes: list) -> None:
    """Keys "INDEX.NAME" with INDEX a parameter; state tensors floating point, and shaped
    like their parameter unless they are scalars (AdamW's step)."""
    for key, tensor in tensors.items():
        index, _, name = key.partition(".")
        if not (index.isdigit() and name and int(index) < len(shapes)):
            raise NlcError(f"{where}: tensor key {key!r} is not PARAM_INDEX.NAME for one of "
                           f"the {len(shapes)} parameters")
        if not tensor.is_floating_point():
            raise NlcError(f"{where}: tensor {key} has dtype {tensor.dtype}; optimizer state "
                           "is floating point")
        if tensor.dim() and list(tensor.shape) != shapes[int(index)]:
            raise NlcError(f"{where}: tensor {key} has shape {list(tensor.shape)}, its "
                           f"parameter {shapes[int(index)]}")


def _decode(text, refuse, what: str) -> bytes:
    if not isinstance(text, str):
        refuse(f"'{what}' must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        refuse(f"'{what}' is not valid base64")


def _check_rng(rng, refuse) -> None:
    if not isinstance(rng, dict):
        refuse("'rng' must be an object")
    size = torch.get_rng_state().numel()
    if len(_decode(rng.get("torch"), refuse, "rng.torch")) != size:
        refuse(f"'rng.torch' must decode to {size} bytes")
    python = rng.get("python")
    if not (isinstance(python, list) and len(python) == 3
            and python[0] == random.getstate()[0] and _whole(python[0])
            and isinstance(python[1], list) and len(python[1]) == MT_STATE_WORDS
            and all(_whole(w) and w < 2 ** 32 for w in python[1][:-1])
            and _whole(python[1][-1]) and python[1][-1] <= MT_STATE_WORDS - 1
            and (python[2] is None or finite_number(python[2]))):
        refuse("'rng.python' is not a state of Python's random module")
    cuda = rng.get("cuda", [])
    if not isinstance(cuda, list):
        refuse("'rng.cuda' must be a list")
    for i, item in enumerate(cuda):
        _decode(item, refuse, f"rng.cuda[{i}]")
