"""The chunked Triton kernels for a decay per row (value channel) of the state
(runtime/library/chunk_rows_triton.py), decay and delta families: float32 kernels against a
float64 token loop (tests/test_row_decay.py's), gates at their limits, and the dispatch of a
generated layer with a row decay (tests/specs/row_decay.nl) to them.

Kernels run under Triton's interpreter, as in tests/test_chunk_triton.py (whose helpers this
file imports, and whose import sets TRITON_INTERPRET=1 before triton is imported)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from test_chunk_triton import (
    DEVICE,
    INTERPRETED,
    LIMITS,
    ROOT,
    TOL,
    close,
    limit_inputs,
    needs_kernels,
    rel,
    rerun_under_interpreter,
    run_and_grad,
    spec_dispatched,
)
from test_row_decay import _loop


def row_inputs(family, B, T, H, K, V, h0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = {"q": torch.randn(B, T, H, K, generator=g) * K ** -0.5,
         "k": F.normalize(torch.randn(B, T, H, K, generator=g), dim=-1),
         "v": torch.randn(B, T, H, V, generator=g),
         "beta": torch.rand(B, T, H, generator=g) if family == "delta" else None,
         "ld": F.logsigmoid(torch.randn(B, T, H, V, generator=g) + 2.0),
         "h0": torch.randn(h0, H, V, K, generator=g) * 0.5 if h0 else None}
    return {n: None if t is None else t.to(dtype).to(DEVICE) for n, t in x.items()}


def row_loop(bounds):
    """The float64 token loop, each packed sequence from its own initial state (or zeros)."""
    def fn(q, k, v, beta, ld, h0):
        B, T, H, K = q.shape

        def packed(x):
            return None if x is None else x.reshape(1, B * T, *x.shape[2:])
        q, k, v, beta, ld = map(packed, (q, k, v, beta, ld))
        outs, finals = [], []
        for i, (bos, eos) in enumerate(itertools.pairwise(bounds)):
            S = h0[i:i + 1] if h0 is not None else q.new_zeros(1, H, v.shape[-1], K)
            if bos == eos:  # an empty sequence: its final state is its initial one
                finals.append(S)
                continue
            piece = slice(bos, eos)
            o, S = _loop(q[:, piece], k[:, piece], v[:, piece],
                         None if beta is None else beta[:, piece], ld[:, piece].exp(), S)
            outs.append(o)
            finals.append(S)
        return torch.cat(outs, 1).reshape(B, T, H, -1), torch.cat(finals, 0)
    return fn


def triton_rows(cu_seqlens, chunk):
    from nlc.runtime.library.chunk_rows_triton import chunk_rows

    def fn(q, k, v, beta, ld, h0):
        return chunk_rows(q, k, v, beta, ld, initial_state=h0, cu_seqlens=cu_seqlens,
                          chunk_size=chunk)
    return fn


def errors_against_loop(fn, x, weights, bounds):
    o, ht, grads = run_and_grad(fn, x, weights)
    x64 = {n: None if t is None else t.double() for n, t in x.items()}
    ro, rht, rgrads = run_and_grad(row_loop(bounds), x64, tuple(w.double() for w in weights))
    assert set(grads) == set(rgrads) == {n for n, t in x.items() if t is not None}
    errors = {"o": rel(o, ro), "final state": rel(ht, rht)}
    errors.update({f"d{n}": rel(grads[n], rgrads[n]) for n in rgrads})
    return errors


def _layout(T, chunk, packed):
    """(batch, sequence bounds, cu_seqlens): three packed sequences (one shorter than a chunk;
    at T = 15 the third is empty), or two rows of T tokens."""
    if packed:
        bounds = [0, min(5, T), min(5 + chunk + 3, T), T]
        return 1, bounds, torch.tensor(bounds, dtype=torch.int32, device=DEVICE)
    return 2, [0, T, 2 * T], None


# every value of every axis appears for each family: T in {1, 15, 63, 65, 200}, chunk 16 and
# 64 (and 32), K and V in {16, 32, 48} (V = 80: two output programs, three input-gradient
# blocks), with and without an initial state, packed sequences. T = 1 from a zero state has
# a log-decay gradient of exactly 0: relative errors need a state there.
# (family, T, chunk, K, V, initial state, packed)
CASES = [
    ("delta", 200, 16, 32, 16, True, True),
    ("delta", 65, 64, 48, 32, False, True),
    ("delta", 63, 16, 16, 48, True, False),
    ("delta", 15, 64, 32, 32, False, False),
    ("delta", 1, 16, 48, 16, True, False),
    ("delta", 65, 32, 16, 80, True, False),
    ("decay", 200, 64, 16, 48, False, False),
    ("decay", 63, 64, 48, 16, True, False),
    ("decay", 65, 16, 32, 32, True, True),
    ("decay", 15, 16, 16, 16, False, False),
    ("decay", 1, 64, 32, 48, True, False),
]


@needs_kernels
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_row_decay_triton_matches_token_loop(case):
    family, T, chunk, K, V, with_h0, packed = case
    B, bounds, cu = _layout(T, chunk, packed)
    S = len(bounds) - 1
    x = row_inputs(family, B, T, 2, K, V, S if with_h0 else 0, seed=T * K + V)
    g = torch.Generator().manual_seed(T + K)
    weights = (torch.randn(B, T, 2, V, generator=g).to(DEVICE),
               torch.randn(S, 2, V, K, generator=g).to(DEVICE))
    errors = errors_against_loop(triton_rows(cu, chunk), x, weights, bounds)
    assert max(errors.values()) < TOL, errors


@needs_kernels
@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("family", ["delta", "decay"])
def test_row_decay_triton_at_gate_limits(family, limit):
    """Finite output and gradients, equal to the float64 loop. The log decays' gradient is 0
    where a decay is 0 (by the clamp) and is compared elsewhere to 1e-4: every third token
    wiping the state leaves its reversed cumulative sums to cancel terms from beyond the
    wipe, and float32 keeps 1.4e-5 of it (the float32 PyTorch chunked form's own error on
    these inputs, runtime/library/rows.py)."""
    if family == "decay" and limit.startswith("beta"):
        pytest.skip("no rate")
    x = limit_inputs(family, "channel", limit)  # K = V: the decays [B, T, H, V], one per row
    g = torch.Generator().manual_seed(11)
    weights = (torch.randn(1, 40, 2, 16, generator=g).to(DEVICE),
               torch.randn(1, 2, 16, 16, generator=g).to(DEVICE))
    o, ht, grads = run_and_grad(triton_rows(None, 16), x, weights)
    for name, t in [("o", o), ("state", ht), *grads.items()]:
        assert t is not None and torch.isfinite(t).all(), name
    x64 = {n: None if t is None else t.double() for n, t in x.items()}
    ro, rht, rgrads = run_and_grad(row_loop([0, 40]), x64, tuple(w.double() for w in weights))
    assert close(o, ro, TOL) and close(ht, rht, TOL)
    for n in grads:
        if n != "ld":
            assert close(grads[n], rgrads[n], TOL), n
    positive = x["ld"] > -torch.inf  # where the decay is not 0, its gradient is the loop's
    assert close(grads["ld"][positive], rgrads["ld"][positive], 1e-4)


@needs_kernels
def test_row_decay_triton_half_precision():
    """fp16 operands (float32 accumulation) stay within fp16 rounding of the loop."""
    x = row_inputs("delta", 1, 70, 2, 32, 32, 1, seed=5, dtype=torch.float16)
    weights = (torch.randn(1, 70, 2, 32, device=DEVICE), torch.randn(1, 2, 32, 32, device=DEVICE))
    errors = errors_against_loop(triton_rows(None, 64), x, weights, [0, 70])
    assert max(errors.values()) < 3e-3, errors


def test_row_kernel_rejects_bad_inputs():
    """Checked before any kernel runs (no interpreter needed), with the tensor's name."""
    from nlc.runtime.library.chunk_rows_triton import chunk_rows
    x = {n: t.cpu() for n, t in row_inputs("delta", 2, 8, 2, 16, 8, 0).items() if t is not None}
    with pytest.raises(ValueError, match=r"log_decay must be \[2, 8, 2, 8\]"):
        chunk_rows(x["q"], x["k"], x["v"], x["beta"], x["ld"][..., 0])
    with pytest.raises(ValueError, match="chunk_rows needs log_decay"):
        chunk_rows(x["q"], x["k"], x["v"], x["beta"], None)
    with pytest.raises(ValueError, match=r"beta must be \[2, 8, 2\]"):
        chunk_rows(x["q"], x["k"], x["v"], x["beta"][..., None], x["ld"])


def test_row_decay_dispatch_picks_chunk_rows(monkeypatch):
    """chunked_kernel_for maps both families with a row decay to chunk_rows; read-before and
    an unforced CPU tensor keep the PyTorch form."""
    pytest.importorskip("triton")
    from nlc.runtime.library.chunk_rows_triton import chunk_rows
    from nlc.runtime.library.chunk_triton import chunked_kernel_for
    q = torch.zeros(1, 64, 2, 16)
    monkeypatch.setenv("NLC_TRITON", "0")
    assert chunked_kernel_for(q, "delta", "row", False, 64, 16, 16) is None
    monkeypatch.setenv("NLC_TRITON", "force")
    for family in ("decay", "delta"):
        assert chunked_kernel_for(q, family, "row", False, 64, 16, 16) is chunk_rows
        assert chunked_kernel_for(q, family, "row", True, 64, 16, 16) is None


@needs_kernels
@pytest.mark.skipif(DEVICE != "cpu", reason="forces the dispatch on CPU tensors")
def test_generated_row_decay_layer_dispatches_to_chunk_rows():
    """The generated layer of tests/specs/row_decay.nl with Triton forced, on the CPU under
    the interpreter: its docstring names chunk_rows, the forward runs chunk_rows' autograd
    function once, and output and input gradient equal the PyTorch form's. (The decay
    family's dispatch is `test_row_decay_dispatch_picks_chunk_rows`.)"""
    doc, calls, out_err, grad_err = spec_dispatched(
        ROOT / "tests" / "specs" / "row_decay.nl", 70, "chunk_rows_triton", "ChunkRowDecay")
    assert "chunk_rows_triton.chunk_rows" in doc
    assert calls == 1
    assert out_err < 1e-5 and grad_err < 1e-5


def test_row_kernels_rerun_in_a_fresh_interpreter_process():
    """Only when triton was imported before this module (so the interpreter is off here)."""
    if INTERPRETED or DEVICE != "cpu":
        pytest.skip("the kernels run in this process")
    rerun_under_interpreter(__file__)
