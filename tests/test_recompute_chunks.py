"""Whole chunks, and segments of token loops, recomputed in the backward pass
(`recompute_chunks`, runtime/library/scan.py): the gradients are the ones kept activations
give, and only the chunk-start (segment-start) states are kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nlc.emit import load_layer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL = {"d_model": 16.0, "heads": 2.0, "d_head": 8.0}
TITANS = (EXAMPLES / "titans.nl").read_text().replace("chunk(64)", "chunk(5)")
SPECS = {
    "dual form": TITANS,
    # Hope's retention on Titans' memory: affine transitions on outer products
    "affine transitions": TITANS.replace(
        "retention weight_decay(alpha)",
        "retention decay(alpha, order = parallel), erase(k, theta)").replace(
        "algorithm momentum(lr = theta, momentum = eta)", "algorithm gd(lr = theta)"),
    # gradients at each token's own state: a token loop, in segments
    "token loop": (EXAMPLES / "moneta.nl").read_text(),
}


def _saved_bytes_and_grads(layer, x):
    storages = set()

    def pack(t):
        storages.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()], allow_unused=True)
    return sum(n for _, n in storages), y, grads


@pytest.mark.parametrize("name", list(SPECS))
def test_recomputed_chunks_give_the_same_gradients_and_keep_less(name, tmp_path, monkeypatch):
    path = tmp_path / f"{name.replace(' ', '_')}.nl"
    path.write_text(SPECS[name])
    torch.manual_seed(0)
    layer = load_layer(str(path), **SMALL)().double()
    x = torch.randn(2, 37, 16, dtype=torch.float64, requires_grad=True)
    runs = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("NLC_RECOMPUTE_CHUNKS", flag)
        runs[flag] = _saved_bytes_and_grads(layer, x)
    (kept, y0, g0), (recomputed, y1, g1) = runs["0"], runs["1"]
    assert torch.equal(y0, y1)
    for a, b in zip(g0, g1):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    assert recomputed < kept / 2, (recomputed, kept)
