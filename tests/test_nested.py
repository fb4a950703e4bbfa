"""Nested levels in generated code: frequencies, knowledge-transfer edges, CMS and Hope.

Each semantic is checked against a reference written here from its definition (docs/design.md,
docs/language.md sections 7 and 15, docs/hope.md), not against another generated form."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from nlc.emit import load_module
from nlc.errors import NlcError
from nlc.runtime.trainer.optim import build_optimizer, step_levels

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


def module_of(tmp_path, text: str, name: str = "spec", **overrides):
    path = tmp_path / f"{name}.nl"
    path.write_text(text)
    return load_module(str(path), {k: float(v) for k, v in overrides.items()})


def rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# A matrix memory on projections of x; `{head}` and `{body}` vary per test.
TEMPLATE = """
layer Mem {{
  dims d_model = 6, d_k = 4, C = {C}
  param W_q, W_k, W_v : [d_model, d_k]
  param W_o : [d_k, d_model]
  context from x {{
    q = l2norm(x @ W_q)
    k = l2norm(x @ W_k)
    v = x @ W_v
    a = sigmoid(total(x @ W_v))
  }}
  {levels}
  output {output}
}}
"""

MEMORY = """
  level memory{freq} {{
    state S : matrix[d_k, d_k] = zeros
    objective l2(S(k), v)
    retention decay(a, order = parallel)
    algorithm gd(lr = 0.5)
    read S(q)
  }}
"""


def memory_layer(tmp_path, freq: str, C: int = 4, name: str = "mem"):
    text = TEMPLATE.format(C=C, levels=MEMORY.format(freq=freq), output="memory @ W_o")
    module = module_of(tmp_path, text, name)
    torch.manual_seed(0)
    return module, module.Mem().double()


def projections(layer, x):
    """q, k, v, a per head (one head here), as the spec's context block defines them."""
    def l2norm(t):
        return t / torch.sqrt((t * t).sum(-1, keepdim=True) + 1e-6)
    q = l2norm(x @ layer.W_q[0])
    k = l2norm(x @ layer.W_k[0])
    v = x @ layer.W_v[0]
    a = torch.sigmoid((x @ layer.W_v[0]).sum(-1))
    return q, k, v, a


# ---------------------------------------------------------------- frequencies
def test_every_c_tokens_changes_state_only_at_multiples_of_c(tmp_path):
    """Reads inside a chunk see the chunk-start state; the state changes at the chunk's end
    by the sum of its updates, each taken at the chunk-start state (the CMS rule)."""
    C = 4
    module, layer = memory_layer(tmp_path, " every C tokens", C)
    x = torch.randn(1, 11, 6, dtype=F64)
    q, k, v, a = projections(layer, x)
    S, start, reads = torch.zeros(4, 4, dtype=F64), torch.zeros(4, 4, dtype=F64), []
    for t in range(11):
        if t % C == 0:
            start = S.clone()
        # one token's rule at the chunk-start state: a S0 - 0.5 (S0 k - v) k^T
        rule = a[0, t] * start - 0.5 * torch.outer(start @ k[0, t] - v[0, t], k[0, t])
        S = S + (rule - start)
        reads.append(start @ q[0, t])
    expected = torch.stack(reads) @ layer.W_o[0]
    for mode in ("chunked", "recurrent"):
        layer.mode = mode
        assert rel(layer(x)[0], expected) < 1e-12, mode
    # the state a read sees only changes at multiples of C
    cache, seen = {}, []
    for t in range(11):
        layer.step(x[:, t], cache)
        seen.append(cache["states"]["memory"]["S_0"].clone())
    for t in range(1, 11):
        changed = not torch.equal(seen[t], seen[t - 1])
        assert changed == (t % C == 0), t


READ_STATE_ALONE = """layer Every4Diag {
  dims d_model = 8
  param W_k : [d_model, d_model]
  context from x {
    k = x @ W_k
  }
  level memory every 4 tokens {
    state h : diagonal[d_model] = zeros
    objective dot(h(k), x)
    retention decay(0.5)
    algorithm gd(lr = 1)
    read h
  }
  output memory
}
"""


@pytest.mark.parametrize("T", [1, 4, 17])
def test_a_read_of_the_state_alone_gives_every_token_its_chunks_state(tmp_path, T):
    """`read h` at `every 4 tokens` reads the chunk-start state: the chunked mode returned
    one row per chunk ([B, 5, d] at T = 17), not one per token."""
    module = module_of(tmp_path, READ_STATE_ALONE)
    layer = module.Every4Diag().double()
    x = torch.randn(2, T, 8, dtype=F64)
    k = x @ layer.W_k[0]
    h, start, expected = torch.zeros(2, 8, dtype=F64), None, []
    for t in range(T):
        if t % 4 == 0:
            start = h.clone()
        h = h + (-0.5 * start + k[:, t] * x[:, t])  # decay(0.5) and the dot step, at h_0
        expected.append(start)
    expected = torch.stack(expected, 1)
    for mode in ("chunked", "recurrent"):
        layer.mode = mode
        out = layer(x)
        assert out.shape == expected.shape, mode
        assert rel(out, expected) < 1e-12, mode


CONSTANT_TERMS = {
    # a retention or algorithm whose rule has a term built from the chunk-start state and
    # constants alone: the same at every token of a chunk, so it counts once per token
    "decay": "retention decay(0.9)\n    algorithm gd(lr = 0.5)",
    "weight_decay": "retention weight_decay(0.05)\n    algorithm gd(lr = 0.5)",
    "momentum": "algorithm momentum(lr = 0.5, momentum = 0.9)",
    "mlp": "retention weight_decay(0.05)\n    algorithm gd(lr = 0.1)",  # 0.5 diverges
    # momentum keeps a second state per token (not the summed form): its chunk ran only the
    # first token of each chunk when a term was of the chunk-start state alone
    "momentum_weight_decay": "retention weight_decay(0.05)\n"
                             "    algorithm momentum(lr = 0.1, momentum = 0.8)",
    "mlp_momentum": "retention decay(0.95)\n    algorithm momentum(lr = 0.02, momentum = 0.5)",
}


@pytest.mark.parametrize("C", [4, 80])  # 80: a chunk of two pieces (scan.PIECE = 64)
@pytest.mark.parametrize("rule", sorted(CONSTANT_TERMS))
def test_every_c_tokens_counts_a_constant_term_once_per_token(tmp_path, rule, C):
    """The chunked form sums a chunk's terms at once; a term that is the same at every token
    (0.1 S0 of decay(0.9)) must count once per token, as in the recurrent form and `step`,
    also over a last chunk cut short (T = 101) and a chunk summed in two pieces."""
    state = ("mlp(d_k -> 8 -> d_k, act = gelu, residual) = learned" if rule.startswith("mlp")
             else "matrix[d_k, d_k] = zeros")
    text = TEMPLATE.format(C=C, output="slow @ W_o", levels=f"""
  level slow every C tokens {{
    state S : {state}
    objective l2(S(k), v)
    {CONSTANT_TERMS[rule]}
    read S(q)
  }}""")
    if rule == "decay":  # a spec name that is also the compiler's name for the count
        text = text.replace("v = x @ W_v", "piece_tokens = x @ W_v\n    v = piece_tokens")
    layer = module_of(tmp_path, text, f"const_{rule}_{C}").Mem().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, 101, 6, dtype=F64)
    caches = {"recurrent": {}, "chunked": {}}
    for mode, cache in caches.items():  # the outputs, and the final states in the caches
        layer.mode = mode
        out = layer(x, cache=cache)
        expected = out if mode == "recurrent" else expected
        assert rel(out, expected) < 1e-10, mode
    finals = [c["states"]["slow"] for c in caches.values()]
    for name, final in finals[0].items():  # states (and the position, an int)
        assert (rel(finals[1][name], final) < 1e-10 if torch.is_tensor(final)
                else finals[1][name] == final), name
    if rule == "decay":  # from the definition: 0.9 S0 - 0.5 (0.9 S0 k - v) k^T per token
        # (the decay first: the default order)
        q, k, v, _ = projections(layer, x[:1])
        S, start, reads = torch.zeros(4, 4, dtype=F64), None, []
        for t in range(101):
            if t % C == 0:
                start = S.clone()
            rule_t = 0.9 * start - 0.5 * torch.outer(0.9 * start @ k[0, t] - v[0, t], k[0, t])
            S = S + (rule_t - start)
            reads.append(start @ q[0, t])
        assert rel(layer(x[:1])[0], torch.stack(reads) @ layer.W_o[0]) < 1e-10
    cache = {}
    steps = [layer.step(x[:, t], cache)[0] for t in range(101)]
    assert rel(torch.stack(steps, 1), expected) < 1e-10


FREE_OF_THE_STATE = {
    # every C tokens, rules in which no term reads the chunk-start state (a dot objective):
    # "nothing depends on the chunk-start state" sent them to the token loop
    "gd": "retention none\n    algorithm gd(lr = 0.3)",
    "momentum": "retention none\n    algorithm momentum(lr = 0.3, momentum = 0.8)",
    "momentum_decay": "retention decay(a)\n    algorithm momentum(lr = 0.3, momentum = 0.8)",
}


@pytest.mark.parametrize("rule", sorted(FREE_OF_THE_STATE))
def test_every_c_tokens_with_terms_free_of_the_state_runs_chunked(tmp_path, rule):
    """A Hebbian level every C tokens runs the frozen chunk form, equal to the token loop
    and `step` (101 tokens, C = 8: a last chunk cut short), and for gd to the definition:
    each token reads its chunk's start, and a chunk adds 0.3 sum_t v_t k_t^T at its end."""
    text = TEMPLATE.format(C=8, output="slow @ W_o", levels=f"""
  level slow every C tokens {{
    state S : matrix[d_k, d_k] = zeros
    objective dot(S(k), v)
    {FREE_OF_THE_STATE[rule]}
    read S(q)
  }}""")
    module = module_of(tmp_path, text, f"free_{rule}")
    assert "no chunk-parallel form" not in module.__doc__, module.__doc__
    layer = module.Mem().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, 101, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    outs = {}
    for mode in ("recurrent", "chunked"):
        layer.mode = mode
        xi = x.clone().requires_grad_()
        out = layer(xi)
        outs[mode] = (out, *torch.autograd.grad(out.square().sum(), [xi, *layer.parameters()]))
    for got, want in zip(outs["chunked"], outs["recurrent"]):
        assert rel(got, want) < 1e-10
    cache = {}
    steps = [layer.step(x[:, t], cache)[0] for t in range(101)]
    assert rel(torch.stack(steps, 1), outs["recurrent"][0]) < 1e-10
    if rule == "gd":
        q, k, v, _ = projections(layer, x[:1])
        S, pending, reads = torch.zeros(4, 4, dtype=F64), torch.zeros(4, 4, dtype=F64), []
        for t in range(101):
            reads.append(S @ q[0, t])
            pending = pending + 0.3 * torch.outer(v[0, t], k[0, t])
            if (t + 1) % 8 == 0:
                S, pending = S + pending, torch.zeros_like(pending)
        assert rel(outs["chunked"][0][:1], torch.stack(reads) @ layer.W_o[0]) < 1e-10


def test_a_period_spelled_with_a_dim_refuses_another_value_at_construction(tmp_path):
    """`every C tokens` is compiled in as a number: Mem(C=8) would silently keep 4, so the
    constructor refuses it and says to recompile; the compiled value is accepted."""
    module, _ = memory_layer(tmp_path, " every C tokens", C=4, name="period_dim")
    module.Mem(C=4)
    with pytest.raises(ValueError, match="compile the spec with -D C=8"):
        module.Mem(C=8)
    module, _ = memory_layer(tmp_path, ", gradients at chunk(C)", C=4, name="chunk_dim")
    with pytest.raises(ValueError, match="C = 2, but"):
        module.Mem(C=2)


def test_a_layer_built_under_a_float64_default_runs_in_float64(tmp_path):
    """torch.set_default_dtype(torch.float64) before construction: every parameter and the
    head-index buffer (the reference for the states' dtype) are float64, and forward runs."""
    module, _ = memory_layer(tmp_path, "", name="default_f64")
    default = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        layer = module.Mem()
        y = layer(torch.randn(1, 5, 6))
    finally:
        torch.set_default_dtype(default)
    assert y.dtype == F64


def test_every_one_token_equals_the_per_token_level(tmp_path):
    _, per_token = memory_layer(tmp_path, "", name="per_token")
    _, every_one = memory_layer(tmp_path, " every C tokens", C=1, name="every_one")
    every_one.load_state_dict(per_token.state_dict())
    x = torch.randn(2, 13, 6, dtype=F64)
    assert rel(every_one(x), per_token(x)) < 1e-12


SLOW_STEPS = """
layer SlowFast {
  dims d_model = 6, d_k = 4
  param W_q, W_k, W_v : [d_model, d_k]
  context from x {
    q = l2norm(x @ W_q)
    k = l2norm(x @ W_k)
    v = x @ W_v
  }
  level memory {
    state S : matrix[d_k, d_k] = zeros
    objective l2(S(k), v)
    algorithm gd(lr = 0.5)
    read S(q)
  }
  level slow every 3 steps {
    param W_o : [d_k, d_model]
  }
  output memory @ W_o
}
"""


def test_every_k_steps_group_changes_only_every_k_optimizer_steps(tmp_path):
    from nlc.runtime.trainer.config import TrainConfig
    module = module_of(tmp_path, SLOW_STEPS, "slow")
    layer = module.SlowFast().double()
    groups = {g["level"]: g for g in layer.parameter_groups()}
    assert groups["slow"]["every"] == 3 and groups["slow"]["params"] == [layer.W_o]
    assert layer.W_q in groups["train"]["params"]
    config = TrainConfig(lr=0.01, weight_decay=0.0)
    optimizer = build_optimizer(layer, config, torch.optim.SGD)
    xs = [torch.randn(2, 7, 6, dtype=F64) for _ in range(7)]
    for step, x in enumerate(xs):
        before_o, before_q = layer.W_o.detach().clone(), layer.W_q.detach().clone()
        layer(x).square().sum().backward()
        summed = layer.W_o.grad.clone()    # the held gradients add up between its steps
        step_levels(optimizer, step)
        assert not torch.equal(layer.W_q, before_q), step          # train: every step
        if (step + 1) % 3:
            assert torch.equal(layer.W_o, before_o), step            # slow: held
        else:
            # one SGD step with the sum of the three steps' gradients
            assert rel(layer.W_o.detach(), before_o - 0.01 * summed) < 1e-12, step
            assert layer.W_o.grad is None


# ---------------------------------------------------------------- transfer modes
TWO_LEVELS = """
layer Two {{
  dims d_model = 6, d_k = 4
  param W_q, W_k, W_v : [d_model, d_k]
  param W_o : [d_k, d_model]
  context from x {{
    q = l2norm(x @ W_q)
    k = l2norm(x @ W_k)
    v = x @ W_v
  }}
  level slow every 4 tokens {{
    state A : matrix[d_k, d_k] = learned
    objective l2(A(k), v)
    algorithm gd(lr = 0.5)
    read A(q)
  }}
  level fast {{
    state S : matrix[d_k, d_k] = {fast_init}
    objective l2(S(k), v + slow)
    algorithm gd(lr = 0.5)
    read S(q)
  }}
  {transfer}
  output fast @ W_o
}}
"""


def two_levels(tmp_path, transfer: str, fast_init: str = "zeros", name: str = "two"):
    module = module_of(tmp_path, TWO_LEVELS.format(transfer=transfer, fast_init=fast_init),
                       name)
    torch.manual_seed(1)
    layer = module.Two().double()
    with torch.no_grad():
        layer.slow_A_init.normal_(0, 0.5)
    return layer


def test_meta_learned_initial_state_gets_gradients_through_the_updates(tmp_path):
    layer = two_levels(tmp_path, "", fast_init="learned")
    x = torch.randn(2, 9, 6, dtype=F64)
    layer(x).square().sum().backward()
    for init in (layer.slow_A_init, layer.fast_S_init):
        assert init.grad is not None and init.grad.abs().sum() > 0
    # and the gradient is the one of the whole unrolled computation (finite differences)
    with torch.no_grad():
        direction = torch.randn_like(layer.fast_S_init)
        eps = 1e-6
        layer.fast_S_init += eps * direction
        up = layer(x).square().sum()
        layer.fast_S_init -= 2 * eps * direction
        down = layer(x).square().sum()
        layer.fast_S_init += eps * direction
    numeric = (up - down) / (2 * eps)
    assert math.isclose(numeric.item(), (layer.fast_S_init.grad * direction).sum().item(),
                        rel_tol=1e-6)


def test_direct_conditioning_blocks_gradients(tmp_path):
    x = torch.randn(2, 9, 6, dtype=F64)
    plain = two_levels(tmp_path, "", name="plain")
    plain(x).square().sum().backward()
    assert plain.slow_A_init.grad.abs().sum() > 0       # backprop: slow learns through fast
    direct = two_levels(tmp_path, "transfer slow -> fast : direct", name="direct")
    direct.load_state_dict(plain.state_dict())
    y = direct(x)
    assert rel(y, plain(x)) < 1e-14                      # the same function...
    y.square().sum().backward()
    grad = direct.slow_A_init.grad
    assert grad is None or not grad.any()                # ...with no gradient into slow
    assert direct.W_q.grad.abs().sum() > 0


def slow_reference(layer, x):
    """Level slow (every 4 tokens, gd 0.5 on l2(A k, v), learned A0), one head: its reads
    and its state at the start of every token."""
    q, k, v, _ = projections(layer, x)
    A, start, reads, states = layer.slow_A_init[0].clone(), None, [], []
    for t in range(x.shape[1]):
        if t % 4 == 0:
            start = A.clone()
        states.append(start)
        A = A - 0.5 * torch.outer(start @ k[0, t] - v[0, t], k[0, t])
        reads.append(start @ q[0, t])
    return torch.stack(reads), states


def test_init_edge_restarts_the_target_from_the_source_state(tmp_path):
    layer = two_levels(tmp_path, "transfer slow -> fast : init")
    x = torch.randn(1, 11, 6, dtype=F64)
    q, k, v, _ = projections(layer, x)
    slow, starts = slow_reference(layer, x)
    S, reads = torch.zeros(4, 4, dtype=F64), []
    for t in range(11):
        if t % 4 == 0:
            S = starts[t].clone()   # fast starts every slow chunk from slow's state
        S = S - 0.5 * torch.outer(S @ k[0, t] - (v[0, t] + slow[t]), k[0, t])
        reads.append(S @ q[0, t])
    expected = torch.stack(reads) @ layer.W_o[0]
    with torch.no_grad():
        assert rel(layer(x)[0], expected) < 1e-12
        cache, steps = {}, []
        for t in range(11):
            steps.append(layer.step(x[:, t], cache)[0])
        assert rel(torch.stack(steps, 1)[0], expected) < 1e-12


CHAIN = """layer Chain {
  dims d_model = 4
  param W_k, W_v : [d_model, d_model]
  context from x {
    k = l2norm(x @ W_k)
    v = x @ W_v
  }
  level a every 8 tokens {
    state P : matrix[d_model, d_model] = zeros
    objective l2(P(k), v)
    algorithm gd(lr = 0.3)
    read P(k)
  }
  level b every 4 tokens {
    state Q : matrix[d_model, d_model] = zeros
    objective l2(Q(k), v)
    algorithm gd(lr = 0.3)
    read Q(k)
  }
  level c every 1 token {
    state S : matrix[d_model, d_model] = zeros
    objective l2(S(k), v)
    algorithm gd(lr = 0.5)
    read S(k)
  }
  transfer a -> b : init
  transfer b -> c : init
  output c + b + a
}
"""


def test_a_chain_of_init_edges_restarts_each_level_at_its_sources_period(tmp_path):
    """a (every 8) starts b (every 4), which starts c (every token). b ran in segments of 8
    only, so c's restarts every 4 tokens looked up b's states by the wrong index (an
    IndexError past 4 tokens); b is cut at 4 now and restarts from a at 8."""
    layer = module_of(tmp_path, CHAIN).Chain().double()
    x = torch.randn(2, 21, 4, dtype=F64)
    k = (x @ layer.W_k[0]) / torch.sqrt(((x @ layer.W_k[0]) ** 2).sum(-1, keepdim=True) + 1e-6)
    v = x @ layer.W_v[0]
    P, Q, S = (torch.zeros(2, 4, 4, dtype=F64) for _ in range(3))
    outs = []
    for t in range(21):
        kt, vt = k[:, t, :, None], v[:, t, :, None]
        if t % 8 == 0:
            P0 = P.clone()
            Q = P0.clone()        # b restarts from a's state at a's chunk start
        if t % 4 == 0:
            Q0 = Q.clone()
            S = Q0.clone()        # c restarts from b's state at b's chunk start
        P = P - 0.3 * (P0 @ kt - vt) @ kt.mT
        Q = Q - 0.3 * (Q0 @ kt - vt) @ kt.mT
        S = S - 0.5 * (S @ kt - vt) @ kt.mT
        outs.append((S @ kt + Q0 @ kt + P0 @ kt)[..., 0])
    expected = torch.stack(outs, 1)
    with torch.no_grad():
        for mode in ("chunked", "recurrent"):
            layer.mode = mode
            assert rel(layer(x), expected) < 1e-12, mode
            cache = {}
            split = torch.cat([layer(x[:, :13], cache=cache), layer(x[:, 13:], cache=cache)], 1)
            assert rel(split, expected) < 1e-12, mode
        cache, steps = {}, []
        for t in range(21):
            steps.append(layer.step(x[:, t], cache)[0])
        assert rel(torch.stack(steps, 1), expected) < 1e-12


GENERATE = """
layer Hyper {
  dims d_model = 6, d_k = 4, d_w = 16
  param W_q, W_k, W_v : [d_model, d_k]
  param W_o : [d_k, d_model]
  context from x {
    q = l2norm(x @ W_q)
    k = l2norm(x @ W_k)
    v = x @ W_v
  }
  level hypernet every 4 tokens {
    state H : matrix[d_w, d_k] = learned
    objective l2(H(k), H(k))
    algorithm gd(lr = 0.5)
    read H(q)
  }
  level fast {
    state S : matrix[d_k, d_k] = zeros
    objective l2(S(k), v)
    algorithm gd(lr = 0.5)
    read S(q)
  }
  transfer hypernet -> fast : generate
  output fast @ W_o
}
"""


def test_generate_edge_makes_the_target_weights(tmp_path):
    module = module_of(tmp_path, GENERATE, "hyper")
    torch.manual_seed(2)
    layer = module.Hyper().double()
    with torch.no_grad():
        layer.hypernet_H_init.normal_(0, 0.5)
    x = torch.randn(1, 10, 6, dtype=F64)
    q, k, v, _ = projections(layer, x)
    H0 = layer.hypernet_H_init[0]
    # hypernet's objective is zero (its prediction is its target), so its state stays H0 and
    # its output at each chunk start is H0 q_t: the fast memory's weights, row by row
    S, reads = None, []
    for t in range(10):
        if t % 4 == 0:
            S = (H0 @ q[0, t]).reshape(4, 4)
        S = S - 0.5 * torch.outer(S @ k[0, t] - v[0, t], k[0, t])
        reads.append(S @ q[0, t])
    expected = torch.stack(reads) @ layer.W_o[0]
    y = layer(x)
    assert rel(y[0], expected) < 1e-12
    y.square().sum().backward()
    assert layer.hypernet_H_init.grad.abs().sum() > 0   # the hypernetwork learns through them


def test_a_short_segment_runs_token_by_token_and_equals_the_chunked_form(tmp_path,
                                                                        monkeypatch):
    """A level restarted every token by a generate edge from a level every token ran the
    chunked form on 1-token segments (40x slower than token by token on the CPU): segments
    shorter than SHORT_SEGMENT run token by token. The chunked mode's result is the token
    loop's; the target's op is called with mode="recurrent" on its 1-token segments."""
    from nlc.runtime.library import scan
    module = module_of(tmp_path, GENERATE.replace("every 4 tokens", "every 1 token"), "hyper1")
    modes = []
    real = scan.segment_mode
    monkeypatch.setattr(module.nl, "segment_mode",
                        lambda mode, n: modes.append(real(mode, n)) or real(mode, n))
    x = torch.randn(2, 9, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    outs = []
    for mode in ("chunked", "recurrent"):
        torch.manual_seed(2)
        layer = module.Hyper(mode=mode).double()
        xi = x.clone().requires_grad_()
        y = layer(xi)
        outs.append([y, *torch.autograd.grad(y.square().sum(), [xi, *layer.parameters()])])
    assert len(modes) >= 2 * 9 and set(modes) == {"recurrent"}  # 9 segments a mode, or more
    for a, b in zip(*outs):
        assert rel(a, b) < 1e-12
    assert real("chunked", scan.SHORT_SEGMENT) == "chunked"


def test_generate_edge_checks_the_size(tmp_path):
    bad = GENERATE.replace("d_w = 16", "d_w = 12")
    with pytest.raises(NlcError, match="read must be a vector of 16"):
        module_of(tmp_path, bad, "bad")


# ---------------------------------------------------------------- erase (DGD factor)
def test_erase_gives_the_dgd_factor(tmp_path):
    text = TEMPLATE.format(C=1, output="memory @ W_o", levels="""
  level memory {
    state S : matrix[d_k, d_k] = zeros
    objective l2(S(k), v)
    retention decay(a, order = parallel), erase(k, a)
    algorithm gd(lr = 0.5)
    read S(q)
  }""")
    module = module_of(tmp_path, text, "erase")
    torch.manual_seed(3)
    layer = module.Mem().double()
    x = torch.randn(1, 9, 6, dtype=F64)
    q, k, v, a = projections(layer, x)
    S, reads = torch.zeros(4, 4, dtype=F64), []
    eye = torch.eye(4, dtype=F64)
    for t in range(9):
        kt = k[0, t]
        # S (a I - a k k^T) - 0.5 grad, the gradient at the old state
        S = S @ (a[0, t] * eye - a[0, t] * torch.outer(kt, kt)) \
            - 0.5 * torch.outer(S @ kt - v[0, t], kt)
        reads.append(S @ q[0, t])
    assert rel(layer(x)[0], torch.stack(reads) @ layer.W_o[0]) < 1e-12


# ---------------------------------------------------------------- CMS and Hope
def test_one_level_cms_with_zero_inner_rate_is_a_plain_mlp(tmp_path):
    text = (ROOT / "examples" / "cms.nl").read_text()
    head, _, _ = text.partition("  level cms_mid")
    one = head + "  output cms_fast\n}\n"
    module = module_of(tmp_path, one, "cms_one", d_model=8, d_hidden=16, eta=0)
    torch.manual_seed(4)
    layer = module.ContinuumMemory().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, 37, 8, dtype=F64)
    W1, W2 = layer.cms_fast_M1_W1_init[0], layer.cms_fast_M1_W2_init[0]
    xk = x @ layer.W_k1[0]                                  # read with the key view
    mlp = xk + torch.nn.functional.gelu(xk @ W1.T) @ W2.T   # xk + W2 gelu(W1 xk)
    assert rel(layer(x), mlp) < 1e-12


def hope():
    module = load_module(str(ROOT / "examples" / "hope.nl"),
                         {"d_model": 16.0, "heads": 2.0, "d_head": 8.0, "d_hidden": 32.0})
    return module


def test_hope_group_chunked_equals_sequential():
    """The generating memories read their chunk-start states, so the chunk-parallel group is
    exact: equal to the token-by-token group in float64."""
    module = hope()
    torch.manual_seed(5)
    layer = module.SelfModifyingTitans().double()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_init"):
                p.normal_(0, 0.3)
    (op,) = [f for name, f in vars(module).items() if name.endswith("_group_op")]
    h = torch.randn(2, 50, 2, 8, dtype=F64)
    init = {name: layer.initial_state(2)[name] for name in ("k", "v", "eta", "alpha")}
    gates = {"b_eta": layer.b_eta, "b_alpha": layer.b_alpha}
    o1, f1 = op(h, initial_state=init, output_final_state=True, mode="chunked", **gates)
    o2, f2 = op(h, initial_state=init, output_final_state=True, mode="recurrent", **gates)
    for name in o1:
        assert rel(o1[name], o2[name]) < 1e-12, name
        assert not torch.equal(o1[name][:, :16], o1[name][:, 16:32])   # the memories learn
        for tensor in init[name]:
            assert rel(f1[name][tensor], f2[name][tensor]) < 1e-12, (name, tensor)


def test_hope_main_memory_follows_the_anchor_semantics():
    """The main memory: state every token, gradients at the chunk start (64), the DGD factor
    on the first map at the running state. Reference: autograd at the anchor, by hand."""
    module = hope()
    op = module.SelfModifyingTitans_memory_op
    torch.manual_seed(6)
    B, T, H, d, h = 1, 70, 1, 8, 32

    def unit(t):
        return t / t.norm(dim=-1, keepdim=True)
    q, k, v = (unit(torch.randn(B, T, H, d, dtype=F64)) for _ in range(3))
    eta, alpha = 0.1 * torch.rand(B, T, H, dtype=F64), 0.9 + 0.1 * torch.rand(B, T, H, dtype=F64)
    W1 = 0.3 * torch.randn(B, H, h, d, dtype=F64)
    W2 = 0.3 * torch.randn(B, H, d, h, dtype=F64)
    state = {"M_W1": W1, "M_W2": W2}
    out, _ = op(q=q, k=k, v=v, eta=eta, alpha=alpha, initial_state=state,
                output_final_state=True, mode="chunked")

    def memory(A, Bm, x):   # x + W2 gelu(W1 x), our W1 the first map
        return x + Bm @ torch.nn.functional.gelu(A @ x)
    A, Bm = W1[0, 0].clone(), W2[0, 0].clone()
    reads = []
    for t in range(T):
        if t % 64 == 0:
            A0, B0 = A.clone().requires_grad_(), Bm.clone().requires_grad_()
        kt, vt, e, a = k[0, t, 0], v[0, t, 0], eta[0, t, 0], alpha[0, t, 0]
        reads.append(memory(A, Bm, q[0, t, 0]))               # read before the write
        target = memory(A0, B0, vt).detach()                   # v^ = M(v), a constant
        loss = 0.5 * (memory(A0, B0, kt) - target).square().sum()
        gA, gB = torch.autograd.grad(loss, (A0, B0))
        A = a * A - e * torch.outer(A @ kt, kt) - e * gA        # W (a I - e k k^T) - e grad
        Bm = a * Bm - e * gB
    assert rel(out[0, :, 0], torch.stack(reads)) < 1e-12


@pytest.mark.parametrize("name", ["SelfModifyingTitans", "ContinuumMemory"])
def test_hope_and_cms_run_forward_and_backward_at_t256(name):
    module = hope()
    torch.manual_seed(7)
    layer = getattr(module, name)().float()
    x = torch.randn(2, 256, 16, dtype=torch.float32)
    y = layer(x)
    y.square().mean().backward()
    assert torch.isfinite(y).all()
    for pname, p in layer.named_parameters():
        if name == "ContinuumMemory" and pname.startswith("W_v"):
            assert p.grad is None  # no level (every 512 tokens or slower) writes in 256
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_pending_slow_gradients_survive_a_checkpoint(tmp_path):
    """A slow group's summed gradients are saved with the optimizer and restored on load."""
    from nlc.runtime.trainer import checkpoint as ckpt
    from nlc.runtime.trainer.config import TrainConfig
    module = module_of(tmp_path, SLOW_STEPS, "slow_ckpt")
    config = TrainConfig(lr=0.01, weight_decay=0.0, keep_last=1)
    torch.manual_seed(8)
    layer = module.SlowFast().double()
    optimizer = build_optimizer(layer, config)
    layer(torch.randn(2, 7, 6, dtype=F64)).square().sum().backward()
    step_levels(optimizer, 0)                       # the slow group (every 3) holds its sum
    pending = layer.W_o.grad.clone()
    assert layer.W_q.grad is None
    path = ckpt.save_checkpoint(tmp_path / "run", 1, layer, optimizer, config, {})
    fresh = module.SlowFast().double()
    fresh_optimizer = build_optimizer(fresh, config)
    ckpt.apply_checkpoint(ckpt.read_checkpoint(path), fresh, fresh_optimizer, restore_rng=False)
    assert torch.equal(fresh.W_o.grad, pending)
    assert fresh.W_q.grad is None
    assert all("pending_grad" not in s for s in fresh_optimizer.state.values())


CONV_SCALAR = """layer ConvScalar {
  dims d_model = 8
  param w_in : [d_model]
  context from x {
    u = conv(x @ w_in, 4)
  }
  level memory {
    state h : diagonal[d_model] = zeros
    objective dot(h(x), u * x)
    retention decay(0.5)
    algorithm gd(lr = 1)
    read h
  }
  output memory
}
"""


def test_a_scalar_per_token_is_convolved_as_one_channel(tmp_path):
    """`conv(x @ w_in, 4)` of a scalar per token (Mamba-1 with a head per channel) passed
    check and was refused at compile ("needs a vector per token")."""
    layer = module_of(tmp_path, CONV_SCALAR).ConvScalar().double()
    assert layer.conv0.shape == (1, 1, 4)
    x = torch.randn(2, 9, 8, dtype=F64)
    s, w = x @ layer.w_in[0], layer.conv0[0, 0].detach()
    h, expected = torch.zeros(2, 8, dtype=F64), []
    for t in range(9):
        u = sum(w[3 - j] * s[:, t - j] for j in range(4) if t >= j)
        h = 0.5 * h + u[:, None] * x[:, t] * x[:, t]
        expected.append(h)
    assert rel(layer(x), torch.stack(expected, 1)) < 1e-12
    cache, steps = {}, []
    for t in range(9):
        steps.append(layer.step(x[:, t], cache)[0])
    assert rel(torch.stack(steps, 1).reshape(2, 9, 8), torch.stack(expected, 1)) < 1e-12


INLINE_X = """layer Inline {
  dims d_model = 8, heads = 2, d_k = 4
  param W_k, W_v : [d_model, d_k]
  param W_o : [d_k, d_model]
  level mem every 1 token {
    state S : matrix[d_k, d_k]
    objective l2(S(x @ W_k), x @ W_v)
    algorithm gd(lr = 0.5)
    read S(x @ W_k)
  }
  output mem @ W_o
}
"""


def test_a_level_that_projects_x_itself_runs_each_head_with_its_parameters(tmp_path):
    """`x @ W_k` inside a level's clauses with 2 heads: the op got x with one head and
    refused the per-head W_k ('it must be per head, [1, ...]'). Each head is its own delta
    rule on its own projections, summed through W_o, in both modes."""
    layer = module_of(tmp_path, INLINE_X, "inline").Inline().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, 19, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    expected = torch.zeros(2, 19, 8, dtype=F64)
    for h in range(2):
        k, v = x @ layer.W_k[h], x @ layer.W_v[h]
        S = torch.zeros(2, 4, 4, dtype=F64)
        for t in range(19):
            kt = k[:, t, :, None]
            S = S - 0.5 * (S @ kt - v[:, t, :, None]) @ kt.transpose(1, 2)
            expected[:, t] += (S @ kt)[..., 0] @ layer.W_o[h]
    for mode in ("recurrent", "chunked"):
        layer.mode = mode
        assert rel(layer(x), expected) < 1e-12, mode
