"""A cache with `decay(f)`: the Forgetting Transformer (Lin, Nikishin, He, Courville, ICLR
2025, eq. 5): o_t = sum_{s<=t} w_ts v_s / sum_s w_ts with w_ts = exp(q_t . k_s / sqrt(d) +
sum_{s<j<=t} log f_j), written here from the paper's equation as a token-by-token loop.

The generated op equals that loop in float64 in both modes, with a window too; a state carried
across calls (a cut inside the sequence, and step() one token at a time) equals one call;
packed sequences equal separate ones; and the op equals fla-core's naive forgetting attention
(float32 inside: 1e-5)."""

from __future__ import annotations

import pytest
import torch

from nlc.emit import load_layer, load_module
from test_chunk_triton import rel

FOX = """layer Fox {
  dims d_model = 12, heads = 2, d_k = 4, d_v = 3
  param W_q, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param W_o : [d_v, d_model]
  param w_f : [d_model]
  param b_f : [] = zeros
  context from x {
    qa = x @ W_q
    k = x @ W_k
    v = x @ W_v
    f = sigmoid(x @ w_f + b_f + 2)
  }
  level memory every 1 token {
    state C : cache[d_k, d_v]
    objective l2(C(qa), v, weight = exp(dot(qa, k) / sqrt(d_k)))
    retention decay(f)
    algorithm nonparametric(window = WINDOW)
    read C(qa)
  }
  output memory @ W_o
}
"""


def _spec(tmp_path, window: int = 0):
    path = tmp_path / f"fox_{window}.nl"
    path.write_text(FOX.replace("WINDOW", str(window)))
    return path


def reference(q, k, v, f, window: int = 0):
    """The paper's equation token by token: q, k [B, T, H, d_k], v [B, T, H, d_v], f [B, T, H]."""
    B, T, H, d = q.shape
    out = torch.zeros(B, T, H, v.shape[-1], dtype=q.dtype)
    for t in range(T):
        first = 0 if not window else max(0, t - window + 1)
        for s in range(first, t + 1):
            forget = torch.log(f[:, s + 1:t + 1]).sum(1)                      # [B, H]
            w = torch.exp((q[:, t] * k[:, s]).sum(-1) / d ** 0.5 + forget)   # [B, H]
            out[:, t] += w[..., None] * v[:, s]
        total = sum(torch.exp((q[:, t] * k[:, s]).sum(-1) / d ** 0.5
                              + torch.log(f[:, s + 1:t + 1]).sum(1))
                    for s in range(first, t + 1))
        out[:, t] /= total[..., None]
    return out


def _inputs(B, T, H=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, 4, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, 3, generator=g, dtype=dtype)
    f = torch.rand(B, T, H, generator=g, dtype=dtype) * 0.7 + 0.25
    return q, k, v, f


@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("mode", ["chunked", "recurrent"])
def test_the_op_is_the_papers_equation(tmp_path, window, mode):
    module = load_module(str(_spec(tmp_path, window)))
    q, k, v, f = _inputs(2, 13)
    o, _ = module.memory_op(q, k, v, f, mode=mode)
    assert rel(o, reference(q, k, v, f, window)) < 1e-12


@pytest.mark.parametrize("window", [0, 5])
def test_a_state_carried_across_calls_equals_one_call(tmp_path, window):
    module = load_module(str(_spec(tmp_path, window)))
    q, k, v, f = _inputs(2, 17, seed=1)
    whole, _ = module.memory_op(q, k, v, f)
    state, parts = None, []
    for lo, hi in ((0, 6), (6, 7), (7, 17)):
        o, state = module.memory_op(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], f[:, lo:hi],
                                    initial_state=state, output_final_state=True)
        parts.append(o)
    assert rel(torch.cat(parts, 1), whole) < 1e-12
    if window:
        assert state["k"].shape[2] == window - 1 and state["g"].shape[-1] == window - 1
    assert state["g"].max() <= 0 and state["g"][..., -1].abs().max() == 0


def test_packed_sequences_equal_separate_ones(tmp_path):
    module = load_module(str(_spec(tmp_path)))
    q, k, v, f = _inputs(1, 15, seed=2)
    cu = torch.tensor([0, 4, 15])
    packed, state = module.memory_op(q, k, v, f, cu_seqlens=cu, output_final_state=True)
    for i, (lo, hi) in enumerate(((0, 4), (4, 15))):
        alone, alone_state = module.memory_op(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi],
                                              f[:, lo:hi], output_final_state=True)
        assert rel(packed[:, lo:hi], alone) < 1e-12
        real = state["#valid"][i]
        assert rel(state["g"][i, :, -real:], alone_state["g"][0]) < 1e-12
    # a continuation after the packed batch masks each sequence's left padding
    q2, k2, v2, f2 = (x[:, :2].expand(2, *x.shape[1:]).clone()[:, :2]
                      for x in _inputs(1, 2, seed=3))
    more, _ = module.memory_op(q2, k2, v2, f2, initial_state=state)
    for i, (lo, hi) in enumerate(((0, 4), (4, 15))):
        full = [torch.cat([x[:, lo:hi], y[i:i + 1]], 1) for x, y in
                ((q, q2), (k, k2), (v, v2), (f, f2))]
        alone, _ = module.memory_op(*full)
        assert rel(more[i:i + 1], alone[:, -2:]) < 1e-12


def test_the_layer_decodes_token_by_token_and_trains(tmp_path):
    cls = load_layer(str(_spec(tmp_path)))
    torch.manual_seed(0)
    layer = cls().double()
    x = torch.randn(2, 9, 12, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    cache, steps = None, []
    for t in range(9):
        y_t, cache = layer.step(x[:, t], cache)
        steps.append(y_t)
    steps = torch.stack(steps, 1)
    assert rel(steps, y) < 1e-12
    recurrent = cls(mode="recurrent").double()
    recurrent.load_state_dict(layer.state_dict())
    y2 = recurrent(x)
    g1 = torch.autograd.grad(y.square().sum(), [layer.w_f, layer.W_q])
    g2 = torch.autograd.grad(y2.square().sum(), [recurrent.w_f, recurrent.W_q])
    assert rel(y2, y) < 1e-12 and all(rel(a, b) < 1e-10 for a, b in zip(g1, g2))
    assert g1[0].abs().max() > 0  # the forget gate learns


@pytest.mark.parametrize("window", [0, 5])
def test_the_op_equals_flas_naive_forgetting_attention(tmp_path, window):
    naive = pytest.importorskip("fla.ops.forgetting_attn.naive")
    module = load_module(str(_spec(tmp_path, window)))
    q, k, v, f = _inputs(2, 21, seed=4, dtype=torch.float32)
    o, _ = module.memory_op(q, k, v, f)
    theirs = naive.naive_forgetting_attn(q, k, v, f.log(), scale=4 ** -0.5,
                                         window_size=window or None)
    assert rel(o, theirs) < 1e-5


def test_half_precision_inputs_add_the_bias_in_float32(tmp_path):
    """The bias G_t - G_s reaches -100 and more over a long context, where bfloat16 is off by
    0.5: it is added in float32 and the result cast back."""
    module = load_module(str(_spec(tmp_path)))
    q, k, v, f = _inputs(1, 40, seed=5, dtype=torch.float32)
    f = f * 0.1  # log f about -3 per token: biases down to -120
    o32, _ = module.memory_op(q, k, v, f)
    o16, _ = module.memory_op(*(x.bfloat16() for x in (q, k, v, f)))
    assert o16.dtype == torch.bfloat16 and rel(o16.float(), o32) < 2e-2
