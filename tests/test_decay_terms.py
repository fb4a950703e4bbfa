"""A decay-family level with several input terms runs one chunked pass per term; by
linearity only the first starts from the initial state, and outputs and states add up."""

from __future__ import annotations

from pathlib import Path

import torch

from nlc.emit import load_layer

SPEC = Path(__file__).parent / "specs" / "two_input_terms.nl"


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_two_input_terms_chunked_equals_recurrent_with_a_carried_state():
    torch.manual_seed(0)
    layer = load_layer(str(SPEC))(chunk_size=8).double()
    x = torch.randn(2, 37, 16, dtype=torch.float64)
    out = {}
    for mode in ("chunked", "recurrent"):
        layer.mode = mode
        cache = {}
        first = layer(x[:, :13], cache=cache)     # the second call starts from a state
        second = layer(x[:, 13:], cache=cache)
        out[mode] = (torch.cat([first, second], 1), cache["states"]["memory"]["S"])
    assert rel(out["chunked"][0], out["recurrent"][0]) < 1e-12
    assert rel(out["chunked"][1], out["recurrent"][1]) < 1e-12
