"""A level's read against the read its catalog entry's paper states.

A published layer outputs its memory applied to the query, at the state after the token's
write (`o_t = S_t q_t`; an MLP memory's forward pass at q_t). A spec whose update equals an
entry's but reads otherwise (before the write, at the chunk start, or with a term added, as
RWKV-6's bonus `<r, u * k> v`) is not that model. The comparison is numeric, in float64 at
the dims the update is compared at: the level's read against the catalog's own application
of the memory (nlc/catalog/reference.py), with the query the read applies the memory to."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import sympy as sp

from nlc.catalog.models import CatalogEntry, Roles
from nlc.catalog.reference import memory_read
from nlc.derive.evaluate import Evaluator
from nlc.derive.rule import UpdateRule
from nlc.verify.equality import TOLERANCE, _draw, _inputs

# where a read meets the state, as the verdict says it
WHEN = {"after": "after the write", "before": "before the write",
        "start": "at the chunk start"}


def _when(rule: UpdateRule, read) -> str | None:
    """Which state the read meets: after, before or start (None: none of them)."""
    names = {getattr(a, "name", None) for a in _inputs([read])}
    states = [n for n, _ in rule.states if not n.endswith("_mom")]
    if any(f"{n}_next" in names for n in states):
        return "after"
    if any(getattr(a, "name", None) in names for _, a in rule.anchors):
        return "start"
    if names & set(states):
        return "before"
    return None


def _tensors(rule: UpdateRule, when: str) -> list:
    """The memory's tensors as the read meets them: the new ones (`S_next`), the old ones or
    the chunk-start anchors."""
    main = [(n, s) for n, s in rule.states if not n.endswith("_mom")]
    if when == "after":
        return [sp.MatrixSymbol(f"{n}_next", *s.shape) for n, s in main]
    if when == "start":
        return [a for _, a in rule.anchors]
    return [s for _, s in main]


def read_difference(rule: UpdateRule, roles: Roles, entry: CatalogEntry,
                    rng: np.random.Generator, positive: bool) -> str:
    """Empty if the level reads as the entry's paper does, else why not, in words."""
    if entry.kind == "optimizer":  # its value is its state after the write (Adam's moment;
        # M3's slow momentum, every C steps, holds its chunk-start value through the chunk)
        when = _when(rule, rule.read) if rule.read is not None else "after"
        return f"it reads {WHEN[when]} ({entry.id} is its state after the write)" \
            if when == "before" else ""
    if entry.read is None:
        return ""
    theirs = f"{entry.id} reads the memory applied to the query {WHEN[entry.read]}"
    if rule.read is None:
        return f"the level has no read ({theirs})"
    when = _when(rule, rule.read)
    if when is not None and roles.q is None:
        roles = replace(roles, q=_product_query(rule, when))
    if roles.q is None or when is None:
        return f"its read does not apply the memory to a query ({theirs})"
    differ = [f"it reads {WHEN[when]}"] if when != entry.read else []
    value = _value_difference(rule, roles, entry, when, rng, positive)
    return "; ".join(differ + ([value] if value else [])) + f" ({theirs})" \
        if differ or value else ""


def _product_query(rule: UpdateRule, when: str):
    """The query of a read written as a product with the state, `q @ W` (compared as
    S_next q, `verify.as_read`), which names no call of the memory; else None."""
    read, tensors = rule.read, _tensors(rule, when)
    if (rule.form.kind == "matrix" and isinstance(read, sp.MatMul) and len(read.args) == 2
            and read.args[0] == tensors[0]):
        return read.args[1]
    return None


def _value_difference(rule: UpdateRule, roles: Roles, entry: CatalogEntry, when: str,
                      rng: np.random.Generator, positive: bool) -> str:
    """Whether the read is the memory applied to its query, at the state it meets (through
    the entry's `read_weights`, if it has them)."""
    tensors = _tensors(rule, when)
    ev = Evaluator({x: _draw(x, rng, positive) for x in _inputs([rule.read, roles.q])})
    q = np.asarray(ev(roles.q), dtype=np.float64)
    weights = [np.asarray(ev(t), dtype=np.float64) for t in tensors]
    if entry.read_weights is not None:
        weights = [entry.read_weights(w) for w in weights]
    expected = memory_read(rule.form, weights, q.reshape(-1, 1)).ravel()
    mine = np.asarray(ev(rule.read), dtype=np.float64).ravel()
    if mine.shape != expected.shape:
        return f"its read has {mine.size} entries, not the memory's {expected.size}"
    error = float(np.linalg.norm(mine - expected) / max(np.linalg.norm(expected), 1e-300))
    if not error < TOLERANCE:
        return f"its read is not the memory applied to the query (rel err {error:.1e})"
    return ""
