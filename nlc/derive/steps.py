"""`gd(steps = n)` on a delta-rule step, in closed form.

One plain gradient step of l2(S k, v) on a matrix memory with a scalar rate is
T(X) = X (I - b k k^T) + u k^T (b = rate * scale, u = b v). Applying it m times to S_1,

    T^m(S_1) = S_1 (I - b k k^T)^m + u k^T sum_{j<m} (I - b k k^T)^j
             = S_1 - c S_1 k k^T + s u k^T,   s = sum_{j<m} r^j,  c = b s,  r = 1 - b ||k||^2,

since k^T (I - b k k^T) = r k^T: (I - b k k^T)^m = I - b s k k^T (by induction). The closed
form has m powers of r instead of 2^m unrolled terms, and no division (it holds at k = 0).
`repeat_delta_step` recognises T from its derived expression, so any objective, weight or
retention whose plain step has this shape gets it; any other step returns None and is
unrolled under the derivation budget (budget.py)."""

from __future__ import annotations

import sympy as sp

from nlc.derive.expand import expand_terms
from nlc.derive.matfuncs import Dot
from nlc.derive.symbols import add, matmul, scaled


def _column(m) -> bool:
    return isinstance(m, sp.MatrixExpr) and m.shape[1] == 1


def _row_of(m):
    """k for a row k^T, else None."""
    return m.arg if isinstance(m, sp.Transpose) and _column(m.arg) else None


def _factors(term):
    """A term -> (scalar coefficient, matrix factors in order)."""
    if isinstance(term, sp.MatMul):
        scalars = [a for a in term.args if not isinstance(a, sp.MatrixExpr)]
        return sp.Mul(*scalars), [a for a in term.args if isinstance(a, sp.MatrixExpr)]
    return sp.Integer(1), [term]


def delta_step_parts(step, X):
    """(b, u, k) with step == X - b X k k^T + u k^T, or None when the step is not of this
    shape (b and u free of X)."""
    identity, rates, inputs, keys = [], [], [], set()
    for term in expand_terms(step):
        coef, mats = _factors(term)
        if coef.has(X):
            return None
        if mats == [X]:
            identity.append(coef)
        elif len(mats) == 3 and mats[0] == X and _column(mats[1]) and _row_of(mats[2]) == mats[1]:
            rates.append(-coef)
            keys.add(mats[1])
        elif len(mats) == 2 and not term.has(X) and _column(mats[0]) and _row_of(mats[1]) is not None:
            inputs.append(scaled(coef, mats[0]))
            keys.add(_row_of(mats[1]))
        else:
            return None
    if sp.Add(*identity) != 1 or not rates or len(keys) != 1:
        return None
    (key,) = keys
    u = add(*inputs) if inputs else None
    return sp.Add(*rates), u, key


def repeat_delta_step(parts, first, times: int):
    """T^times(first) for the step T = (b, u, k) of `delta_step_parts`."""
    b, u, k = parts
    r = 1 - b * Dot(k, k)
    s = sp.Add(*[r ** j for j in range(times)])
    out = [first, scaled(-b * s, matmul(first, k, k.T))]
    if u is not None:
        out.append(scaled(s, matmul(u, k.T)))
    return add(*out)
