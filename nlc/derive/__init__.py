"""Stages `derive` and `classify`: checked levels -> `UpdateRule`s -> kernel families."""

from __future__ import annotations

from nlc.derive.budget import check_size, time_budget
from nlc.derive.engine import derive_level
from nlc.derive.rule import UpdateRule
from nlc.derive.symbols import SymbolTable


def derive(spec, dims: dict | None = None, param_shape=(2, 3)) -> list[UpdateRule]:
    """Every stateful level of a checked spec, derived. `dims` None keeps dimensions as
    symbols (for display); integers instantiate them (for checking)."""
    table = SymbolTable(spec, dims, param_shape)
    rules = []
    for lv in spec.levels:
        if lv.state is None:
            continue
        with time_budget(f"level '{lv.name}'", lv.span):
            rule = derive_level(spec, lv, table)
        for name, expr in rule.next_state:
            check_size(expr, f"level '{lv.name}', the new {name}", lv.span)
        rules.append(rule)
    return rules


__all__ = ["UpdateRule", "derive"]
