"""Size limits a checked spec must keep: the number of parameters it declares and the number
of state entries one sequence carries. Each dim is capped at 2^20 on its own, but a product
of a few such dims is terabytes; this refuses the product at check time, before anything is
allocated (docs/language.md, "Limits").

The limit is MAX_ELEMENTS entries (4,294,967,296: 16 GiB in float32), raised or lowered with
the environment variable NLC_MAX_PARAMS."""

from __future__ import annotations

import itertools
import math
import os

from nlc.errors import NlcError, Span
from nlc.levels.records import LevelRecord, ParamRecord, Shape, shape_text

MAX_ELEMENTS = 1 << 32
LIMIT_VARIABLE = "NLC_MAX_PARAMS"


def element_limit() -> int:
    """The limit in force: NLC_MAX_PARAMS when set (a positive whole number), else MAX_ELEMENTS."""
    text = os.environ.get(LIMIT_VARIABLE)
    if text is None or not text.strip():
        return MAX_ELEMENTS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise NlcError(f"{LIMIT_VARIABLE}={text!r} is not a positive whole number")
    return value


def _count(shape: Shape) -> int:
    return math.prod(d.size for d in shape if d.size > 0)  # like(param) sizes are not known


def _state_entries(level: LevelRecord) -> int:
    total = 0
    for state in level.states:
        form = state.form
        if form.kind == "mlp":  # one weight matrix between consecutive widths
            sizes = [d.size for d in form.dims]
            total += sum(a * b for a, b in itertools.pairwise(sizes))
        else:
            total += _count(form.state_shape)
    return total


def check_sizes(dims: dict[str, int], params: list[ParamRecord], levels: list[LevelRecord],
                span: Span) -> None:
    """Refuse a spec whose parameters, or whose per-sequence state, exceed the limit; the
    error points at the parameter (or level) that crosses it and gives the count."""
    limit = element_limit()
    heads = dims.get("heads", 1)
    total = 0
    for p in params:
        size = heads * _count(p.shape)
        total += size
        if total > limit:
            per_head = f" x {heads} heads" if heads > 1 else ""
            raise NlcError(f"the parameters total {total:,} entries, more than the limit of "
                           f"{limit:,}: '{p.name}' {shape_text(p.shape)}{per_head} alone is "
                           f"{size:,}", p.span,
                           hint=f"use smaller dims, or set {LIMIT_VARIABLE} to raise the limit")
    states = 0
    for level in levels:
        states += heads * _state_entries(level)
        if states > limit:
            raise NlcError(f"one sequence's memory states total {states:,} entries, more than "
                           f"the limit of {limit:,} (at level '{level.name}')",
                           level.span if level.span.known else span,
                           hint=f"use smaller dims, or set {LIMIT_VARIABLE} to raise the limit")
