"""Rules that are affine in the state but written so that SymPy does not show it at once:
each is classified as below and equals the paper's recurrence, written here token by token,
in float64, in both modes.

- HGRN (Qin, Yang, Zhong, NeurIPS 2023, eqs. 3-6) as a diagonal memory stepped on the l2
  objective at a rate per channel: h - (1 - f) ⊙ (h ⊙ 1 - i) ⊙ 1 is f ⊙ h + (1 - f) ⊙ i.
  As an l2 step its gate is 1 - r k^2, of any sign (Atlas' diagonal omega window), which
  the chunked forms' log decays cannot take: it runs the entrywise scan with products of
  the gates (`signed`), and equals the paper in both modes. Spelled `decay(1 - f)`, a gate
  of the spec's own, it stays one decay per channel (entrywise products are distributed
  only where the state sits in a sum under one).
- Comba (an erase along p = k ⊙ sigmoid(c) at the rate beta / sigmoid(c) beside a dot
  objective on k): S' = alpha S (I - beta p k^T) + beta v k^T, whose rank-one row is
  (beta / s ⊙ p)^T, a function of a row: family dplr.
Before, Comba ran token by token ("state factor not recognised")."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nlc import pipeline
from nlc.derive import derive
from nlc.derive.classify import classify
from nlc.emit import load_layer
from test_chunk_triton import rel

HGRN = """layer HGRN {
  dims d_model = 12, heads = 2, d_h = 5
  hyper lb = 0.5
  param W_f, W_i, W_g : [d_model, d_h]
  param one_h : [d_h] = ones
  param W_o : [d_h, d_model]
  context from x {
    f = lb + (1 - lb) * sigmoid(x @ W_f)
    i = silu(x @ W_i)
    g = sigmoid(x @ W_g)
    ones = detach(one_h)
  }
  level memory every 1 token {
    state h : diagonal[d_h] = zeros
    objective l2(h(ones), i)
    retention none
    algorithm gd(lr = 1 - f)
    read h(ones)
  }
  output (memory * g) @ W_o
}
"""

COMBA = """layer Comba {
  dims d_model = 12, heads = 2, d_k = 4, d_v = 3
  param W_q, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param w_beta, w_a : [d_model]
  param c : [d_k] = zeros
  param W_o : [d_v, d_model]
  context from x {
    q = l2norm(x @ W_q)
    k = l2norm(x @ W_k)
    v = x @ W_v
    s = sigmoid(c)
    p = k * s
    beta = sigmoid(x @ w_beta)
    alpha = sigmoid(x @ w_a + 2)
  }
  level memory every 1 token {
    state S : matrix[d_v, d_k] = zeros
    objective dot(S(k), v)
    retention decay(alpha, order = before), erase(key = p, rate = beta / s)
    algorithm gd(lr = beta)
    read S(q)
  }
  output memory @ W_o
}
"""


CHANNEL_BETA = """layer ChannelBeta {
  dims d_model = 12, heads = 2, d_k = 4, d_v = 3
  param W_q, W_k, W_b : [d_model, d_k]
  param W_v : [d_model, d_v]
  param W_o : [d_v, d_model]
  context from x {
    q = l2norm(x @ W_q)
    k = l2norm(x @ W_k)
    v = x @ W_v
    beta = sigmoid(x @ W_b)
  }
  level memory every 1 token {
    state S : matrix[d_v, d_k] = zeros
    RULE
    read S(q)
  }
  output memory @ W_o
}
"""
CHANNEL_BETA_L2 = CHANNEL_BETA.replace("RULE", "objective l2(S(k), v)\n    algorithm gd(lr = beta)")
CHANNEL_BETA_ERASE = CHANNEL_BETA.replace(
    "RULE", "objective dot(S(k), v)\n    retention erase(k, beta)\n    algorithm gd(lr = beta)")

META_KEY = """layer MetaKey {
  dims d_model = 12, heads = 2, d_k = 4, d_v = 3
  param W_q, W_a : [d_model, d_k]
  param W_v : [d_model, d_v]
  param W_o : [d_v, d_model]
  context from x {
    q = x @ W_q
    v = x @ W_v
    a = sigmoid(x @ W_a)
  }
  level memory every 1 token {
    state S : matrix[d_v, d_k] = zeros
    objective dot(S(1 - a), v)
    retention decay(a)
    algorithm gd(lr = 1)
    read S(q)
  }
  output memory @ W_o
}
"""


def _layer(tmp_path, text, name, mode):
    path = tmp_path / f"{name}.nl"
    path.write_text(text)
    torch.manual_seed(0)
    layer = load_layer(str(path))(mode=mode, chunk_size=4).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in layer.named_parameters():
            if n != "one_h":
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return path, layer


def _hgrn_reference(P, x, lb=0.5):
    out = 0
    for h in range(P["W_f"].shape[0]):
        f = lb + (1 - lb) * torch.sigmoid(x @ P["W_f"][h])
        i, g = F.silu(x @ P["W_i"][h]), torch.sigmoid(x @ P["W_g"][h])
        state, hs = torch.zeros(x.shape[0], f.shape[-1], dtype=x.dtype), []
        for t in range(x.shape[1]):
            state = f[:, t] * state + (1 - f[:, t]) * i[:, t]
            hs.append(state)
        out = out + (torch.stack(hs, 1) * g) @ P["W_o"][h]
    return out


def _l2norm(z):  # docs/language.md: z / sqrt(sum z^2 + 1e-6)
    return z / torch.sqrt(z.square().sum(-1, keepdim=True) + 1e-6)


def _comba_reference(P, x):
    out = 0
    for h in range(P["W_q"].shape[0]):
        q, k = (_l2norm(x @ P[w][h]) for w in ("W_q", "W_k"))
        v = x @ P["W_v"][h]
        p = k * torch.sigmoid(P["c"][h])
        beta = torch.sigmoid(x @ P["w_beta"][h])
        alpha = torch.sigmoid(x @ P["w_a"][h] + 2)
        S, o = torch.zeros(x.shape[0], v.shape[-1], k.shape[-1], dtype=x.dtype), []
        for t in range(x.shape[1]):
            a, b = alpha[:, t, None, None], beta[:, t, None, None]
            S = a * S - b * (a * S @ p[:, t, :, None] - v[:, t, :, None]) * k[:, t, None, :]
            o.append((S @ q[:, t, :, None])[..., 0])
        out = out + torch.stack(o, 1) @ P["W_o"][h]
    return out


def _channel_beta_reference(P, x):
    """DeltaNet with a rate per key channel: S' = S (I - k (beta ⊙ k)^T) + v (beta ⊙ k)^T."""
    out = 0
    for h in range(P["W_q"].shape[0]):
        q, k = (_l2norm(x @ P[w][h]) for w in ("W_q", "W_k"))
        v, beta = x @ P["W_v"][h], torch.sigmoid(x @ P["W_b"][h])
        S, o = torch.zeros(x.shape[0], v.shape[-1], k.shape[-1], dtype=x.dtype), []
        for t in range(x.shape[1]):
            bk = (beta[:, t] * k[:, t])[:, None, :]
            S = S - (S @ k[:, t, :, None] - v[:, t, :, None]) * bk
            o.append((S @ q[:, t, :, None])[..., 0])
        out = out + torch.stack(o, 1) @ P["W_o"][h]
    return out


def _meta_key_reference(P, x):
    """A decay per key channel a with the key 1 - a (MetaLA): S' = S Diag(a) + v (1 - a)^T."""
    out = 0
    for h in range(P["W_q"].shape[0]):
        q, v, a = x @ P["W_q"][h], x @ P["W_v"][h], torch.sigmoid(x @ P["W_a"][h])
        S, o = torch.zeros(x.shape[0], v.shape[-1], q.shape[-1], dtype=x.dtype), []
        for t in range(x.shape[1]):
            S = S * a[:, t, None, :] + v[:, t, :, None] * (1 - a[:, t, None, :])
            o.append((S @ q[:, t, :, None])[..., 0])
        out = out + torch.stack(o, 1) @ P["W_o"][h]
    return out


@pytest.mark.parametrize("mode", ["chunked", "recurrent"])
@pytest.mark.parametrize("name, text, reference, family", [
    ("hgrn", HGRN, _hgrn_reference, "decay"),
    ("comba", COMBA, _comba_reference, "dplr"),
    ("channel_beta_l2", CHANNEL_BETA_L2, _channel_beta_reference, "dplr"),
    ("channel_beta_erase", CHANNEL_BETA_ERASE, _channel_beta_reference, "dplr"),
    ("meta_key", META_KEY, _meta_key_reference, "decay")])
def test_the_rule_is_chunked_and_equals_the_paper(tmp_path, mode, name, text, reference,
                                                   family):
    path, layer = _layer(tmp_path, text, name, mode)
    (checked,) = pipeline.run(str(path), "check")
    (rule,) = derive(checked)
    assert classify(rule).family.value == family
    x = torch.randn(2, 11, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    P = {n: p.detach() for n, p in layer.named_parameters()}
    assert rel(layer(x), reference(P, x)) < 1e-10


NORMED = """layer Normed {
  dims d_model = 8, d_k = 4, d_v = 4
  param W_q, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param W_o : [d_v, d_model]
  context from x {
    q = x @ W_q
    k = l2norm(x @ W_k)
    v = x @ W_v
  }
  level memory every 1 token {
    state S : matrix[d_v, d_k] = zeros
    objective l2(S(k), v)
    algorithm gd(lr = 0.5)
    read READ
  }
  output memory @ W_o
}
"""


def test_a_read_scaled_by_the_states_norm_is_no_query(tmp_path):
    """`S(q) / sqrt(total(S(q) * S(q)))` was taken for the delta rule read at the query
    q / |S q|, whose code named the next state before computing it (a NameError in the
    chunked mode); it runs token by token now, and equals the recurrent mode."""
    path = tmp_path / "normed.nl"
    path.write_text(NORMED.replace("READ", "S(q) / sqrt(total(S(q) * S(q)) + 1)"))
    cls = load_layer(str(path))
    torch.manual_seed(0)
    chunked = cls(mode="chunked", chunk_size=4).double()
    recurrent = cls(mode="recurrent").double()
    recurrent.load_state_dict(chunked.state_dict())
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    assert rel(chunked(x), recurrent(x)) < 1e-12


def test_an_expression_without_a_finite_value_is_refused_where_it_is_written(tmp_path):
    """`S(q) / sqrt(... * 0)` is 1/0 for every input: SymPy's complex infinity reached the
    printer, an internal error; it is refused, located."""
    from nlc.errors import NlcError

    path = tmp_path / "zero.nl"
    path.write_text(NORMED.replace("READ", "S(q) / sqrt(total(S(q) * S(q)) * 0)"))
    (checked,) = pipeline.run(str(path), "check")
    with pytest.raises(NlcError, match="has no finite value for any input") as err:
        derive(checked)
    assert err.value.span.line == 15


def test_a_gate_written_as_a_sum_stays_one_decay_per_channel(tmp_path):
    """Distributing entrywise products over sums split decay(1 - f) on a diagonal memory into
    h and -f ⊙ h, two decay terms, and the level ran token by token."""
    path = tmp_path / "hgrn_decay.nl"
    path.write_text(HGRN.replace("objective l2(h(ones), i)", "objective dot(h(ones), i)")
                    .replace("retention none", "retention decay(1 - f)")
                    .replace("gd(lr = 1 - f)", "gd(lr = 1)"))
    (checked,) = pipeline.run(str(path), "check")
    (rule,) = derive(checked)
    found = classify(rule)
    assert found.family.value == "decay" and found.param("decay_kind") == "channel"


DIAG_L2 = """layer DiagL2 {
  dims d_model = 8, d_h = 4
  param W_k, W_v : [d_model, d_h]
  param w_b : [d_model]
  param W_o : [d_h, d_model]
  context from x {
    k = x @ W_k
    v = x @ W_v
    b = sigmoid(x @ w_b)
  }
  level memory {
    state h : diagonal[d_h] = zeros
    objective l2(h(k), v)
    algorithm gd(lr = b)
    read h
  }
  output memory @ W_o
}
"""


@pytest.mark.parametrize("T", [1, 17, 40])
def test_an_l2_step_with_gates_below_zero_runs_the_signed_scan(tmp_path, T):
    """h' = h - b (h ⊙ k - v) ⊙ k decays h by 1 - b k^2, here mostly negative: the chunked
    mode's entrywise scan multiplies the gates (no logs) and equals the recurrence; before,
    the level ran token by token ("not affine in the state")."""
    from nlc.derive.execution import EntrywiseScan, execution

    path = tmp_path / "diag_l2.nl"
    path.write_text(DIAG_L2)
    (checked,) = pipeline.run(str(path), "check")
    (rule,) = derive(checked)
    plan = execution(rule, classify(rule))
    assert isinstance(plan, EntrywiseScan) and plan.signed
    layer = load_layer(str(path))(mode="chunked").double()
    with torch.no_grad():
        layer.W_k.mul_(3.0)
    x = torch.randn(2, T, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    k, v = x @ layer.W_k[0], x @ layer.W_v[0]
    b = torch.sigmoid(x @ layer.w_b[0])[..., None]
    assert (1 - b * k * k < 0).float().mean() > 0.3  # the gates the log forms cannot take
    h, hs = torch.zeros(2, 4, dtype=torch.float64), []
    for t in range(T):
        h = h - b[:, t] * (h * k[:, t] - v[:, t]) * k[:, t]
        hs.append(h)
    expected = torch.stack(hs, 1) @ layer.W_o[0]
    out = layer(x)
    assert rel(out, expected) < 1e-12
    grads = torch.autograd.grad(out.square().sum(), list(layer.parameters()))
    layer.mode = "recurrent"
    out = layer(x)
    assert rel(out, expected) < 1e-12
    for g, ref in zip(grads, torch.autograd.grad(out.square().sum(), list(layer.parameters()))):
        assert rel(g, ref) < 1e-10


@pytest.mark.parametrize("text", [CHANNEL_BETA_L2, CHANNEL_BETA_ERASE, META_KEY])
def test_a_key_spelled_inline_or_scaled_by_a_rate_per_channel_is_chunked(tmp_path, text):
    """`gd(lr = beta)` with a `[d_k]` beta on an l2 step (v k^T Diag(beta), "state factor not
    recognised") and `S(1 - a)` (v 1^T - v a^T, "v*1 is not an outer product") ran token by
    token; the same rules spelled `erase(k, beta)` or with `kk = 1 - a` in the context were
    chunked. The execution plan is the chunked affine form now."""
    from nlc.derive.execution import AffineChunk, DplrChunk, execution

    path = tmp_path / "spelled.nl"
    path.write_text(text)
    (checked,) = pipeline.run(str(path), "check")
    (rule,) = derive(checked)
    assert isinstance(execution(rule, classify(rule)), (AffineChunk, DplrChunk))


def _projections(inline: bool) -> str:
    """DeltaNet with its key, value and query made in the level's clauses or in the context."""
    k, v, q = ("l2norm(x @ W_k)", "x @ W_v", "l2norm(x @ W_q)") if inline else ("k", "v", "q")
    context = "" if inline else """
  context from x {
    k = l2norm(x @ W_k)
    v = x @ W_v
    q = l2norm(x @ W_q)
  }"""
    return f"""layer Projected {{
  dims d_model = 12, heads = 2, d_k = 4, d_v = 3
  param W_q, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param W_o : [d_v, d_model]{context}
  level memory every 1 token {{
    state S : matrix[d_v, d_k] = zeros
    objective l2(S({k}), {v})
    algorithm gd(lr = 0.5)
    read S({q})
  }}
  output memory @ W_o
}}
"""


def test_a_value_projected_inside_the_level_is_chunked(tmp_path):
    """`l2(S(l2norm(x @ W_k)), x @ W_v)` reaches the input as (W_v^T x) k^T: three factors,
    "not an outer product", so it ran token by token where the same rule through the context
    ran chunked delta. It is chunked now and equals the context spelling and its own token
    loop, output and every gradient, in float64."""
    from nlc.derive.execution import AffineChunk, execution

    path = tmp_path / "inline.nl"
    path.write_text(_projections(inline=True))
    (checked,) = pipeline.run(str(path), "check")
    (rule,) = derive(checked)
    assert isinstance(execution(rule, classify(rule)), AffineChunk)
    inline = load_layer(str(path))().double()
    (tmp_path / "context.nl").write_text(_projections(inline=False))
    context = load_layer(str(tmp_path / "context.nl"))().double()
    context.load_state_dict(inline.state_dict())
    x = torch.randn(2, 40, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got = inline(x)
    grads = torch.autograd.grad(got.square().sum(), list(inline.parameters()))
    assert rel(got, context(x)) < 1e-12
    for g, ref in zip(grads, torch.autograd.grad(context(x).square().sum(),
                                                 list(context.parameters()))):
        assert rel(g, ref) < 1e-10
    inline.mode = "recurrent"
    assert rel(got, inline(x)) < 1e-12


MLP_ERASE_BEFORE = """layer M {
  dims d_model = 16, heads = 2, d_head = 8
  param W_q, W_k, W_v : [d_model, d_head]
  param w_a, w_e : [d_model]
  param W_o : [d_head, d_model]
  context from x {
    q = l2norm(x @ W_q)
    k = l2norm(x @ W_k)
    v = x @ W_v
    alpha = sigmoid(x @ w_a + 3)
    eta = 0.1 * sigmoid(x @ w_e)
  }
  level memory every 1 token, gradients at chunk(4) {
    state M : mlp(d_head -> 2 * d_head -> d_head, act = gelu, residual) = learned
    objective l2(M(k), v)
    retention decay(alpha, order = ORDER), erase(k, eta)
    algorithm gd(lr = eta)
    read M(q)
  }
  output memory @ W_o
}
"""


@pytest.mark.parametrize("order", ["before", "parallel"])
def test_an_mlp_erase_with_the_decay_before_runs_without_a_token_loop(tmp_path, order):
    """With `order = before` the erase's term is -eta (alpha W) k k^T: the decay's scalar sat
    inside a nested product, so the combine was no affine transition and the chunk ran a
    per-token loop (`frozen split (per token)`). Both orders now run the chunk-parallel
    affine form, equal to their own token loop (output and every gradient, float64)."""
    from nlc.derive.execution import FrozenSplit, execution

    path = tmp_path / "mlp.nl"
    path.write_text(MLP_ERASE_BEFORE.replace("ORDER", order))
    (checked,) = pipeline.run(str(path), "check")
    (rule,) = derive(checked)
    found = execution(rule, classify(rule))
    assert isinstance(found, FrozenSplit) and found.transitions is not None
    torch.manual_seed(0)
    layer = load_layer(str(path))(chunk_size=4).double()
    x = torch.randn(2, 23, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    outs = []
    for mode in ("chunked", "recurrent"):
        layer.mode = mode
        y = layer(x)
        outs.append((y, torch.autograd.grad(y.square().sum(), list(layer.parameters()))))
    (y, grads), (y_ref, grads_ref) = outs
    assert rel(y, y_ref) < 1e-12
    for g, ref in zip(grads, grads_ref):
        assert rel(g, ref) < 1e-10
