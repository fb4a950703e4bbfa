"""Whether a coupled group has the fused group kernels' form (runtime/library/mlp_group.py):
four MLP memories read at the chunk start, whose reads are the group's key, value, rate and
retention, each state two maps W1 `[F, d]` and W2 `[d, F]` whose transitions are
`W1 (alpha I - eta k k^T) + drive` and `alpha W2 + drive`.

What is read here from the derived rules (the frozen split's transitions, the reads' kinds
and names) is a proposal, printed into the group op as `nl.FusedGroup(...)`: the runtime
checks it against the group's own token loop before the kernels run
(runtime/library/fused_group.py `verified`), so a proposal that is wrong costs nothing but the
check. Returns the printed proposal, or None."""

from __future__ import annotations

import sympy as sp

from nlc.derive.execution import FrozenSplit


def _name(e) -> str | None:
    return e.name if isinstance(e, (sp.Symbol, sp.MatrixSymbol)) else None


def fused_group(gp, levels: dict) -> str | None:
    """The `nl.FusedGroup(...)` code for group plan `gp` (levels: name -> LevelPlan)."""
    if gp.chunk is None or len(gp.members) != 4 or len(gp.tokens) != 1 \
            or gp.tokens[0].kind != "vector":
        return None
    members = [levels[n] for n in gp.members]
    roles = set()
    states = {}
    for lp in members:
        ex = lp.execution
        if not isinstance(ex, FrozenSplit) or not ex.transitions or len(lp.states) != 2 \
                or len(ex.transitions) != 2 or lp.anchor_every != gp.chunk:
            return None
        first, second = ex.transitions
        s1, s2 = lp.states
        if (s1.rows, s1.cols) != (s2.cols, s2.rows) or first[0] != s1.name \
                or second[0] != s2.name or second[2] is not None or first[2] is None:
            return None
        retain, erase, left, right = first[1:5]
        if not isinstance(erase, sp.Mul) or erase.args[0] != -1 or len(erase.args) != 2 \
                or right != left.T or second[1] != retain:
            return None
        roles.add((_name(left), _name(erase.args[1]), _name(retain)))
        states[lp.name] = (s1.name, s2.name)
    if len(roles) != 1:
        return None
    key, rate, retention = roles.pop()
    names = set(gp.members)
    if not {key, rate, retention} <= names or len({key, rate, retention}) != 3:
        return None
    value, = names - {key, rate, retention}
    kinds = {lp.name: lp.read_kind for lp in members}
    if (kinds[key], kinds[value], kinds[rate], kinds[retention]) != \
            ("vector", "vector", "scalar", "scalar"):
        return None
    params = {p.name for p in gp.params}
    biases = []
    for name in (rate, retention):
        found = {s.name for s in levels[name].rule.read.free_symbols} & params
        if len(found) != 1:
            return None
        biases.append(found.pop())
    norms = tuple(str(levels[n].rule.read).startswith("l2norm(") for n in (key, value))
    order = (key, value, rate, retention)
    return (f"nl.FusedGroup({order!r}, {tuple(states[n] for n in order)!r}, "
            f"{gp.tokens[0].name!r}, {norms!r}, {tuple(biases)!r})")
