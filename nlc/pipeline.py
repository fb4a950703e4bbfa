"""The compiler as a flat list of named stages (docs/design.md, "The stages").

Each stage is a pure function from the previous stage's output; `STAGES` orders them and
names their text forms, which `--stop-after STAGE --dump` prints. Later stages import their
packages lazily so that `nlc check` never loads torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nlc.errors import NlcError
from nlc.fileio import read_spec  # shared with the trainer, which copies specs into runs


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable            # (previous output, options) -> output
    dump: Callable           # output -> text


def _parse(source: tuple[str, str], options: dict):
    from nlc.syntax import parse
    text, path = source
    return parse(text, path)


def _dump_parse(module) -> str:
    from nlc.syntax.dump import dump_ast
    return dump_ast(module)


def _check(module, options: dict):
    from nlc.catalog.ids import check_claims
    from nlc.levels import check
    specs = check(module, options.get("overrides"))
    check_claims(specs, options.get("source"))
    return specs


def _dump_check(specs) -> str:
    from nlc.levels.draw import draw
    return draw(specs, "text")


def _derive(specs, options: dict):
    """Every level, derived once with the dims as symbols (a generated layer takes its sizes
    as arguments); models have no levels of their own."""
    from nlc.derive import derive
    return [(spec, () if spec.blocks else tuple(derive(spec))) for spec in specs]


def _dump_derive(pairs) -> str:
    return "".join(rule.to_text() for _, rules in pairs for rule in rules)


def _classify(pairs, options: dict):
    from nlc.derive.classify import classify
    from nlc.derive.execution import Classified, execution
    out = []
    for spec, rules in pairs:
        constants = frozenset(n for n, _ in spec.dims) | frozenset(n for n, _ in spec.hypers) \
            | frozenset(p.name for p in spec.params)
        items = []
        for rule in rules:
            family = classify(rule)
            items.append(Classified(rule, family, execution(rule, family, constants)))
        out.append((spec, tuple(items)))
    return out


def _dump_classify(items) -> str:
    return "".join(c.to_text() for _, classified in items for c in classified)


def _plan(items, options: dict):
    from nlc.plan import plan
    return plan(items, options.get("path", ""))


def _dump_plan(plans) -> str:
    from nlc.plan.records import to_text
    return "".join(to_text(p) for p in plans.records)


def _emit(plans, options: dict):
    from nlc.emit import emit
    return emit(plans, options.get("source"), options.get("path", ""))


def _dump_emit(outputs) -> str:
    return "".join(f"# ---- {module}.py\n{code}" for module, code in outputs.items())


STAGES: dict[str, Stage] = {
    "parse": Stage("parse", _parse, _dump_parse),
    "check": Stage("check", _check, _dump_check),
    "derive": Stage("derive", _derive, _dump_derive),
    "classify": Stage("classify", _classify, _dump_classify),
    "plan": Stage("plan", _plan, _dump_plan),
    "emit": Stage("emit", _emit, _dump_emit),
}


def run(path: str, stop_after: str = "check", options: dict | None = None, text: str | None = None):
    """Run the stages up to and including `stop_after`; return that stage's output."""
    if stop_after not in STAGES:
        raise NlcError(f"unknown stage '{stop_after}' (stages: {', '.join(STAGES)})")
    value = (read_spec(path) if text is None else text, path)
    source_text = value[0]
    options = {**(options or {}), "source": source_text, "path": path}  # to locate errors
    for stage in STAGES.values():
        try:
            value = stage.run(value, options)
        except NlcError as err:
            raise err.located(path, source_text) from None
        if stage.name == stop_after:
            return value
    return value
