"""Several (key, value, rate) pairs per token (`objective a then b`, `algorithm f then g`):
DeltaProduct with n_h = 2 distinct Householder steps per token (Siems et al.,
arXiv:2502.10297, 2025) from tests/specs/delta_product_pairs.nl. The derived rule against
steps taken by torch.autograd, the product family's classification, and its chunked form
(the delta rule over the interleaved steps) against the recurrent form and decoding."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import sympy as sp
import torch
from conftest import ROOT, TESTS
from nlc.runtime.library import ops

from nlc import pipeline
from nlc.derive import derive
from nlc.derive.classify import KernelFamily
from nlc.derive.evaluate import Evaluator
from nlc.derive.execution import ProductChunk, TokenLoop
from nlc.emit import load_layer
from nlc.errors import NlcError
from nlc.syntax.format import format_module
from nlc.syntax.parser import parse
from nlc.verify.verify import verify_module

SPEC = TESTS / "specs" / "delta_product_pairs.nl"
F64 = torch.float64


def _variant(tmp_path, name: str, old: str = "", new: str = ""):
    text = SPEC.read_text().replace(old, new) if old else SPEC.read_text()
    path = tmp_path / f"{name}.nl"
    path.write_text(text)
    return path


STEPS = ("objective l2(S(k1), v1) then l2(S(k2), v2)\n"
         "    retention decay(alpha, order = before)\n"
         "    algorithm gd(lr = beta1) then gd(lr = beta2)")
THREE_STEPS = ("objective l2(S(k1), v1) then l2(S(k2), v2) then l2(S(k1), v2)\n"
               "    retention decay(alpha, order = before)\n"
               "    algorithm gd(lr = beta1)")
CONSTANTS = ("objective l2(S(k1), v1) then l2(S(k2), v2)\n"
             "    retention decay(0.9)\n"
             "    algorithm gd(lr = 0.5)")
VARIANTS = {  # name -> (old, new): the spec's other points with two pairs per token
    "gated": ("", ""),
    "read_before": ("read S(q)", "read before S(q)"),
    "ungated": ("    retention decay(alpha, order = before)\n", ""),
    "three_steps_one_rate": (STEPS, THREE_STEPS),
    "constants": (STEPS, CONSTANTS),
}


def test_then_survives_fmt():
    module = parse(SPEC.read_text())
    text = format_module(module)
    assert "objective l2(S(k1), v1) then l2(S(k2), v2)" in text
    assert "algorithm gd(lr = beta1) then gd(lr = beta2)" in text
    assert parse(text) == module


def _rule():
    (spec,) = pipeline.run(str(SPEC), "check")
    (rule,) = derive(spec, dict(spec.dims))
    return rule


def _autograd_token(S, pairs, alpha):
    """One token as the paper states it: the gate, then per pair one gradient step on
    1/2 ||S k - v||^2, the gradient taken by autograd at the state the last step left."""
    S = alpha * S
    for k, v, beta in pairs:
        S = S.detach().requires_grad_(True)
        loss = 0.5 * ((S @ k - v) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, S)
        S = S - beta * grad
    return S.detach()


def test_the_derived_rule_is_two_autograd_steps():
    rule = _rule()
    assert [tuple(s.name for s in step) for step in rule.role("steps")] \
        == [("k1", "v1", "beta1"), ("k2", "v2", "beta2")]
    rng = np.random.default_rng(0)
    expr = rule.next_of("S")
    env = {}
    for leaf in sorted(expr.atoms(sp.MatrixSymbol, sp.Symbol), key=str):
        shape = tuple(int(d) for d in leaf.shape) if isinstance(leaf, sp.MatrixSymbol) else ()
        env[leaf] = rng.uniform(0.2, 1.5, shape) if not shape else rng.standard_normal(shape)
    got = Evaluator(env)(expr)
    x = {s.name: torch.as_tensor(np.asarray(v, dtype=np.float64)) for s, v in env.items()}
    pairs = [(x["k1"], x["v1"], x["beta1"]), (x["k2"], x["v2"], x["beta2"])]
    expected = _autograd_token(x["S"], pairs, x["alpha"]).numpy()
    assert np.abs(got - expected).max() < 1e-12 * np.abs(expected).max()
    # two distinct keys: not one delta transition with a summed rate
    one_key = _autograd_token(x["S"], [(x["k1"], x["v1"], x["beta1"])] * 2, x["alpha"]).numpy()
    assert np.abs(got - one_key).max() > 1e-3


SWEEP_SPEC = """layer Sweep {{
  dims d_model = 4, d_k = 3, d_v = 2
  param W_k1, W_k2, W_k3 : [d_model, d_k]
  param W_v1, W_v2, W_v3 : [d_model, d_v]
  param w_b1, w_b2, w_b3, w_a : [d_model]
  param W_c : [d_model, d_k]
  param W_o : [d_v, d_model]
  context from x {{
    k1 = x @ W_k1
    k2 = x @ W_k2
    k3 = x @ W_k3
    v1 = x @ W_v1
    v2 = x @ W_v2
    v3 = x @ W_v3
    b1 = sigmoid(x @ w_b1)
    b2 = sigmoid(x @ w_b2)
    b3 = sigmoid(x @ w_b3)
    alpha = sigmoid(x @ w_a)
    c = sigmoid(x @ W_c)
  }}
  level memory {{
    state S : matrix[d_v, d_k] = zeros
    objective {objectives}
    {retention}
    algorithm {algorithms}
    read S(k1)
  }}
  output memory @ W_o
}}
"""
OBJECTIVES = {  # spec -> the loss of e = S k - v, in torch
    "l2(S(k{i}), v{i})": lambda e, S, k, v: 0.5 * (e ** 2).sum(),
    "l2(S(k{i}), v{i}, scale = 2)": lambda e, S, k, v: (e ** 2).sum(),
    "dot(S(k{i}), v{i})": lambda e, S, k, v: -((S @ k) * v).sum(),
    "lp(S(k{i}), v{i}, p = 3)": lambda e, S, k, v: (e.abs() ** 3).sum(),
}
SWEEP = [  # (objectives, rates, retention)
    (["l2(S(k{i}), v{i})"] * 3, ["b{i}"] * 3, "retention decay(alpha, order = parallel)"),
    (["l2(S(k{i}), v{i}, scale = 2)", "dot(S(k{i}), v{i})"], ["b{i}", "c"], ""),
    (["lp(S(k{i}), v{i}, p = 3)", "l2(S(k{i}), v{i})"], ["c", "b{i}"], "retention decay(c)"),
    (["dot(S(k{i}), v{i})", "lp(S(k{i}), v{i}, p = 3)", "l2(S(k{i}), v{i})"], ["b{i}"] * 3,
     "retention decay(alpha)"),
]


def _sweep_reference(x, objectives, rates, retention):
    """Each step at the state the last one left, by autograd; the retention with the first
    (order before: the gradient at the gated state; parallel: at the old state)."""
    S = x["S"]
    gate = (x["c"][:, 0] if "decay(c)" in retention else x["alpha"]) if retention else 1.0
    for i, (objective, rate) in enumerate(zip(objectives, rates), 1):
        k, v = x[f"k{i}"], x[f"v{i}"]
        kept = S * gate if i == 1 else S
        at = S if i == 1 and "parallel" in retention else kept
        at = at.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(OBJECTIVES[objective](at @ k - v, at, k, v), at)
        step = grad * x["c"][:, 0] if rate == "c" else x[rate.format(i=i)] * grad
        S = kept - step
    return S.detach()


@pytest.mark.parametrize("objectives, rates, retention", SWEEP)
def test_several_steps_of_any_objective_are_autograd_steps(objectives, rates, retention):
    """The derivation composes steps of any objective, rate and retention the language has:
    derived (SymPy, evaluated in float64) against autograd steps."""
    text = SWEEP_SPEC.format(
        objectives=" then ".join(o.format(i=i) for i, o in enumerate(objectives, 1)),
        algorithms=" then ".join(f"gd(lr = {r.format(i=i)})" for i, r in enumerate(rates, 1)),
        retention=retention)
    (spec,) = pipeline.run(None, "check", text=text)
    (rule,) = derive(spec, dict(spec.dims))
    expr = rule.next_of("S")
    rng = np.random.default_rng(len(objectives))
    env = {}
    for leaf in sorted(expr.atoms(sp.MatrixSymbol, sp.Symbol), key=str):
        shape = tuple(int(d) for d in leaf.shape) if isinstance(leaf, sp.MatrixSymbol) else ()
        gate_like = leaf.name in ("c", "alpha") or leaf.name.startswith("b")
        env[leaf] = rng.uniform(0.2, 0.9, shape) if gate_like else rng.standard_normal(shape)
    got = Evaluator(env)(expr)
    x = {s.name: torch.as_tensor(np.asarray(v, dtype=np.float64)) for s, v in env.items()}
    x.setdefault("c", torch.ones(3, 1, dtype=F64))
    expected = _sweep_reference(x, objectives, rates, retention).numpy()
    assert np.abs(got - expected).max() < 1e-12 * np.abs(expected).max()


def test_the_product_family_runs_as_delta_steps():
    (_, (classified,)), = pipeline.run(str(SPEC), "classify")
    family, ex = classified.family, classified.execution
    assert family.family is KernelFamily.PRODUCT and family.param("transition") == "delta"
    assert isinstance(ex, ProductChunk)
    assert [(str(v), str(k), str(b)) for v, k, b in ex.steps] \
        == [("beta1*v1", "k1", "beta1"), ("beta2*v2", "k2", "beta2")]
    assert str(ex.decay) == "alpha"


def test_steps_that_are_not_delta_steps_run_token_by_token_and_say_why(tmp_path):
    path = _variant(tmp_path, "lp_step", "then l2(S(k2), v2)", "then lp(S(k2), v2)")
    (_, (classified,)), = pipeline.run(str(path), "classify")
    assert classified.family.family is KernelFamily.PRODUCT
    assert not classified.family.param("transition")
    assert isinstance(classified.execution, TokenLoop)
    assert "step 2 is elementwise" in classified.execution.reason


def test_steps_past_the_derivation_budget_are_a_located_error():
    """Each step holds the state twice: 12 steps fit the budget, 13 stop at the algorithm."""
    text = SPEC.read_text().replace(STEPS, (
        "objective " + " then ".join(["l2(S(k1), v1)", "l2(S(k2), v2)"] * 6 + ["l2(S(k1), v1)"])
        + "\n    retention decay(alpha, order = before)\n    algorithm gd(lr = beta1)"))
    with pytest.raises(NlcError) as info:
        pipeline.run(None, "derive", text=text)
    assert "13 steps per token" in info.value.message
    assert "derivation budget" in info.value.message
    assert info.value.span.line == text.splitlines().index(
        "    algorithm gd(lr = beta1)") + 1


def _module(path):
    layer = load_layer(str(path))
    return layer, sys.modules[layer.__module__]


def test_the_op_is_the_autograd_recurrence_over_a_sequence(tmp_path):
    """The generated op, recurrent and chunked, against the paper's recurrence by autograd."""
    _, module = _module(SPEC)
    torch.manual_seed(1)
    B, T, H, K, V = 2, 11, 2, 6, 4

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, dtype=F64), dim=-1)

    q, k1, k2 = unit(B, T, H, K), unit(B, T, H, K), unit(B, T, H, K)
    v1, v2 = torch.randn(B, T, H, V, dtype=F64), torch.randn(B, T, H, V, dtype=F64)
    beta1, beta2 = 2 * torch.rand(B, T, H, dtype=F64), 2 * torch.rand(B, T, H, dtype=F64)
    alpha = torch.rand(B, T, H, dtype=F64)
    S = torch.zeros(B, H, V, K, dtype=F64)
    reads = []
    for t in range(T):
        S = torch.stack([torch.stack([_autograd_token(
            S[b, h], [(k1[b, t, h, :, None], v1[b, t, h, :, None], beta1[b, t, h]),
                      (k2[b, t, h, :, None], v2[b, t, h, :, None], beta2[b, t, h])],
            alpha[b, t, h]) for h in range(H)]) for b in range(B)])
        reads.append((S @ q[:, t, :, :, None])[..., 0])
    expected = torch.stack(reads, 1)
    inputs = {"q": q, "k1": k1, "v1": v1, "alpha": alpha, "beta1": beta1, "beta2": beta2,
              "k2": k2, "v2": v2}
    for mode in ("recurrent", "chunked"):
        o, final = module.op(**inputs, mode=mode, chunk_size=4, output_final_state=True)
        torch.testing.assert_close(o, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(final["S"], S, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_chunked_equals_recurrent_and_step(tmp_path, variant):
    layer_cls, _ = _module(_variant(tmp_path, variant, *VARIANTS[variant]))
    (_, (classified,)), = pipeline.run(str(tmp_path / f"{variant}.nl"), "classify")
    assert isinstance(classified.execution, ProductChunk)
    torch.manual_seed(0)
    layer = layer_cls().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    layer.chunk_size = 8
    x = torch.randn(2, 37, 12, dtype=F64)
    chunked = layer(x)
    layer.mode = "recurrent"
    recurrent = layer(x)
    torch.testing.assert_close(chunked, recurrent, rtol=1e-12, atol=1e-12)
    cache, steps = None, []
    layer.mode = "chunked"
    for t in range(x.shape[1]):
        y, cache = layer.step(x[:, t], cache)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), recurrent, rtol=1e-12, atol=1e-12)


def test_chunked_gradients_equal_recurrent_gradients():
    """Training runs the chunked form: its gradients are the recurrent form's (float64)."""
    torch.manual_seed(2)
    layer = _module(SPEC)[0]().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    layer.chunk_size = 8
    x = torch.randn(2, 19, 12, dtype=F64)
    grads = []
    for mode in ("chunked", "recurrent"):
        layer.mode = mode
        layer.zero_grad()
        (layer(x) ** 2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in layer.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-10, atol=1e-10, msg=name)


def test_the_layer_dispatches_to_the_delta_rule_over_the_steps(monkeypatch):
    layer = _module(SPEC)[0]().double()
    seen = []
    real = ops.delta_chunked

    def spy(q, k, v, beta, log_decay=None, **kw):
        seen.append((q.shape, k.shape, None if log_decay is None else log_decay.shape))
        return real(q, k, v, beta, log_decay, **kw)

    monkeypatch.setattr(ops, "delta_chunked", spy)
    x = torch.randn(3, 10, 12, dtype=F64)
    layer(x)
    # one call per layer, over 2 steps per token: [B, 2 T, H, d_k], the gate on every step
    assert seen == [(torch.Size([3, 20, 2, 6]), torch.Size([3, 20, 2, 6]),
                     torch.Size([3, 20, 2]))]


KERNEL = """
import os, sys, torch
from nlc.emit import load_layer
from nlc.errors import NlcError
torch.manual_seed(0)
layer = load_layer(sys.argv[1])()
layer.chunk_size = 16
for T in (9, 40):  # 18 steps: the recurrent kernel; 80: the chunked kernels
    x = torch.randn(1, T, 12)
    os.environ["NLC_TRITON"] = "force"
    y = layer(x)
    os.environ["NLC_TRITON"] = "0"
    z = layer(x)
    print(((y - z).abs().max() / z.abs().max()).item())
"""


def test_the_delta_rule_kernels_run_the_steps():
    """Triton forced on CPU tensors under the interpreter: the delta rule's fused recurrent
    kernel and its chunked kernels run the interleaved steps."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", KERNEL, str(SPEC)], check=False,
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    errors = [float(line) for line in done.stdout.split()]
    assert len(errors) == 2 and max(errors) < 1e-5


def _verified(text: str):
    (report,) = verify_module(parse(text, "spec.nl"), "spec.nl")
    (level,) = report.levels
    return report, [c.entry.id for c in level.matches], level.matches


def test_the_claim_is_proved_against_the_published_recurrence():
    report, ids, matches = _verified(SPEC.read_text())
    assert report.claim_holds and ids == ["deltaproduct_gated"]
    assert matches[0].symbolic is True and matches[0].numeric < 1e-12
    report, ids, _ = _verified(SPEC.read_text().replace(*VARIANTS["ungated"]))
    assert report.claim_holds and ids == ["deltaproduct"]


@pytest.mark.parametrize("old, new", [
    ("then l2(S(k2), v2)", "then l2(S(k2), v2, scale = 2)"),      # the second rate doubled
    ("decay(alpha, order = before)", "decay(alpha, order = parallel)"),  # the gate at the old state
])
def test_other_rules_claiming_deltaproduct_are_refused(old, new):
    text = SPEC.read_text()
    assert old in text
    report, ids, _ = _verified(text.replace(old, new))
    assert not report.claim_holds and not any(i.startswith("deltaproduct") for i in ids)
