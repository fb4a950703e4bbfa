"""Float64 evaluation of SymPy scalar expressions with numpy, by walking the expression.

`lambdify` generates and compiles code for each expression and, on its first call, imports
all of numpy's namespace; the rules nlc checks contain many small distinct expressions
(each activation applied to each layer, each norm), so walking them is much faster. The
walk is vectorized: a leaf may be bound to an array (an elementwise map over a matrix)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import reduce

import numpy as np
import sympy as sp
from sympy.core.function import AppliedUndef

_erf = np.vectorize(math.erf, otypes=[float])

FUNCTIONS: dict = {
    sp.exp: np.exp, sp.log: np.log, sp.tanh: np.tanh, sp.sinh: np.sinh, sp.cosh: np.cosh,
    sp.sin: np.sin, sp.cos: np.cos, sp.tan: np.tan, sp.atan: np.arctan,
    sp.Abs: np.abs, sp.sign: np.sign, sp.erf: _erf,
}
_RELATIONS = {sp.Le: np.less_equal, sp.Lt: np.less, sp.Ge: np.greater_equal,
              sp.Gt: np.greater, sp.Eq: np.equal, sp.Ne: np.not_equal}


class Walker:
    """value = Walker(leaf, functions)(expr): `leaf(node)` gives the value of a node that is
    not arithmetic (a symbol, a matrix entry, a reduction) or raises KeyError; `functions`
    maps the names of undefined functions (an abstract activation) to numpy callables."""

    def __init__(self, leaf: Callable, functions: Mapping[str, Callable] | None = None):
        self.leaf = leaf
        self.functions = dict(functions or {})
        self.memo: dict = {}

    def __call__(self, expr):
        hit = self.memo.get(expr)
        if hit is None:
            with np.errstate(all="ignore"):  # branches not taken may overflow or be NaN
                hit = self._walk(expr)
            self.memo[expr] = hit
        return hit

    def _walk(self, e):
        if e.is_Number or isinstance(e, sp.NumberSymbol):
            return float(e)
        if e is sp.true or e is sp.false:
            return bool(e)
        if isinstance(e, sp.Add):
            return reduce(np.add, (self(a) for a in e.args))
        if isinstance(e, sp.Mul):
            return reduce(np.multiply, (self(a) for a in e.args))
        if isinstance(e, sp.Pow):
            return np.power(self(e.base), self(e.exp))
        if type(e) in FUNCTIONS:
            return FUNCTIONS[type(e)](*(self(a) for a in e.args))
        if isinstance(e, sp.Piecewise):
            out = np.nan
            for value, cond in reversed(e.args):
                out = np.where(self(cond), self(value), out)
            return out[()] if isinstance(out, np.ndarray) and out.ndim == 0 else out
        if type(e) in _RELATIONS:
            return _RELATIONS[type(e)](self(e.lhs), self(e.rhs))
        if isinstance(e, sp.And):
            return reduce(np.logical_and, (self(a) for a in e.args))
        if isinstance(e, sp.Or):
            return reduce(np.logical_or, (self(a) for a in e.args))
        if isinstance(e, sp.Not):
            return np.logical_not(self(e.args[0]))
        if isinstance(e, sp.Max):
            return reduce(np.maximum, (self(a) for a in e.args))
        if isinstance(e, sp.Min):
            return reduce(np.minimum, (self(a) for a in e.args))
        if isinstance(e, sp.Heaviside):
            h = self(e.args[1]) if len(e.args) > 1 else 0.5
            return np.heaviside(self(e.args[0]), h)
        if isinstance(e, AppliedUndef) and e.func.__name__ in self.functions:
            return self.functions[e.func.__name__](*(self(a) for a in e.args))
        return self.leaf(e)


def scalar_function(expr: sp.Expr, variable: sp.Symbol) -> Callable:
    """x -> expr at variable = x, vectorized."""
    def f(x):
        def leaf(node):
            if node == variable:
                return x
            raise KeyError(f"no value for {node}")
        return Walker(leaf)(expr)
    return f
