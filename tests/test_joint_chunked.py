"""The joint chunked form (runtime/library/joint.py) against token loops in float64: the
momentum delta rule written in its own terms, random mixings of three states, the delta
rule as the case of one state; gates at their limits; and the generated layer, whose
`mode="chunked"` runs it."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import TESTS, assert_chunked_gradients_equal_recurrent
from nlc.runtime.library import ops
from nlc.runtime.library.chunked import delta_chunked_torch
from nlc.runtime.library.joint import joint_chunked

from nlc.emit import load_layer

F64 = torch.float64
SPEC = TESTS / "specs" / "momentum_delta.nl"
B, H, K, V = 2, 2, 5, 3


def _momentum_loop(q, k, v, eta, theta, alpha, S, M, read_before=False):
    """M_t = theta M - eta (S k - v) k^T, S_t = alpha S + M_t, o_t = S_t q_t (or S_{t-1} q_t)."""
    outs = []
    for t in range(q.shape[1]):
        kt, qt = k[:, t, :, :, None], q[:, t, :, :, None]
        e, th, al = (x[:, t, :, None, None] for x in (eta, theta, alpha))
        if read_before:
            outs.append((S @ qt)[..., 0])
        M = th * M - e * (S @ kt - v[:, t, :, :, None]) @ kt.mT
        S = al * S + M
        if not read_before:
            outs.append((S @ qt)[..., 0])
    return torch.stack(outs, 1), S, M


def _momentum_terms(v, eta, theta, alpha):
    """The joint form's values, P and Q of the rule as X = [S, M]:
    S' = S (alpha I - eta k k^T) + M theta + eta v k^T,
    M' = S (-eta k k^T) + M theta + eta v k^T."""
    zero = torch.zeros_like(eta)
    P = torch.stack([torch.stack([alpha, zero], -1), torch.stack([theta, theta], -1)], -2)
    Q = torch.stack([torch.stack([-eta, -eta], -1), torch.stack([zero, zero], -1)], -2)
    values = (eta[..., None] * v).unsqueeze(-2).expand(-1, -1, -1, 2, -1)
    return values, P, Q


def _momentum_chunked(q, k, v, eta, theta, alpha, S, M, read_before=False, chunk_size=16):
    """The same rule through the joint form (`_momentum_terms`)."""
    values, P, Q = _momentum_terms(v, eta, theta, alpha)
    o, X = joint_chunked(q, k, values, P, Q, read=0, initial_state=torch.stack((S, M), 2),
                         read_before=read_before, chunk_size=chunk_size)
    return o, X[:, :, 0], X[:, :, 1]


def _inputs(T, seed=0, key_norm=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, dtype=F64, generator=g)
    k = key_norm * torch.nn.functional.normalize(
        torch.randn(B, T, H, K, dtype=F64, generator=g), dim=-1)
    v = torch.randn(B, T, H, V, dtype=F64, generator=g)
    eta, theta, alpha = (torch.rand(B, T, H, dtype=F64, generator=g) for _ in range(3))
    return q, k, v, eta, theta, alpha


def _states(initial: bool, seed=1):
    if not initial:
        return torch.zeros(B, H, V, K, dtype=F64), torch.zeros(B, H, V, K, dtype=F64)
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, V, K, dtype=F64, generator=g),
            torch.randn(B, H, V, K, dtype=F64, generator=g))


@pytest.mark.parametrize("T", [1, 15, 63, 65, 200])
@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("initial", [False, True])
def test_momentum_delta_rule_chunked_equals_token_loop(T, chunk_size, initial):
    inputs = _inputs(T)
    S, M = _states(initial)
    for read_before in (False, True):
        want = _momentum_loop(*inputs, S, M, read_before)
        got = _momentum_chunked(*inputs, S, M, read_before, chunk_size)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_three_states_with_random_mixings_equal_the_token_loop():
    """Any n x n mixing P_t and rank-one weights Q_t, not only momentum's."""
    torch.manual_seed(3)
    T, n = 37, 3
    q, k = torch.randn(B, T, H, K, dtype=F64), torch.randn(B, T, H, K, dtype=F64) / 2
    values = torch.randn(B, T, H, n, V, dtype=F64)
    P, Q = torch.randn(B, T, H, n, n, dtype=F64) / 2, torch.randn(B, T, H, n, n, dtype=F64) / 2
    X = torch.randn(B, H, n, V, K, dtype=F64)
    X0, outs = X, []
    for t in range(T):
        kt = k[:, t, :, None, :, None]                       # [B, H, 1, K, 1]
        Xk = (X @ kt)[..., 0]                                # [B, H, n, V]
        X = torch.einsum("bhjvk,bhji->bhivk", X, P[:, t]) + torch.einsum(
            "bhjv,bhji,bhk->bhivk", Xk, Q[:, t], k[:, t]) + values[:, t, ..., None] * kt.mT
        outs.append((X[:, :, 2] @ q[:, t, ..., None])[..., 0])
    o, final = joint_chunked(q, k, values, P, Q, read=2, initial_state=X0, chunk_size=16)
    torch.testing.assert_close(o, torch.stack(outs, 1), rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(final, X, rtol=1e-11, atol=1e-11)


def test_one_state_is_the_delta_rule():
    q, k, v, beta, _, alpha = _inputs(70, seed=4)
    P, Q = alpha[..., None, None], -(alpha * beta)[..., None, None]
    o, X = joint_chunked(q, k, (beta[..., None] * v).unsqueeze(-2), P, Q, chunk_size=16)
    want, S = delta_chunked_torch(q, k, beta[..., None] * v, beta, alpha.log(), chunk_size=16)
    torch.testing.assert_close(o, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(X[:, :, 0], S, rtol=1e-12, atol=1e-12)


LIMITS = [  # (eta, theta, alpha): rates, momenta and decays of 0 and 1
    (0.0, 0.0, 0.0), (1.0, 0.0, 1.0), (1.0, 1.0, 1.0), (0.0, 1.0, 0.0), (1.0, 1.0, 0.0),
    (0.5, 0.0, 1.0),
]


@pytest.mark.parametrize("eta, theta, alpha", LIMITS)
def test_gates_at_their_limits_are_finite_and_exact(eta, theta, alpha):
    T = 70
    q, k, v, *_ = _inputs(T, seed=5)
    gates = [torch.full((B, T, H), x, dtype=F64, requires_grad=True) for x in (eta, theta, alpha)]
    S, M = _states(True)
    want = _momentum_loop(q, k, v, *gates, S, M)
    got = _momentum_chunked(q, k, v, *gates, S, M, chunk_size=16)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    grads = [torch.autograd.grad(sum(x.square().sum() for x in out), gates)
             for out in (got, want)]
    for a, b in zip(*grads):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_keys_of_large_norm_are_finite_and_exact():
    """|k| = 1000 with the normalized rate eta = 1 / |k|^2 (the loop itself is finite)."""
    T, norm = 65, 1e3
    q, k, v, eta, theta, alpha = _inputs(T, seed=6, key_norm=norm)
    eta = (eta / norm ** 2).requires_grad_()
    S, M = _states(True)
    want = _momentum_loop(q, k, v, eta, theta, alpha, S, M)
    got = _momentum_chunked(q, k, v, eta, theta, alpha, S, M, chunk_size=64)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    (grad,) = torch.autograd.grad(got[0].square().sum(), eta)
    assert torch.isfinite(grad).all()


def _layer():
    cls = load_layer(str(SPEC))
    torch.manual_seed(0)
    layer = cls().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    return layer, sys.modules[cls.__module__]


@pytest.mark.parametrize("T", [1, 15, 65])
def test_the_generated_layer_chunked_equals_recurrent(T, monkeypatch):
    layer, module = _layer()
    calls = []
    real = ops.joint_chunked

    def spy(*args, **kw):
        calls.append(kw["chunk_size"])
        return real(*args, **kw)

    monkeypatch.setattr(ops, "joint_chunked", spy)
    x = torch.randn(2, T, 12, dtype=F64)
    for chunk_size in (16, 64):
        layer.chunk_size, layer.mode = chunk_size, "chunked"
        chunked = layer(x)
        layer.mode = "recurrent"
        recurrent = layer(x)
        torch.testing.assert_close(chunked, recurrent, rtol=1e-12, atol=1e-12)
    assert calls == [16, 64]  # the chunked mode ran the joint form, the recurrent one did not
    assert "family joint" in module.__doc__
    assert "joint chunked form" in module.memory_chunked.__doc__


def test_the_generated_layer_gradients_equal_recurrent():
    layer, _ = _layer()
    layer.chunk_size = 16
    assert_chunked_gradients_equal_recurrent(layer, torch.randn(2, 40, 12, dtype=F64))


VARIANTS = {  # name -> (old, new): other points of the spec that are jointly affine
    "decay_before": ("decay(alpha, order = parallel)", "decay(alpha, order = before)"),
    "no_decay": ("    retention decay(alpha, order = parallel)\n", ""),
    "weight_decay": ("decay(alpha, order = parallel)", "weight_decay(alpha)"),
    "constants": ("momentum(lr = eta, momentum = theta)", "momentum(lr = 0.5, momentum = 0.9)"),
    "dot": ("objective l2(S(k), v)", "objective dot(S(k), v)"),
    "read_before": ("read S(q)", "read before S(q)"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_run_the_joint_form_and_equal_recurrent(tmp_path, variant, monkeypatch):
    from nlc import pipeline
    from nlc.derive.execution import JointChunk
    old, new = VARIANTS[variant]
    text = SPEC.read_text()
    assert old in text
    path = tmp_path / f"{variant}.nl"
    path.write_text(text.replace(old, new))
    (_, (classified,)), = pipeline.run(str(path), "classify")
    assert isinstance(classified.execution, JointChunk), classified.execution
    cls = load_layer(str(path))
    torch.manual_seed(0)
    layer = cls().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    layer.chunk_size = 8
    x = torch.randn(2, 29, 12, dtype=F64)
    chunked = layer(x)
    layer.mode = "recurrent"
    torch.testing.assert_close(chunked, layer(x), rtol=1e-12, atol=1e-12)


def test_half_precision_tokens_with_a_float32_state_compute_in_float32():
    """bf16 tokens with float32 states (a carried state under autocast): the PyTorch joint
    form computes in float32 instead of failing to multiply the two, and agrees with the
    float32 run to bf16's rounding."""
    from nlc.runtime.library.joint import joint_chunked_torch
    q, k, v, eta, theta, alpha = (x.float() for x in _inputs(40))
    S, M = (x.float() for x in _states(True))
    values, P, Q = _momentum_terms(v, eta, theta, alpha)
    X0 = torch.stack((S, M), 2)
    full, _ = joint_chunked_torch(q, k, values, P, Q, initial_state=X0, chunk_size=16)
    tokens = (x.bfloat16() for x in (q, k, values, P, Q))
    half, X = joint_chunked_torch(*tokens, initial_state=X0, chunk_size=16)
    assert half.dtype == X.dtype == torch.float32
    assert ((half - full).norm() / full.norm()).item() < 3e-2
