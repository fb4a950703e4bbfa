"""Equality of rules, checked rather than assumed (DESIGN.md, "Derivation"): symbolically,
the difference expands to zero with fully symbolic entries at small concrete dimensions;
numerically, in float64 at random inputs."""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement


def explicit(x):
    """An explicit matrix of scalar expressions: each MatrixSymbol is replaced by its
    entries and the products are carried out (much faster than entry-wise `as_explicit`)."""
    if isinstance(x, sp.MatrixBase):
        return sp.Matrix(x)
    if isinstance(x, sp.MatrixExpr):
        table = {m: sp.ImmutableMatrix(m.as_explicit()) for m in x.atoms(sp.MatrixSymbol)}
        value = x.xreplace(table).doit()
        if isinstance(value, sp.MatrixExpr):
            value = value.as_explicit()
        return sp.Matrix(value)
    if isinstance(x, sp.Expr) and x.atoms(sp.MatrixSymbol):
        table = {m: sp.ImmutableMatrix(m.as_explicit()) for m in x.atoms(sp.MatrixSymbol)}
        return sp.Matrix([[x.xreplace(table).doit()]])
    return sp.Matrix([[x]])


_TRANSCENDENTAL = (sp.Abs, sp.sign, sp.Piecewise, sp.erf, sp.Max, sp.exp, sp.log)


def symbolic_equal(a, b) -> bool | None:
    """True if a - b is identically zero; False if it is not; None if undecided."""
    from nlc.derive.evaluate import name_derivatives
    A, B = explicit(a).applyfunc(name_derivatives), explicit(b).applyfunc(name_derivatives)
    if A.shape != B.shape:
        return False
    undecided = False
    for x, y in zip(A, B):
        d = sp.expand(x - y)
        if d == 0:
            continue
        if d.has(*_TRANSCENDENTAL):
            if sp.simplify(d) == 0:
                continue
            undecided = True
            continue
        if sp.cancel(sp.together(d)) != 0:  # decisive for rational functions
            return False
    return None if undecided else True


def _atoms(exprs) -> list:
    atoms = set()
    for e in exprs:
        atoms |= {a for a in e.atoms(sp.Symbol, MatrixElement)
                  if not (isinstance(a, sp.Symbol) and a.name.startswith("_"))}
    return sorted(atoms, key=sp.default_sort_key)


def _draw(atom, rng: np.random.Generator, positive: bool):
    if isinstance(atom, sp.MatrixSymbol):
        shape = tuple(int(n) for n in atom.shape)
        return rng.uniform(0.1, 1.0, shape) if positive else rng.normal(0.0, 0.5, shape)
    return rng.uniform(0.05, 0.95)  # scalars are gates and rates


def _inputs(exprs) -> list:
    atoms = set()
    for e in exprs:
        for a in sp.preorder_traversal(e):
            if isinstance(a, sp.MatrixSymbol) or (isinstance(a, sp.Symbol)
                                                 and not a.name.startswith("_")):
                atoms.add(a)
    return sorted(atoms, key=sp.default_sort_key)


def numeric_error(a, b, rng: np.random.Generator, positive: bool = False,
                  activation: str | None = None) -> float:
    """Relative error ||a - b|| / ||b|| at one random draw of every input (float64);
    an abstract activation in either side is evaluated as `activation`."""
    from nlc.derive.evaluate import Evaluator
    ev = Evaluator({x: _draw(x, rng, positive) for x in _inputs([a, b])}, activation)
    va, vb = np.broadcast_arrays(np.asarray(ev(a), float), np.asarray(ev(b), float))
    denom = max(np.linalg.norm(vb), 1e-300)
    return float(np.linalg.norm(va - vb) / denom)
