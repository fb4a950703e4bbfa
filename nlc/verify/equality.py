"""Equality of rules, checked rather than assumed (docs/design.md, "The stages"): symbolically,
the difference expands to zero with fully symbolic entries at small concrete dimensions;
numerically, in float64 at random inputs."""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement

from nlc.catalog.applies import Orthogonalized
from nlc.derive.matfuncs import (
    COLUMN_FUNCTIONS,
    ColumnMap,
    Dot,
    NewtonSchulz,
    RowSoftmax,
    _Reduction,
)
from nlc.derive.symbols import name_derivatives


class GradientOf(sp.MatrixExpr):
    """An undefined function of the tensors a gradient is taken at: the i-th tensor's
    gradient. Verification puts it in place of an MLP's gradient on both sides, to compare
    the rest of the rule (where the gradient is taken, how it is combined with the state)
    exactly, while the gradient itself is checked on its own."""

    def __new__(cls, index, *tensors):
        return super().__new__(cls, sp.Integer(index), *tensors)

    @property
    def shape(self):
        return self.args[1 + int(self.args[0])].shape

    def explicit_from(self, tensors):
        """Entry (r, c) is a symbol grad<i>_<r>_<c>@<point>, named after the entries of
        every tensor (SymPy's structural hash): the same point gives the same symbols,
        another point other ones, as an undefined function of the point would, but cheap
        to expand. Two forms of one point that SymPy does not bring to the same canonical
        form would count as different points: a false 'differs', never a false 'equal'."""
        return opaque_entries(f"grad{int(self.args[0])}", self.shape, tensors)

    def _sympystr(self, printer):
        return f"grad{int(self.args[0])}({', '.join(printer._print(t) for t in self.args[1:])})"


def opaque_entries(label: str, shape, tensors) -> sp.ImmutableMatrix:
    """The value of an undefined function `label` at the explicit `tensors`, as a matrix of
    symbols named after the point (see `GradientOf.explicit_from`)."""
    point = hash(tuple(e for t in tensors for e in t)) & (2 ** 64 - 1)
    rows, cols = (int(n) for n in shape)
    return sp.ImmutableMatrix(rows, cols, lambda r, c: sp.Symbol(
        f"{label}_{r}_{c}@{point:016x}", real=True))


def opaque_gradient(tensors) -> tuple:
    return tuple(GradientOf(i, *tensors) for i in range(len(tensors)))


class Explicit:
    """The engine's matrix expressions as explicit SymPy matrices: every MatrixSymbol
    becomes a matrix of real symbols and the operations are carried out bottom-up, once
    per shared subexpression (SymPy's `as_explicit` goes entry by entry through symbolic
    sums and does not share work, which is much slower)."""

    def __init__(self):
        self.cache: dict = {}

    def __call__(self, node):
        if isinstance(node, sp.MatrixBase):
            return sp.ImmutableMatrix(node)
        if not isinstance(node, sp.Basic):
            return sp.sympify(node)
        hit = self.cache.get(node)
        if hit is None:
            hit = self._matrix(node) if isinstance(node, sp.MatrixExpr) else self._scalar(node)
            self.cache[node] = hit
        return hit

    def _matrix(self, node):
        if isinstance(node, sp.MatrixSymbol):  # real entries: |s|^4 = s^4, and so on
            rows, cols = (int(n) for n in node.shape)
            return sp.ImmutableMatrix(rows, cols, lambda i, j: sp.Symbol(
                f"{node.name}[{i}, {j}]", real=True))
        if isinstance(node, (sp.Identity, sp.ZeroMatrix, sp.OneMatrix)):
            return sp.ImmutableMatrix(node.as_explicit())
        if isinstance(node, sp.MatAdd):
            out = self(node.args[0])
            for a in node.args[1:]:
                out = out + self(a)
            return out
        if isinstance(node, sp.MatMul):
            out = sp.Integer(1)
            for a in node.args:
                out = out * self(a)
            return sp.ImmutableMatrix(out)
        if isinstance(node, sp.HadamardProduct):
            out = self(node.args[0])
            for a in node.args[1:]:
                out = out.multiply_elementwise(self(a))
            return out
        if isinstance(node, sp.Transpose):
            return self(node.arg).T
        if isinstance(node, sp.DiagMatrix):
            return sp.ImmutableMatrix(sp.diag(*self(node.args[0])))
        if isinstance(node, sp.Inverse):
            return self(node.arg).inv()
        if isinstance(node, ElementwiseApplyFunction):  # its body may reduce a matrix (||k||^2)
            f = node.function
            return self(node.expr).applyfunc(sp.Lambda(f.variables, self(f.expr)))
        if isinstance(node, sp.HadamardPower):
            exp = self(node.exp)
            return self(node.base).applyfunc(lambda e: e ** exp)
        if isinstance(node, sp.MatPow):
            return self(node.base) ** int(node.exp)
        if isinstance(node, ColumnMap):
            x = self(node.args[1])
            return sp.ImmutableMatrix(x.shape[0], x.shape[1], COLUMN_FUNCTIONS[node.name](list(x)))
        if isinstance(node, NewtonSchulz):
            return sp.ImmutableMatrix(NewtonSchulz(self(node.args[0]), node.args[1]).as_explicit())
        if isinstance(node, RowSoftmax):
            return sp.ImmutableMatrix(RowSoftmax(self(node.args[0])).as_explicit())
        if isinstance(node, GradientOf):
            return node.explicit_from([self(t) for t in node.args[1:]])
        if isinstance(node, Orthogonalized):  # proved around, not through (nlc/verify/apply.py)
            return opaque_entries("NS5", node.shape, [self(node.args[0])])
        raise NotImplementedError(f"no explicit form for {type(node).__name__}")

    def _scalar(self, node):
        if isinstance(node, MatrixElement):
            return self(node.parent)[int(node.i), int(node.j)]
        if isinstance(node, sp.Trace):
            return self(node.arg).trace()
        if isinstance(node, _Reduction):
            return node.reduce(list(self(node.args[0])))
        if isinstance(node, Dot):
            a, b = (self(x) for x in node.args)
            return (a.T * b)[0, 0]
        if node.is_Atom or not node.args:
            return node
        args = [self(a) for a in node.args]
        if all(a is b for a, b in zip(args, node.args)):
            return node
        return node.func(*args)


def explicit(x, builder: Explicit | None = None) -> sp.ImmutableMatrix:
    """An explicit matrix of scalar expressions (a scalar is a 1 x 1 matrix)."""
    value = (builder or Explicit())(x)
    if isinstance(value, sp.MatrixBase):
        return sp.ImmutableMatrix(value)
    return sp.ImmutableMatrix([[value]])


SIMPLIFY_OPS = 60
EXPAND_SECONDS = 5.0  # a difference SymPy cannot expand in this long is left to the numbers
_TRANSCENDENTAL = (sp.Abs, sp.sign, sp.Piecewise, sp.erf, sp.Max, sp.exp, sp.log)


def symbolic_equal(a, b, builder: Explicit | None = None) -> bool | None:
    """True if a - b is identically zero; False if it is not; None if undecided."""
    builder = builder or Explicit()
    A, B = explicit(a, builder), explicit(b, builder)
    if A.shape != B.shape:
        return False
    undecided = False
    for x, y in zip(A, B):
        d = x - y
        if d == 0:
            continue
        d = _expanded(name_derivatives(d))
        if d is None:  # expand ran for minutes on an inline DeltaNet's claim (the l2norm's
            return None  # square root over a sum): the numerical check decides
        if d == 0:
            continue
        if d.has(sp.Piecewise):  # zero if every branch is, whatever the conditions
            d = sp.piecewise_fold(d)
            if isinstance(d, sp.Piecewise) and all(sp.expand(e) == 0 for e, _ in d.args):
                continue
        if d.has(*_TRANSCENDENTAL):
            # small remainders only: simplify takes minutes on large ones
            if sp.count_ops(d) < SIMPLIFY_OPS and sp.simplify(d) == 0:
                continue
            undecided = True
            continue
        if sp.cancel(sp.together(d)) != 0:  # decisive for rational functions
            return False
    return None if undecided else True


class _Slow(Exception):
    pass


def _expanded(d):
    """sp.expand(d), or None past EXPAND_SECONDS (where a timer can be armed: the main
    thread, no other timer running; elsewhere expand runs unbounded, as before)."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "setitimer") or signal.getitimer(signal.ITIMER_REAL)[0]:
        return sp.expand(d)

    def expire(signum, frame):
        raise _Slow
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, EXPAND_SECONDS)
    try:
        return sp.expand(d)
    except _Slow:
        return None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


TOLERANCE = 1e-12  # float64 relative error: what verify counts as equal numerically


def _draw(atom, rng: np.random.Generator, positive: bool, scalars=(0.05, 0.95)):
    if isinstance(atom, sp.MatrixSymbol):
        shape = tuple(int(n) for n in atom.shape)
        return rng.uniform(0.1, 1.0, shape) if positive else rng.normal(0.0, 0.5, shape)
    return rng.uniform(*scalars)  # scalars are gates and rates


def _inputs(exprs) -> list:
    """The MatrixSymbols and Symbols an expression reads (each shared node visited once:
    an MLP's rule repeats its forward pass many times)."""
    atoms, seen, stack = set(), set(), list(exprs)
    while stack:
        node = stack.pop()
        if not isinstance(node, sp.Basic) or node in seen:
            continue
        seen.add(node)
        if isinstance(node, sp.MatrixSymbol) or (isinstance(node, sp.Symbol)
                                                 and not node.name.startswith("_")):
            atoms.add(node)
        elif isinstance(node, sp.Lambda):  # its variables are bound, not inputs
            bound = set(node.variables)
            stack.extend(a for a in sp.preorder_traversal(node.expr) if a not in bound
                         and isinstance(a, (sp.Symbol, sp.MatrixSymbol)))
        else:
            stack.extend(node.args)
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
