"""The runtime's context helpers: each fast path equals the plain definition it replaces."""

from __future__ import annotations

import torch

from nlc.runtime.library import ops as nl


def _conv_reference(x, weight):
    """out_t = sum_j weight[..., W-1-j] * x_{t-j} (zero before the start), token by token."""
    width = weight.shape[-1]
    out = torch.zeros_like(x)
    for t in range(x.shape[1]):
        for j in range(min(width, t + 1)):
            out[:, t] += weight[..., width - 1 - j] * x[:, t - j]
    return out


def test_short_conv_paths_equal_the_definition():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 3, 5, dtype=torch.float64)
    weight = torch.randn(3, 5, 4, dtype=torch.float64)
    reference = _conv_reference(x, weight)
    assert (nl.short_conv(x, weight) - reference).abs().max() < 1e-12
    assert (nl.short_conv(x, weight, cache={}) - reference).abs().max() < 1e-12  # decoding
    halves = torch.cat([nl.short_conv(part, weight, cache=cache)
                        for cache in [{}] for part in (x[:, :4], x[:, 4:])], 1)
    assert (halves - reference).abs().max() < 1e-12
    packed = nl.short_conv(x[:1], weight, cu_seqlens=torch.tensor([0, 4, 9]))  # the tap loop
    assert (packed[:, :4] - _conv_reference(x[:1, :4], weight)).abs().max() < 1e-12
    assert (packed[:, 4:] - _conv_reference(x[:1, 4:], weight)).abs().max() < 1e-12


def test_short_conv_packed_with_a_cache_continues_each_sequence():
    """Packed sequences with a cache (decoding several prompts at once): each sequence's
    outputs equal its own convolution, the cache keeps W-1 inputs per sequence, and later
    calls (packed again, with sequences shorter than W-1, or a batch of one token each)
    continue every sequence as if it had been run whole."""
    torch.manual_seed(0)
    weight = torch.randn(3, 5, 4, dtype=torch.float64)
    whole = [torch.randn(1, n, 3, 5, dtype=torch.float64) for n in (6, 3, 9)]
    cache = {}
    done = [0, 0, 0]
    for lengths in ((4, 1, 5), (1, 1, 3)):  # packed calls: 1-token sequences use the cache
        parts = [seq[:, s:s + n] for seq, s, n in zip(whole, done, lengths)]
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
        out = nl.short_conv(torch.cat(parts, 1), weight, cu_seqlens=cu, cache=cache, key="c")
        assert cache["c"].shape == (3, 3, 3, 5)
        for i, (seq, s, n) in enumerate(zip(whole, done, lengths)):
            reference = _conv_reference(seq[:, :s + n], weight)[:, s:]
            assert (out[:, cu[i]:cu[i + 1]] - reference).abs().max() < 1e-12
        done = [s + n for s, n in zip(done, lengths)]
    step = torch.cat([seq[:, d:d + 1] for seq, d in zip(whole, done)])  # one token each
    out = nl.short_conv(step, weight, cache=cache, key="c")
    for i, (seq, d) in enumerate(zip(whole, done)):
        assert (out[i] - _conv_reference(seq[:, :d + 1], weight)[0, d:]).abs().max() < 1e-12


def test_head_matmul_shared_input_equals_per_head_products():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 1, 6, dtype=torch.float64)
    w3 = torch.randn(4, 6, 5, dtype=torch.float64)
    w2 = torch.randn(4, 6, dtype=torch.float64)
    per_head = torch.stack([x[..., 0, :] @ w3[h] for h in range(4)], -2)
    assert (nl.head_matmul(x, w3) - per_head).abs().max() < 1e-12
    dots = torch.stack([x[..., 0, :] @ w2[h] for h in range(4)], -1)[..., None]
    assert (nl.head_matmul(x, w2) - dots).abs().max() < 1e-12
    a = torch.randn(2, 7, 4, 5, dtype=torch.float64)
    w_o = torch.randn(4, 5, 3, dtype=torch.float64)
    summed = sum(a[..., h, :] @ w_o[h] for h in range(4))
    assert (nl.head_matmul_sum(a, w_o) - summed).abs().max() < 1e-12


def _saved_half_copies_of(x: torch.Tensor, fn) -> tuple[torch.Tensor, int]:
    """fn(x) under CPU bf16 autocast, and how many distinct bf16 storages the size of x
    autograd saved for the backward pass."""
    storages = set()

    def pack(t):
        if t.dtype == torch.bfloat16 and t.numel() == x.numel():
            storages.add(t.untyped_storage().data_ptr())
        return t
    with (torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
          torch.autocast("cpu", dtype=torch.bfloat16)):
        y = fn(x)
    return y, len(storages)


def test_head_projections_equal_each_projection_alone():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 1, 6, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(4, 6, 5, dtype=torch.float64, requires_grad=True),
               torch.randn(4, 6, dtype=torch.float64, requires_grad=True),
               torch.randn(4, 6, 3, dtype=torch.float64, requires_grad=True)]
    fused = nl.head_projections(x, *weights)
    alone = [nl.head_matmul(x, w) for w in weights]
    for f, a in zip(fused, alone):
        assert f.shape == a.shape and f.is_contiguous()
        assert (f - a).abs().max() < 1e-12
    probes = [torch.randn_like(a) for a in alone]
    g_fused = torch.autograd.grad(sum((f * p).sum() for f, p in zip(fused, probes)), [x, *weights])
    g_alone = torch.autograd.grad(sum((a * p).sum() for a, p in zip(alone, probes)), [x, *weights])
    for f, a in zip(g_fused, g_alone):
        assert (f - a).abs().max() < 1e-12


def test_generated_layer_keeps_one_half_copy_of_x_under_autocast():
    """A generated layer's projections of x run as one product (nl.head_projections): under
    autocast x is cast once and one bf16 copy of it is kept for the backward pass, where a
    product per projection kept one copy each (Titans: seven)."""
    from nlc.factories import mixer_from_spec
    from tests.conftest import EXAMPLES
    torch.manual_seed(0)
    layer = mixer_from_spec(str(EXAMPLES / "titans.nl"), heads=2, d_head=8)(24)
    x = torch.randn(2, 12, 24, requires_grad=True)  # no other tensor of its size
    _, copies = _saved_half_copies_of(x, layer)
    assert copies == 1
    _, copies = _saved_half_copies_of(
        x, lambda x: sum(nl.head_matmul(x[:, :, None], w).float().sum()
                         for w in (layer.W_q, layer.W_k, layer.W_v)))
    assert copies == 3  # what autocast does with a product per projection


def _kept_bytes(layer, x) -> tuple[torch.Tensor, int]:
    """layer(x) under CPU bf16 autocast, and the bytes of the storages kept alive for the
    backward pass (benchmarks/saved_activations.py's count: what autograd saved and what
    checkpointed chunks hold)."""
    import importlib.util

    from tests.conftest import ROOT
    spec = importlib.util.spec_from_file_location(
        "saved_activations", ROOT / "benchmarks" / "saved_activations.py")
    counting = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(counting)
    kept = counting.kept_storages(layer, x, bf16=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    return y, sum(n for n, _ in kept.values())


def test_dual_levels_get_their_tokens_in_half_precision(monkeypatch):
    """Context values read only by dual-form levels stay bf16 under autocast
    (`keep_precision`) and each chunk casts its own tokens: a recomputed chunk keeps the bf16
    values, not a float32 copy of q, k and v; the outputs and gradients do not change."""
    from nlc.factories import mixer_from_spec
    from tests.conftest import EXAMPLES
    monkeypatch.setenv("NLC_RECOMPUTE_CHUNKS", "1")
    torch.manual_seed(0)
    B, T, H, D = 2, 150, 2, 8
    layer = mixer_from_spec(str(EXAMPLES / "titans.nl"), heads=H, d_head=D)(24)
    x = torch.randn(B, T, 24, requires_grad=True)

    def run():
        y, kept = _kept_bytes(layer, x)
        grads = torch.autograd.grad(y.float().square().sum(), [x, *layer.parameters()])
        return y, grads, kept
    low, low_grads, low_kept = run()
    per_token = nl.per_token
    monkeypatch.setattr(nl, "per_token", lambda value, like, keep_precision=False:
                        per_token(value, like))  # cast to float32 as every value was
    wide, wide_grads, wide_kept = run()
    assert torch.equal(low, wide)
    for a, b in zip(low_grads, wide_grads):
        assert torch.equal(a, b)
    # q, k and v: 4 bytes a value kept before, at most 2 now
    assert wide_kept - low_kept >= 3 * B * T * H * D * 2
