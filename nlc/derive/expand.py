"""Expanding a matrix expression into its terms without expanding its scalar coefficients.

`sp.expand` distributes every product, scalars included: a rate `((a + b + q.k + 1)/4)^64`
becomes ~48,000 monomials before any matrix term is looked at. Classification and the
closed forms only need the matrix structure (S, S k k^T, v k^T, ...), so scalar factors are
replaced by placeholders, the matrix products expanded, and the scalars put back whole."""

from __future__ import annotations

import sympy as sp

# Matrix nodes whose structure is expanded; any other matrix node is kept whole, as a leaf.
_STRUCTURE = (sp.MatMul, sp.MatAdd, sp.Transpose, sp.HadamardProduct)


def expand_terms(expr, hadamard: bool = False) -> tuple:
    """The terms of `expr` with matrix products distributed over sums, scalars untouched;
    with `hadamard`, entrywise products too ((h - i) ⊙ g = h ⊙ g - i ⊙ g, which SymPy's
    expand leaves whole: a vector memory's l2 step)."""
    placeholders: dict = {}
    memo: dict = {}

    def scalar(e):
        if e.is_Number or e.is_Symbol:  # already atomic: keep, so equal terms still combine
            return e
        if e not in placeholders:
            placeholders[e] = sp.Dummy(f"c{len(placeholders)}", commutative=True)
        return placeholders[e]

    def mask(e):
        if e in memo:
            return memo[e]
        if isinstance(e, _STRUCTURE):
            args = [mask(a) if isinstance(a, sp.MatrixExpr) else scalar(a) for a in e.args]
            out = e.func(*args)
        else:
            out = e
        memo[e] = out
        return out

    expanded = sp.expand(mask(expr))
    if hadamard:
        expanded = sp.expand(_spread(expanded))
    back = {d: e for e, d in placeholders.items()}
    terms = expanded.args if isinstance(expanded, sp.MatAdd) else (expanded,)
    return tuple(t.xreplace(back) for t in terms)


def _spread(e):
    """Entrywise products distributed over the sums among their factors, scalar
    coefficients pulled out in front: (a + c b) ⊙ g -> a ⊙ g + c (b ⊙ g)."""
    if not isinstance(e, sp.MatrixExpr) or e.is_Atom:
        return e
    args = [_spread(a) for a in e.args]
    if not isinstance(e, sp.HadamardProduct):
        return e.func(*args) if args != list(e.args) else e
    coef, factors = sp.Integer(1), []
    for a in args:
        mats = [m for m in a.args if isinstance(m, sp.MatrixExpr)] \
            if isinstance(a, sp.MatMul) else []
        if len(mats) == 1:
            coef *= sp.Mul(*[m for m in a.args if not isinstance(m, sp.MatrixExpr)])
            a = mats[0]
        factors.append(a)
    for i, a in enumerate(factors):
        if isinstance(a, sp.MatAdd):
            terms = [_spread(sp.HadamardProduct(*factors[:i], t, *factors[i + 1:]))
                     for t in a.args]
            return coef * sp.MatAdd(*terms)
    return coef * sp.HadamardProduct(*factors) if coef != 1 else sp.HadamardProduct(*factors)


def tree_size(expr, limit: int | None = None) -> int:
    """The number of nodes of `expr` as a tree (what SymPy's recursive operations walk),
    counted on the shared DAG in linear time; with `limit`, counting stops just past it."""
    sizes: dict = {}
    stack = [(expr, False)]
    while stack:
        node, ready = stack.pop()
        if node in sizes:
            continue
        if ready:
            sizes[node] = 1 + sum(sizes[a] for a in node.args)
            if limit is not None and sizes[node] > limit:
                return sizes[node]
            continue
        stack.append((node, True))
        stack.extend((a, False) for a in node.args if a not in sizes)
    return sizes[expr]
