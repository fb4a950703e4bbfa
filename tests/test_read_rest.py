"""A read that adds terms without the state to the state applied to a query (RWKV-6's bonus,
`read before S(r) + dot(r, u * k) * v`, Peng et al. 2024, "Eagle and Finch", eq. for
wkv_t) runs the family's chunked form, the terms added to each token's read
(nlc/derive/execution.py `_read_query`, nlc/emit/levels.py `_plus_rest`). It ran token by
token before: "no chunk-parallel form: the read is not the state applied to a query".

In float64 mode="chunked" equals mode="recurrent" (the token loop, which evaluates the whole
read as derived), output and every gradient; with Triton forced on the CPU (under the
interpreter) the fused recurrent kernel's path adds the terms too."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from nlc.emit import load_layer
from test_chunk_triton import ROOT, rel

SPEC = """layer Bonus {
  dims d_model = 16, heads = 2, d_k = 8, d_v = 8
  param W_r, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param W_w : [d_model, d_k]
  param w_b : [d_model]
  param u : [d_k] = uniform(-0.5, 0.5)
  param W_o : [d_v, d_model]
  context from x {
    r = x @ W_r
    k = l2norm(x @ W_k)
    v = x @ W_v
    w = exp(-exp(x @ W_w - 1))
    beta = sigmoid(x @ w_b)
  }
  level wkv every 1 token {
    state S : matrix[d_v, d_k] = zeros
    OBJECTIVE
    RETENTION
    algorithm gd(lr = RATE)
    READ
  }
  output wkv @ W_o
}
"""

VARIANTS = {
    # RWKV-6: a decay per key channel, read before the write with the bonus
    "rwkv6": ("objective dot(S(k), v)", "retention decay(w)", "1",
              "read before S(r) + dot(r, u * k) * v"),
    # the same terms after the write (the decay family's chunked kernels take it)
    "decay_after": ("objective dot(S(k), v)", "retention decay(w)", "1",
                    "read S(r) + dot(r, u * k) * v"),
    # the delta rule with a term of the value alone
    "delta": ("objective l2(S(k), v)", "retention none", "beta", "read S(r) + 0.5 * v"),
    # RWKV-7's transition (dplr) with its bonus in the read, not the output
    "dplr": ("objective dot(S(k), v)",
             "retention decay(w, order = parallel), erase(key = k, rate = beta)", "1",
             "read S(r) + dot(r, u * k) * v"),
    # a read that is a function of S r (`after_read`): it ran token by token on every device
    "rmsnorm_delta": ("objective l2(S(k), v)", "retention none", "beta", "read rmsnorm(S(r))"),
    "softmax_decay": ("objective dot(S(k), v)", "retention decay(w)", "1",
                      "read softmax(S(r))"),
    "before_l2norm": ("objective dot(S(k), v)", "retention decay(w)", "1",
                      "read before l2norm(S(r)) + v"),
    "gated_dplr": ("objective dot(S(k), v)",
                   "retention decay(w, order = parallel), erase(key = k, rate = beta)", "1",
                   "read silu(S(r)) * sigmoid(v)"),
}


def _spec(tmp_path, name: str):
    objective, retention, rate, read = VARIANTS[name]
    text = SPEC.replace("OBJECTIVE", objective).replace("RETENTION", retention)
    path = tmp_path / f"{name}.nl"
    path.write_text(text.replace("RATE", rate).replace("READ", read))
    return path


@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_read_with_terms_beside_the_state_runs_chunked(tmp_path, name):
    cls = load_layer(str(_spec(tmp_path, name)))
    doc = sys.modules[cls.__module__].__doc__
    assert "no chunk-parallel form" not in doc, doc
    x = torch.randn(2, 37, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    runs = []
    for mode in ("chunked", "recurrent"):
        torch.manual_seed(0)
        layer = cls(mode=mode, chunk_size=16).double()
        xi = x.clone().requires_grad_()
        y = layer(xi)
        params = [p for _, p in sorted(layer.named_parameters())]
        runs.append((y, *torch.autograd.grad(y.square().sum(), [xi, *params],
                                             allow_unused=True)))
    names = ["y", "x"] + [n for n, _ in sorted(layer.named_parameters())]
    for label, got, ref in zip(names, *runs):
        assert (got is None) == (ref is None), label  # a parameter the variant does not use
        assert got is None or rel(got, ref) < 1e-12, label
    # the bonus changes the output: without it the layer computes something else
    assert rel(runs[0][0], torch.zeros_like(runs[0][0])) > 0


KERNEL = """
import os, sys, torch
from nlc.emit import load_layer
from test_chunk_triton import rel
cls = load_layer(sys.argv[1])
nl = sys.modules[cls.__module__].nl
calls = []
kernels = nl.kernels
nl.kernels = lambda *a: calls.append(a[1]) or kernels(*a)
torch.manual_seed(0)
layer = cls()
x = torch.randn(2, 9, layer.d_model, requires_grad=True)
os.environ["NLC_TRITON"] = "force"
y = layer(x)
gx, = torch.autograd.grad(y.square().sum(), x)
os.environ["NLC_TRITON"] = "0"
z = layer(x)
hx, = torch.autograd.grad(z.square().sum(), x)
print(len(calls), rel(y, z), rel(gx, hx))
"""


@pytest.mark.parametrize("name", ["rwkv6", "rmsnorm_delta"])
def test_the_fused_recurrent_kernel_adds_the_terms_too(tmp_path, name):
    """RWKV-6 (and a read that is a function of S r) with Triton forced, a short input (the
    fused recurrent kernel's path): in float32 under the interpreter it equals the PyTorch
    forms."""
    path = _spec(tmp_path, name)
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    done = subprocess.run([sys.executable, "-c", KERNEL, str(path)], check=False,
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    calls, out_err, grad_err = done.stdout.split()[-3:]
    assert int(calls) >= 1
    assert float(out_err) < 1e-5 and float(grad_err) < 1e-5


def test_rwkv6s_op_equals_flas_naive_recurrence(tmp_path):
    """Checked against a reference outside this repo: fla-core's naive RWKV-6 recurrence
    (`naive_recurrent_rwkv6`: o_t = (h + u k_t^T v_t)^T q_t, h = h Diag(e^w_t) + k_t^T v_t,
    its state [K, V], ours [V, K]), which computes in float32: 1e-5."""
    naive = pytest.importorskip("fla.ops.rwkv6.recurrent_naive")
    from nlc.emit import load_module
    module = load_module(str(_spec(tmp_path, "rwkv6")))
    B, T, H, K, V = 2, 37, 2, 8, 8
    g = torch.Generator().manual_seed(0)
    r, k, v = (torch.randn(B, T, H, d, generator=g) for d in (K, K, V))
    log_w = -torch.rand(B, T, H, K, generator=g).mul(2).exp()
    u = torch.randn(H, K, generator=g)
    S0 = torch.randn(B, H, V, K, generator=g)
    ref, ref_final = naive.naive_recurrent_rwkv6(
        *(x.transpose(1, 2) for x in (r, k, v, log_w)), u, scale=1.0,
        initial_state=S0.mT.clone(), output_final_state=True)
    for mode in ("recurrent", "chunked"):
        o, final = module.wkv_op(r, k, v, log_w.exp(), u=u, initial_state={"S": S0},
                                 output_final_state=True, mode=mode, chunk_size=16)
        assert rel(o, ref.transpose(1, 2)) < 1e-5, mode
        assert rel(final["S"], ref_final.mT) < 1e-5, mode


def test_a_read_with_the_state_in_two_products_runs_token_by_token(tmp_path):
    """`S(r) * total(S(k))` meets the state twice: no chunked form, and the note says why."""
    path = tmp_path / "twice.nl"
    path.write_text(SPEC.replace("OBJECTIVE", "objective dot(S(k), v)")
                    .replace("RETENTION", "retention decay(w)").replace("RATE", "1")
                    .replace("READ", "read S(r) * total(S(k))"))
    cls = load_layer(str(path))
    doc = sys.modules[cls.__module__].__doc__
    assert "no chunk-parallel form: the read is not a function of the state applied to one " \
        "query" in doc, doc
