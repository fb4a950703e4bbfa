"""A vector or diagonal memory with a decay whose input is an entrywise product, or whose
read is the state itself, runs chunked by the entrywise scan (runtime/library/entrywise_scan.py)
instead of token by token: HGRN (Qin, Yang, Zhong, NeurIPS 2023, the HGRU's real recurrence
h_t = lam_t * h_{t-1} + (1 - lam_t) * c_t, written here from the paper's equations) compiled
to "no chunk-parallel form: the input term ... is not an outer product".

mode="chunked" equals mode="recurrent" (the token loop) in float64, output and every
gradient, at lengths that end blocks mid-way, with a state carried across calls; the op
equals fla-core's naive HGRN recurrence (float32 inside: 1e-5)."""

from __future__ import annotations

import sys

import pytest
import torch

from nlc.emit import load_layer, load_module
from test_chunk_triton import rel

HGRN = """layer HGRN {
  dims d_model = 8, d = 6
  param W_f, W_c, W_g : [d_model, d]
  param b_f, b_c : [d]
  param lb : [d] = uniform(0, 0.5)
  param W_o : [d, d_model]
  context from x {
    lam = lb + (1 - lb) * sigmoid(x @ W_f + b_f)
    c = silu(x @ W_c + b_c)
    g = sigmoid(x @ W_g)
  }
  level memory every 1 token {
    state h : diagonal[d] = STATE_INIT
    objective dot(h(1 - lam), c)
    retention decay(GATE)
    algorithm gd(lr = 1)
    READ
  }
  output (g * memory) @ W_o
}
"""

VARIANTS = {  # (initial state, gate, read)
    "hgrn": ("zeros", "lam", "read h"),
    "read_before_learned": ("learned", "lam", "read before h"),
    "applied_scalar_gate": ("zeros", "total(lam) / d", "read h(g)"),
}


def _spec(tmp_path, name):
    init, gate, read = VARIANTS[name]
    path = tmp_path / f"{name}.nl"
    path.write_text(HGRN.replace("STATE_INIT", init).replace("GATE", gate)
                    .replace("READ", read))
    return path


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("T", [1, 17, 37])
def test_the_scan_equals_the_token_loop(tmp_path, name, T):
    cls = load_layer(str(_spec(tmp_path, name)))
    doc = sys.modules[cls.__module__].__doc__
    assert "entrywise recurrence" in doc and "no chunk-parallel form" not in doc, doc
    x = torch.randn(2, T, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(T))
    runs = []
    for mode in ("chunked", "recurrent"):
        torch.manual_seed(0)
        layer = cls(mode=mode, chunk_size=8).double()
        xi = x.clone().requires_grad_()
        y = layer(xi)
        params = [p for _, p in sorted(layer.named_parameters())]
        runs.append((y, *torch.autograd.grad(y.square().sum(), [xi, *params],
                                             allow_unused=True)))
    for got, ref in zip(*runs):  # a read before the write at T = 1 meets no input: the
        if got is None or ref is None:  # token loop's gradient is None, the scan's 0
            assert (got if ref is None else ref).abs().max() == 0
        else:
            assert rel(got, ref) < 1e-12
    torch.manual_seed(0)
    layer = cls(chunk_size=8).double()
    cache, cut = {}, max(T // 2, 1)
    parts = [x[:, :cut]] + ([x[:, cut:]] if cut < T else [])
    split = torch.cat([layer(part, cache=cache) for part in parts], 1)
    assert rel(split, runs[1][0]) < 1e-12


def test_the_op_equals_flas_naive_hgrn(tmp_path):
    naive = pytest.importorskip("fla.ops.hgrn.naive")
    module = load_module(str(_spec(tmp_path, "hgrn")))
    g = torch.Generator().manual_seed(0)
    B, T, d = 2, 37, 6
    lam = torch.rand(B, T, 1, d, generator=g) * 0.9 + 0.05
    c = torch.randn(B, T, 1, d, generator=g)
    h0 = torch.randn(B, 1, d, 1, generator=g)
    lam_, c_ = lam.clone().requires_grad_(), c.clone().requires_grad_()
    o, final = module.memory_op(c=c_, lam=lam_, initial_state={"h": h0},
                                output_final_state=True, chunk_size=16)
    lam2, c2 = lam.clone().requires_grad_(), c.clone().requires_grad_()
    o2, final2 = naive.naive_recurrent_hgrn(((1 - lam2) * c2)[:, :, 0], lam2.log()[:, :, 0],
                                            initial_state=h0[:, 0, :, 0],
                                            output_final_state=True)
    w = torch.randn(o.shape, generator=g)
    (o * w).sum().backward()
    (o2 * w[:, :, 0]).sum().backward()
    assert rel(o[:, :, 0], o2) < 1e-5 and rel(final["h"][:, 0, :, 0], final2) < 1e-5
    assert rel(lam_.grad, lam2.grad) < 1e-5 and rel(c_.grad, c2.grad) < 1e-5
