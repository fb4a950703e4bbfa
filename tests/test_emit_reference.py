"""Generated ops against references written by others (fla-core's naive PyTorch functions,
which compute in float32: compared at 1e-5), gradcheck per kernel family, and generated
optimizers against torch.optim and their closed forms."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from nlc.emit import load_module, load_optimizer
from nlc.errors import NlcError
from tests.test_emit import EXAMPLES, rel, small_overrides

fla_attn = pytest.importorskip("fla.ops.attn.naive")
from fla.ops.delta_rule.naive import delta_rule_recurrence  # noqa: E402
from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule  # noqa: E402
from fla.ops.gla.naive import naive_recurrent_gla  # noqa: E402
from fla.ops.linear_attn.naive import naive_recurrent_linear_attn  # noqa: E402
from fla.ops.retention.naive import naive_retention  # noqa: E402
from fla.ops.simple_gla.naive import naive_recurrent_simple_gla  # noqa: E402
from fla.ops.ttt.naive import ttt_linear  # noqa: E402

B, T, H, K, V = 2, 45, 2, 8, 6
FLA_TOL = 1e-5


@functools.cache
def ops(name: str):
    return load_module(str(EXAMPLES / f"{name}.nl"), small_overrides(EXAMPLES / f"{name}.nl"))


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def heads_first(*xs):
    return [x.transpose(1, 2) for x in xs]


@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
def test_linear_attention_with_normalizer(mode):
    q, k = rand(B, T, H, K, seed=1).sigmoid(), rand(B, T, H, K, seed=2).sigmoid()
    v, S0 = rand(B, T, H, V, seed=3), rand(B, H, V, K, seed=4)
    m = ops("linear_attention")
    o, final = m.memory_op(q, k, v, initial_state={"S": S0}, output_final_state=True, mode=mode)
    z, _ = m.normalizer_op(q, k, mode=mode)
    ref, ref_final = naive_recurrent_linear_attn(q, k, v, scale=1.0, initial_state=S0.mT,
                                                 output_final_state=True)
    assert rel(o, ref) < FLA_TOL and rel(final["S"], ref_final.mT) < FLA_TOL
    ref_norm, _ = naive_recurrent_linear_attn(q, k, v, scale=1.0, normalize=True)
    o_plain, _ = m.memory_op(q, k, v, mode=mode)
    assert rel(o_plain / z[..., None], ref_norm) < FLA_TOL


@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
def test_retnet(mode):
    q, k, v = rand(B, T, H, K, seed=1), rand(B, T, H, K, seed=2), rand(B, T, H, V, seed=3)
    gamma = (1 - 2.0 ** (-5.0 - torch.arange(H))).expand(B, T, H)
    o, _ = ops("retnet").memory_op(q * K ** -0.5, k, v, gamma, mode=mode)
    ref = naive_retention(*heads_first(q, k, v)).transpose(1, 2)
    assert rel(o, ref) < FLA_TOL


@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
def test_mamba2_as_simple_gla(mode):
    q, k, v = rand(B, T, H, K, seed=1), rand(B, T, H, K, seed=2), rand(B, T, H, V, seed=3)
    dt = torch.nn.functional.softplus(rand(B, T, H, seed=4))
    alpha = torch.exp(-dt * 0.7)
    S0 = rand(B, H, V, K, seed=5)
    o, final = ops("mamba2").memory_op(q, k, v, alpha, dt, initial_state={"S": S0},
                                       output_final_state=True, mode=mode)
    ref, ref_final = naive_recurrent_simple_gla(q, k, v * dt[..., None], alpha.log(), scale=1.0,
                                                initial_state=S0.mT)
    assert rel(o, ref) < FLA_TOL and rel(final["S"], ref_final.mT) < FLA_TOL


@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
def test_gla(mode):
    q, k, v = rand(B, T, H, K, seed=1), rand(B, T, H, K, seed=2), rand(B, T, H, V, seed=3)
    alpha = torch.sigmoid(rand(B, T, H, K, seed=4)) ** (1 / 16)
    o, _ = ops("gla").memory_op(q, k, v, alpha, mode=mode)
    ref, _ = naive_recurrent_gla(q * math.sqrt(K), k, v, alpha.log())
    assert rel(o, ref) < FLA_TOL


@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
def test_deltanet(mode):
    q, k = rand(B, T, H, K, seed=1), unit(rand(B, T, H, K, seed=2))
    v, beta, S0 = rand(B, T, H, V, seed=3), rand(B, T, H, seed=4).sigmoid(), rand(B, H, V, K)
    o, final = ops("deltanet").memory_op(q, k, v, beta, initial_state={"S": S0},
                                         output_final_state=True, mode=mode)
    ref, ref_final = delta_rule_recurrence(*heads_first(q * math.sqrt(K), k, v),
                                           beta.transpose(1, 2), initial_state=S0.mT.clone())
    assert rel(o, ref.transpose(1, 2)) < FLA_TOL and rel(final["S"], ref_final.mT) < FLA_TOL


@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
def test_gated_deltanet(mode):
    q, k = rand(B, T, H, K, seed=1), unit(rand(B, T, H, K, seed=2))
    v, beta = rand(B, T, H, V, seed=3), rand(B, T, H, seed=4).sigmoid()
    alpha, S0 = torch.exp(-rand(B, T, H, seed=5).exp() * 0.3), rand(B, H, V, K, seed=6)
    o, final = ops("gated_deltanet").memory_op(q, k, v, alpha, beta, initial_state={"S": S0},
                                               output_final_state=True, mode=mode)
    ref, ref_final = naive_recurrent_gated_delta_rule(q, k, v, beta, alpha.log(), scale=1.0,
                                                      initial_state=S0.mT,
                                                      output_final_state=True)
    assert rel(o, ref) < FLA_TOL and rel(final["S"], ref_final.mT) < FLA_TOL


@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
def test_longhorn_is_the_delta_rule_with_the_solved_step(mode):
    """fla has no Longhorn op: its delta rule with the step beta / (1 + beta ||k||^2), which
    SymPy solved from the implicit update, is the reference."""
    q, k, v = rand(B, T, H, K, seed=1), rand(B, T, H, K, seed=2), rand(B, T, H, V, seed=3)
    beta = rand(B, T, H, seed=4).sigmoid()
    o, _ = ops("longhorn").memory_op(q, k, v, beta, mode=mode)
    step = beta / (1 + beta * (k * k).sum(-1))
    ref, _ = delta_rule_recurrence(*heads_first(q * math.sqrt(K), k, v), step.transpose(1, 2))
    assert rel(o, ref.transpose(1, 2)) < FLA_TOL


@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
def test_ttt_linear_state(mode):
    """fla's naive TTT-Linear differs from the spec in three ways: a learned bias in the
    memory (updated at mini-batch ends), the learning rate of a mini-batch's last token, and
    the residual added to the memory's output (o + LN(o)) where the TTT paper adds the input.
    Over one mini-batch with a constant learning rate the bias is still zero, so the weights
    after it (all gradients at the chunk-start state) must agree."""
    D, mini = int(small_overrides(EXAMPLES / "ttt_linear.nl")["d_head"]), 16
    Tm = mini
    q, k, v = rand(B, Tm, H, D, seed=1), rand(B, Tm, H, D, seed=2), rand(B, Tm, H, D, seed=3)
    eta = torch.full((B, Tm, H), 0.05)
    W0 = 0.1 * rand(B, H, D, D, seed=4)
    _, final = ops("ttt_linear").memory_op(q, k, v, eta, initial_state={"W_W1": W0},
                                           output_final_state=True, mode=mode)
    _, h, _ = ttt_linear(*heads_first(q, k, v), torch.ones(H, D), torch.zeros(H, D),
                         eta.transpose(1, 2)[..., None], 1.0, 1e-6, mini, W0.mT.clone(), None,
                         True)
    assert rel(final["W_W1"], h.mT) < FLA_TOL


@pytest.mark.parametrize("name,window", [("softmax_attention", None), ("sliding_window", 512)])
@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
def test_attention(name, window, mode):
    q, k, v = rand(B, T, H, K, seed=1), rand(B, T, H, K, seed=2), rand(B, T, H, V, seed=3)
    o, _ = ops(name).memory_op(q, k, v, mode=mode)
    ref = fla_attn.naive_parallel_attn(q, k, v, scale=K ** -0.5, window_size=window)
    ref = ref[0] if isinstance(ref, tuple) else ref
    assert rel(o, ref) < FLA_TOL


# ------------------------------------------------------------------ gradcheck per family
FAMILIES = {"decay": "gla", "delta": "gated_deltanet", "frozen-gradient": "ttt_linear",
            "nonparametric": "softmax_attention"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
def test_gradcheck(family, mode):
    name = FAMILIES[family]
    op = ops(name).memory_op
    Ts = 5
    vec, val, sca = (1, Ts, H, K), (1, Ts, H, V), (1, Ts, H)
    shapes = {"gla": [vec, vec, val, vec], "gated_deltanet": [vec, vec, val, sca, sca],
              "ttt_linear": [vec, vec, vec, sca], "softmax_attention": [vec, vec, val]}[name]
    inputs = [rand(*s, seed=i).double() for i, s in enumerate(shapes)]
    if name == "gated_deltanet":
        inputs[3], inputs[4] = inputs[3].sigmoid(), inputs[4].sigmoid()
    if name == "gla":
        inputs[3] = inputs[3].sigmoid()
    if name == "ttt_linear":
        inputs[3] = inputs[3].sigmoid() * 0.1
    inputs = [x.requires_grad_() for x in inputs]

    def f(*xs):
        return op(*xs, mode=mode, chunk_size=4)[0]

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------ optimizers
def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def _train(model, opt, steps=100, recorder=None):
    x, y = rand(16, 5, seed=11), rand(16, 3, seed=12)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step() if recorder is None else opt.step(recorder=recorder)
        losses.append(loss.item())
    return losses


def test_sgd_momentum_matches_torch():
    ours, ref = _model(), _model()
    cls = load_optimizer(str(EXAMPLES / "sgd_momentum.nl"))
    a = _train(ours, cls(ours.parameters(), lr=0.05, mu=0.9))
    b = _train(ref, torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9))
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert rel(p.detach(), q.detach()) < 1e-5


def test_adam_matches_torch():
    """The spec's apply divides by sqrt(v / (1 - b2^t)) + eps: torch.optim.Adam's
    bias-correction convention (eps outside the corrected square root)."""
    ours, ref = _model(), _model()
    cls = load_optimizer(str(EXAMPLES / "adam.nl"))
    a = _train(ours, cls(ours.parameters(), lr=0.01))
    b = _train(ref, torch.optim.Adam(ref.parameters(), lr=0.01, betas=(0.9, 0.999), eps=1e-8))
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert rel(p.detach(), q.detach()) < 1e-4


def test_muon_matches_a_newton_schulz_reference():
    def ns(x, steps=5):  # written here from Jordan et al. (2024): quintic, from x / ||x||_F
        a, b, c = 3.4445, -4.7750, 2.0315
        y = x / (x.norm() + 1e-7)
        tall = y.shape[0] > y.shape[1]
        y = y.T if tall else y
        for _ in range(steps):
            s = y @ y.T
            y = a * y + (b * s + c * s @ s) @ y
        return y.T if tall else y

    w = torch.nn.Parameter(rand(6, 4, seed=3))
    ref = w.detach().clone()
    buf = torch.zeros_like(ref)
    cls = load_optimizer(str(EXAMPLES / "muon.nl"))
    opt = cls([w], lr=0.02, mu=0.95)
    for step in range(5):
        g = rand(6, 4, seed=20 + step)
        w.grad = g.clone()
        opt.step()
        buf = 0.95 * buf + g
        ref = ref - 0.02 * ns(buf)
    assert rel(w.detach(), ref) < 1e-6


def test_dgd_matches_its_closed_form():
    """DGD (Nested Learning): W <- W (I - lr x x^T / (1 + lr ||x||^2)) - lr u x^T / (1 + ...),
    one sample at a time, with u the gradient of the loss at the layer's output."""
    from nlc.runtime.library.ops import LinearRecorder
    layer = torch.nn.Linear(4, 3, bias=False)
    w0 = layer.weight.detach().clone()
    cls = load_optimizer(str(EXAMPLES / "dgd.nl"))
    opt = cls(layer.parameters(), lr=0.1)
    recorder = LinearRecorder(layer)
    x, y = rand(5, 4, seed=1), rand(5, 3, seed=2)
    loss = 0.5 * (layer(x) - y).square().sum()
    loss.backward()
    u = (x @ w0.T - y)
    opt.step(recorder=recorder)
    W = w0
    for xi, ui in zip(x, u):
        xi, ui = xi[:, None], ui[:, None]
        W = W - 0.1 / (1 + 0.1 * (xi * xi).sum()) * (W @ xi + ui) @ xi.T
    assert rel(layer.weight.detach(), W) < 1e-6


MOMENTUM_AT_PARAM = """
optimizer MomentumAtParam {
  hyper lr = 0.05, mu = 0.9
  level w over gradients g every 1 step {
    state W : like(param) = param
    objective dot(W, -g)
    algorithm momentum(lr = lr, momentum = mu)
    apply param = W
  }
}
"""


def test_a_state_that_starts_at_the_parameter_keeps_its_momentum_at_zero(tmp_path):
    """`= param` starts the memory W at the parameter; the algorithm's own momentum U
    starts at zero, as in every level (it had started at the parameter too, so the first
    step moved it to (1 + mu) W0 - lr g). Then this is SGD with momentum."""
    path = tmp_path / "momentum_at_param.nl"
    path.write_text(MOMENTUM_AT_PARAM)
    ours, ref = _model(), _model()
    a = _train(ours, load_optimizer(str(path))(ours.parameters(), lr=0.05, mu=0.9))
    b = _train(ref, torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9))
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert rel(p.detach(), q.detach()) < 1e-5


NORMALIZED = """
optimizer Normalized {
  hyper lr = 0.1, eps = 1e-12
  level mom over gradients g every 1 step {
    state m : like(param) = zeros
    objective dot(m, g)
    algorithm gd(lr = 1)
    apply param = param - lr * g / sqrt(sqnorm(g) + eps) + 0.01 * total(m) + 0.02 * dot(m, g)
  }
}
"""


def test_an_optimizers_reductions_run_over_the_whole_parameter(tmp_path):
    """In an optimizer, `sqnorm`, `total` and `dot` see the parameter as one vector: a
    normalized step on a [3, 4] parameter has norm lr (they had summed each row alone, so
    every row was normalized). A norm over a last axis is refused, with the spelling that
    works."""
    path = tmp_path / "normalized.nl"
    path.write_text(NORMALIZED)
    p = torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))
    opt = load_optimizer(str(path))([p])
    g = torch.arange(1.0, 13.0, dtype=torch.float64).reshape(3, 4)
    p.grad = g.clone()
    opt.step()
    m = g  # one gd step of rate 1 on dot(m, g) = -<m, g> from zero
    want = -0.1 * g / torch.sqrt((g * g).sum() + 1e-12) + 0.01 * m.sum() + 0.02 * (m * g).sum()
    assert rel(p.detach(), want) < 1e-14
    path.write_text(NORMALIZED.replace("sqrt(sqnorm(g) + eps)", "1 * l2norm(g)"))
    with pytest.raises(NlcError, match=r"l2norm\(\) acts on a vector's last axis") as err:
        load_optimizer(str(path))
    assert "sqrt(sqnorm(g) + eps)" in err.value.hint


SCALED_RATE = """
optimizer ScaledRate {
  hyper lr = 0.1
  level mom over gradients g every 1 step {
    state m : like(param) = zeros
    objective dot(m, g)
    algorithm gd(lr = 1 / (1 + sqnorm(g)))
    apply param = param - lr * m
  }
}
"""


@pytest.mark.parametrize("shape", [(3, 4), (5,), (), (2, 3, 2)])
def test_an_optimizers_rule_sees_any_parameter_as_one_matrix(shape, tmp_path):
    """A rule's `sqnorm(g)` is over the whole parameter whatever its number of axes (a vector
    or a scalar parameter had failed in `g.mT`); states keep the parameter's shape."""
    path = tmp_path / "scaled_rate.nl"
    path.write_text(SCALED_RATE)
    p = torch.nn.Parameter(torch.zeros(shape, dtype=torch.float64))
    opt = load_optimizer(str(path))([p])
    g = torch.linspace(-1, 2, p.numel(), dtype=torch.float64).reshape(shape)
    for _ in range(2):
        p.grad = g.clone()
        opt.step()
    m = 2 * g / (1 + (g * g).sum())
    assert p.shape == shape and opt.state[p]["m"].shape == shape
    assert rel(p.detach(), -0.1 * (g / (1 + (g * g).sum()) + m)) < 1e-14


def test_newton_schulz_refuses_a_vector_parameter_with_its_reason():
    """Muon orthogonalizes matrices: a bias gets a clear error (the trainer's probe sends
    such parameters to AdamW), not an IndexError from inside the iteration."""
    muon = load_optimizer(str(EXAMPLES / "muon.nl"))
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.ones(4)
    with pytest.raises(ValueError, match=r"orthogonalizes matrices .* shape \[4\] is not one"):
        muon([p]).step()


ADABELIEF = """
optimizer AdaBelief {
  hyper lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8
  level first_moment over gradients g every 1 step {
    state m : like(param) = zeros
    objective dot(m, g)
    retention decay(b1)
    algorithm gd(lr = 1 - b1)
  }
  level belief over gradients g every 1 step {
    state s : like(param) = zeros
    objective dot(s, (g - first_moment) * (g - first_moment) + eps / (1 - b2))
    retention decay(b2)
    algorithm gd(lr = 1 - b2)
    apply param = param - lr * (first_moment / (1 - b1 ^ t)) / (sqrt(s / (1 - b2 ^ t)) + eps)
  }
}
"""


def test_an_optimizer_level_reads_another_level_by_name_in_its_rule(tmp_path):
    """AdaBelief (Zhuang et al., NeurIPS 2020, Algorithm 2): the belief level's target uses the
    first moment by its level's name, which compile refused without a location ("generated
    code has no value for 'first_moment'"). 12 steps against the paper's loop in float64."""
    path = tmp_path / "adabelief.nl"
    path.write_text(ADABELIEF)
    p = torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))
    opt = load_optimizer(str(path))([p])
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(12)]
    theta, m, s = torch.zeros(3, 4, dtype=torch.float64), 0, 0
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps
        theta = theta - lr * (m / (1 - b1 ** t)) / (torch.sqrt(s / (1 - b2 ** t)) + eps)
        assert rel(p.detach(), theta) < 1e-12, t
