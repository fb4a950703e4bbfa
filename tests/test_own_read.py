"""A level's name holds its read (docs/language.md, section 12), in its own rules too: a
`read before` level that uses its own name learns from the value it read this token, a
constant of the step like any other level's read. It used to stand for the level's state,
so `tanh(kk)` in kk's own objective derived as tanh of the matrix S, and a vector memory's
rate `sigmoid(b)` as a rate per channel, sigmoid(w), both compiled without a word.

Checked against token loops written here from the rule as the docs state it, in float64,
every mode and the decoding step; and a one-level layer like these (its level a loop of
one) imports: its module used to alias an `op` that was never defined."""

from __future__ import annotations

import sys

import pytest
import torch

from nlc.emit import load_layer, load_module
from nlc.pipeline import run
from test_chunk_triton import rel

OWN_KEY = """layer OwnKey {
  dims d_model = 8, d_k = 4
  param W_in : [d_model, d_k]
  param W_o : [d_k, d_model]
  context from x {
    phi = softmax(x @ W_in)
  }
  level kk every 1 token {
    state S : matrix[d_k, d_k] = learned
    objective l2(S(tanh(kk)), phi)
    algorithm gd(lr = 0.5)
    read before S(phi)
  }
  output kk @ W_o
}
"""

OWN_RATE = """layer OwnRate {
  dims d_model = 8, d_k = 4
  param W_in : [d_model, d_k]
  param W_o : [d_model]
  context from x {
    phi = softmax(x @ W_in)
    target = total(x)
  }
  level b every 1 token {
    state w : vector[d_k] = learned
    objective l2(w(phi), target)
    algorithm gd(lr = sigmoid(b))
    read before w(phi)
  }
  output b * W_o
}
"""


def _own_key(x, p):
    """S_t = S - 0.5 (S tanh(o) - phi) tanh(o)^T, with o = S phi read before the write."""
    S = p["kk_S_init"][0].expand(x.shape[0], -1, -1)
    ys = []
    for t in range(x.shape[1]):
        phi = torch.softmax(x[:, t] @ p["W_in"][0], -1)
        o = torch.einsum("bij,bj->bi", S, phi)
        ys.append(o @ p["W_o"][0])
        err = torch.einsum("bij,bj->bi", S, torch.tanh(o)) - phi
        S = S - 0.5 * torch.einsum("bi,bj->bij", err, torch.tanh(o))
    return torch.stack(ys, 1)


def _own_rate(x, p):
    """w_t = w - sigmoid(o) (<w, phi> - total(x)) phi, with the scalar o = <w, phi>."""
    w = p["b_w_init"][0, :, 0].expand(x.shape[0], -1)  # [heads, d_k, 1]
    ys = []
    for t in range(x.shape[1]):
        phi = torch.softmax(x[:, t] @ p["W_in"][0], -1)
        o = (w * phi).sum(-1, keepdim=True)
        ys.append(o * p["W_o"])
        w = w - torch.sigmoid(o) * (o - x[:, t].sum(-1, keepdim=True)) * phi
    return torch.stack(ys, 1)


@pytest.mark.parametrize(("text", "reference"), [(OWN_KEY, _own_key), (OWN_RATE, _own_rate)],
                         ids=["key", "rate"])
def test_a_level_learns_from_its_own_read(tmp_path, text, reference):
    path = tmp_path / "own.nl"
    path.write_text(text)
    cls = load_layer(str(path))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 11, 8, dtype=torch.float64, generator=g)
    for mode in ("recurrent", "chunked"):
        torch.manual_seed(0)
        layer = cls(mode=mode, chunk_size=4).double()
        with torch.no_grad():  # a learned initial state away from zeros
            for p in layer.parameters():
                p.normal_(0, 0.5, generator=g)
        params = dict(layer.named_parameters())
        xi, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        y, ref = layer(xi), reference(xr, params)
        assert rel(y, ref) < 1e-12, mode
        got = torch.autograd.grad(y.square().sum(), [xi, *params.values()])
        want = torch.autograd.grad(ref.square().sum(), [xr, *params.values()])
        for name, a, b in zip(["x", *params], got, want):
            assert rel(a, b) < 1e-12, (mode, name)
    steps, cache = [], None
    with torch.no_grad():
        for t in range(x.shape[1]):
            out, cache = layer.step(x[:, t], cache)
            steps.append(out)
        assert rel(torch.stack(steps, 1), reference(x, params)) < 1e-12


def test_the_derived_rule_names_the_read_not_the_state(tmp_path):
    path = tmp_path / "own.nl"
    path.write_text(OWN_KEY)
    (_, rules), = run(str(path), "derive")
    rule = rules[0].to_text()
    assert "tanh(kk" in rule and "tanh(S" not in rule, rule


def test_a_one_level_loop_imports(tmp_path):
    path = tmp_path / "own.nl"
    path.write_text(OWN_RATE)
    module = load_module(str(path))
    assert not hasattr(module, "op")  # its level runs as a group: b_group_op
    assert callable(module.b_group_op)
    assert module.__name__ in sys.modules
