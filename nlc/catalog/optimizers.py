"""Whole optimizer algorithms as their papers state them, in float64 numpy: written from the
papers, independently of nlc/derive, nlc/emit and the specs. The catalog's entries check a
spec's levels one by one (nlc/catalog/models.py); these check what the levels and the
`apply` clauses do together, step after step (tests/test_m3.py runs a compiled optimizer
against them)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Muon's quintic iteration (Jordan et al., "Muon: An optimizer for hidden layers in neural
# networks", 2024, kellerjordan.github.io/posts/muon): X <- a X + (b A + c A^2) X, A = X X^T,
# from X / (||X||_F + 1e-7), on the wide orientation of the matrix.
MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(x: np.ndarray, steps: int = 5) -> np.ndarray:
    a, b, c = MUON_COEFFICIENTS
    tall = x.shape[0] > x.shape[1]
    y = (x.T if tall else x) / (np.sqrt(np.sum(x * x)) + 1e-7)
    for _ in range(steps):
        gram = y @ y.T
        y = a * y + (b * gram + c * gram @ gram) @ y
    return y.T if tall else y


def m3(theta: np.ndarray, gradient: Callable[[int, np.ndarray], np.ndarray], steps: int, *,
       lr: float, b1: float, b2: float, b3: float, alpha: float, eps: float, f: int,
       ns_steps: int = 5) -> list[np.ndarray]:
    """Multi-scale Momentum Muon: Behrouz, Razaviyayn, Zhong, Mirrokni, "Nested Learning: The
    Illusion of Deep Learning Architectures", NeurIPS 2025, Algorithm 1 (arXiv:2512.24695),
    written as its two loops. `gradient(t, theta)` is g_t at the weights before step t; the
    result is theta after each step 1..steps.

    for each lower-frequency iteration k = 0, 1, ...:
        M2 = M2 + b3 * (sum of the gradients of iteration k - 1);  O2 = NS_T(M2)
        for t = k f + 1 .. (k + 1) f:
            M1 = M1 + b1 g_t;  V = V + b2 g_t^2;  O1 = NS_T(M1)
            theta = theta - lr (O1 + alpha O2) / sqrt(V + eps)"""
    m1 = np.zeros_like(theta)
    m2 = np.zeros_like(theta)
    v = np.zeros_like(theta)
    previous: list[np.ndarray] = []
    out = []
    for k in range(-(-steps // f)):
        m2 = m2 + b3 * sum(previous, np.zeros_like(theta))
        o2 = newton_schulz(m2, ns_steps)
        previous = []
        for t in range(k * f + 1, min((k + 1) * f, steps) + 1):
            g = gradient(t, theta)
            previous.append(g)
            m1 = m1 + b1 * g
            v = v + b2 * g * g
            o1 = newton_schulz(m1, ns_steps)
            theta = theta - lr * (o1 + alpha * o2) / np.sqrt(v + eps)
            out.append(theta)
    return out
