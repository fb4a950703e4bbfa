"""Whether a level has the walk kernels' form (runtime/library/mlp_walk_triton.py): a
frozen-gradient MLP memory `[x +] W2 act(W1 x)` with two maps, read before each token's write
as the memory applied to one token input, whose chunk runs the frozen split's affine
transitions with drives as outer products (Hope's main memory, examples/hope.nl).

What is read here from the derived rule (the state's form, the read's shape, the transitions)
is a proposal, printed into the level op as `nl.MLPWalk(...)`: the runtime checks it on the
level's own chunked form before the kernels run (runtime/library/fused_walk.py `verified`),
so a wrong proposal costs nothing but the check. Returns the printed proposal, or None."""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from nlc.derive.execution import FrozenSplit

ACTS = ("gelu", "silu", "identity")


def _applied(read, W1, W2, act: str):
    """The token x where `read` is W2 act(W1 x) (act identity: W2 W1 x), else None."""
    if not isinstance(read, sp.MatMul):
        return None
    factors = list(read.args)
    if act == "identity":
        if len(factors) == 3 and factors[0] == W2 and factors[1] == W1:
            return factors[2]
        return None
    if len(factors) != 2 or factors[0] != W2 or not isinstance(factors[1],
                                                               ElementwiseApplyFunction):
        return None
    inner = factors[1].args[1]
    if not isinstance(inner, sp.MatMul) or len(inner.args) != 2 or inner.args[0] != W1:
        return None
    return inner.args[1]


def mlp_walk(lp) -> str | None:
    """The `nl.MLPWalk(...)` code for level plan `lp`, or None."""
    ex, rule = lp.execution, lp.rule
    form = getattr(rule, "form", None)
    if not isinstance(ex, FrozenSplit) or not (ex.low_rank and ex.left_read) \
            or not lp.read_before or lp.group or form is None or form.kind != "mlp" \
            or len(form.dims) != 3 or form.act not in ACTS or form.norm \
            or len(lp.states) != 2 or len(ex.transitions) != 2:
        return None
    s1, s2 = lp.states
    first, second = ex.transitions
    if first[0] != s1.name or second[0] != s2.name or second[2] is not None \
            or (s1.rows, s1.cols) != (s2.cols, s2.rows):
        return None
    W1, W2 = (sp.MatrixSymbol(s.name, s.rows, s.cols) for s in (s1, s2))
    read = rule.read
    x = None
    if form.residual and isinstance(read, sp.MatAdd) and len(read.args) == 2:
        for i, term in enumerate(read.args):
            found = _applied(term, W1, W2, form.act)
            if found is not None and found == read.args[1 - i]:
                x = found
    elif not form.residual:
        x = _applied(read, W1, W2, form.act)
    tokens = {t.name for t in lp.tokens if t.kind == "vector"}
    if not isinstance(x, sp.MatrixSymbol) or x.name not in tokens:
        return None
    return (f"nl.MLPWalk({s1.name!r}, {s2.name!r}, {form.act!r}, {form.residual!r}, "
            f"{x.name!r})")
