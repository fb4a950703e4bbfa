"""Numeric evaluation of derived rules (float64 numpy): an interpreter of the SymPy matrix
expressions the engine builds, used by `nlc verify` and by the tests that check derived
steps against `torch.autograd`."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement

from nlc.derive.matfuncs import NS_COEFFS, Dot, Mean, NewtonSchulz, RowSoftmax

_erf = np.vectorize(math.erf, otypes=[float])
MODULES = [{"erf": _erf, "Heaviside": lambda x, h=0.5: np.heaviside(x, h)}, "numpy"]


SIGMA = sp.Function("sigma")
SIGMA_PRIME = sp.Function("sigma_prime")


def name_derivatives(expr):
    """Subs(Derivative(sigma(x), x), x, e) -> sigma_prime(e), which lambdify can print."""
    def is_sigma_prime(e):
        return (isinstance(e, sp.Subs) and isinstance(e.expr, sp.Derivative)
                and e.expr.expr.func == SIGMA)
    expr = expr.replace(is_sigma_prime, lambda e: SIGMA_PRIME(e.point[0]))
    return expr.replace(lambda e: isinstance(e, sp.Derivative) and e.expr.func == SIGMA,
                        lambda e: SIGMA_PRIME(e.expr.args[0]))


def activation_modules(act: str) -> dict:
    """Numeric sigma and sigma' for an abstract activation bound to `act`."""
    from nlc.derive.symbols import SCALAR_FUNCTIONS
    r = sp.Symbol("r", real=True)
    f = SCALAR_FUNCTIONS[act](r)
    return {"sigma": sp.lambdify(r, f, MODULES), "sigma_prime": sp.lambdify(r, sp.diff(f, r), MODULES)}


class Evaluator:
    """evaluate(expr) with leaves (Symbols, MatrixSymbols) bound in `env`; an abstract
    activation `sigma` is evaluated as `activation` when given."""

    def __init__(self, env: Mapping, activation: str | None = None):
        self.env = dict(env)
        self.cache: dict = {}
        self.activation = activation
        self.modules = [activation_modules(activation)] + MODULES if activation else MODULES

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
                    and not np.ndim(v) == 0 else out * v
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
            # the body may use other inputs (a Huber threshold from the context): bind them
            body = name_derivatives(node.function.expr)
            free = sorted(body.free_symbols - set(node.function.variables), key=sp.default_sort_key)
            f = sp.lambdify(list(node.function.variables) + free, body, self.modules)
            args = [self(x) for x in free]
            return np.asarray(f(self(node.expr), *args), dtype=np.float64) * np.ones(shape)
        if isinstance(node, NewtonSchulz):
            return newton_schulz(self(node.args[0]), int(node.args[1]))
        if isinstance(node, RowSoftmax):
            x = self(node.args[0])
            e = np.exp(x - x.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        if isinstance(node, sp.HadamardPower):
            return self(node.base) ** self(node.exp)
        if isinstance(node, sp.MatPow):
            return np.linalg.matrix_power(self(node.base), int(node.exp))
        raise NotImplementedError(f"cannot evaluate {type(node).__name__}")

    def _leaves(self, expr):
        """The outermost matrix elements, traces and symbols of a scalar expression (an
        element of a product is evaluated as a whole, not through its parts)."""
        leaves, stack, seen = set(), [expr], set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if isinstance(node, (MatrixElement, sp.Trace, sp.Symbol, Mean, Dot)):
                leaves.add(node)
            elif isinstance(node, sp.MatrixBase):
                stack.extend(node)
            elif isinstance(node, sp.Basic):
                stack.extend(node.args)
        return sorted(leaves, key=sp.default_sort_key)

    def _leaf_value(self, leaf):
        if isinstance(leaf, MatrixElement):
            return self(leaf.parent)[int(leaf.i), int(leaf.j)]
        if isinstance(leaf, sp.Trace):
            return np.trace(self(leaf.arg))
        if isinstance(leaf, Mean):
            return float(np.mean(self(leaf.args[0])))
        if isinstance(leaf, Dot):
            return float(np.sum(self(leaf.args[0]) * self(leaf.args[1])))
        return self.env[leaf]

    def _scalar(self, node):
        if isinstance(node, (int, float)):
            return float(node)
        if node.is_number:
            return float(node)
        outer = self._leaves(node)
        dummies = [sp.Dummy() for _ in outer]
        expr = name_derivatives(node).xreplace(dict(zip(outer, dummies)))
        f = sp.lambdify(dummies, expr, self.modules)
        return float(f(*[self._leaf_value(a) for a in outer]))

    def _explicit(self, m):
        """Explicit matrices can be huge (an MLP's entry-wise gradient): substitute numbers
        and evaluate, which is linear in their size (lambdify is not)."""
        outer = self._leaves(m)
        values = {a: sp.Float(float(self._leaf_value(a)), 30) for a in outer}
        functions = {}
        if self.activation:
            from nlc.derive.symbols import SCALAR_FUNCTIONS
            r = sp.Symbol("r", real=True)
            f = SCALAR_FUNCTIONS[self.activation](r)
            functions = {SIGMA: sp.Lambda(r, f), SIGMA_PRIME: sp.Lambda(r, sp.diff(f, r))}
        out = np.empty(m.shape)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                e = name_derivatives(m[i, j])
                if functions:
                    e = e.replace(lambda x: x.func in functions,
                                  lambda x: functions[x.func](*x.args))
                out[i, j] = float(e.xreplace(values).evalf(20))
        return out


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
