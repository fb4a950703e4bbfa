"""Generated layers under torch.compile: the LM step's context code (projections, short
convolutions, norms, gates) is fused by `nlc train --compile` (torch.compile of the whole
model), so every generated layer must trace. On the CPU the graph runs with the `aot_eager`
backend (no C compiler needed): dynamo's trace and AOT autograd are the same as on the GPU,
only the code generation differs. Outputs and gradients must equal the eager module's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nlc.emit import load_layer

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"d_model": 16, "heads": 2}


@pytest.mark.parametrize(("name", "mode"), [
    ("deltanet", "chunked"), ("gated_deltanet", "chunked"), ("gla", "recurrent")])
def test_generated_layer_compiles_and_matches_eager(name, mode):
    dims = {"d_k": 8, "d_v": 8}
    torch.manual_seed(0)
    layer = load_layer(str(ROOT / "examples" / f"{name}.nl"), **SMALL, **dims)()
    layer = layer.double()
    layer.mode = mode
    x = torch.randn(2, 37, SMALL["d_model"], dtype=torch.float64)
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager")

    def run(module):
        xx = x.clone().requires_grad_()
        y = module(xx)
        grads = torch.autograd.grad(y.square().sum(), [xx, *layer.parameters()])
        return y, grads
    y0, g0 = run(layer)
    y1, g1 = run(compiled)
    assert torch.allclose(y1, y0, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g0):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
