"""`x @ detach(P)`: a projection whose parameter gets no gradient (docs/language.md, section
17: detach takes any value). check accepted it and compile refused it with "'@' in generated
code needs a parameter on its right", P being one."""

from __future__ import annotations

import torch

from nlc.emit import load_layer
from test_chunk_triton import rel

SPEC = """layer Frozen {
  dims d_model = 8, d_k = 4
  param W_k, P : [d_model, d_k]
  param W_o : [d_k, d_model]
  context from x {
    k = l2norm(x @ W_k)
    q = x @ PROJECTION
  }
  level memory every 1 token {
    state S : matrix[d_k, d_k] = zeros
    objective l2(S(k), q)
    algorithm gd(lr = 0.5)
    read S(q)
  }
  output memory @ W_o
}
"""


def test_a_detached_projection_computes_the_same_and_passes_no_gradient(tmp_path):
    runs = []
    for name, projection in (("frozen", "detach(P)"), ("plain", "P")):
        path = tmp_path / f"{name}.nl"
        path.write_text(SPEC.replace("PROJECTION", projection))
        torch.manual_seed(0)
        layer = load_layer(str(path))().double()
        x = torch.randn(2, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        y = layer(x)
        y.square().sum().backward()
        runs.append((y, layer.P.grad, layer.W_k.grad))
    (y, p_grad, k_grad), (y_ref, p_ref, k_ref) = runs
    assert rel(y, y_ref) < 1e-14
    assert p_grad is None and p_ref.abs().max() > 0  # only the plain P learns
    assert k_grad.abs().max() > 0
