"""The optimizers' parameter updates (a spec's `apply` lines), written from the papers
(docs/citations.md), never produced by the derivation engine.

An optimizer is levels and an update: the levels' entries (nlc/catalog/models.py) state how
each memory of the gradients is written, and an `ApplyEntry` states what the parameter
becomes once they are, reading the memories through the level entries it names in `levels`
(Adam's: its first and its second moment). `nlc verify` binds those to the spec's levels
that equal them, and the entry's own hypers (`lr`, `eps`) to the spec's.

An update is a SymPy matrix expression of `ApplyRoles`. The papers' entrywise operations are
Hadamard products and powers (a square root is the power 1/2); Muon's orthogonalization is
`Orthogonalized(X)`, a function of X that the verifier evaluates with the catalog's own
Newton-Schulz iteration (nlc/catalog/optimizers.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import sympy as sp

from nlc.catalog.models import Roles
from nlc.catalog.optimizers import newton_schulz


@dataclass(frozen=True)
class ApplyRoles:
    W: object                     # the parameter before the step
    t: object                     # the step, counted from 1
    levels: tuple[Roles, ...]     # the named levels' roles, in the entry's `levels` order;
    #                               S: the level's tensors after this step's write, S0: at
    #                               the start of its chunk (a level `every f steps`)
    hypers: Mapping[str, object]  # the update's own hypers, by the entry's names


@dataclass(frozen=True)
class ApplyEntry:
    id: str                       # the claim it answers to, as the levels' entries do
    title: str
    citation: str
    levels: tuple[str, ...]       # the level entries the update reads
    hypers: tuple[str, ...]       # the hypers only the update reads
    apply: Callable[[ApplyRoles], object]  # the parameter after the step


class Orthogonalized(sp.MatrixExpr):
    """NewtonSchulz5(X), Muon's orthogonalization (Jordan et al. 2024): five quintic
    iterations from X / (||X||_F + 1e-7), approximately U V^T."""

    def __new__(cls, arg):
        return super().__new__(cls, arg)

    @property
    def shape(self):
        return self.args[0].shape

    @staticmethod
    def evaluate(x: np.ndarray) -> np.ndarray:
        return newton_schulz(x, 5)

    def _sympystr(self, printer):
        return f"NS5({printer._print(self.args[0])})"


def _sqrt(a):
    return sp.HadamardPower(a, sp.Rational(1, 2))


def _plus(a, c):
    """a + c entry by entry, for a scalar c."""
    return a + c * sp.OneMatrix(*a.shape)


def _over(a, b):
    """a / b entry by entry."""
    return sp.HadamardProduct(a, sp.HadamardPower(b, -1))


APPLIES: list[ApplyEntry] = []


def apply_entry(**kw):
    APPLIES.append(ApplyEntry(**kw))


def _adam(r: ApplyRoles):
    first, second = r.levels
    m_hat = first.S[0] / (1 - first.alpha ** r.t)
    v_hat = second.S[0] / (1 - second.alpha ** r.t)
    return r.W - r.hypers["lr"] * _over(m_hat, _plus(_sqrt(v_hat), r.hypers["eps"]))


apply_entry(id="adam", title="Adam's update",
            citation="Kingma & Ba, Adam, ICLR 2015, Algorithm 1: W = W - lr m^ / (sqrt(v^) + "
                     "eps) with m^ = m / (1 - b1^t), v^ = v / (1 - b2^t)",
            levels=("adam_first_moment", "adam_second_moment"), hypers=("lr", "eps"),
            apply=_adam)
apply_entry(id="sgd_momentum", title="SGD with momentum's update",
            citation="Behrouz et al., Nested Learning, NeurIPS 2025, eqs. 10-13: W = W + m",
            levels=("sgd_momentum",), hypers=(), apply=lambda r: r.W + r.levels[0].S[0])
apply_entry(id="sgd_momentum_buffer", title="SGD with momentum's update, as torch.optim.SGD "
                                             "writes it",
            citation="Polyak's heavy ball (1964) in PyTorch's form (torch.optim.SGD with "
                     "momentum mu, no dampening): B = mu B + g, W = W - lr B",
            levels=("muon",), hypers=("lr",), apply=lambda r: r.W - r.hypers["lr"] * r.levels[0].S[0])
apply_entry(id="dgd", title="Delta gradient descent's update",
            citation="Behrouz et al., Nested Learning, NeurIPS 2025: the parameter is the "
                      "memory W after its proximal step",
            levels=("dgd",), hypers=(), apply=lambda r: r.levels[0].S[0])
apply_entry(id="muon", title="Muon's update",
            citation="Jordan et al., Muon (2024): W = W - lr NewtonSchulz5(B)",
            levels=("muon",), hypers=("lr",),
            apply=lambda r: r.W - r.hypers["lr"] * Orthogonalized(r.levels[0].S[0]))


def _m3(r: ApplyRoles):
    # O2 orthogonalizes the slow memory as it stood after the previous chunk: the state at
    # the start of the slow level's chunk (its entry, m3_slow, adds each step's share)
    fast, slow, second = r.levels
    step = Orthogonalized(fast.S[0]) + r.hypers["alpha"] * Orthogonalized(slow.S0[0])
    return r.W - r.hypers["lr"] * _over(step, _sqrt(_plus(second.S[0], r.hypers["eps"])))


apply_entry(id="m3", title="M3's update",
            citation="Behrouz et al., Nested Learning, NeurIPS 2025, Algorithm 1 (M3): W = W - "
                     "lr (NewtonSchulz5(M1) + alpha NewtonSchulz5(M2)) / sqrt(V + eps)",
            levels=("m3_fast", "m3_slow", "m3_second_moment"), hypers=("lr", "alpha", "eps"),
            apply=_m3)
