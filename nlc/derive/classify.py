"""Stage `classify`: an `UpdateRule` -> its kernel family and the family's parameters.

For one-tensor memories the next state is expanded and split into S-terms and S-free
terms, S' = S A + B (DESIGN.md, "Kernel families"). The right factors of the S-terms say the
family: identity or diagonal factors only -> decay; a decay factor times (I - b k k^T) ->
delta; a decay factor plus a rank-one term -> dplr. Rules that are not affine in one
tensor (MLP memories, momentum buffers, elementwise non-quadratic losses, frozen gradients)
are frozen-gradient; the exact ridge solve and the non-parametric solution have their own."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import sympy as sp

from nlc.derive.printing import sstr
from nlc.derive.rule import UpdateRule


class KernelFamily(Enum):
    DECAY = "decay"
    DELTA = "delta"
    DPLR = "dplr"
    PRODUCT = "product"
    FROZEN_GRADIENT = "frozen-gradient"
    NONPARAMETRIC = "nonparametric"
    SOLVE = "solve"


@dataclass(frozen=True)
class Classification:
    family: KernelFamily
    params: tuple[tuple[str, object], ...]
    reason: str

    def param(self, name, default=None):
        return dict(self.params).get(name, default)

    def to_text(self) -> str:
        shown = ", ".join(f"{k}={sstr(v)}" for k, v in self.params)
        return f"{self.family.value}" + (f" ({shown})" if shown else "") + f": {self.reason}"


def _split(term):
    """A term -> (scalar coefficient, list of matrix factors)."""
    if isinstance(term, sp.MatrixSymbol):
        return sp.Integer(1), [term]
    if isinstance(term, sp.MatMul):
        scalars = [a for a in term.args if not isinstance(a, sp.MatrixExpr)]
        mats = [a for a in term.args if isinstance(a, sp.MatrixExpr)]
        return sp.Mul(*scalars), mats
    if isinstance(term, sp.MatrixExpr):
        return sp.Integer(1), [term]
    return term, []


def _is_column(m) -> bool:
    return isinstance(m, sp.MatrixExpr) and m.shape[1] == 1


def classify(rule: UpdateRule) -> Classification:
    if rule.kind == "nonparametric":
        return Classification(KernelFamily.NONPARAMETRIC,
                              (("kernel", rule.role("kernel")), ("window", rule.role("window"))),
                              "solved over the cached tokens")
    if rule.kind == "solve":
        return Classification(KernelFamily.SOLVE, (), "exact ridge regression")
    if len(rule.states) != 1:
        return Classification(KernelFamily.FROZEN_GRADIENT, (),
                              f"{len(rule.states)} tensors carried per token")
    if rule.anchors:
        return Classification(KernelFamily.FROZEN_GRADIENT, (), "gradients at the chunk start")
    name, S = rule.states[0]
    new = sp.expand(rule.next_of(name))
    terms = new.args if isinstance(new, sp.MatAdd) else (new,)
    decay, rank_one, bias = [], [], []
    for term in terms:
        if not term.has(S):
            bias.append(term)
            continue
        coef, mats = _split(term)
        if isinstance(term, sp.HadamardProduct) and S in term.args:
            others = [a for a in term.args if a != S]
            if len(others) == 1 and _is_column(others[0]) and not others[0].has(S):
                decay.append(("channel", others[0]))
                continue
        if not mats or mats[0] != S or any(m.has(S) for m in mats[1:]) or coef.has(S):
            return Classification(KernelFamily.FROZEN_GRADIENT, (), "not affine in the state")
        rest = mats[1:]
        diag = [m for m in rest[:1] if isinstance(m, sp.DiagMatrix)]
        tail = rest[len(diag):]
        if not tail:
            if diag:
                decay.append(("channel", coef * diag[0].args[0] if coef != 1 else diag[0].args[0]))
            else:
                decay.append(("scalar", coef))
        elif len(tail) == 2 and _is_column(tail[0]) and isinstance(tail[1], sp.Transpose) \
                and _is_column(tail[1].arg):
            rank_one.append((coef, diag[0].args[0] if diag else None, tail[0], tail[1].arg))
        else:
            return Classification(KernelFamily.FROZEN_GRADIENT, (), "state factor not recognised")
    if len(decay) != 1 or len({(c[0]) for c in decay}) > 1:
        if not decay:
            return Classification(KernelFamily.FROZEN_GRADIENT, (), "no decay term")
        if any(kind == "channel" for kind, _ in decay):
            return Classification(KernelFamily.FROZEN_GRADIENT, (), "several decay terms")
        decay = [("scalar", sp.Add(*[c for _, c in decay]))]
    kind, gate = decay[0]
    b = sp.MatAdd(*bias).doit() if bias else sp.ZeroMatrix(*S.shape)
    base = (("decay", gate), ("decay_kind", kind), ("bias", b))
    if not rank_one:
        return Classification(KernelFamily.DECAY, base, f"S' = S D + B with {kind} D")
    if len(rank_one) == 1:
        coef, diag, u, w = rank_one[0]
        gate_matches = (kind == "scalar" and diag is None) or (kind == "channel" and diag is not None
                                                              and (diag == gate or sp.simplify(diag - gate) == sp.ZeroMatrix(*gate.shape)))
        if u == w and gate_matches:
            beta = sp.cancel(-coef / gate) if kind == "scalar" else sp.cancel(-coef)
            return Classification(KernelFamily.DELTA, base + (("beta", beta), ("key", u)),
                                  "S' = S D (I - beta k k^T) + B")
        left = u if diag is None else sp.HadamardProduct(diag, u)
        return Classification(KernelFamily.DPLR, base + (("a", coef * left), ("b", w)),
                              "S' = S (D + a b^T) + B")
    return Classification(KernelFamily.PRODUCT, base + (("rank", len(rank_one)),),
                          "several rank-one factors per token")
