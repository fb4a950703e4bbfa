"""Reference pieces for the catalog, written independently of nlc/derive: an MLP memory's
forward pass on explicit matrices and its gradient by differentiating every weight entry."""

from __future__ import annotations

import sympy as sp

_ACTS = {
    "gelu": lambda x: x * (1 + sp.erf(x / sp.sqrt(2))) / 2,
    "silu": lambda x: x / (1 + sp.exp(-x)),
    "tanh": sp.tanh,
    "relu": lambda x: sp.Max(x, 0),
    "identity": lambda x: x,
    "abstract": sp.Function("sigma"),
}


def mlp_forward(form, weights, x):
    """x + LN(W_L act(... W_1 x)) with the options of `form` (explicit matrices)."""
    act = _ACTS[form.act]
    h = x
    for i, w in enumerate(weights):
        h = w * h
        if i < len(weights) - 1:
            h = h.applyfunc(act)
    if form.norm:
        n = h.shape[0]
        mu = sum(h) / n
        var = sum((e - mu) ** 2 for e in h) / n
        h = (h - mu * sp.ones(n, 1)) / sp.sqrt(var + sp.Rational(1, 10 ** 6))
    return x + h if form.residual else h


def _loss(kind: str, r, scale, delta=None):
    if kind == "l2":
        return scale * sum(e ** 2 for e in r) / 2
    if kind == "lp3":
        return scale * sum(sp.Abs(e) ** 3 for e in r)
    if kind == "huber":
        return scale * sum(sp.Piecewise((e ** 2 / 2, sp.Abs(e) <= delta),
                                        (delta * (sp.Abs(e) - delta / 2), True)) for e in r)
    raise ValueError(kind)


def explicit_grad(form, tensors, k, v, kind: str, scale, delta=None, lq=None):
    """d loss(M(k), v) / d W for every weight entry, by sympy.diff on explicit matrices.
    With `lq` (Moneta) the memory used is W = A / ||A||_q^(q-2) and the gradient is taken
    with respect to W, then evaluated at W(A)."""
    used = [t.as_explicit() for t in tensors]
    if lq is not None:
        used = [w * (sum(sp.Abs(e) ** lq for e in w) ** sp.Rational(1, lq)) ** (2 - lq)
                for w in used]
    free = [sp.Matrix(w.shape[0], w.shape[1], lambda i, j, n=n: sp.Symbol(f"_w{n}_{i}_{j}", real=True))
            for n, w in enumerate(used)]
    pred = mlp_forward(form, free, k.as_explicit())
    loss = _loss(kind, pred - v.as_explicit(), scale, delta)
    at = {f[i, j]: u[i, j] for f, u in zip(free, used)
          for i in range(f.shape[0]) for j in range(f.shape[1])}
    return [sp.Matrix(f.shape[0], f.shape[1], lambda i, j, f=f: sp.diff(loss, f[i, j]))
            .xreplace(at) for f in free]
