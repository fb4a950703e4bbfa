"""Objectives ("attentional biases") as data: each maps to the elementwise scalar loss
l(p, t) that is summed over the prediction's entries. SymPy differentiates it; the result is
lifted back to matrices (affine derivatives stay matrix algebra, others become elementwise
maps of the residual)."""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from nlc.errors import NlcError
from nlc.derive.symbols import is_matrix

P, T, R = sp.symbols("p t r", real=True)


def _l2(args):
    return args["scale"] * (P - T) ** 2 / 2


def _dot(args):
    return -args["scale"] * P * T


def _lp(args):
    return args["scale"] * sp.Abs(P - T) ** args["p"]


def _huber(args):
    delta, r = args["delta"], P - T
    return args["scale"] * sp.Piecewise((r ** 2 / 2, sp.Abs(r) <= delta),
                                        (delta * (sp.Abs(r) - delta / 2), True))


# objective kind -> elementwise loss l(P, T) given the objective's lowered arguments
LOSSES: dict[str, Callable] = {"l2": _l2, "dot": _dot, "lp": _lp, "huber": _huber,
                               "ridge": _l2}


def loss_derivative(kind: str, args: dict) -> sp.Expr:
    """dl/dp as a scalar expression in P and T (SymPy's calculus)."""
    if kind not in LOSSES:
        raise NlcError(f"objective '{kind}' has no elementwise loss to differentiate")
    return sp.diff(LOSSES[kind](args), P)


def error_signal(kind: str, args: dict, pred, target):
    """e = dl/dp evaluated at (pred, target): a scalar or a column/matrix expression."""
    dl = sp.simplify(loss_derivative(kind, args)) if kind != "huber" else loss_derivative(kind, args)
    if not is_matrix(pred):
        return dl.subs({P: pred, T: target}, simultaneous=True)
    poly = None
    try:
        poly = sp.Poly(dl, P, T)
    except sp.PolynomialError:
        pass
    if poly is not None and poly.total_degree() <= 1:
        cp, ct = dl.coeff(P), dl.coeff(T)
        const = dl.subs({P: 0, T: 0})
        if const != 0:
            raise NlcError(f"objective '{kind}' has a constant gradient term; not supported")
        terms = [m if coef == 1 else sp.MatMul(coef, m, evaluate=False)
                 for coef, m in ((cp, pred), (ct, target)) if coef != 0]
        if not terms:
            return sp.ZeroMatrix(*pred.shape)
        return terms[0] if len(terms) == 1 else sp.MatAdd(*terms, evaluate=False)
    residual_form = sp.simplify(dl.subs(P, R + T))
    if T in residual_form.free_symbols:
        raise NlcError(f"the derivative of objective '{kind}' is not a function of the residual")
    return ElementwiseApplyFunction(sp.Lambda(R, residual_form), pred - target)
