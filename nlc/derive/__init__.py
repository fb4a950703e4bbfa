"""Stages `derive` and `classify`: checked levels -> `UpdateRule`s -> kernel families."""

from __future__ import annotations

from nlc.derive.engine import derive_level
from nlc.derive.rule import UpdateRule
from nlc.derive.symbols import SymbolTable


def derive(spec, dims: dict | None = None, param_shape=(2, 3)) -> list[UpdateRule]:
    """Every stateful level of a checked spec, derived. `dims` None keeps dimensions as
    symbols (for display); integers instantiate them (for checking)."""
    table = SymbolTable(spec, dims, param_shape)
    return [derive_level(spec, lv, table) for lv in spec.levels if lv.state is not None]


__all__ = ["UpdateRule", "derive"]
