"""MLP memories against the catalog, by parts.

Expanding a whole MLP rule symbolically takes minutes (the gradient through a layer norm,
an l_p or Huber loss, an l_q or softmax retention, entry by entry), so the symbolic check
is split into three exact comparisons, each at small dimensions:

1. the chain rule of the memory form: the engine's backward pass (nlc/derive/forms.py)
   against `sympy.diff` of the paper's forward pass, with an undefined activation sigma and
   an undefined error signal e, at widths 2 -> 3 -> 2 (`chain_rule_equal`, once per form);
2. the loss: the engine's error signal for the spec's objective against `sympy.diff` of the
   entry's loss (`loss_equal`);
3. the rule around the gradient: the level re-derived with its gradient replaced by an
   undefined function of the tensors it is taken at (`GradientOf`), against the catalog
   entry with the same function as its gradient (`algebra_equal`): where the gradient is
   taken (chunk start, decayed state, l_q-normalized weights) and how it enters the state.

The numeric check is end to end: the derived rule evaluated in float64 at the spec's
dimensions against the catalog entry with its gradient from dual numbers through the paper's
forward pass (`numeric_error`)."""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import sympy as sp

from nlc.catalog.models import CatalogEntry, Roles
from nlc.catalog.reference import (
    explicit_grad,
    layer_norm,
    loss_value,
    mlp_forward,
    numeric_loss_grad,
)
from nlc.derive.engine import LevelDerivation
from nlc.derive.evaluate import Evaluator
from nlc.derive.forms import FORM_RULES, layernorm_backward
from nlc.derive.losses import error_signal
from nlc.levels.records import Dim, MemoryForm
from nlc.numeric import scalar_function
from nlc.verify.equality import Explicit, _draw, _inputs, opaque_gradient, symbolic_equal


def _verdict(parts) -> bool | None:
    parts = list(parts)
    if any(p is False for p in parts):
        return False
    return None if any(p is None for p in parts) else True


# ---------------------------------------------------------------- 1. the chain rule
@cache
def chain_rule_equal(depth: int, residual: bool, norm: bool) -> bool | None:
    """The engine's gradient of <e, M(x)> through the form == sympy.diff of the paper's
    forward pass, for an undefined activation and error signal. With a layer norm, in two
    steps (expanding the whole composition takes a minute): the norm's backward pass is
    the transposed Jacobian of the paper's norm, and the engine's gradient with the norm
    is its gradient without it, taken at the error signal that the norm's backward pass
    gives at the paper's pre-norm output."""
    widths = [2] + [3] * (depth - 1) + [2 if residual else 3]
    form = MemoryForm("mlp", tuple(Dim(f"w{i}", w) for i, w in enumerate(widths)),
                      act="abstract", residual=residual, norm=norm)
    plain = dataclasses.replace(form, norm=False)
    weights = tuple(sp.MatrixSymbol(f"W{i + 1}", widths[i + 1], widths[i])
                    for i in range(depth))
    x = sp.MatrixSymbol("x", widths[0], 1)
    e = sp.MatrixSymbol("e", widths[-1], 1)
    backward = FORM_RULES["mlp"].grad
    builder = Explicit()
    errors = list(builder(e))
    theirs = explicit_grad(plain, [builder(w) for w in weights], builder(x),
                           lambda pred: sum(a * b for a, b in zip(errors, pred)))
    parts = [symbolic_equal(a, sp.ImmutableMatrix(b), builder)
             for a, b in zip(backward(plain, weights, x, e), theirs)]
    if norm:
        parts.append(_norm_backward_equal(widths[-1]))
        pre_norm = mlp_forward(dataclasses.replace(plain, residual=False),
                               [builder(w) for w in weights], builder(x))
        signal = layernorm_backward(sp.ImmutableMatrix(pre_norm), e)
        parts += [symbolic_equal(a, b, builder) for a, b in
                  zip(backward(form, weights, x, e), backward(plain, weights, x, signal))]
    return _verdict(parts)


def _norm_backward_equal(n: int) -> bool | None:
    """The engine's layer-norm backward pass == sympy.diff of <g, LN(y)> in y."""
    y, g = sp.MatrixSymbol("y", n, 1), sp.MatrixSymbol("g", n, 1)
    builder = Explicit()
    ys, gs = list(builder(y)), list(builder(g))
    value = sum(b * a for a, b in zip(layer_norm(ys), gs))
    theirs = sp.ImmutableMatrix([[sp.diff(value, a)] for a in ys])
    return symbolic_equal(layernorm_backward(y, g), theirs, builder)


# ---------------------------------------------------------------- 2. the loss
def loss_equal(derivation: LevelDerivation, entry: CatalogEntry, delta) -> bool | None:
    """The engine's dl/dp for the spec's objective == the entry's loss, differentiated."""
    term = derivation.loss_term()
    args = derivation.loss_args(term, derivation.lowering(derivation.tensors))
    p, t = sp.symbols("p0:3", real=True), sp.symbols("t0:3", real=True)
    ours = error_signal(term.kind, args, sp.ImmutableMatrix(p), sp.ImmutableMatrix(t))
    value = loss_value(entry.loss, [a - b for a, b in zip(p, t)], delta)
    theirs = sp.ImmutableMatrix([[sp.diff(value, a)] for a in p])
    return symbolic_equal(ours, theirs)


# ---------------------------------------------------------------- 3. the rest of the rule
def algebra_equal(opaque_rule, values, entry: CatalogEntry, roles: Roles) -> bool | None:
    """The rule derived with `GradientOf` in place of its gradient == the entry with the
    same function as its gradient."""
    builder = Explicit()

    def grad(tensors):
        return tuple(builder(g) for g in opaque_gradient(tensors))

    def explicit(x):
        if x is None:
            return None
        return tuple(builder(t) for t in x) if isinstance(x, tuple) else builder(x)

    bound = dataclasses.replace(roles, grad=grad, **{f: explicit(getattr(roles, f)) for f in (
        "S", "k", "v", "q", "beta", "alpha", "eta", "U", "S0", "g", "delta")})
    theirs = entry.update(bound)
    if len(values) != len(theirs):
        return False
    return _verdict(symbolic_equal(a, b, builder) for a, b in zip(values, theirs))


# ---------------------------------------------------------------- numeric, end to end
@cache
def _numpy_function(f):
    x = sp.Symbol("x", real=True)
    return scalar_function(f(x), x)


class _Array:
    """A float64 matrix with the part of SymPy's matrix interface that the catalog's MLP
    entries use (scaling, sums, products, entries, applyfunc), so that they evaluate in
    numpy at numeric points; SymPy numbers entry by entry take seconds at d = 16."""

    def __init__(self, a):
        self.a = np.asarray(a, dtype=np.float64)

    @property
    def shape(self):
        return self.a.shape

    def as_explicit(self):
        return self

    def applyfunc(self, f):
        with np.errstate(invalid="ignore", divide="ignore"):  # log of a negative: NaN
            return _Array(_numpy_function(f)(self.a))

    def __getitem__(self, index):
        return float(self.a[index])

    def __iter__(self):
        return iter(self.a.ravel().tolist())

    @staticmethod
    def _other(o):
        return o.a if isinstance(o, _Array) else float(o)

    def __add__(self, o):
        return _Array(self.a + self._other(o))

    __radd__ = __add__

    def __sub__(self, o):
        return _Array(self.a - self._other(o))

    def __rsub__(self, o):
        return _Array(self._other(o) - self.a)

    def __neg__(self):
        return _Array(-self.a)

    def __mul__(self, o):
        return _Array(self.a @ o.a if isinstance(o, _Array) else self.a * float(o))

    def __rmul__(self, o):
        return _Array(float(o) * self.a)

    def __truediv__(self, o):
        return _Array(self.a / float(o))


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, _Array):
        return value.a
    return np.array(sp.Matrix(value).tolist(), dtype=np.float64)


def numeric_error(rule, values, entry: CatalogEntry, roles: Roles, rng, positive: bool,
                  scalars: tuple[float, float]) -> float:
    """Relative error of the derived rule against the entry at one random point: the
    rule's inputs are drawn (scalars uniform in `scalars`), the derived values evaluated in
    numpy, the entry evaluated at the same numbers with its loss gradient from dual numbers."""
    role_exprs = [x for x in (roles.k, roles.v, roles.q, roles.beta, roles.alpha, roles.eta,
                              roles.g, roles.delta) if x is not None]
    inputs = _inputs(list(values) + role_exprs + list(roles.S + roles.U + roles.S0))
    ev = Evaluator({x: _draw(x, rng, positive, scalars) for x in inputs})
    mine = [np.asarray(ev(a), dtype=np.float64) for a in values]

    def num(x):
        if x is None:
            return None
        if isinstance(x, tuple):
            return tuple(num(t) for t in x)
        value = np.asarray(ev(x), dtype=np.float64)
        return float(value) if value.ndim == 0 else _Array(value)

    numeric = dataclasses.replace(roles, **{f: num(getattr(roles, f)) for f in (
        "S", "k", "v", "q", "beta", "alpha", "eta", "U", "S0", "g", "delta")})
    k, v = ev(roles.k), ev(roles.v)
    delta = None if roles.delta is None else float(ev(roles.delta))

    def grad(tensors):
        arrays = [_as_numpy(t) for t in tensors]
        return tuple(_Array(g) for g in
                     numeric_loss_grad(rule.form, arrays, k, v, entry.loss, delta))

    theirs = entry.update(dataclasses.replace(numeric, grad=grad))
    worst = 0.0
    for a, b in zip(mine, theirs):
        b = _as_numpy(b).reshape(a.shape)
        error = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))
        worst = max(worst, error if np.isfinite(error) else np.inf)
    return worst
