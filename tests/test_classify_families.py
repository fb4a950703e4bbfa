"""The kernel families `classify` gives matrix memories updated every token, rebuilt from
the classification's parameters and compared with the derived rule in float64.

A wrong split (a lost rank-one term, a wrong effective rate, a wrong order) changes the
rebuilt update, so each case checks what the compiled kernels will compute."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch
from conftest import EXAMPLES

from nlc import pipeline
from nlc.derive import derive
from nlc.derive.classify import ERROR_ARGS, KernelFamily, classify
from nlc.derive.evaluate import evaluate

BASE = (EXAMPLES / "delta_product.nl").read_text()
CHANNEL = ("param w_beta, w_alpha : [d_model]",
           "param w_beta : [d_model]\n  param W_alpha : [d_model, d_k]")


def variant(objective="l2(S(k), v)", order="before", steps=1, channel=False):
    text = BASE.replace("l2(S(k), v)", objective).replace("order = before", f"order = {order}")
    text = text.replace("steps = 2", f"steps = {steps}")
    if channel:
        text = text.replace(*CHANNEL).replace("x @ w_alpha", "x @ W_alpha")
    return text


def classified(tmp_path, text):
    spec = tmp_path / "variant.nl"
    spec.write_text(text)
    (checked,) = pipeline.run(str(spec), "check")
    (rule,) = derive(checked, {"d_model": 8, "heads": 1, "d_k": 3, "d_v": 2})
    return rule, classify(rule)


def random_env(expr, seed=0):
    """Columns and matrices ~ N(0, 1), scalars and gates in (0.2, 0.9), keyed by symbol."""
    rng = np.random.default_rng(seed)
    env = {}
    for s in sorted(expr.atoms(sp.Symbol, sp.MatrixSymbol), key=lambda s: s.name):
        if isinstance(s, sp.MatrixSymbol):
            shape = tuple(int(d) for d in s.shape)
            env[s] = rng.uniform(0.2, 0.9, shape) if s.name == "alpha" else rng.normal(size=shape)
        else:
            env[s] = float(rng.uniform(0.2, 0.9))
    return env


def rebuilt(family, S):
    """S' from the family's parameters, as the kernels compute it."""
    gate, kind = family.param("decay"), family.param("decay_kind")
    D = sp.DiagMatrix(gate) if kind == "channel" else gate * sp.Identity(S.shape[1])
    transition = family.param("transition") or family.family.value
    if transition == "delta":
        k = family.param("key")
        return S * D * (sp.Identity(S.shape[1]) - family.param("beta") * k * k.T) \
            + family.param("bias")
    if transition == "dplr":
        return S * (D + family.param("a") * family.param("b").T) + family.param("bias")
    raise AssertionError(transition)


CASES = [  # (objective, order, steps, channel gate) -> family, transition
    ("l2(S(k), v)", "before", 2, False, KernelFamily.PRODUCT, "delta"),
    ("l2(S(k), v)", "before", 3, False, KernelFamily.PRODUCT, "delta"),
    # a scalar gate at the old state: beta would be b / a, infinite at a = 0 (chunked NaN)
    ("l2(S(k), v)", "parallel", 2, False, KernelFamily.PRODUCT, "dplr"),
    ("l2(S(k), v)", "parallel", 1, False, KernelFamily.DPLR, "dplr"),
    ("l2(S(k), v)", "before", 2, True, KernelFamily.PRODUCT, "delta"),
    ("l2(S(k), v)", "parallel", 2, True, KernelFamily.PRODUCT, "dplr"),
    ("l2(S(k), v)", "parallel", 1, True, KernelFamily.DPLR, "dplr"),
    ("l2(S(k), v)", "before", 1, False, KernelFamily.DELTA, "delta"),
]


@pytest.mark.parametrize("objective, order, steps, channel, expected, transition", CASES)
def test_affine_families_rebuild_the_derived_rule(objective, order, steps, channel, expected,
                                                  transition, tmp_path):
    rule, family = classified(tmp_path, variant(objective, order, steps, channel))
    assert family.family is expected, family.to_text()
    assert (family.param("transition") or family.family.value) == transition
    (name, S), = rule.states
    derived, again = rule.next_of(name), rebuilt(family, S)
    env = random_env(derived)
    np.testing.assert_allclose(evaluate(again, env), evaluate(derived, env), rtol=1e-12)


@pytest.mark.parametrize("objective, order", [
    ("lp(S(k), v, p = 3)", "parallel"), ("lp(S(k), v, p = 3)", "before"),
    ("huber(S(k), v, delta = 0.5, switch = entries)", "before"),
    ("huber(S(k), v, delta = 0.5, switch = entries)", "parallel"),
])
@pytest.mark.parametrize("channel", [False, True])
def test_elementwise_family_rebuilds_the_derived_rule(objective, order, channel, tmp_path):
    rule, family = classified(tmp_path, variant(objective, order, 1, channel))
    assert family.family is KernelFamily.ELEMENTWISE, family.to_text()
    assert family.param("order") == order
    (name, S), = rule.states
    derived = rule.next_of(name)
    env = random_env(derived)
    gate = evaluate(family.param("decay"), env)
    Sn, k = env[S], evaluate(family.param("key"), env)
    decayed = Sn * gate.ravel()[None, :] if channel else Sn * gate
    pred = (decayed if order == "before" else Sn) @ k
    error = sp.lambdify(ERROR_ARGS, family.param("error"), "numpy")
    e = error(pred, evaluate(family.param("target"), env))
    expected = decayed - evaluate(family.param("rate"), env) * e @ k.T
    np.testing.assert_allclose(expected, evaluate(derived, env), rtol=1e-12)


def test_elementwise_needs_a_closed_error(tmp_path):
    """A per-token Huber threshold cannot be compiled into the kernel: frozen-gradient."""
    text = variant("huber(S(k), v, delta = beta, switch = entries)", "before", 1)
    _, family = classified(tmp_path, text)
    assert family.family is KernelFamily.FROZEN_GRADIENT


ZERO_GATE = """layer ParallelGate {
  dims d_model = 8, d_k = 4, d_v = 4
  param W_q, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param w_g : [d_model]
  param W_o : [d_v, d_model]
  context from x { q = x @ W_q; k = l2norm(x @ W_k); v = x @ W_v; g = GATE }
  level memory {
    state M : matrix[d_v, d_k] = zeros
    objective l2(M(k), v)
    retention RETENTION
    algorithm gd(lr = 0.5STEPS)
    read M(q)
  }
  output memory @ W_o
}
"""


@pytest.mark.parametrize("gate, retention, steps", [
    ("relu(tanh(x @ w_g))", "decay(g, order = parallel)", ""),     # gates of exactly 0
    ("relu(tanh(x @ w_g))", "decay(g, order = parallel)", ", steps = 3"),
    ("1 - relu(tanh(x @ w_g))", "weight_decay(g)", ""),           # Titans' 1 - alpha, alpha = 1
])
def test_a_gate_at_the_old_state_reaching_zero_keeps_the_chunked_form_exact(
        gate, retention, steps, tmp_path):
    """A scalar gate at the old state (`order = parallel`, weight_decay's default) divided
    the rate as a delta rule's beta = b / a: at a gate of exactly 0 the chunked form was NaN
    for the whole chunk. It is now a decay beside a rank-one term (dplr), whose chunked form
    equals the token loop in float64, output and gradients, with several gates at 0."""
    from nlc.emit import load_module
    spec = tmp_path / "parallel_gate.nl"
    spec.write_text(ZERO_GATE.replace("GATE", gate).replace("RETENTION", retention)
                    .replace("STEPS", steps))
    module = load_module(str(spec))
    torch.manual_seed(0)
    x = torch.randn(2, 37, 8, dtype=torch.float64)
    outs = {}
    for mode in ("recurrent", "chunked"):
        torch.manual_seed(1)
        layer = module.ParallelGate(mode=mode).double()
        with torch.no_grad():
            layer.w_g.normal_(std=2.0)
        xx = x.clone().requires_grad_()
        y = layer(xx)
        outs[mode] = (y, *torch.autograd.grad(y.square().sum(), [xx, *layer.parameters()]))
    gates = torch.relu(torch.tanh(x @ layer.w_g.detach().reshape(-1)))
    assert (gates == 0).sum() > 5
    for got, want in zip(outs["chunked"], outs["recurrent"], strict=True):
        assert torch.isfinite(got).all()
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)
