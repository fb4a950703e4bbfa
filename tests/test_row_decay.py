"""A decay per row (output channel), `decay(g)` with g : [d_v] on a matrix memory: derived as
Diag(g) S, classified as the decay or delta family with a row decay, and run by the chunked
form of runtime/library/rows.py. Checked against token loops written here, in float64."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import TESTS, assert_chunked_gradients_equal_recurrent
from nlc.runtime.library import ops
from nlc.runtime.library.rows import row_decay_chunked, row_decay_chunked_torch

from nlc import pipeline
from nlc.derive.classify import KernelFamily
from nlc.derive.execution import AffineChunk, TokenLoop
from nlc.emit import load_layer

F64 = torch.float64
SPEC = TESTS / "specs" / "row_decay.nl"
B, H, K, V = 2, 2, 5, 3


def _loop(q, k, v, beta, g, S, read_before=False):
    """S_t = Diag(g_t) S_{t-1} (I - beta_t k_t k_t^T) + v_t k_t^T (beta None: no erase)."""
    outs = []
    for t in range(q.shape[1]):
        kt, qt = k[:, t, :, :, None], q[:, t, :, :, None]
        if read_before:
            outs.append((S @ qt)[..., 0])
        S = g[:, t, :, :, None] * S
        if beta is not None:
            S = S - beta[:, t, :, None, None] * (S @ kt) @ kt.mT
        S = S + v[:, t, :, :, None] @ kt.mT
        if not read_before:
            outs.append((S @ qt)[..., 0])
    return torch.stack(outs, 1), S


def _inputs(T, seed=0, sharp=1.0, K=K, V=V):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, dtype=F64, generator=gen)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, dtype=F64, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, dtype=F64, generator=gen)
    beta = torch.rand(B, T, H, dtype=F64, generator=gen)
    g = torch.rand(B, T, H, V, dtype=F64, generator=gen) ** sharp
    return q, k, v, beta, g


@pytest.mark.parametrize("T", [1, 15, 63, 65, 200])
@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("family", ["decay", "delta"])
def test_chunked_equals_token_loop(T, chunk_size, family):
    # sharp = 8 makes a chunk's log decays span past SAFE_SPAN: the masked path
    for initial, read_before, sharp in ((False, False, 1.0), (True, True, 1.0), (True, False, 8.0)):
        q, k, v, beta, g = _inputs(T, sharp=sharp)
        beta = beta if family == "delta" else None
        S0 = torch.randn(B, H, V, K, dtype=F64) if initial else torch.zeros(B, H, V, K, dtype=F64)
        want = _loop(q, k, v, beta, g, S0, read_before)
        got = row_decay_chunked(q, k, v, beta, g.log(), initial_state=S0,
                                read_before=read_before, chunk_size=chunk_size)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gate, rate", [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0)])
def test_gates_at_their_limits_are_finite(gate, rate):
    """Row decays of exactly 0 and 1 (and mixed per row), rates of 0 and 1: outputs and
    gradients finite, equal to the token loop's."""
    T = 40
    q, k, v, _, g = _inputs(T, seed=2)
    g = torch.full_like(g, gate)
    g[..., 0] = 1 - gate  # one row at the other limit
    g.requires_grad_()
    beta = torch.full((B, T, H), rate, dtype=F64, requires_grad=True)
    S0 = torch.randn(B, H, V, K, dtype=F64)
    want = _loop(q, k, v, beta, g, S0)
    got = row_decay_chunked(q, k, v, beta, ops.log_gate(g), initial_state=S0, chunk_size=16)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    (gb,) = torch.autograd.grad(sum(x.square().sum() for x in got), beta)
    (wb,) = torch.autograd.grad(sum(x.square().sum() for x in want), beta)
    assert torch.isfinite(gb).all()
    torch.testing.assert_close(gb, wb, rtol=1e-10, atol=1e-10)
    (gg,) = torch.autograd.grad(sum(x.square().sum() for x in row_decay_chunked(
        q, k, v, beta, ops.log_gate(g), initial_state=S0, chunk_size=16)), g)
    assert torch.isfinite(gg).all()


def _variant(tmp_path, old, new):
    text = SPEC.read_text()
    assert old in text
    path = tmp_path / "row_decay.nl"
    path.write_text(text.replace(old, new))
    (_, (classified,)), = pipeline.run(str(path), "classify")
    return classified


def test_the_families_with_a_row_decay(tmp_path):
    delta = _variant(tmp_path, "", "")
    assert delta.family.family is KernelFamily.DELTA
    assert str(delta.family.param("row_decay")) == "g"
    assert isinstance(delta.execution, AffineChunk) and delta.execution.decay == 1
    decay = _variant(tmp_path, "objective l2(S(k), v)", "objective dot(S(k), v)")
    assert decay.family.family is KernelFamily.DECAY
    assert isinstance(decay.execution, AffineChunk) and decay.execution.beta is None
    parallel = _variant(tmp_path, "retention decay(g)", "retention decay(g, order = parallel)")
    assert isinstance(parallel.execution, TokenLoop)
    assert "only some of the state's terms" in parallel.execution.reason


def _module(path=SPEC):
    cls = load_layer(str(path))
    return cls, sys.modules[cls.__module__]


def test_the_derived_op_is_the_row_decay_recurrence():
    """The generated op, recurrent and chunked, against the loop written above."""
    _, module = _module()
    q, k, v, beta, g = _inputs(23, seed=3, K=6, V=4)  # the spec's d_k and d_v
    want, S = _loop(q, k, beta[..., None] * v, beta, g, torch.zeros(B, H, 4, 6, dtype=F64))
    for mode in ("recurrent", "chunked"):
        o, final = module.op(q, k, v, beta, g, mode=mode, chunk_size=8, output_final_state=True)
        torch.testing.assert_close(o, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(final["S"], S, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("objective", ["l2", "dot"])
def test_the_generated_layer_chunked_equals_recurrent_and_step(tmp_path, objective, monkeypatch):
    path = SPEC
    if objective == "dot":
        path = tmp_path / "row_decay_dot.nl"
        path.write_text(SPEC.read_text().replace("objective l2(S(k), v)",
                                                 "objective dot(S(k), v)"))
    cls, module = _module(path)
    torch.manual_seed(0)
    layer = cls().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    calls = []
    real = ops.row_decay_chunked

    def spy(*args, **kw):
        calls.append(args[3] is None)
        return real(*args, **kw)

    monkeypatch.setattr(ops, "row_decay_chunked", spy)
    x = torch.randn(2, 37, 12, dtype=F64)
    for chunk_size in (16, 64):
        layer.chunk_size, layer.mode = chunk_size, "chunked"
        chunked = layer(x)
        layer.mode = "recurrent"
        recurrent = layer(x)
        torch.testing.assert_close(chunked, recurrent, rtol=1e-12, atol=1e-12)
    assert calls == [objective == "dot"] * 2  # decay family: no rate
    assert "decay per row" in module.__doc__
    cache, steps = None, []
    for t in range(x.shape[1]):
        y, cache = layer.step(x[:, t], cache)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), recurrent, rtol=1e-12, atol=1e-12)


def test_the_generated_layer_gradients_equal_recurrent():
    cls, _ = _module()
    torch.manual_seed(1)
    layer = cls().double()
    layer.chunk_size = 16
    assert_chunked_gradients_equal_recurrent(layer, torch.randn(2, 40, 12, dtype=F64))


def test_identify_calls_it_a_new_variant():
    """No catalog model has a decay per row: identify says so instead of comparing it with
    the per-input-channel gates (GLA) as if the shapes agreed."""
    from nlc.syntax.parser import parse
    from nlc.verify.verify import verify_module
    (report,) = verify_module(parse(SPEC.read_text(), str(SPEC)), str(SPEC))
    (level,) = report.levels
    assert level.matches == [] and "row" in level.differs


def test_keys_of_large_norm_are_finite_and_exact():
    """|k| = 1000 with the normalized rate beta / |k|^2 (the loop itself is finite)."""
    q, k, v, beta, g = _inputs(65, seed=4)
    k, beta = 1e3 * k, (beta / 1e6).requires_grad_()
    S0 = torch.randn(B, H, V, K, dtype=F64)
    want = _loop(q, k, v, beta, g, S0)
    got = row_decay_chunked(q, k, v, beta, g.log(), initial_state=S0, chunk_size=64)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    (grad,) = torch.autograd.grad(got[0].square().sum(), beta)
    assert torch.isfinite(grad).all()


def test_half_precision_inputs_solve_in_float32():
    """bf16 inputs (as autocast hands them over) run the PyTorch chunked forms: torch has no
    bf16 triangular solve, on the CPU or CUDA, so the chunk's inverse is solved in float32."""
    from nlc.runtime.library.chunked import delta_chunked_torch, dplr_chunked_torch
    g = torch.Generator().manual_seed(3)
    B, T, H, K = 1, 40, 2, 16
    q, k, v, a, b = (torch.randn(B, T, H, K, generator=g) for _ in range(5))
    k = torch.nn.functional.normalize(k, dim=-1)
    beta = torch.rand(B, T, H, generator=g)
    log_decay = -torch.rand(B, T, H, K, generator=g) * 0.1
    a, b = -0.5 * k, 0.5 * k
    runs = {
        "row decay": lambda *x: row_decay_chunked_torch(*x, chunk_size=16),
        "delta": lambda q, k, v, beta, ld: delta_chunked_torch(q, k, v, beta, ld[..., 0],
                                                               chunk_size=16),
        "dplr": lambda q, k, v, beta, ld: dplr_chunked_torch(q, k, v, a.to(q.dtype),
                                                             b.to(q.dtype), ld, chunk_size=16),
    }
    for name, run in runs.items():
        full, _ = run(q, k, v, beta, log_decay)
        half, _ = run(*(x.bfloat16() for x in (q, k, v, beta, log_decay)))
        assert half.dtype == torch.bfloat16, name
        err = ((half.float() - full).norm() / full.norm()).item()
        assert err < 3e-2, (name, err)


def test_half_precision_tokens_with_a_float32_state_compute_in_float32():
    """bf16 tokens with a float32 initial state (as a carried state meets autocast's
    tokens): the PyTorch chunked form computes in float32 instead of failing to multiply
    the two, and agrees with the float32 run to bf16's rounding."""
    g = torch.Generator().manual_seed(4)
    B, T, H, K = 1, 40, 2, 16
    q, k, v = (torch.randn(B, T, H, K, generator=g) for _ in range(3))
    k = torch.nn.functional.normalize(k, dim=-1)
    beta = torch.rand(B, T, H, generator=g)
    log_decay = -torch.rand(B, T, H, K, generator=g) * 0.1
    h0 = torch.randn(B, H, K, K, generator=g)
    full, _ = row_decay_chunked_torch(q, k, v, beta, log_decay, initial_state=h0, chunk_size=16)
    tokens = (x.bfloat16() for x in (q, k, v, beta))
    half, state = row_decay_chunked_torch(*tokens, log_decay, initial_state=h0, chunk_size=16)
    assert half.dtype == state.dtype == torch.float32
    assert ((half - full).norm() / full.norm()).item() < 3e-2


@pytest.mark.parametrize("above_one", [False, True])
def test_strong_row_decays_run_by_blocks_and_keep_their_gradients(above_one):
    """Row decays whose logs span more than SAFE_SPAN in a chunk of 64 take the blocks of 16
    tokens (rows._blocked_weighted); a decay above 1 anywhere takes the masked ratios. Both
    equal the token loop, outputs and every gradient."""
    from nlc.runtime.library import rows
    q, k, v, beta, g = _inputs(100, seed=3, sharp=8.0)
    if above_one:
        g = g * 1.2
    span = -g[:, :64].log().sum(1).max()
    assert span > rows.SAFE_SPAN
    blocked = rows._blocked_weighted
    taken = []
    rows._blocked_weighted = lambda *a: taken.append(blocked(*a)) or taken[-1]
    # gradients by the log decay (the op's input): well scaled at decays of 1e-29
    try:
        leaves = [x.clone().requires_grad_() for x in (q, k, v, beta, g.log())]
        got = row_decay_chunked(*leaves, chunk_size=64)
    finally:
        rows._blocked_weighted = blocked
    assert taken and all((t is None) == above_one for t in taken)
    ref_leaves = [x.clone().requires_grad_() for x in (q, k, v, beta, g.log())]
    want = _loop(*ref_leaves[:4], ref_leaves[4].exp(), torch.zeros(B, H, V, K, dtype=F64))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)
    w = [torch.randn_like(x) for x in got]
    grads = torch.autograd.grad(sum((x * y).sum() for x, y in zip(got, w)), leaves)
    ref = torch.autograd.grad(sum((x * y).sum() for x, y in zip(want, w)), ref_leaves)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
