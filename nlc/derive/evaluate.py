"""Numeric evaluation of derived rules (float64 numpy): an interpreter of the SymPy matrix
expressions the engine builds, used by `nlc verify` and by the tests that check derived
steps against `torch.autograd`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement

from nlc import functions
from nlc.derive.matfuncs import (
    NS_COEFFS,
    ColumnMap,
    Dot,
    Mean,
    NewtonSchulz,
    RowSoftmax,
    Total,
)
from nlc.derive.symbols import internal, name_derivatives
from nlc.numeric import Walker, scalar_function


def activation_functions(act: str) -> dict:
    """Numeric sigma and sigma' for an abstract activation bound to `act`."""
    from nlc.derive.symbols import SCALAR_FUNCTIONS
    r = sp.Symbol(internal("r"), real=True)
    f = SCALAR_FUNCTIONS[act](r)
    return {"sigma": scalar_function(f, r), "sigma_prime": scalar_function(sp.diff(f, r), r)}


class Evaluator:
    """evaluate(expr) with leaves (Symbols, MatrixSymbols) bound in `env`; an abstract
    activation `sigma` is evaluated as `activation` when given."""

    def __init__(self, env: Mapping, activation: str | None = None):
        self.env = dict(env)
        self.cache: dict = {}
        self.activation = activation
        self.functions = activation_functions(activation) if activation else {}
        self.walker = Walker(self._leaf_value, self.functions)

    def __call__(self, node):
        if isinstance(node, sp.MatrixBase):  # mutable matrices are not hashable
            return self._eval(node)
        if node in self.cache:
            return self.cache[node]
        value = self._eval(node)
        self.cache[node] = value
        return value

    def _eval(self, node):
        if node in self.env:
            return self.env[node]
        if isinstance(node, sp.MatrixBase):
            return self._explicit(node)
        if isinstance(node, sp.MatrixExpr):
            return self._matrix(node)
        return self._scalar(node)

    def _matrix(self, node):
        shape = tuple(int(n) for n in node.shape)
        if isinstance(node, sp.MatrixSymbol):
            raise KeyError(f"no value for {node}")
        if isinstance(node, sp.Identity):
            return np.eye(shape[0])
        if isinstance(node, sp.OneMatrix):
            return np.ones(shape)
        if isinstance(node, sp.ZeroMatrix):
            return np.zeros(shape)
        if isinstance(node, sp.MatAdd):
            return sum(self(a) for a in node.args)
        if isinstance(node, sp.MatMul):
            out = 1.0
            for a in node.args:
                v = self(a)
                out = out @ v if isinstance(out, np.ndarray) and isinstance(v, np.ndarray) \
                    and np.ndim(v) != 0 else out * v
            return out
        if isinstance(node, sp.HadamardProduct):
            out = self(node.args[0])
            for a in node.args[1:]:
                out = out * self(a)
            return out
        if isinstance(node, sp.Transpose):
            return self(node.arg).T
        if isinstance(node, sp.DiagMatrix):
            return np.diag(np.ravel(self(node.args[0])))
        if isinstance(node, sp.Inverse):
            return np.linalg.inv(self(node.arg))
        if isinstance(node, ElementwiseApplyFunction):
            # the body may use other inputs (a Huber threshold from the context): bound too
            (variable,) = node.function.variables
            x = self(node.expr)
            walk = Walker(lambda leaf: x if leaf == variable else self._leaf_value(leaf),
                          self.functions)
            body = name_derivatives(node.function.expr)
            return np.asarray(walk(body), dtype=np.float64) * np.ones(shape)
        if isinstance(node, NewtonSchulz):
            return newton_schulz(self(node.args[0]), int(node.args[1]))
        if isinstance(node, RowSoftmax):
            x = self(node.args[0])
            e = np.exp(x - x.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        if isinstance(node, ColumnMap):
            return COLUMN_FUNCTIONS[node.name](self(node.args[1]))
        if isinstance(node, sp.HadamardPower):
            return self(node.base) ** self(node.exp)
        if isinstance(node, sp.MatPow):
            return np.linalg.matrix_power(self(node.base), int(node.exp))
        raise NotImplementedError(f"cannot evaluate {type(node).__name__}")

    def _leaf_value(self, leaf):
        """The value of a node that is not scalar arithmetic."""
        if isinstance(leaf, MatrixElement):
            return self(leaf.parent)[int(leaf.i), int(leaf.j)]
        if isinstance(leaf, sp.Trace):
            return np.trace(self(leaf.arg))
        if isinstance(leaf, Mean):
            return float(np.mean(self(leaf.args[0])))
        if isinstance(leaf, Total):
            return float(np.sum(self(leaf.args[0])))
        if isinstance(leaf, Dot):
            return float(np.sum(self(leaf.args[0]) * self(leaf.args[1])))
        if leaf in self.env:
            return self.env[leaf]
        if isinstance(leaf, (sp.Subs, sp.Derivative)):  # sigma' written by SymPy's diff
            return self.walker(name_derivatives(leaf))
        raise KeyError(f"no value for {leaf}")

    def _scalar(self, node):
        if isinstance(node, (int, float)):
            return float(node)
        return float(self.walker(node))

    def _explicit(self, m):
        """An explicit matrix of scalar expressions, entry by entry."""
        out = np.empty(m.shape)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                out[i, j] = self._scalar(m[i, j])
        return out


# the numeric twins of matfuncs.COLUMN_FUNCTIONS (a column in, a column out)
COLUMN_FUNCTIONS = functions.View(lambda f: f.numpy)


def newton_schulz(x: np.ndarray, steps: int) -> np.ndarray:
    a, b, c = (float(v) for v in NS_COEFFS)
    x = x / (np.linalg.norm(x) + 1e-7)
    transpose = x.shape[0] > x.shape[1]
    if transpose:
        x = x.T
    for _ in range(steps):
        g = x @ x.T
        x = a * x + (b * g + c * g @ g) @ x
    return x.T if transpose else x


def evaluate(expr, env: Mapping):
    return Evaluator(env)(expr)
