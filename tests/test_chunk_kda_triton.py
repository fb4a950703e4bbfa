"""Kimi Delta Attention (the delta rule with a decay per key channel) runs chunked: the PyTorch
form (runtime/library/chunked.py) and the Triton kernels (runtime/library/chunk_kda_triton.py)
equal the float64 token loop of tests/test_chunk_triton.py, stay finite with gates at their
limits, and the generated layer of examples/kda.nl dispatches to them.

Kernels run under Triton's interpreter, as in tests/test_chunk_triton.py (whose helpers this
file imports, and whose import sets TRITON_INTERPRET=1 before triton is imported)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from nlc.runtime.library.chunked import delta_chunked_torch
from test_chunk_triton import (
    DEVICE,
    INTERPRETED,
    LIMITS,
    ROOT,
    TOL,
    close,
    dispatched,
    inputs,
    launches,
    limit_inputs,
    needs_kernels,
    reference_fn,
    rel,
    run_and_grad,
)


def kda_inputs(B, T, K, V, h0, seed, dtype=torch.float32):
    return inputs("delta", "channel", B, T, 2, K, V, h0, seed=seed, dtype=dtype)


def triton_kda(cu_seqlens, chunk):
    from nlc.runtime.library.chunk_kda_triton import chunk_kda

    def fn(q, k, v, beta, ld, h0):
        return chunk_kda(q, k, v, beta, ld, initial_state=h0, cu_seqlens=cu_seqlens,
                         chunk_size=chunk)
    return fn


def torch_kda(chunk):
    def fn(q, k, v, beta, ld, h0):
        return delta_chunked_torch(q, k, v, beta, ld, initial_state=h0, chunk_size=chunk)
    return fn


def errors_against_loop(fn, x, weights, bounds):
    """Relative errors of fn's output, final state and every gradient against the float64
    token loop."""
    o, ht, grads = run_and_grad(fn, x, weights)
    x64 = {n: None if t is None else t.double() for n, t in x.items()}
    ro, rht, rgrads = run_and_grad(reference_fn(bounds), x64,
                                   tuple(w.double() for w in weights))
    assert set(grads) == set(rgrads) == {n for n, t in x.items() if t is not None}
    errors = {"o": rel(o, ro), "final state": rel(ht, rht)}
    errors.update({f"d{n}": rel(grads[n], rgrads[n]) for n in rgrads})
    return errors


# every value of every axis appears: T in {1, 15, 63, 65, 200}, chunk 16 / 32 / 64, K and V in
# {16, 32, 48} and the widest, 256 (V in several programs' blocks), with and without an
# initial state, packed sequences (cu_seqlens; at T = 15 the third one is empty).
# T = 1 from a zero state has a log-decay gradient of exactly 0: relative errors need a state.
# (T, chunk, K, V, initial state, packed)
CASES = [
    (200, 16, 32, 16, True, False),
    (65, 64, 48, 32, False, True),
    (63, 16, 16, 48, True, True),
    (15, 64, 32, 32, False, False),
    (1, 16, 48, 16, True, False),
    (65, 32, 16, 16, True, False),
    (200, 64, 16, 48, False, True),
    (63, 64, 48, 48, True, False),
    (15, 16, 256, 256, True, True),
]


def _layout(T, chunk, packed):
    """(batch, sequence bounds, cu_seqlens): three packed sequences (one shorter than a chunk),
    or two rows of T tokens."""
    if packed:
        bounds = [0, min(5, T), min(5 + chunk + 3, T), T]
        return 1, bounds, torch.tensor(bounds, dtype=torch.int32, device=DEVICE)
    return 2, [0, T, 2 * T], None


@needs_kernels
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_kda_triton_matches_token_loop(case):
    T, chunk, K, V, with_h0, packed = case
    torch.manual_seed(T + K)
    B, bounds, cu = _layout(T, chunk, packed)
    S = len(bounds) - 1
    x = kda_inputs(B, T, K, V, S if with_h0 else 0, seed=T * K + V)
    weights = (torch.randn(B, T, 2, V, device=DEVICE), torch.randn(S, 2, V, K, device=DEVICE))
    errors = errors_against_loop(triton_kda(cu, chunk), x, weights, bounds)
    assert max(errors.values()) < TOL, errors


@needs_kernels
@pytest.mark.skipif(DEVICE != "cpu", reason="counts the interpreter's launches")
def test_kda_score_kernels_launch_once():
    """One forward + backward launches `_scores_kernel` and `_intra_grads_kernel` once each:
    P and the keys' scores share their columns (k) and decays, so they run as a pair."""
    x = kda_inputs(1, 40, 16, 16, 1, seed=0)
    weights = (torch.randn(1, 40, 2, 16, device=DEVICE), torch.randn(1, 2, 16, 16, device=DEVICE))
    with launches() as counts:
        run_and_grad(triton_kda(None, 32), x, weights)
    assert counts["_scores_kernel"] == 1 and counts["_intra_grads_kernel"] == 1, counts


@pytest.mark.parametrize("T, chunk", [(1, 16), (15, 16), (63, 16), (65, 64), (200, 32)])
def test_kda_pytorch_chunked_matches_token_loop(T, chunk):
    """float64: the chunked form is exact, so it agrees to rounding."""
    x = {n: None if t is None else t.double().cpu()
         for n, t in kda_inputs(2, T, 16, 8, 2, seed=T).items()}
    weights = (torch.randn(2, T, 2, 8, dtype=torch.float64),
               torch.randn(2, 2, 8, 16, dtype=torch.float64))
    errors = errors_against_loop(torch_kda(chunk), x, weights, [0, T, 2 * T])
    assert max(errors.values()) < 1e-10, errors


def test_kda_pytorch_chunked_spans_beyond_the_factored_range():
    """Log decays spanning more than SAFE_SPAN in a chunk take the exact masked product; both
    paths of `_scores` agree with the loop."""
    x = {n: None if t is None else t.double().cpu()
         for n, t in kda_inputs(1, 40, 16, 8, 1, seed=3).items()}
    x["ld"] = x["ld"] * 8.0  # decays near e^-1 and below: a chunk of 16 spans far beyond 30
    weights = (torch.randn(1, 40, 2, 8, dtype=torch.float64),
               torch.randn(1, 2, 8, 16, dtype=torch.float64))
    errors = errors_against_loop(torch_kda(16), x, weights, [0, 40])
    assert max(errors.values()) < 1e-10, errors


@pytest.mark.parametrize("limit", LIMITS)
def test_kda_pytorch_chunked_at_gate_limits(limit):
    """Decays of 0, 1e-30 and 1, rates of 0 and 1, keys of large norm: finite output and
    gradients, equal to the token loop (float64)."""
    x = {n: None if t is None else t.double().cpu()
         for n, t in limit_inputs("delta", "channel", limit).items()}
    weights = (torch.randn(1, 40, 2, 16, dtype=torch.float64),
               torch.randn(1, 2, 16, 16, dtype=torch.float64))
    o, ht, grads = run_and_grad(torch_kda(16), x, weights)
    ro, rht, rgrads = run_and_grad(reference_fn([0, 40]), x, weights)
    for name, t in [("o", o), ("state", ht), *grads.items()]:
        assert t is not None and torch.isfinite(t).all(), name
    assert close(o, ro, 1e-9) and close(ht, rht, 1e-9)
    for n in ("q", "k", "v", "beta", "h0"):
        assert close(grads[n], rgrads[n], 1e-9), n


@needs_kernels
@pytest.mark.parametrize("limit", LIMITS)
def test_kda_triton_at_gate_limits(limit):
    """The kernels: finite output and gradients, equal to the float64 loop in everything but
    the log decays' gradient (0 where a decay is 0, by the clamp)."""
    x = limit_inputs("delta", "channel", limit)
    weights = (torch.randn(1, 40, 2, 16, device=DEVICE), torch.randn(1, 2, 16, 16, device=DEVICE))
    o, ht, grads = run_and_grad(triton_kda(None, 16), x, weights)
    for name, t in [("o", o), ("state", ht), *grads.items()]:
        assert t is not None and torch.isfinite(t).all(), name
    x64 = {n: None if t is None else t.double() for n, t in x.items()}
    ro, rht, rgrads = run_and_grad(reference_fn([0, 40]), x64,
                                   tuple(w.double() for w in weights))
    assert close(o, ro, TOL) and close(ht, rht, TOL)
    for n in ("q", "k", "v", "beta", "h0"):
        assert close(grads[n], rgrads[n], TOL), n


@needs_kernels
def test_kda_triton_half_precision():
    """fp16 operands (float32 accumulation) stay within fp16 rounding of the loop."""
    x = kda_inputs(1, 70, 32, 32, 1, seed=5, dtype=torch.float16)
    weights = (torch.randn(1, 70, 2, 32, device=DEVICE), torch.randn(1, 2, 32, 32, device=DEVICE))
    errors = errors_against_loop(triton_kda(None, 64), x, weights, [0, 70])
    assert max(errors.values()) < 3e-3, errors


def test_kda_kernel_rejects_bad_inputs():
    """Checked before any kernel runs (no interpreter needed), with the tensor's name."""
    from nlc.runtime.library.chunk_kda_triton import chunk_kda
    x = {n: t.cpu() for n, t in kda_inputs(2, 8, 16, 16, 0, seed=0).items() if t is not None}
    with pytest.raises(ValueError, match=r"log_decay must be \[2, 8, 2, 16\]"):
        chunk_kda(x["q"], x["k"], x["v"], x["beta"], x["ld"][..., 0])
    with pytest.raises(ValueError, match="chunk_kda needs log_decay"):
        chunk_kda(x["q"], x["k"], x["v"], x["beta"], None)
    with pytest.raises(ValueError, match=r"beta must be \[2, 8, 2\]"):
        chunk_kda(x["q"], x["k"], x["v"], x["beta"][..., None], x["ld"])


def test_plan_names_the_kernels_the_runtime_dispatches_to(monkeypatch):
    """The generated docstring's kernel names (KernelPlan.chunked_entry) are the runtime's."""
    pytest.importorskip("triton")
    from nlc.runtime.library.chunk_triton import CHUNKED_KERNELS, chunked_kernel_for

    from nlc.plan.records import KernelPlan
    monkeypatch.setenv("NLC_TRITON", "force")
    q = torch.zeros(1, 64, 2, 16)
    assert ("delta", "channel") in CHUNKED_KERNELS
    for family, decay in sorted(CHUNKED_KERNELS):
        kernel = chunked_kernel_for(q, family, decay, False, 64, 16, 16)
        entry = KernelPlan(family, decay, False, "", chunked=f"{family}/{decay}").chunked_entry()
        assert entry == f"{kernel.__module__.rsplit('.', 1)[-1]}.{kernel.__name__}"


def test_generated_kda_layer_chunked_equals_recurrent():
    """The generated level op of examples/kda.nl in float64: mode="chunked" (the PyTorch
    chunked form, decays of exactly 0 among the gates) == mode="recurrent", output, final
    state and every input's gradient. Where a gate is exactly 0 the chunked form's gradient
    is 0 by design (nl.log_gate: the log decay's clamp), so dalpha is compared elsewhere."""
    from test_emit import small_overrides

    from nlc.emit import load_module
    path = ROOT / "examples" / "kda.nl"
    module = load_module(str(path), small_overrides(path))
    assert "chunk_kda_triton.chunk_kda" in module.__doc__
    B, T, H, K, V = 2, 37, 2, 8, 6
    g = torch.Generator().manual_seed(0)
    q, k = (F.normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64), dim=-1)
            for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    alpha = torch.rand(B, T, H, K, generator=g, dtype=torch.float64)
    alpha[:, ::5, :, ::2] = 0.0
    beta = torch.rand(B, T, H, generator=g, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (q, k, v, alpha, beta)]
    runs = {}
    for mode in ("chunked", "recurrent"):
        o, final = module.memory_op(*leaves, mode=mode, chunk_size=8, output_final_state=True)
        loss = o.square().sum() + final["S"].square().sum()
        runs[mode] = (o, final["S"], *torch.autograd.grad(loss, leaves))
    chunked, recurrent = runs.values()
    for name, a, b in zip(("o", "S", "dq", "dk", "dv", "dalpha", "dbeta"), chunked, recurrent):
        if name == "dalpha":
            a, b = a[alpha > 0], b[alpha > 0]
        assert torch.isfinite(a).all() and rel(a, b) < 1e-10, name


@needs_kernels
@pytest.mark.skipif(DEVICE != "cpu", reason="forces the dispatch on CPU tensors")
@pytest.mark.parametrize("T, path", [(70, "ChunkKDA"), (9, "recurrent")])
def test_generated_kda_layer_dispatches_to_chunk_kda(T, path):
    """The generated KDA layer with Triton forced (on the CPU, under the interpreter): a
    training-length input runs chunk_kda (its autograd function is called), a short one the
    fused recurrent kernel; both equal the PyTorch forms."""
    taken, out_err, grad_err = dispatched("kda", "KDA", T)
    assert taken == path
    assert out_err < 1e-5 and grad_err < 1e-5


def test_kda_kernels_rerun_in_a_fresh_interpreter_process():
    """Only when triton was imported before this module (so the interpreter is off here)."""
    if INTERPRETED or DEVICE != "cpu":
        pytest.skip("the kernels run in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           __file__], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


@pytest.mark.parametrize("chunk", [32, 64])
def test_kda_pytorch_chunked_strong_decays_by_blocks_of_16(chunk):
    """A chunk longer than 16 whose log decays span beyond SAFE_SPAN takes the blocked
    factorization (chunked._blocked_scores: each block of 16 exact, the rows after it
    factored against the block's last decay), not the [C, C, K] product; it equals the
    token loop, at a length that ends mid-chunk."""
    from nlc.runtime.library import chunked
    x = {n: None if t is None else t.double().cpu()
         for n, t in kda_inputs(1, 100, 16, 8, 1, seed=5).items()}
    x["ld"] = x["ld"] * 8.0
    calls = []
    blocked = chunked._blocked_scores
    chunked._blocked_scores = lambda *a: calls.append(1) or blocked(*a)
    try:
        weights = (torch.randn(1, 100, 2, 8, dtype=torch.float64),
                   torch.randn(1, 2, 8, 16, dtype=torch.float64))
        errors = errors_against_loop(torch_kda(chunk), x, weights, [0, 100])
    finally:
        chunked._blocked_scores = blocked
    assert calls and max(errors.values()) < 1e-10, errors


def test_blocked_scores_equal_the_exact_product_and_refuse_growth():
    """The blocked scores against the exact masked product on strong decays (float64), both
    causal masks; a decay above 1 (a factor could overflow) gets None."""
    from nlc.runtime.library import chunked
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 64, 8, dtype=torch.float64, generator=g) for _ in range(2))
    ld = -torch.rand(2, 3, 64, 8, dtype=torch.float64, generator=g) * 6
    cum = ld.cumsum(-2)
    for strict, read in ((False, cum), (True, cum - ld)):
        exact = chunked._masked_exp((read.unsqueeze(-2) - cum.unsqueeze(-3)).movedim(-1, -3),
                                    strict)
        want = torch.einsum("...tk,...sk,...kts->...ts", q, k, exact)
        got = chunked._blocked_scores(q, k, read, cum)
        got = got.masked_fill(~chunked._causal(64, strict, got.device), 0.0)
        assert (got - want).abs().max() < 1e-12 * want.abs().max(), strict
    assert chunked._blocked_scores(q, k, (-ld).cumsum(-2), (-ld).cumsum(-2)) is None
