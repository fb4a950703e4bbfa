"""What a training run is built from, compiled from its specs: the compiler's half of
`nlc train`, `nlc eval` and `nlc demo`. The trainer (nlc.runtime.trainer) is handed these and
never imports the compiler.

    mixer_from_spec("examples/deltanet.nl", heads=4)  ->  factory(d_model) -> nn.Module
    mixer_from_spec("builtin:attention")              ->  the trainer's softmax attention
    block_mlp_factory("examples/cms.nl", 4)           ->  factory(d_model) -> nn.Module | None
    optimizer_from_spec("examples/muon.nl")           ->  a torch.optim.Optimizer subclass
    factories_for(config)                             ->  the three as train() takes them

A layer spec is compiled by `nlc.emit.load_layer(path, d_model=D, **overrides)` at the
model's width D (every layer spec declares `dims d_model`) when the trainer first calls the
factory, which returns an `nn.Module` class constructed as `cls(d_model=D)`. nlc.emit is
imported only when a spec is used, so a builtin run does not load the compiler.
"""

from __future__ import annotations

from pathlib import Path

import torch
from nlc.runtime.trainer.mixers import (builtin_block_mlp, builtin_mixer, is_builtin,
                                        missing_spec_hint)
from nlc.runtime.trainer.model import ModuleFactory

from nlc.errors import NlcError


def mixer_from_spec(path: str, name: str = "", /, **dims) -> ModuleFactory:
    """A factory `d_model -> nn.Module` for a layer spec (`.nl`) or a builtin name.

    `name` picks a layer or model of the file by name (`nlc train --layer NAME`; default:
    its one layer, or its one model); `dims` override the spec's dims and hypers (as
    `nlc train -D NAME=VALUE` does).
    """
    if path.startswith("builtin:"):
        return builtin_mixer(path, **dims)
    _refuse_not_a_file(path, "spec file", missing_spec_hint(path))
    if name and dims:
        _refuse_overrides_of_others(path, name, dims)
    from nlc.emit import load_declaration
    compiled: dict[int, type] = {}

    def layer(d_model: int):
        # the spec's d_model is the model's width: compile at that width, once per width
        if dims.get("d_model", d_model) != d_model:
            raise NlcError(f"{path}: -D d_model={dims['d_model']:g} differs from the model's "
                           f"width {d_model}; set the width with --d-model")
        if d_model not in compiled:
            try:
                compiled[d_model] = load_declaration(path, name, "layer",
                                                     {**dims, "d_model": d_model})
            except OSError as err:  # the generated module's file, named after the spec
                raise NlcError(f"{path}: cannot write the compiled module ({err.strerror}); "
                               "is the spec's file name too long?") from None
        return compiled[d_model](d_model=d_model)
    return layer


def _refuse_not_a_file(path: str, what: str, hint: str) -> None:
    """A spec path that names no regular file: nothing, a folder, a device."""
    if not path.strip():
        raise NlcError(f"the {what} is an empty path", hint=hint)
    if Path(path).is_dir():
        raise NlcError(f"{path}: a folder, not a{'n' if what[0] in 'aeiou' else ''} {what}",
                       hint="name one .nl file")
    if Path(path).exists() and not Path(path).is_file():
        raise NlcError(f"{path}: not a regular file (a device or a pipe), so no {what}",
                       hint="name a .nl file")
    if not Path(path).is_file():
        raise NlcError(f"{path}: no such {what}", hint=hint)


def _refuse_overrides_of_others(path: str, name: str, dims: dict) -> None:
    """-D names that the file knows but the declaration `name` (and the layers its blocks
    use) does not: with --layer the others are not trained, so the override would do
    nothing."""
    from nlc import pipeline
    specs = {s.name: s for s in pipeline.run(path, "check", {"overrides": dims})}
    if name not in specs:
        return  # load_declaration names the declarations there are
    own, todo = set(), [name]
    while todo:
        spec = specs.get(todo.pop())
        if spec is not None:
            own |= {n for n, _ in spec.dims + spec.hypers}
            todo += [b for b in spec.blocks if b in specs]
    for key in dims:
        if key not in own:
            owners = sorted(s.name for s in specs.values()
                            if key in {n for n, _ in s.dims + s.hypers})
            raise NlcError(f"-D {key}: not a dim or hyper of {name}, the declaration --layer "
                           f"trains (it is {', '.join(owners)}'s)",
                           hint=f"drop -D {key}, or train {owners[0]} with --layer "
                                f"{owners[0]}")


def block_mlp_factory(name: str, ratio: int) -> ModuleFactory:
    """The second half of each block: `builtin:mlp` (width ratio*d), `none`, or a spec."""
    if is_builtin(name):
        return builtin_block_mlp(name, ratio)
    return mixer_from_spec(name)


def optimizer_from_spec(path: str, **overrides) -> type[torch.optim.Optimizer]:
    """The `torch.optim.Optimizer` subclass compiled from an optimizer spec."""
    _refuse_not_a_file(path, "optimizer spec", "an optimizer spec (.nl), or --optimizer adamw")
    from nlc.emit import load_optimizer
    cls = load_optimizer(path, **overrides)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise NlcError(f"{path}: compiles to {getattr(cls, '__name__', cls)!s}, "
                       "not a torch.optim.Optimizer (is it a layer spec?)")
    return cls


def factories_for(config) -> dict:
    """`train`'s keyword arguments for `config`: its mixer and block MLP as factories, its
    optimizer as a class (None for AdamW), each compiled when it names a spec file."""
    optimizer = config.optimizer
    return {"mixer_factory": mixer_from_spec(config.spec, config.layer,
                                             **config.spec_overrides),
            "mlp_factory": block_mlp_factory(config.mlp, config.mlp_ratio),
            "optimizer_class": (None if optimizer.lower() == "adamw"
                                else optimizer_from_spec(optimizer))}
