"""Stage `plan`: checked specs and their classified rules -> frozen records of the generated
module (nlc/plan/records.py). Emit (nlc/emit) prints these records and decides nothing."""

from __future__ import annotations

from dataclasses import dataclass

from nlc.errors import NlcError


@dataclass(frozen=True)
class Plans:
    """A spec file's plan: its layers (and models) or its optimizers."""

    stem: str                   # the generated module's name
    layers: tuple = ()
    models: tuple = ()
    optimizers: tuple = ()      # (checked spec, its derived rules): printed by emit
    specs: tuple = ()           # the checked specs (emit locates its refusals on them)

    @property
    def records(self) -> tuple:
        return self.layers + self.models + tuple(
            OptimizerRecord(spec.name, spec.hypers, tuple(r.level for r in rules),
                            tuple(n for r in rules for n, _ in r.states))
            for spec, rules in self.optimizers)


@dataclass(frozen=True)
class OptimizerRecord:
    """An optimizer's plan: its levels' derived rules, printed per parameter by emit
    (nlc/emit/optimizer.py); the hypers are the class's keyword arguments."""

    name: str
    hypers: tuple
    levels: tuple[str, ...]
    states: tuple[str, ...]


def plan(items, path: str) -> Plans:
    """`items` is stage classify's output: (checked spec, its classified levels) per spec."""
    from pathlib import Path

    from nlc.emit.render import prose, spec_module_name
    from nlc.plan.layer import layer_plan, model_plan
    stem = spec_module_name(path)
    kinds = {spec.kind.value for spec, _ in items}
    if "layer" in kinds and "optimizer" in kinds:
        raise NlcError("a spec file compiles to layers or to optimizers, not both")
    if "optimizer" in kinds:
        return Plans(stem, optimizers=tuple((spec, tuple(c.rule for c in found))
                                            for spec, found in items
                                            if spec.kind.value == "optimizer"),
                     specs=tuple(spec for spec, _ in items))
    layers = [(spec, found) for spec, found in items if spec.kind.value == "layer"]
    if not layers:
        raise NlcError("the spec declares no layer or optimizer to compile")
    name = prose(Path(path).name)
    plans = tuple(layer_plan(spec, found, name, f"{spec.name}_" if len(layers) > 1 else "",
                             stem) for spec, found in layers)
    models = tuple(model_plan(spec, list(plans)) for spec, _ in items
                   if spec.kind.value == "model")
    return Plans(stem, plans, models, specs=tuple(spec for spec, _ in items))
