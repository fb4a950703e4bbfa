"""Bad inputs to a generated layer's forward: a clear ValueError saying what was expected,
checked once by `nl.check_input`, never a raw torch error or a silently wrong output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from nlc.runtime.library import ops as nl

from nlc.emit import load_layer

EXAMPLES = Path(__file__).parents[1] / "examples"
SMALL = {"d_model": 8, "heads": 2, "d_k": 4, "d_v": 4}


@pytest.fixture(scope="module", params=["gated_deltanet", "softmax_attention"])
def layer(request):
    torch.manual_seed(0)
    return load_layer(str(EXAMPLES / f"{request.param}.nl"), **SMALL)(d_model=8).double()


def x_of(*shape):
    return torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize("cu, expected", [
    (torch.tensor([0, 4, 3, 6]), "strictly increasing"),
    (torch.tensor([0, 3, 3, 6]), "at least one token"),
    (torch.tensor([0, 2, 5]), "end at T = 6"),
    (torch.tensor([1, 3, 6]), "start at 0"),
    (torch.tensor([0, 3, 6], dtype=torch.float32), "integer dtype"),
    (torch.tensor([False, True]), "integer dtype"),
    (torch.tensor([[0, 3, 6]]), "1-D"),
    (torch.tensor([6]), "1-D"),
    ([0, 3, 6], "torch.Tensor"),
])
def test_bad_cu_seqlens_are_refused(layer, cu, expected):
    with pytest.raises(ValueError, match=expected):
        layer(x_of(1, 6, 8), cu_seqlens=cu)


def test_cu_seqlens_need_batch_one(layer):
    with pytest.raises(ValueError, match="batch size must be 1"):
        layer(x_of(2, 6, 8), cu_seqlens=torch.tensor([0, 3, 6]))


def test_good_cu_seqlens_equal_separate_sequences(layer):
    x = x_of(1, 7, 8)
    packed = layer(x, cu_seqlens=torch.tensor([0, 3, 7], dtype=torch.int32))
    assert packed.shape == x.shape
    separate = torch.cat([layer(x[:, :3]), layer(x[:, 3:])], 1)
    torch.testing.assert_close(packed, separate, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape, expected", [
    ((1, 5, 7), "d_model = 8"),
    ((5, 8), r"\[B, T, 8\].*step\(\)"),
    ((8,), r"\[B, T, 8\]"),
    ((1, 0, 8), "at least one sequence and one token"),
    ((0, 3, 8), "at least one sequence and one token"),
])
def test_bad_input_shapes_are_refused(layer, shape, expected):
    with pytest.raises(ValueError, match=expected):
        layer(x_of(*shape))


def test_integer_input_is_refused(layer):
    with pytest.raises(ValueError, match="floating-point"):
        layer(torch.ones(1, 3, 8, dtype=torch.long))


def test_step_with_a_wrong_width_is_refused(layer):
    with pytest.raises(ValueError, match="d_model = 8"):
        layer.step(x_of(1, 5))


def test_step_with_a_sequence_names_the_shape_given(layer):
    """step() added the token axis first, so [2, 10, d] was reported as [2, 1, 10, d]."""
    with pytest.raises(ValueError, match=r"step\(\) decodes one token: expected x as "
                                         r"\[B, \d+\], got shape \[2, 10, \d+\] "
                                         r"\(use forward\(\) for a sequence"):
        layer.step(torch.randn(2, 10, layer.d_model))


def test_check_input_accepts_a_good_input():
    nl.check_input(x_of(2, 3, 8), 8)
    nl.check_input(x_of(1, 3, 8), 8, torch.tensor([0, 1, 3]))


def test_context_gates_are_documented_as_unchecked(tmp_path):
    """The choice made: a context gate above 1 is not range-checked (docs/language.md,
    section 10 says so), so the state can grow without bound."""
    docs = (Path(__file__).parents[1] / "docs" / "language.md").read_text()
    assert "Context gates are not range-checked, at check or at run time" in docs
    assert "context gates at\nrun time" not in docs
    spec = tmp_path / "gate.nl"
    spec.write_text((EXAMPLES / "gated_deltanet.nl").read_text().replace(
        "retention decay(alpha, order = before)", "retention decay(3 * sigmoid(x @ w_alpha), "
        "order = before)"))
    torch.manual_seed(0)
    layer = load_layer(str(spec), **SMALL)(d_model=8).double()
    cache: dict = {}
    with torch.no_grad():
        layer(torch.randn(1, 64, 8, dtype=torch.float64), cache=cache)
    state = cache["states"]["memory"]
    state = state if isinstance(state, torch.Tensor) else next(iter(state.values()))
    assert state.abs().max() > 1e6  # a gate near 1.5 per token: no error, a growing state
