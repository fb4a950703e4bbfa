"""Functional ops take B, T and H from their inputs and refuse inputs of the wrong shape with
a ValueError that says what was expected."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from nlc.emit import load_module

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"d_model": 16, "heads": 2, "d_k": 8, "d_v": 6}


@functools.cache
def gdn():
    return load_module(str(ROOT / "examples" / "gated_deltanet.nl"), SMALL)


def inputs(B=2, T=9, H=3, K=8, V=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g,
                                                      dtype=torch.float64), dim=-1)
            for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    alpha = torch.rand(B, T, H, generator=g, dtype=torch.float64) * 0.5 + 0.5
    beta = torch.rand(B, T, H, generator=g, dtype=torch.float64)
    return q, k, v, alpha, beta


@pytest.mark.parametrize("heads", [1, 3, 5])
def test_op_with_other_heads_matches_the_recurrent_reference(heads):
    """The spec has 2 heads; the op reads H from its inputs."""
    op = gdn().memory_op
    args = inputs(H=heads)
    o, final = op(*args, output_final_state=True, mode="chunked", chunk_size=4)
    ref, ref_final = op(*args, output_final_state=True, mode="recurrent")
    assert o.shape == (2, 9, heads, 6)
    assert final["S"].shape == (2, heads, 6, 8)
    assert (o - ref).abs().max() < 1e-12
    assert (final["S"] - ref_final["S"]).abs().max() < 1e-12
    # and against a token loop written here: S = alpha S (I - beta k k^T) + beta v k^T
    q, k, v, alpha, beta = args
    S = torch.zeros(2, heads, 6, 8, dtype=torch.float64)
    for t in range(9):
        kt, vt = k[:, t, :, :, None], v[:, t, :, :, None]
        a, b = alpha[:, t, :, None, None], beta[:, t, :, None, None]
        S = a * S - b * (a * S @ kt - vt) @ kt.mT
        assert (S @ q[:, t, :, :, None])[..., 0].sub(ref[:, t]).abs().max() < 1e-12


@pytest.mark.parametrize("change, message", [
    (lambda a: (a[0][..., :4],) + a[1:], r"k is \[2, 9, 3, 8\] but q has d_k = 4: inputs that share"),
    (lambda a: (a[0][0],) + a[1:], r"q must be \[B, T, H, d_k\], got \[9, 3, 8\]"),
    (lambda a: a[:3] + (a[3][..., None],) + a[4:], r"alpha must be \[B, T, H\]"),
    (lambda a: (a[0], a[1][:, :, :2]) + a[2:], r"k is \[2, 9, 2, 8\] but q has \[B, T, H\] = "
                                               r"\[2, 9, 3\]"),
    (lambda a: (a[0], a[1][:, :5]) + a[2:], r"k is \[2, 5, 3, 8\] but q has"),
    (lambda a: tuple(x[:, :0] for x in a), r"no tokens \(T = 0\)"),
])
def test_op_refuses_inputs_of_the_wrong_shape(change, message):
    with pytest.raises(ValueError, match=message):
        gdn().memory_op(*change(inputs()))


def test_op_refuses_an_initial_state_for_other_heads():
    state = {"S": torch.zeros(2, 2, 6, 8, dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"initial_state\['S'\] is \[2, 2, 6, 8\]; it must "
                                         r"start with \[B, H\] = \[2, 3\]"):
        gdn().memory_op(*inputs(), initial_state=state)


def test_op_with_params_checks_their_heads():
    """CMS's ops take their write projections as per-head parameters `[H, d, d]`."""
    module = load_module(str(ROOT / "examples" / "cms.nl"), {"d_model": 4, "d_hidden": 6})
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    good = torch.randn(3, 4, 4, dtype=torch.float64)
    o, _ = module.cms_fast_op(x, W_k1=good, W_v1=good)
    assert o.shape == (2, 5, 3, 4)
    with pytest.raises(ValueError, match=r"parameter W_v1 is \[2, 4, 4\]; it must be per "
                                         r"head, \[3, \.\.\.\]"):
        module.cms_fast_op(x, W_k1=good, W_v1=good[:2])


def test_op_with_params_checks_their_dims():
    """A parameter's axes are named by dims: sizes that disagree with the tokens (or with
    each other) are refused by name, not by a matrix product's error deep in the math."""
    module = load_module(str(ROOT / "examples" / "cms.nl"), {"d_model": 4, "d_hidden": 6})
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    good = torch.randn(3, 4, 4, dtype=torch.float64)
    wide = torch.randn(3, 4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"parameter W_k1 is \[3, 4, 5\] but x has "
                                         r"d_model = 4"):
        module.cms_fast_op(x, W_k1=wide, W_v1=good)
    with pytest.raises(ValueError, match=r"parameter W_v1 is \[3, 4\]; it must be "
                                         r"\[H, d_model, d_model\]"):
        module.cms_fast_op(x, W_k1=good, W_v1=good[:, 0])
    # other sizes that agree everywhere are taken from the inputs
    x6, w6 = torch.randn(2, 5, 3, 6, dtype=torch.float64), torch.randn(3, 6, 6,
                                                                       dtype=torch.float64)
    o, _ = module.cms_fast_op(x6, W_k1=w6, W_v1=w6)
    assert o.shape == (2, 5, 3, 6)
