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
