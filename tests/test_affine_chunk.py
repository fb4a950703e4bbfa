"""Frozen-gradient chunks whose combine is affine in each state (a scalar retention and one
rank-one erase, Hope's `decay(alpha, order = parallel), erase(k, eta)`): the chunk-parallel
form of runtime/library/affine_chunk.py against the token loop, as functions and through
generated layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nlc.emit import compile_spec, load_module
from nlc.runtime.library import affine_chunk

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
F64 = torch.float64


def _loop(W0, retain, erase, left, right, inputs, read_before):
    """The combine one token at a time: the states the reads see, and the last."""
    W, seen = W0, []
    for t in range(inputs.shape[1]):
        if read_before:
            seen.append(W)
        W = retain[:, t] * W + inputs[:, t]
        if erase is not None:
            W = W + erase[:, t] * ((seen[-1] if read_before else _prev(seen, W0)) @ left[:, t]) \
                @ right[:, t]
        if not read_before:
            seen.append(W)
    return torch.stack(seen, 1), W


def _prev(seen, W0):
    return seen[-1] if seen else W0


def _case(C, zero_at=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, H, r, n = 2, 3, 5, 4
    W0 = torch.randn(B, H, r, n, dtype=F64, generator=g)
    retain = torch.rand(B, C, H, 1, 1, dtype=F64, generator=g)
    if zero_at is not None:
        retain[:, zero_at] = 0.0
    erase = -torch.rand(B, C, H, 1, 1, dtype=F64, generator=g)
    left = torch.randn(B, C, H, n, 1, dtype=F64, generator=g)
    right = torch.randn(B, C, H, 1, n, dtype=F64, generator=g)
    cols = [torch.randn(B, C, H, r, 1, dtype=F64, generator=g) for _ in range(2)]
    rows = [torch.randn(B, C, H, 1, n, dtype=F64, generator=g) for _ in range(2)]
    return W0, retain, erase, left, right, list(zip(cols, rows))


@pytest.mark.parametrize("C", [1, 5, 16])
@pytest.mark.parametrize("zero_at", [None, 0, 3])
def test_chunk_equals_the_loop(C, zero_at):
    if zero_at is not None and zero_at >= C:
        pytest.skip("no such token")
    W0, retain, erase, left, right, pairs = _case(C, zero_at)
    inputs = sum(c @ r for c, r in pairs)
    x = torch.randn(2, C, 3, 4, 1, dtype=F64)
    for with_erase in (True, False):
        args = (erase, left, right) if with_erase else (None, None, None)
        ref_after, ref_last = _loop(W0, retain, *args, inputs, read_before=False)
        every, last = affine_chunk.states(W0, retain, *args, inputs, every_token=True)
        assert torch.allclose(every, ref_after, atol=1e-12, rtol=0)
        assert torch.allclose(last, ref_last, atol=1e-12, rtol=0)
        for read_before in (True, False):
            ref, _ = _loop(W0, retain, *args, inputs, read_before=read_before)
            lazy, last = affine_chunk.low_rank(W0, retain, *args, pairs, read_before=read_before)
            assert torch.allclose(lazy.materialize(), ref, atol=1e-12, rtol=0)
            assert torch.allclose(lazy.product(x), ref @ x, atol=1e-12, rtol=0)
            assert torch.allclose(last, ref_last, atol=1e-12, rtol=0)


def test_gradients_equal_the_loop_and_stay_finite_at_the_limits():
    """Retentions of exactly 0 and 1, and a key of large norm: the chunk takes products of
    retentions only, so its gradients are the loop's and finite."""
    W0, retain, erase, left, right, pairs = _case(6, zero_at=2, seed=1)
    retain[:, 4] = 1.0
    left = left.clone()
    left[:, 1] *= 1e3
    leaves = [W0, retain, erase, left, right] + [t for p in pairs for t in p]
    for t in leaves:
        t.requires_grad_(True)
    inputs = sum(c @ r for c, r in pairs)
    x = torch.randn(2, 6, 3, 4, 1, dtype=F64)
    ref, ref_last = _loop(W0, retain, erase, left, right, inputs, read_before=True)
    want = torch.autograd.grad((ref @ x).sum() + ref_last.sum(), leaves)
    lazy, last = affine_chunk.low_rank(W0, retain, erase, left, right, pairs, read_before=True)
    got = torch.autograd.grad(lazy.product(x).sum() + last.sum(), leaves)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9 * b.abs().max().item())


TITANS = (EXAMPLES / "titans.nl").read_text()
SMALL = {"d_model": 16.0, "heads": 2.0, "d_head": 8.0}
# Titans with Hope's retention: the first map moves along the key by -theta (W k) k^T
DGD = TITANS.replace("chunk(64)", "chunk(8)").replace(
    "retention weight_decay(alpha)",
    "retention decay(alpha, order = parallel), erase(k, theta)").replace(
    "algorithm momentum(lr = theta, momentum = eta)", "algorithm gd(lr = theta)")
VARIANTS = {
    "mlp": DGD,
    "mlp, read before the write": DGD.replace("    read M(q)", "    read before M(q)"),
    "matrix": DGD.replace(
        "mlp(d_head -> 4 * d_head -> d_head, act = gelu, residual, norm) = "
        "learned(scheme = xavier)", "matrix[d_head, d_head]"),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_generated_layer_runs_the_chunk_form_and_equals_the_recurrence(name, tmp_path,
                                                                       monkeypatch):
    path = tmp_path / f"{name.replace(',', '').replace(' ', '_')}.nl"
    path.write_text(VARIANTS[name])
    code = compile_spec(str(path), SMALL)
    assert "transition=" in code and "pairs=" in code
    torch.manual_seed(0)
    layer = load_module(str(path), SMALL).Titans().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    calls = []
    low_rank = affine_chunk.low_rank
    monkeypatch.setattr(affine_chunk, "low_rank",
                        lambda *a, **k: calls.append(1) or low_rank(*a, **k))
    for T in (1, 15, 20):
        x = torch.randn(2, T, 16, dtype=F64, requires_grad=True)
        out = {}
        for mode in ("recurrent", "chunked"):
            layer.mode = mode
            calls.clear()
            y = layer(x)
            out[mode] = (y, torch.autograd.grad(y.square().sum(), [x, *layer.parameters()],
                                                allow_unused=True))
            assert bool(calls) == (mode == "chunked")
        (y_r, g_r), (y_c, g_c) = out["recurrent"], out["chunked"]
        assert torch.allclose(y_c, y_r, rtol=0, atol=1e-12)
        for a, b, p in zip(g_c, g_r, [x, *layer.parameters()]):
            a, b = (torch.zeros_like(p) if g is None else g for g in (a, b))  # unused: 0
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)


def test_state_carried_across_calls_that_stop_mid_chunk(tmp_path):
    path = tmp_path / "dgd.nl"
    path.write_text(DGD)
    torch.manual_seed(0)
    layer = load_module(str(path), SMALL).Titans().double()
    x = torch.randn(1, 29, 16, dtype=F64)
    whole = layer(x)
    cache: dict = {}
    parts = [layer(x[:, :11], cache=cache), layer(x[:, 11:16], cache=cache),
             layer(x[:, 16:], cache=cache)]
    assert torch.allclose(torch.cat(parts, 1), whole, rtol=0, atol=1e-12)


def test_hope_members_that_share_their_functions_run_as_one_batch(monkeypatch):
    """Hope's k, v, eta and alpha memories share their pairs and transition, and apply their
    memories alike in their reads: the chunked group runs them as one batch
    (scan._batched_members, member_batch.reads), equal to the token loop."""
    from nlc.runtime.library import member_batch, scan
    hope = load_module(str(EXAMPLES / "hope.nl"), {"d_model": 16.0, "heads": 2.0,
                                                   "d_head": 8.0})
    torch.manual_seed(0)
    layer = hope.SelfModifyingTitans().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    calls = []
    batched = scan._batched_members
    monkeypatch.setattr(scan, "_batched_members",
                        lambda members, *a: calls.append(len(members)) or batched(members, *a))
    reads, read = [], member_batch.reads
    monkeypatch.setattr(member_batch, "reads",
                        lambda members, *a: reads.append(len(members)) or read(members, *a))
    x = torch.randn(2, 37, 16, dtype=F64, requires_grad=True)
    out = {}
    for mode in ("recurrent", "chunked"):
        layer.mode = mode
        y = layer(x)
        out[mode] = (y, torch.autograd.grad(y.square().sum(), [x, *layer.parameters()]))
    assert calls and set(calls) == {4}
    assert reads == [4] * 3  # 37 tokens: three chunks of 16, one read of all four in each
    (y_r, g_r), (y_c, g_c) = out["recurrent"], out["chunked"]
    assert torch.allclose(y_c, y_r, rtol=0, atol=1e-12)
    for a, b in zip(g_c, g_r):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)


def test_the_last_chunks_terms_are_skipped_only_when_the_final_state_is_dropped(monkeypatch):
    """An `every C tokens` level's last chunk only reaches the final state: without it the op
    computes no terms there, with the same outputs; with it the final state is the token
    loop's."""
    from nlc.runtime.library import scan
    cms = load_module(str(EXAMPLES / "cms.nl"), {"d_model": 16.0, "d_hidden": 32.0})
    op = next(getattr(cms, n) for n in dir(cms) if n.endswith("_op") and "fast" in n)
    torch.manual_seed(0)
    layer = cms.ContinuumMemory().double()
    x = torch.randn(2, 40, 16, dtype=F64)
    params = {p: getattr(layer, p) for p in ("W_k1", "W_v1") if hasattr(layer, p)}
    assert params, "cms.nl's fast level takes W_k1 and W_v1"
    pieces = []
    one_piece_calls = scan._maybe_checkpoint
    monkeypatch.setattr(scan, "_maybe_checkpoint",
                        lambda fn, *a: pieces.append(fn.__name__) or one_piece_calls(fn, *a))
    outs = {}
    for keep in (True, False):
        pieces.clear()
        outs[keep] = op(x[:, :, None, :], **params, output_final_state=keep, mode="chunked")
        outs[keep, "pieces"] = list(pieces)
    assert "read_piece" in outs[False, "pieces"] and "read_piece" not in outs[True, "pieces"]
    assert torch.equal(outs[True][0], outs[False][0]) and outs[False][1] is None
    reference = op(x[:, :, None, :], **params, output_final_state=True, mode="recurrent")
    assert torch.allclose(outs[True][0], reference[0], rtol=0, atol=1e-12)
    for name, value in reference[1].items():
        if torch.is_tensor(value):
            assert torch.allclose(outs[True][1][name], value, rtol=0, atol=1e-12), name


def test_retention_products_backward_is_exact_and_reads_nothing_on_the_host():
    """`_Products`' backward (products only) equals autograd through cumprod, at retentions
    of 0 and 1 too, and issues no op that makes a GPU host wait (torch.cumprod's backward
    reads on the host whether its input holds a zero)."""
    g = torch.Generator().manual_seed(3)
    c = torch.rand(2, 3, 7, dtype=F64, generator=g)
    c[0, 1, 2], c[1, 2, 5] = 0.0, 1.0
    c.requires_grad_(True)
    weights = torch.randn(2, 3, 8, 8, dtype=F64, generator=g)
    idx = torch.arange(-1, 7)

    def by_cumprod():
        ones = torch.ones_like(c[..., :1])
        grid = torch.where(idx[None, :] > idx[:, None], torch.cat([ones, c], -1)[..., None, :],
                           1.0)
        return torch.where(idx[:, None] >= idx[None, :], torch.cumprod(grid, -1).mT, 0.0)

    def pieces(P):  # R[t, -1], R[t, s], R[t-1, -1], R[t-1, s]
        return P[..., 1:, 0], P[..., 1:, 1:], P[..., :-1, 0], P[..., :-1, 1:]

    def host_reads(parts):
        loss = sum((p * w).sum() for p, w in zip(parts, pieces(weights)))
        with torch.profiler.profile() as prof:
            (grad,) = torch.autograd.grad(loss, c)
        return grad, [e.name for e in prof.events()
                      if e.name in ("aten::item", "aten::_local_scalar_dense", "aten::nonzero")]

    want, cumprod_reads = host_reads(pieces(by_cumprod()))
    assert cumprod_reads, "the check sees cumprod's host read"
    got_pieces = affine_chunk._Products.apply(c)
    got, reads = host_reads(got_pieces)
    for x, y in zip(got_pieces, pieces(by_cumprod())):
        assert torch.equal(x, y)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert not reads
    # a piece without a gradient (None in the backward) is skipped
    (partial,) = torch.autograd.grad(affine_chunk._Products.apply(c)[1].sum(), c)
    (ref,) = torch.autograd.grad(pieces(by_cumprod())[1].sum(), c)
    assert torch.allclose(partial, ref, rtol=1e-12, atol=1e-12)
