"""The affine combine's Triton kernels (runtime/library/affine_triton.py) against the PyTorch
`affine_chunk.low_rank` in float64: the last state, the reads of the states it returns
(`AffineStates.product`, before and after each token's write) and every gradient (W_0,
retention, erase coefficient, erase column and row, the pairs), relative error (Frobenius
norm) below 1e-5, at a full chunk of 16, a short last one of 5 and one of 33 (padded to
64: the `tf32x3` products), shapes that are not powers of two, retentions of 0 and 1 and an
erase coefficient of 0; and a Hope layer with the kernels against one without. The kernels
run in float32 under Triton's interpreter, as in tests/test_chunk_triton.py."""

from __future__ import annotations

import pytest
import torch
from nlc.runtime.library import affine_chunk
from test_chunk_triton import (  # sets TRITON_INTERPRET=1 (neither import above loads triton)
    DEVICE,
    TOL,
    close,
    needs_kernels,
    rel,
)
from test_outer_kernel import assert_same_run, hope_layer_run

F64 = torch.float64
B, H = 2, 3


def _unit(x):
    return x / x.norm(dim=-1 if x.shape[-1] > 1 else -2, keepdim=True)


def leaves(C: int, r: int, n: int, pairs: int, seed: int = 0) -> list[torch.Tensor]:
    """float64 inputs shaped as a chunk's: W_0 `[B, H, r, n]`, retention and erase
    coefficient `[B, C, H, 1, 1]` (broadcast over the batch: one per head, as a gate may
    be), unit erase column and row (keys, as in Hope) and the pairs. Token 1 retains
    nothing, token 3 everything and erases nothing."""
    g = torch.Generator().manual_seed(seed)
    retain = 0.5 + 0.5 * torch.rand(1, C, H, 1, 1, dtype=F64, generator=g)
    erase = -torch.rand(1, C, H, 1, 1, dtype=F64, generator=g)
    for t, (keep, erase_by) in {1: (0.0, None), 3: (1.0, 0.0)}.items():
        if t < C:
            retain[:, t] = keep
            if erase_by is not None:
                erase[:, t] = erase_by
    out = [torch.randn(B, H, r, n, dtype=F64, generator=g), retain, erase,
           _unit(torch.randn(B, C, H, n, 1, dtype=F64, generator=g)),
           _unit(torch.randn(B, C, H, 1, n, dtype=F64, generator=g))]
    for _ in range(pairs):
        out += [torch.randn(B, C, H, r, 1, dtype=F64, generator=g) / r ** 0.5,
                torch.randn(B, C, H, 1, n, dtype=F64, generator=g) / n ** 0.5]
    return out


def combined(xs: list, erase: bool, read_before: bool | None, seeds: list):
    """low_rank of the inputs and a scalar of its outputs: the last state and, with reads,
    every token's read W x of a fixed x, weighed by fixed seeds."""
    W0, retain, e, left, right, *flat = xs
    if not erase:
        e = left = right = None
    states, last = affine_chunk.low_rank(W0, retain, e, left, right,
                                         list(zip(flat[::2], flat[1::2])),
                                         read_before=read_before)
    reads = None if states is None else states.product(seeds[0].to(W0))
    loss = (last * seeds[1].to(W0)).sum()
    if reads is not None:
        loss = loss + (reads * seeds[2].to(W0)).sum()
    return last, reads, loss


@needs_kernels
@pytest.mark.parametrize("C, r, n, pairs", [(16, 8, 16, 1), (5, 12, 6, 2), (33, 8, 8, 1)])
@pytest.mark.parametrize("erase", [True, False])
@pytest.mark.parametrize("read_before", [None, True, False])
def test_kernels_match_low_rank(C, r, n, pairs, erase, read_before, monkeypatch):
    from nlc.runtime.library.affine_triton import LAUNCHES
    xs = leaves(C, r, n, pairs)
    g = torch.Generator().manual_seed(1)
    seeds = [torch.randn(B, C, H, n, 1, generator=g, dtype=F64),
             torch.randn(B, H, r, n, generator=g, dtype=F64),
             torch.randn(B, C, H, r, 1, generator=g, dtype=F64)]
    used = xs if erase else xs[:2] + xs[5:]
    for x in used:
        x.requires_grad_()
    monkeypatch.setenv("NLC_AFFINE_TRITON", "0")
    want_last, want_reads, loss = combined(xs, erase, read_before, seeds)
    want = torch.autograd.grad(loss, used)

    monkeypatch.setenv("NLC_TRITON", "force")
    monkeypatch.delenv("NLC_AFFINE_TRITON")
    xs32 = [x.detach().to(DEVICE, torch.float32).requires_grad_() for x in xs]
    used32 = xs32 if erase else xs32[:2] + xs32[5:]
    before = dict(LAUNCHES)
    last, reads, loss = combined(xs32, erase, read_before, seeds)
    got = torch.autograd.grad(loss, used32)
    assert LAUNCHES["forward"] == before["forward"] + 1
    assert LAUNCHES["backward"] == before["backward"] + 1
    assert rel(last.cpu(), want_last) < TOL
    if read_before is not None:
        assert rel(reads.cpu(), want_reads) < TOL
    names = ["W0", "retain", "erase", "left", "right"] if erase else ["W0", "retain"]
    names += [f"{kind}{i}" for i in range(pairs) for kind in ("col", "row")]
    for name, a, b in zip(names, got, want, strict=True):
        assert close(a.cpu(), b, TOL), (name, rel(a.cpu(), b))


def test_float64_and_the_opt_out_keep_pytorch(monkeypatch):
    """float64 chunks, and any chunk under NLC_AFFINE_TRITON=0, run the PyTorch combine."""
    from nlc.runtime.library.affine_triton import LAUNCHES
    xs = leaves(5, 8, 8, 1)
    before = dict(LAUNCHES)
    monkeypatch.setenv("NLC_TRITON", "force")
    combined(xs, True, True, [torch.ones(B, 5, H, 8, 1), torch.ones(B, H, 8, 8),
                              torch.ones(B, 5, H, 8, 1)])
    monkeypatch.setenv("NLC_AFFINE_TRITON", "0")
    combined([x.float() for x in xs], True, None, [None, torch.ones(B, H, 8, 8)])
    assert LAUNCHES == before


@needs_kernels
def test_hope_layer_with_the_affine_kernels_matches_without(monkeypatch):
    """examples/hope.nl's self-modifying Titans, chunked in float32 with every kernel
    forced: its group (chunks of 16) and main memory (a short chunk of 40 of 64) go through
    the affine kernels, and the output and every parameter's gradient agree with
    NLC_AFFINE_TRITON=0 within 1e-4."""
    from nlc.runtime.library.affine_triton import LAUNCHES
    run = hope_layer_run()
    monkeypatch.setenv("NLC_TRITON", "force")
    monkeypatch.setenv("NLC_WALK_KERNEL", "0")  # the main memory here, not on the walk kernels
    monkeypatch.setenv("NLC_AFFINE_TRITON", "0")
    want = run()
    monkeypatch.delenv("NLC_AFFINE_TRITON")
    before = dict(LAUNCHES)
    got = run()
    # 3 chunks of the group and 1 of the main memory, two maps each (forward + recomputed)
    assert LAUNCHES["forward"] - before["forward"] >= 8
    assert LAUNCHES["backward"] > before["backward"]
    assert_same_run(got, want)
