"""The walk kernels of an MLP memory read before each token's write (Hope's main memory,
issue 17): the Triton kernels (runtime/library/mlp_walk_triton.py) against the same walk
token by token in PyTorch, float64 to rounding and float32 below 1e-5, every input's
gradient; the compiler's proposal (nlc/emit/fused_walk.py) and its check at run time
(runtime/library/fused_walk.py); Hope's main memory op with the kernels forced in float32
against its PyTorch chunked form in float64, at awkward lengths and across calls that carry
the state and stop mid-chunk.

Kernels run under Triton's interpreter, as in tests/test_chunk_triton.py (whose import sets
TRITON_INTERPRET=1 before triton is imported)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from test_chunk_triton import (  # sets TRITON_INTERPRET=1 (no import above loads triton)
    DEVICE,
    INTERPRETED,
    needs_kernels,
    rel,
    rerun_under_interpreter,
)

from nlc.emit import load_module

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
# Hope's memory at d_head 8: W1 [32, 8], W2 [8, 32] (the kernels take powers of 2, F >= 16)
SMALL = {"d_model": 16.0, "heads": 2.0, "d_head": 8.0}


@pytest.fixture(scope="module")
def hope():
    return load_module(str(EXAMPLES / "hope.nl"), SMALL)


def _walk_inputs(N, C, F, D, erase, seed):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=F64) * scale
    out = [randn(N, F, D, scale=0.3), randn(N, D, F, scale=0.3), randn(N, C, D),
           torch.rand(N, C, generator=g, dtype=F64), torch.rand(N, C, generator=g, dtype=F64)]
    out += [randn(N, C, scale=0.1), randn(N, C, D), randn(N, C, D)] if erase else [None] * 3
    return out + [randn(N, C, F, scale=0.1), randn(N, C, D), randn(N, C, D, scale=0.1),
                  randn(N, C, F)]


def _run_and_grads(fn, inputs, act, seed=7):
    leaves = [None if x is None else x.clone().requires_grad_() for x in inputs]
    out = fn(*leaves, act=act)
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=g, dtype=F64) for o in out]
    loss = sum((w.to(o.device) * o.double()).sum() for w, o in zip(weights, out))
    live = [x for x in leaves if x is not None]
    return list(out), list(torch.autograd.grad(loss, live))


@needs_kernels
@pytest.mark.parametrize("act, erase, C", [("gelu", True, 1), ("gelu", True, 13),
                                           ("silu", False, 6), ("identity", True, 5)])
def test_kernels_equal_the_walk_token_by_token(act, erase, C):
    """The kernels against `walk_reference` (autograd through a PyTorch token loop): in
    float64 to rounding, in float32 below 1e-5 relative; the reads, both last states and the
    gradient of every input (states, token, retentions, erase, drives)."""
    from nlc.runtime.library import mlp_walk_triton as mw
    inputs = _walk_inputs(2, C, 32, 8, erase, seed=C)
    want, want_grads = _run_and_grads(mw.walk_reference, inputs, act)
    got, got_grads = _run_and_grads(mw.walk, [None if x is None else x.to(DEVICE)
                                             for x in inputs], act)
    for a, b in zip(got + got_grads, want + want_grads):
        assert rel(a, b) < 1e-12
    f32 = [None if x is None else x.to(DEVICE, torch.float32) for x in inputs]
    got, got_grads = _run_and_grads(mw.walk, f32, act)
    assert all(x.dtype == torch.float32 for x in got + got_grads)
    for a, b in zip(got + got_grads, want + want_grads):
        assert rel(a, b) < 1e-5


def _walk_of(hope):
    """The MLPWalk that Hope's generated memory op passes to frozen_chunked."""
    from nlc.runtime.library import ops
    seen = []
    real = ops.frozen_chunked

    def spy(*args, **kwargs):
        seen.append(kwargs.get("walk"))
        return real(*args, **kwargs)
    ops.frozen_chunked = spy
    try:
        _memory_run(hope, torch.float64, [3], grads=False)
    finally:
        ops.frozen_chunked = real
    return seen[0]


def test_the_compiler_proposes_hopes_memory_and_only_it():
    """Of the generated modules only Hope's main memory is in the walk's form (W1 M_W1,
    W2 M_W2, gelu, read M(q) = q + W2 gelu(W1 q))."""
    named = [p.name for p in sorted((ROOT / "generated").glob("*.py"))
             if "nl.MLPWalk(" in p.read_text()]
    assert named == ["hope.py"]
    text = (ROOT / "generated" / "hope.py").read_text()
    assert text.count("nl.MLPWalk(") == 1
    assert 'walk=nl.MLPWalk("M_W1", "M_W2", "gelu", True, "q")' in text


def test_a_wrong_proposal_fails_its_check(hope, monkeypatch):
    """`verified` compares the walk with the level's printed chunked form: Hope's proposal
    passes; one with another activation, without the residual, with the maps swapped or
    reading another token fails, and the level keeps its chunked form."""
    from nlc.runtime.library import fused_walk, scan
    walk = _walk_of(hope)
    assert walk == fused_walk.MLPWalk("M_W1", "M_W2", "gelu", True, "q")
    monkeypatch.setenv("NLC_TRITON", "force")
    verdicts = {}
    real = fused_walk.verified

    def record(proposal, *args):
        verdicts[proposal] = real(proposal, *args)
        return False  # keep the PyTorch form: only the verdicts are wanted here
    monkeypatch.setattr(fused_walk, "verified", record)
    wrong = [dataclasses.replace(walk, act="silu"), dataclasses.replace(walk, residual=False),
             dataclasses.replace(walk, token="k")]
    walks = scan._walks
    for proposal in [walk, *wrong]:
        monkeypatch.setattr(scan, "_walks", _forcing(proposal, walks))
        _memory_run(hope, torch.float32, [5], grads=False)
    assert verdicts[walk] is True
    assert [verdicts[w] for w in wrong] == [False] * 3


def _forcing(proposal, walks):
    def forced(walk, *args):
        return walks(proposal, *args)
    return forced


def _memory_run(hope, dtype, lengths, grads=True, seed=0):
    """Hope's main memory op over consecutive calls carrying the state (B 1, 2 heads, d 8):
    the reads, the final state and the gradients of every input and the initial state."""
    g = torch.Generator().manual_seed(seed)
    B, H, d, T = 1, 2, 8, sum(lengths)

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, generator=g, dtype=F64), dim=-1)
    q, k, v = (unit(B, T, H, d) for _ in range(3))
    alpha = torch.sigmoid(torch.randn(B, T, H, generator=g, dtype=F64) + 3)
    eta = torch.sigmoid(torch.randn(B, T, H, generator=g, dtype=F64) - 2)
    W1 = torch.randn(B, H, 4 * d, d, generator=g, dtype=F64) * 0.3
    W2 = torch.randn(B, H, d, 4 * d, generator=g, dtype=F64) * 0.3
    leaves = [x.to(DEVICE, dtype).requires_grad_(grads) for x in (q, k, alpha, eta, v, W1, W2)]
    q, k, alpha, eta, v, W1, W2 = leaves
    state, outs, start = {"M_W1": W1, "M_W2": W2}, [], 0
    for n in lengths:
        cut = slice(start, start + n)
        o, state = hope.SelfModifyingTitans_memory_op(
            q[:, cut], k[:, cut], alpha[:, cut], eta[:, cut], v[:, cut], initial_state=state,
            output_final_state=True)
        outs.append(o)
        start += n
    out = [torch.cat(outs, 1), state["M_W1"], state["M_W2"]]
    if not grads:
        return out
    weights = [torch.randn(o.shape, generator=g, dtype=F64) for o in out]
    loss = sum((w.to(o.device) * o.double()).sum() for w, o in zip(weights, out))
    return out + list(torch.autograd.grad(loss, leaves))


@needs_kernels
@pytest.mark.skipif(DEVICE != "cpu", reason="forces the dispatch on CPU tensors")
@pytest.mark.parametrize("lengths, launches", [([1], 1), ([65], 2), ([40, 24, 65], 3)])
def test_hopes_memory_on_the_kernels_equals_its_chunked_form(hope, monkeypatch, lengths,
                                                             launches):
    """Hope's main memory with the kernels forced (float32) against its chunked form in
    float64 without them: reads, final state and the gradients of q, k, alpha, eta, v and
    the initial state below 1e-5. [40, 24, 65]: the first call stops mid-chunk, the second
    (token by token from there) ends on the chunk boundary, the third runs two chunks on
    the kernels. float64 keeps the PyTorch form."""
    from nlc.runtime.library import mlp_walk_triton
    calls = []
    real = mlp_walk_triton.walk

    def counted(*args, **kwargs):
        calls.append(args[2].shape[1])
        return real(*args, **kwargs)
    monkeypatch.setattr(mlp_walk_triton, "walk", counted)
    monkeypatch.setenv("NLC_TRITON", "force")
    got = _memory_run(hope, torch.float32, lengths)
    assert len(calls) == launches
    monkeypatch.setenv("NLC_TRITON", "0")
    want = _memory_run(hope, F64, lengths)
    for a, b in zip(got, want):
        assert rel(a, b) < 1e-5
    monkeypatch.setenv("NLC_TRITON", "force")
    again = _memory_run(hope, F64, lengths)
    assert len(calls) == launches and rel(again[0], want[0]) < 1e-12


def test_the_walk_kernels_wait_to_be_asked_on_cuda(monkeypatch):
    """Not yet timed on a GPU: NLC_WALK_KERNEL=1 asks for them on CUDA, NLC_TRITON=force
    anywhere."""
    from nlc.runtime.library import chunk_triton, fused_walk
    walk = fused_walk.MLPWalk("W1", "W2", "gelu", True, "q")
    monkeypatch.setattr(chunk_triton, "triton_enabled", lambda ref: True)
    x = torch.zeros(1, 2, 1, 4, 1)
    for flag, triton_flag, runs in ((None, None, False), ("1", None, True),
                                    ("0", "force", False), (None, "force", True)):
        for name, value in (("NLC_WALK_KERNEL", flag), ("NLC_TRITON", triton_flag)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        assert fused_walk.wanted(walk, x) == runs
    assert not fused_walk.wanted(walk, x.double())


def test_kernels_rerun_in_a_fresh_interpreter_process():
    """Only when triton was imported before this module (so the interpreter is off here)."""
    if INTERPRETED or DEVICE != "cpu":
        pytest.skip("the kernels run in this process")
    rerun_under_interpreter(__file__)
