"""Memory forms as data: how a memory maps an input (`apply`) and the chain rule from the
loss's error signal e = dl/dM(x) back to the memory's tensors (`grad`), written once per form.

A memory's tensors are a tuple: one tensor for vector, diagonal, matrix and optimizer
states; the layer weights for an MLP."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp

from nlc.derive.matfuncs import Dot, Mean
from nlc.derive.symbols import (
    SCALAR_FUNCTIONS,
    add,
    elementwise,
    internal,
    is_matrix,
    matmul,
    name_derivatives,
    scaled,
)
from nlc.levels.composed import state_tensors
from nlc.levels.records import MemoryForm

LN_EPS = sp.Rational(1, 10 ** 6)


@dataclass(frozen=True)
class FormRule:
    apply: Callable      # (form, tensors, x) -> prediction
    grad: Callable       # (form, tensors, x, e) -> tuple of gradients, one per tensor
    kappa: Callable | None = None  # (x) -> dp/d(step along the gradient) for implicit steps


def _matrix_apply(form, W, x):
    # a gated state S Diag(a) times x, evaluated, would make SymPy ask its assumption
    # system whether Diag(a) is diagonal (0.1 s of imports); a bare state is cheap to evaluate
    return W[0] * x if isinstance(W[0], sp.MatrixSymbol) else matmul(W[0], x)


def _matrix_grad(form, W, x, e):
    return (e * x.T,)


def _diag_apply(form, W, x):
    return sp.HadamardProduct(W[0], x)


def _diag_grad(form, W, x, e):
    return (sp.HadamardProduct(e, x),)


def _vector_apply(form, W, x):
    return Dot(W[0], x)


def _vector_grad(form, W, x, e):
    return (e * x,)


def _like_apply(form, W, x):
    return W[0]


def _like_grad(form, W, x, e):
    return (e,)


def _mean(y):
    return Mean(y)


def _layernorm(y):
    """(y - mean) / sqrt(var + eps), no learned gain (the TTT / Miras memories' norm)."""
    n = y.shape[0]
    centred = add(y, scaled(-_mean(y), sp.OneMatrix(n, 1)))
    sigma = sp.sqrt(_mean(sp.HadamardProduct(centred, centred)) + LN_EPS)
    return scaled(1 / sigma, centred), sigma


def layernorm_backward(y, dn):
    """d(loss)/dy from d(loss)/d(normed): (dn - mean(dn) - normed mean(dn * normed)) / sigma."""
    n = y.shape[0]
    normed, sigma = _layernorm(y)
    mean_dn = _mean(dn)
    mean_dn_n = _mean(sp.HadamardProduct(dn, normed))
    inner = add(dn, scaled(-mean_dn, sp.OneMatrix(n, 1)), scaled(-mean_dn_n, normed))
    return scaled(1 / sigma, inner)


def _mlp_forward(form: MemoryForm, W, x):
    act = SCALAR_FUNCTIONS[form.act]
    hs, acts = [], [x]
    a = x
    for i, w in enumerate(W):
        h = sp.MatMul(w, a, evaluate=False)
        hs.append(h)
        a = elementwise(act, h) if i < len(W) - 1 else h
        acts.append(a)
    y = a
    if form.norm:
        y, _ = _layernorm(y)
    if form.residual:
        y = add(x, y)
    return y, hs, acts


def _mlp_apply(form, W, x):
    return _mlp_forward(form, W, x)[0]


def _mlp_grad(form, W, x, e):
    _, hs, acts = _mlp_forward(form, W, x)
    r = sp.Symbol(internal("r"), real=True)
    act_prime = name_derivatives(sp.diff(SCALAR_FUNCTIONS[form.act](r), r))
    delta = e
    if form.norm:
        delta = layernorm_backward(hs[-1], delta)
    grads = [None] * len(W)
    for i in range(len(W) - 1, -1, -1):
        grads[i] = sp.MatMul(delta, acts[i].T, evaluate=False)
        if i:
            back = sp.MatMul(W[i].T, delta, evaluate=False)
            delta = sp.HadamardProduct(elementwise(sp.Lambda(r, act_prime), hs[i - 1]), back,
                                       evaluate=False)
    return tuple(grads)


def _inner(x):
    return Dot(x, x) if is_matrix(x) else x * x


FORM_RULES: dict[str, FormRule] = {
    "matrix": FormRule(_matrix_apply, _matrix_grad, _inner),
    "diagonal": FormRule(_diag_apply, _diag_grad, None),
    "vector": FormRule(_vector_apply, _vector_grad, _inner),
    "like": FormRule(_like_apply, _like_grad, lambda x: sp.Integer(1)),
    "mlp": FormRule(_mlp_apply, _mlp_grad, None),
}


def tensor_shapes(form: MemoryForm, table) -> tuple[tuple, ...]:
    """The shapes of a memory's tensors at the table's dimensions."""
    if form.kind == "like":
        return (table.param_shape,)  # elementwise, or a matrix [param_out, param_in]
    dims = [table.dim(d) for d in form.dims]
    if form.kind == "matrix":
        return ((dims[0], dims[1]),)
    if form.kind in ("vector", "diagonal"):
        return ((dims[0], 1),)
    if form.kind == "mlp":
        return tuple((dims[i + 1], dims[i]) for i in range(len(dims) - 1))
    return ()


tensor_names = state_tensors  # the naming rule lives with the checker, which enforces it
