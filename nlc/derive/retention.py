"""Retention terms as data, and the closed forms SymPy solves for them.

A gating retention multiplies the state by a gate (decay: alpha; weight_decay: 1 - alpha)
at one of three orderings (docs/design.md): `before` (A) decays first and takes the gradient at
the decayed state; `parallel` (C) decays and steps from the old state; `proximal` (B) is the
minimizer of a linearized loss plus a proximal term plus a global L2 penalty, solved here."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import sympy as sp

from nlc.derive.symbols import elementwise, internal, is_matrix, matmul, per_channel
from nlc.errors import NlcError

W, S, G, ETA, MU, GAMMA, LAM, L1, L2 = (
    sp.Symbol(internal(n), real=True)
    for n in ("w", "s", "g", "eta", "mu", "gamma", "lambda", "l1", "l2"))


def solve(equation, unknown) -> list:
    """SymPy's solve, each solution cancelled to lowest terms (without solve's own
    simplification, which also imports sympy.physics: 0.1 s on every derivation)."""
    return [sp.cancel(s) for s in sp.solve(equation, unknown, simplify=False, check=False)]


@dataclass(frozen=True)
class Gate:
    factor: object       # scalar or per-channel column expression
    order: str           # before | parallel | proximal
    source: str          # the retention's name, for messages
    rows: bool = False   # one gate per row (output channel) of a matrix: Diag(g) S


def gate_of(kind: str, alpha):
    """The multiplicative gate of a gating retention."""
    return alpha if kind == "decay" else (1 - alpha if not is_matrix(alpha)
                                          else sp.OneMatrix(*alpha.shape) - alpha)


def apply_gate(factor, tensor, form_kind: str, rows: bool = False):
    """factor * tensor: a scalar scales; a per-channel vector scales the input side, or with
    `rows` the output side (the rows of a matrix, Diag(g) S)."""
    if not is_matrix(factor):
        return factor * tensor
    if rows:
        return matmul(sp.DiagMatrix(factor), tensor)
    return per_channel(factor, tensor, form_kind)


@cache
def proximal_order_factor() -> sp.Expr:
    """Solve argmin_w g (w - s) + (w - s)^2 / (2 eta) + mu w^2 / 2 and express the result as
    gamma * (s - eta g): returns the gamma that SymPy finds, with mu written through gamma."""
    objective = G * (W - S) + (W - S) ** 2 / (2 * ETA) + MU * W ** 2 / 2
    (solution,) = solve(sp.diff(objective, W), W)
    factor = sp.cancel(solution / (S - ETA * G))
    assert not factor.has(S, G), "the proximal solution is not a multiple of the gd step"
    mu_for_gamma = solve(sp.Eq(factor, GAMMA), MU)[0]
    return sp.cancel(factor.subs(MU, mu_for_gamma))  # == gamma


@cache
def _proximal_step() -> sp.Expr:
    """Solve argmin_w g (w - s) + (w - s)^2 / (2 eta) + lam (w - s)^2 / 2: the effective
    step size, in eta and lam, of a gradient step that also stays near the previous state."""
    objective = G * (W - S) + (W - S) ** 2 / (2 * ETA) + LAM * (W - S) ** 2 / 2
    (solution,) = solve(sp.diff(objective, W), W)
    return sp.cancel((S - solution) / G)


def proximal_lr(eta, strength):
    """The proximal step size at a rate `eta` and a strength; entry by entry for a
    per-channel rate or strength (the objective is a sum of independent entries)."""
    step = _proximal_step()
    if not is_matrix(eta) and not is_matrix(strength):
        return step.subs({ETA: eta, LAM: strength}, simultaneous=True)
    if is_matrix(eta) and is_matrix(strength):
        raise NlcError("a proximal retention with a per-channel strength and a per-channel "
                       "rate is not derived", hint="make the strength or the rate a scalar")
    if is_matrix(eta):
        return elementwise(sp.Lambda(ETA, step.subs(LAM, strength)), eta)
    return elementwise(sp.Lambda(LAM, step.subs(ETA, eta)), strength)


def elastic_net_map(eta, l1, l2):
    """The elementwise proximal map of l1 |w| + l2 w^2 / 2 after a step to u = s - eta g,
    solved by SymPy on each side of zero (soft thresholding, then shrinkage)."""
    u, mapped = _elastic_net_solution()
    mapped = mapped.subs({ETA: eta, L1: l1, L2: l2}, simultaneous=True)
    return lambda x: elementwise(sp.Lambda(u, mapped), x)


@cache
def _elastic_net_solution():
    u = sp.Symbol(internal("u"), real=True)
    pos = solve(sp.diff((W - u) ** 2 / (2 * ETA) + L1 * W + L2 * W ** 2 / 2, W), W)[0]
    neg = solve(sp.diff((W - u) ** 2 / (2 * ETA) - L1 * W + L2 * W ** 2 / 2, W), W)[0]
    return u, sp.Piecewise((pos, pos > 0), (neg, neg < 0), (0, True))


def lq_normalize(tensor, q):
    """Moneta's memory map W = A / ||A||_q^(q-2) (entries' l_q norm)."""
    if not is_matrix(tensor):
        return tensor
    norm_q = sp.Pow(sp.Trace(sp.OneMatrix(tensor.shape[1], tensor.shape[0])
                             * elementwise(lambda a: sp.Abs(a) ** q, tensor)), 1 / sp.sympify(q))
    return tensor * norm_q ** (2 - q)
