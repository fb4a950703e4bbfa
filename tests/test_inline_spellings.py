"""Rules written inside a level's clauses, as a reader of a paper writes them, where the
context block would have named the pieces: each compiles, runs its chunked form where the
named spelling does, and equals its own token loop (float64); functions with a stable
library form stay finite where their formula overflows (float32).

Found by writing layers from papers with only docs/language.md at hand:
- `(x @ W_v) / sqrt(d_k)`: the generated code called torch.sqrt on the int d_k (TypeError);
- `erase(key = k, rate = sigmoid(x @ W_a))`: an internal error (ValueError) in derive;
- `gradients at chunk(C)` with `decay(sigmoid(x @ w_a + 2))`: KeyError 'w_a' at run time;
- `read S(x @ W_q)`: token by token, "the read is not a function of the state applied to
  one query";
- `dot(S(silu(x @ W_k)), x @ W_v)`: token by token, "the input term ... is not an outer
  product" (a function of an inline projection was no key);
- `l2(S(k), x @ W_v)` with `momentum(...)`: token by token, "the term ... is not X, X k k^T
  or v k^T" (the joint chunked form took only a named value);
- `l2(S(x @ W_k), x @ W_v)` with `implicit(lr = beta)` (Longhorn written inline): token by
  token, "state factor not recognised" (the key's outer product was four factors);
- `l2(S(k), v - u)`: token by token, "the input term's key is not the delta rule's key"
  (beta v k^T - beta u k^T: two terms with one key);
- `gd(lr = softplus(x @ w_a))`: printed as log(1 + exp(z)), inf at z = 100 in float32
  (elu1 as a where of exp(z): a NaN gradient)."""

from __future__ import annotations

import pytest
import torch
from test_chunk_triton import rel

from nlc import pipeline
from nlc.derive import derive
from nlc.derive.classify import classify
from nlc.derive.execution import TokenLoop, execution
from nlc.emit import load_layer

F64 = torch.float64

HEAD = """  dims d_model = 8, d_k = 4, d_v = 4
  param W_q, W_k, W_a : [d_model, d_k]
  param W_v : [d_model, d_v]
  param w_a : [d_model]
  param W_o : [d_v, d_model]
"""
CONTEXT = """  context from x {
    q = l2norm(x @ W_q)
    k = l2norm(x @ W_k)
    v = x @ W_v
  }
"""


def _spec(level: str, context: str = CONTEXT) -> str:
    return f"layer Inline {{\n{HEAD}{context}{level}  output memory @ W_o\n}}\n"


SQRT_DIM = _spec("""  level memory {
    state S : matrix[d_v, d_k] = zeros
    objective dot(S(k), v / sqrt(d_k))
    algorithm gd(lr = 1)
    read S(q)
  }
""")
ERASE_RATE = _spec("""  level memory {
    state S : matrix[d_v, d_k] = zeros
    objective dot(S(k), v)
    retention erase(key = k, rate = sigmoid(x @ W_a))
    algorithm gd(lr = 1)
    read S(x @ W_q)
  }
""")
CHUNK_GATE = _spec("""  level memory every 1 token, gradients at chunk(4) {
    state S : matrix[d_v, d_k] = zeros
    objective l2(S(k), v)
    retention decay(sigmoid(x @ w_a + 2))
    algorithm gd(lr = 0.5)
    read S(q)
  }
""")
FUNCTION_KEY = _spec("""  level memory {
    state S : matrix[d_v, d_k] = zeros
    objective dot(S(silu(x @ W_k)), x @ W_v)
    algorithm gd(lr = 1)
    read S(silu(x @ W_q))
  }
""", context="")
MOMENTUM_VALUE = _spec("""  level memory {
    state S : matrix[d_v, d_k] = zeros
    objective l2(S(k), x @ W_v)
    algorithm momentum(lr = 0.5, momentum = 0.9)
    read S(q)
  }
""")
IMPLICIT_KEY = _spec("""  level memory {
    state S : matrix[d_v, d_k] = zeros
    objective l2(S(x @ W_k), x @ W_v)
    algorithm implicit(lr = sigmoid(x @ w_a))
    read S(x @ W_q)
  }
""", context="")
TARGET_DIFFERENCE = _spec("""  level memory {
    state S : matrix[d_v, d_k] = zeros
    objective l2(S(k), v - x @ W_v / 2)
    algorithm gd(lr = sigmoid(x @ w_a))
    read S(q)
  }
""")
SOFTPLUS = _spec("""  level memory {
    state S : matrix[d_v, d_k] = zeros
    objective l2(S(k), v)
    algorithm gd(lr = 0.01 * softplus(x @ w_a))
    read S(q)
  }
""")
ELU1 = _spec("""  level memory {
    state S : matrix[d_v, d_k] = zeros
    objective l2(S(k), v)
    retention decay(sigmoid(elu1(x @ w_a)))
    algorithm gd(lr = 0.5)
    read S(q)
  }
""")


def _layer(tmp_path, text):
    path = tmp_path / "inline.nl"
    path.write_text(text)
    return path, load_layer(str(path))().double()


def _both_modes(layer, x):
    """(output, gradients) in the chunked mode, then in the recurrent one."""
    out = []
    for mode in ("chunked", "recurrent"):
        layer.mode = mode
        x = x.detach().requires_grad_()
        y = layer(x)
        out.append((y, torch.autograd.grad(y.square().sum(), [x, *layer.parameters()],
                                           allow_unused=True)))
    return out


@pytest.mark.parametrize("name, text, chunked", [
    ("sqrt of a dim", SQRT_DIM, True),
    ("inline erase rate and query", ERASE_RATE, True),
    ("inline gate, gradients at chunks", CHUNK_GATE, True),
    ("a function of an inline key", FUNCTION_KEY, True),
    ("an inline value with momentum", MOMENTUM_VALUE, True),
    ("an inline key with the implicit step", IMPLICIT_KEY, True),
    ("a target written as a difference", TARGET_DIFFERENCE, True)])
def test_an_inline_spelling_runs_and_equals_its_token_loop(tmp_path, name, text, chunked):
    path, layer = _layer(tmp_path, text)
    (checked,) = pipeline.run(str(path), "check")
    (rule,) = derive(checked)
    assert (not isinstance(execution(rule, classify(rule)), TokenLoop)) == chunked, name
    x = torch.randn(2, 13, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    (y, grads), (y_ref, grads_ref) = _both_modes(layer, x)
    assert rel(y, y_ref) < 1e-12, name
    for g, ref in zip(grads, grads_ref):
        if ref is not None:
            assert rel(g, ref) < 1e-10, name


@pytest.mark.parametrize("text, call", [(SOFTPLUS, "F.softplus("), (ELU1, "nl.elu1(")])
def test_a_registered_function_written_inline_is_the_librarys_call(tmp_path, text, call):
    """Its output and gradients stay finite in float32 with pre-activations of 100, where
    the formula overflowed."""
    path, layer = _layer(tmp_path, text)
    outputs = pipeline.run(str(path), "emit")
    assert any(call in code for code in outputs.values())
    layer = layer.float()
    with torch.no_grad():
        layer.w_a.fill_(0.0)
        layer.w_a[..., 0] = 100.0
    x = torch.ones(2, 9, 8)
    x = x.requires_grad_()
    y = layer(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()], allow_unused=True)
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
