"""A generate transfer fills the target's weights with the source's read: a layer built with
dims under which their sizes differ is refused by its constructor with a ValueError that
names the two sizes (it failed in forward with a bare reshape error)."""

from __future__ import annotations

import pytest
import torch

from nlc.emit import load_layer

SPEC = """
layer GenTransfer {
  dims d_model = 16, d_k = 4, d_v = 4, d_s = 16
  hyper eta = 0.1
  param W_q, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param W_c, W_c2 : [d_model, d_k]
  param W_t : [d_model, d_s]
  param w_beta : [d_model]
  param W_o : [d_v, d_model]

  context from x {
    q = l2norm(x @ W_q)
    k = l2norm(x @ W_k)
    v = x @ W_v
    c = l2norm(x @ W_c)
    c2 = l2norm(x @ W_c2)
    tgt = x @ W_t
    beta = sigmoid(x @ w_beta)
  }

  level slow every 8 tokens {
    state H : matrix[d_s, d_k] = learned(std = 0.3)
    objective l2(H(c2), tgt)
    algorithm gd(lr = eta)
    read H(c)
  }

  level fast every 1 token {
    state S : matrix[d_v, d_k] = zeros
    objective l2(S(k), v)
    algorithm gd(lr = beta)
    read S(q)
  }

  transfer slow -> fast : generate

  output fast @ W_o
}
"""


def test_a_generate_transfer_refuses_dims_that_break_it(tmp_path):
    path = tmp_path / "generate.nl"
    path.write_text(SPEC)
    cls = load_layer(str(path))
    layer = cls(d_s=25, d_k=5, d_v=5)  # 25 = 5 * 5: still fills the weights
    assert layer(torch.randn(1, 9, layer.d_model)).shape == (1, 9, layer.d_model)
    with pytest.raises(ValueError, match=r"GenTransfer: level slow generates the weights of "
                       r"level fast, so the size of its read, d_s, must equal theirs, "
                       r"d_k \* d_v; with these dims they are 12 and 16"):
        cls(d_s=12)
