"""Objectives ("attentional biases") as data: each maps to the elementwise scalar loss
l(p, t) that is summed over the prediction's entries, or to two such losses and a switch on
the norm of the whole residual (Yaad's Huber). SymPy differentiates them; the result is
lifted back to matrices (affine derivatives stay matrix algebra, others become elementwise
maps of the residual)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from nlc.derive.matfuncs import Dot
from nlc.derive.symbols import add, internal, is_matrix, scaled
from nlc.errors import NlcError

P, T, R = (sp.Symbol(internal(n), real=True) for n in ("p", "t", "r"))


@dataclass(frozen=True)
class Loss:
    """`entry` is the elementwise loss l(P, T). With a `threshold`, `entry` holds while
    ||p - t|| <= threshold and `outside` beyond it: the switch is on the residual's norm,
    so the loss is not a sum of per-entry terms (Miras eq. 16)."""

    entry: sp.Expr
    outside: sp.Expr | None = None
    threshold: object = None


def _l2(args):
    return Loss(args["scale"] * (P - T) ** 2 / 2)


def _dot(args):
    return Loss(-args["scale"] * P * T)


def _lp(args):
    return Loss(args["scale"] * sp.Abs(P - T) ** args["p"])


def _huber(args):
    delta, r, scale = args["delta"], P - T, args["scale"]
    if args.get("switch") == "norm":  # l2 inside the ball ||r|| <= delta, delta * l1 outside
        return Loss(scale * r ** 2 / 2, scale * delta * sp.Abs(r), delta)
    return Loss(scale * sp.Piecewise((r ** 2 / 2, sp.Abs(r) <= delta),
                                     (delta * (sp.Abs(r) - delta / 2), True)))


# objective kind -> its loss, given the objective's lowered arguments
LOSSES: dict[str, Callable] = {"l2": _l2, "dot": _dot, "lp": _lp, "huber": _huber,
                               "ridge": _l2}


def loss_of(kind: str, args: dict) -> Loss:
    if kind not in LOSSES:
        raise NlcError(f"objective '{kind}' has no elementwise loss to differentiate")
    return LOSSES[kind](args)


def loss_derivative(kind: str, args: dict) -> sp.Expr:
    """dl/dp as a scalar expression in P and T (SymPy's calculus), for losses that are a
    sum of per-entry terms."""
    loss = loss_of(kind, args)
    if loss.threshold is not None:
        raise NlcError(f"objective '{kind}' switches on the residual's norm: it is not a sum "
                       "of per-entry terms")
    return sp.diff(loss.entry, P)


def error_signal(kind: str, args: dict, pred, target):
    """e = dl/dp evaluated at (pred, target): a scalar or a column/matrix expression."""
    loss = loss_of(kind, args)
    inside = _lift(sp.diff(loss.entry, P), kind, pred, target)
    if loss.threshold is None:
        return inside
    # almost everywhere the switch is locally constant: the gradient of the branch it selects
    outside = _lift(sp.diff(loss.outside, P), kind, pred, target)
    residual = add(pred, scaled(-1, target)) if is_matrix(pred) else pred - target
    sq_norm = Dot(residual, residual) if is_matrix(residual) else residual ** 2
    within = sp.Le(sq_norm, loss.threshold ** 2)
    if not is_matrix(pred):
        return sp.Piecewise((inside, within), (outside, True))
    return sp.MatAdd(sp.MatMul(sp.Piecewise((1, within), (0, True)), inside, evaluate=False),
                     sp.MatMul(sp.Piecewise((0, within), (1, True)), outside, evaluate=False),
                     evaluate=False)


def _lift(dl: sp.Expr, kind: str, pred, target):
    """A scalar derivative dl/dp(P, T) applied entry by entry to (pred, target)."""
    if not is_matrix(pred):
        return dl.subs({P: pred, T: target}, simultaneous=True)
    if dl.is_polynomial(P, T) and sp.Poly(dl, P, T).total_degree() <= 1:
        cp, ct = dl.coeff(P), dl.coeff(T)
        const = dl.subs({P: 0, T: 0})
        if const != 0:
            raise NlcError(f"objective '{kind}' has a constant gradient term; not supported")
        terms = [m if coef == 1 else sp.MatMul(coef, m, evaluate=False)
                 for coef, m in ((cp, pred), (ct, target)) if coef != 0]
        if not terms:
            return sp.ZeroMatrix(*pred.shape)
        return terms[0] if len(terms) == 1 else sp.MatAdd(*terms, evaluate=False)
    residual_form = dl.subs(P, R + T)  # (R + T) - T cancels on construction
    if T in residual_form.free_symbols:
        raise NlcError(f"the derivative of objective '{kind}' is not a function of the residual")
    return ElementwiseApplyFunction(sp.Lambda(R, residual_form), add(pred, scaled(-1, target)))
