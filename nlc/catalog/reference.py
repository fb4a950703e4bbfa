"""Reference pieces for the catalog, written independently of nlc/derive: an MLP memory's
forward pass as the papers state it, the papers' losses, and the gradient of a loss through
the forward pass -- symbolically by differentiating every weight entry with `sympy.diff`
(small dimensions), numerically by forward-mode dual numbers in float64 (any dimensions)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import sympy as sp

from nlc.catalog.dual import Dual
from nlc.numeric import Walker, scalar_function

LN_EPS = sp.Rational(1, 10 ** 6)

_ACTS = {
    "gelu": lambda x: x * (1 + sp.erf(x / sp.sqrt(2))) / 2,
    "silu": lambda x: x / (1 + sp.exp(-x)),
    "tanh": sp.tanh,
    "relu": lambda x: sp.Max(x, 0),
    "identity": lambda x: x,
    "abstract": sp.Function("sigma"),
}


@dataclass(frozen=True)
class Loss:
    """An attentional bias as a paper states it, summed over the prediction's entries:
    l2 `scale/2 ||r||^2`; lp `scale ||r||_p^p`; huber per entry; huber_norm (Yaad, Miras
    eq. 16): `1/2 ||r||^2` while ||r|| <= delta, else `delta ||r||_1`, scaled."""

    kind: str
    scale: object = 1
    p: object = None


def loss_value(loss: Loss, r: list, delta=None):
    """The loss of the residual entries `r` (SymPy expressions)."""
    s = sp.sympify(loss.scale)
    if loss.kind == "l2":
        return s * sum(e ** 2 for e in r) / 2
    if loss.kind == "lp":
        return s * sum(sp.Abs(e) ** loss.p for e in r)
    if loss.kind == "huber":
        return s * sum(sp.Piecewise((e ** 2 / 2, sp.Abs(e) <= delta),
                                    (delta * (sp.Abs(e) - delta / 2), True)) for e in r)
    if loss.kind == "huber_norm":  # ||r|| <= delta, squared (delta > 0)
        sq_norm = sum(e ** 2 for e in r)
        return s * sp.Piecewise((sq_norm / 2, sq_norm <= delta ** 2),
                                (delta * sum(sp.Abs(e) for e in r), True))
    raise ValueError(loss.kind)


# ---------------------------------------------------------------- the forward pass
def mlp_forward(form, weights, x):
    """x + LN(W_L act(... W_1 x)) with the options of `form` (explicit SymPy matrices)."""
    act = _ACTS[form.act]
    h = x
    for i, w in enumerate(weights):
        h = w * h
        if i < len(weights) - 1:
            h = h.applyfunc(act)
    if form.norm:
        h = sp.Matrix(layer_norm(list(h)))
    return x + h if form.residual else h


def layer_norm(entries: list) -> list:
    """(y - mean) / sqrt(var + eps), biased variance, no learned gain (TTT, Miras)."""
    n = len(entries)
    mu = sum(entries) / n
    var = sum((e - mu) ** 2 for e in entries) / n
    return [(e - mu) / sp.sqrt(var + LN_EPS) for e in entries]


@cache
def _numeric_act(act: str):
    r = sp.Symbol("r", real=True)
    f = _ACTS[act](r)
    return scalar_function(f, r), scalar_function(sp.diff(f, r), r)


def mlp_forward_numeric(form, weights: list[Dual], x: np.ndarray) -> Dual:
    """The same forward pass on dual numbers (float64)."""
    f, f_prime = _numeric_act(form.act)
    h = x
    for i, w in enumerate(weights):
        h = w @ h
        if i < len(weights) - 1:
            h = h.apply(f, f_prime)
    if form.norm:
        centred = h - h.mean()
        h = centred / ((centred * centred).mean() + float(LN_EPS)).sqrt()
    return h + x if form.residual else h


def memory_read(form, tensors: list[np.ndarray], q: np.ndarray) -> np.ndarray:
    """The memory applied to a query, as the papers read it (float64): a matrix S q, a
    vector <z, q>, an MLP its forward pass at q."""
    if form.kind == "matrix":
        return tensors[0] @ q
    if form.kind == "vector":
        return tensors[0].reshape(1, -1) @ q
    if form.kind == "mlp":
        return mlp_forward_numeric(form, [Dual.constant(w, 1) for w in tensors], q).val
    raise ValueError(f"no read for a {form.kind} memory")


# ---------------------------------------------------------------- gradients
def explicit_grad(form, tensors, x, scalar_of_prediction) -> list[sp.Matrix]:
    """d scalar(M(x)) / d W for every weight entry, by sympy.diff on explicit matrices."""
    used = [sp.Matrix(t.as_explicit()) for t in tensors]
    free = [sp.Matrix(w.shape[0], w.shape[1],
                      lambda i, j, n=n: sp.Symbol(f"_w{n}_{i}_{j}", real=True))
            for n, w in enumerate(used)]
    value = scalar_of_prediction(mlp_forward(form, free, sp.Matrix(x.as_explicit())))
    at = {f[i, j]: u[i, j] for f, u in zip(free, used)
          for i in range(f.shape[0]) for j in range(f.shape[1])}
    return [sp.Matrix(f.shape[0], f.shape[1], lambda i, j, f=f: sp.diff(value, f[i, j]))
            .xreplace(at) for f in free]


@cache
def _numeric_loss_derivative(loss: Loss, n: int):
    """dl/dr for a residual of n entries (SymPy's diff), as a numpy function of (r, delta)."""
    r = sp.symbols(f"r0:{n}", real=True)
    delta = sp.Symbol("delta", real=True)
    value = loss_value(loss, list(r), delta)
    derivative = [sp.diff(value, e) for e in r]

    def f(residual, delta_value):
        values = dict(zip(r, residual)) | {delta: delta_value}
        walk = Walker(values.__getitem__)
        return [walk(d) for d in derivative]
    return f


def numeric_loss_grad(form, tensors, k, v, loss: Loss, delta=None) -> list[np.ndarray]:
    """d loss(M(k) - v) / d W at float64 arrays: the loss's derivative in the prediction
    times the forward pass's derivatives in every weight entry (dual numbers)."""
    weights = Dual.variables([np.asarray(t, dtype=np.float64) for t in tensors])
    pred = mlp_forward_numeric(form, weights, np.asarray(k, dtype=np.float64))
    residual = (pred.val - np.asarray(v, dtype=np.float64)).ravel()
    e = np.asarray(_numeric_loss_derivative(loss, residual.size)(
        residual, float(delta) if delta is not None else 0.0), dtype=np.float64)
    flat = np.einsum("n,np->p", e, pred.tan.reshape(residual.size, -1))
    out, start = [], 0
    for w in weights:
        out.append(flat[start:start + w.val.size].reshape(w.val.shape))
        start += w.val.size
    return out
