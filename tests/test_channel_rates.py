"""Rates with one entry per channel (issue 18, items 1, 3 and 8).

- An erase rate per key channel, `erase(key = kh, rate = a)` with a `[d_k]`: RWKV-7's
  S (Diag(w) - kh (a * kh)^T) + v kt^T, family dplr: the fused recurrent dplr kernel for
  short CUDA inputs (here: under Triton's interpreter), the chunked form elsewhere
  (tests/test_chunk_dplr_triton.py).
- A learning rate per value channel, `gd` / `implicit` with a `[d_v]` rate: every row of
  the state is its own delta rule, S - Diag(r) (S k - v) k^T (Longhorn's per-channel beta):
  family elementwise with a rate per row: the fused recurrent elementwise kernel with one
  rate per row on CUDA (here: under the interpreter), the token loop elsewhere.
- Functional ops take the head count from their inputs; a cache filled by a layer with
  another head count is refused with a ValueError that names the mismatch.

Each spec is checked against an independent reference in float64 (the paper's recurrence
written here, or autograd), and its chunked, recurrent and step forms against each other."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest
import sympy as sp
import torch
from conftest import ROOT, scratch_dir

from nlc import pipeline
from nlc.derive.classify import KernelFamily
from nlc.derive.execution import AffineChunk, DplrChunk, FusedRecurrent
from nlc.emit import load_module
from nlc.errors import NlcError
from nlc.verify.verify import verify_module

DIMS = "dims d_model = 12, heads = 2, d_k = 8, d_v = 6"
H, K, V = 2, 8, 6

RWKV7 = f"""layer Rwkv7Small claims rwkv7 {{
  {DIMS}
  param W_r, W_k, W_d, W_a : [d_model, d_k]
  param W_v : [d_model, d_v]
  param xi : [d_k] = ones
  param k_a : [d_k] = ones
  param W_o : [d_v, d_model]
  context from x {{
    r = x @ W_r
    k = x @ W_k
    v = x @ W_v
    w = exp(-exp(-0.5) * sigmoid(x @ W_d))
    a = sigmoid(x @ W_a)
    kh = l2norm(k * xi)
    kt = k * (1 + (a - 1) * k_a)
  }}
  level memory every 1 token {{
    state S : matrix[d_v, d_k] = zeros
    objective dot(S(kt), v)
    retention decay(w, order = parallel), erase(key = kh, rate = a)
    algorithm gd(lr = 1)
    read S(r)
  }}
  output memory @ W_o
}}
"""

LONGHORN = f"""layer LonghornSmall claims longhorn_channel {{
  {DIMS}
  param W_q, W_k : [d_model, d_k]
  param W_v, W_beta : [d_model, d_v]
  param W_o : [d_v, d_model]
  context from x {{
    q = x @ W_q
    k = x @ W_k
    v = x @ W_v
    beta = sigmoid(x @ W_beta)
  }}
  level memory every 1 token {{
    state S : matrix[d_v, d_k] = zeros
    objective l2(S(k), v)
    retention RETENTION
    algorithm ALGORITHM(lr = beta)
    read S(q)
  }}
  output memory @ W_o
}}
"""


def longhorn(algorithm="implicit", retention="none"):
    return LONGHORN.replace("ALGORITHM", algorithm).replace("RETENTION", retention)


@functools.cache
def spec_path(text: str) -> str:
    """Write a spec once per session (a cached temporary file: load_module compiles it)."""
    path = os.path.join(scratch_dir("nlc-rates-"), "rates.nl")
    with open(path, "w") as f:
        f.write(text)
    return path


@functools.cache
def module(text: str):
    return load_module(spec_path(text))


def classified(text: str):
    (_, (found,)), = pipeline.run(spec_path(text), "classify")
    return found


def rand(*shape, seed=0, low=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x if low is None else low + (1 - low) * torch.rand(*shape, generator=g,
                                                              dtype=torch.float64)


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# ---------------------------------------------------------------- item 1: RWKV-7
def test_rwkv7_erase_rate_per_channel_is_dplr():
    found = classified(RWKV7)
    assert found.family.family is KernelFamily.DPLR
    ex = found.execution
    assert isinstance(ex, DplrChunk) and ex.family == "dplr" and ex.decay_kind == "channel"
    a, b = ex.a, ex.b
    # the erase's key is the transition's left vector, and the rate times it the right one
    assert sp.sstr(a) == "-kh"
    assert isinstance(b, sp.HadamardProduct) and sorted(m.name for m in b.args) == ["a", "kh"]


def rwkv7_inputs(B=2, T=11, heads=H, seed=0):
    r, kt, v = rand(B, T, heads, K, seed=seed), rand(B, T, heads, K, seed=seed + 1), \
        rand(B, T, heads, V, seed=seed + 2)
    a = rand(B, T, heads, K, seed=seed + 3, low=0.0)
    kh = unit(rand(B, T, heads, K, seed=seed + 4))
    w = rand(B, T, heads, K, seed=seed + 5, low=0.5)
    return r, kt, v, a, kh, w


def rwkv7_reference(r, kt, v, a, kh, w, S):
    """RWKV-7, arXiv:2503.14456 eq. 17 in the [d_v, d_k] layout, token by token:
    S = S (Diag(w) - kh (a * kh)^T) + v kt^T, o = S r."""
    outputs = []
    for t in range(r.shape[1]):
        rt, kt_t, vt, at, kht = (x[:, t, :, :, None] for x in (r, kt, v, a, kh))
        transition = torch.diag_embed(w[:, t]) - kht @ (at * kht).mT
        S = S @ transition + vt @ kt_t.mT
        outputs.append((S @ rt)[..., 0])
    return torch.stack(outputs, 1), S


@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
@pytest.mark.parametrize("heads", [1, H, 3])
def test_rwkv7_op_matches_the_paper(mode, heads):
    """The op reads H from its inputs (the spec has 2 heads): any head count runs."""
    args = rwkv7_inputs(heads=heads)
    S0 = rand(2, heads, V, K, seed=9)
    o, final = module(RWKV7).memory_op(*args, initial_state={"S": S0}, output_final_state=True,
                                       mode=mode)
    ref, ref_S = rwkv7_reference(*args, S0)
    assert o.shape == (2, 11, heads, V)
    assert rel(o, ref) < 1e-12 and rel(final["S"], ref_S) < 1e-12


def layer_forms_agree(text: str):
    """chunked == recurrent == step, float64."""
    torch.manual_seed(0)
    cls = next(c for c in vars(module(text)).values()
               if isinstance(c, type) and issubclass(c, torch.nn.Module))
    layer = cls().double()
    layer.chunk_size = 8
    x = torch.randn(2, 29, 12, dtype=torch.float64)
    chunked = layer(x)
    layer.mode = "recurrent"
    recurrent = layer(x)
    cache, steps = None, []
    for t in range(x.shape[1]):
        y, cache = layer.step(x[:, t], cache)
        steps.append(y)
    return rel(chunked, recurrent), rel(torch.stack(steps, 1), recurrent)


def test_rwkv7_chunked_equals_recurrent_and_step():
    chunked, step = layer_forms_agree(RWKV7)
    assert chunked < 1e-12 and step < 1e-12


def claims_verified(text: str) -> bool:
    from nlc.syntax.parser import parse
    path = spec_path(text)
    with open(path) as f:
        (report,) = verify_module(parse(f.read(), path), path)
    (level,) = report.levels
    return [m.entry.id for m in level.matches] == [report.claims]


def test_rwkv7_verifies_against_the_catalog():
    assert claims_verified(RWKV7)


KERNEL = """
import os, sys, torch
from nlc.emit import load_layer
torch.manual_seed(0)
layer = load_layer(sys.argv[1])()
rate = getattr(layer, sys.argv[2])
x = torch.randn(2, 9, 12)
os.environ["NLC_TRITON"] = "force"
y = layer(x)
gy, = torch.autograd.grad(y.square().sum(), [rate])
os.environ["NLC_TRITON"] = "0"
z = layer(x)
gz, = torch.autograd.grad(z.square().sum(), [rate])
rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()
print(rel(y, z), rel(gy, gz))
"""


def kernel_errors(text: str, rate_param: str) -> tuple[float, float]:
    """Triton forced on CPU tensors under the interpreter against the token loop (fp32):
    the output's and the rate projection's gradient's relative errors."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", KERNEL, spec_path(text), rate_param],
                          check=False, capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out_err, grad_err = map(float, done.stdout.split()[-2:])
    return out_err, grad_err


def test_rwkv7_runs_on_the_fused_dplr_kernel():
    """The dplr kernel with b = a * kh (the per-channel rate) == the token loop."""
    out_err, grad_err = kernel_errors(RWKV7, "W_a")
    assert out_err < 1e-5 and grad_err < 1e-5


def check_error(text: str) -> NlcError:
    with pytest.raises(NlcError) as info:
        pipeline.run(spec_path(text), "classify")
    assert info.value.span.known
    return info.value


def test_erase_rate_per_value_channel_is_a_located_error():
    text = RWKV7.replace("a = sigmoid(x @ W_a)", "a = sigmoid(x @ W_a)\n    av = v * 0.5") \
        .replace("rate = a)", "rate = av)")
    err = check_error(text)
    assert "the erase rate 'av' is [d_v]; it must be a scalar or [d_k]" in err.message
    assert "RWKV-7" in err.hint


# ---------------------------------------------------------------- item 3: Longhorn per channel
@pytest.mark.parametrize("algorithm", ["gd", "implicit"])
def test_rate_per_value_channel_is_elementwise_with_a_rate_per_row(algorithm):
    found = classified(longhorn(algorithm))
    assert found.family.family is KernelFamily.ELEMENTWISE
    assert found.family.param("rate_kind") == "row"
    ex = found.execution
    assert isinstance(ex, FusedRecurrent) and ex.family == "elementwise" and ex.rate == "row"
    assert sp.sstr(ex.error) == "p - y"


def test_longhorn_per_channel_runs_on_the_fused_elementwise_kernel():
    """The elementwise kernel with one rate per row == the token loop."""
    out_err, grad_err = kernel_errors(longhorn(), "W_beta")
    assert out_err < 1e-5 and grad_err < 1e-5


def longhorn_inputs(B=2, T=7, heads=H, seed=0):
    q, k, v = rand(B, T, heads, K, seed=seed), rand(B, T, heads, K, seed=seed + 1) * 0.5, \
        rand(B, T, heads, V, seed=seed + 2)
    beta = rand(B, T, heads, V, seed=seed + 3, low=0.0)
    return q, k, v, beta


def l2_gradient(S, k, v):
    """d/dS of 1/2 ||S k - v||^2 by autograd, per batch and head."""
    S = S.detach().requires_grad_()
    loss = 0.5 * ((S @ k[..., None])[..., 0] - v).square().sum()
    (g,) = torch.autograd.grad(loss, [S])
    return g


@pytest.mark.parametrize("heads", [1, H, 3])
def test_implicit_step_per_value_channel_solves_each_rows_proximal_problem(heads):
    """Row i of S' minimizes 1/2 ||s - s_i||^2 + beta_i/2 (s^T k - v_i)^2: the stationarity
    condition S' - S + Diag(beta) grad(S') = 0 holds, with the gradient from autograd."""
    q, k, v, beta = longhorn_inputs(T=1, heads=heads)
    S0 = rand(2, heads, V, K, seed=7)
    _, final = module(longhorn()).memory_op(q, k, v, beta, initial_state={"S": S0},
                                            output_final_state=True)
    S1 = final["S"]
    residual = S1 - S0 + beta[:, 0, :, :, None] * l2_gradient(S1, k[:, 0], v[:, 0])
    assert S1.shape == (2, heads, V, K)
    assert residual.abs().max() < 1e-12 * S0.abs().max()


@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
def test_gd_per_value_channel_is_a_gradient_step_per_row(mode):
    """S' = S - Diag(beta) grad(S), the gradient from autograd, token by token."""
    q, k, v, beta = longhorn_inputs()
    S = rand(2, H, V, K, seed=7)
    o, final = module(longhorn("gd")).memory_op(q, k, v, beta, initial_state={"S": S},
                                                output_final_state=True, mode=mode)
    for t in range(q.shape[1]):
        S = S - beta[:, t, :, :, None] * l2_gradient(S, k[:, t], v[:, t])
        assert rel(o[:, t], (S @ q[:, t, :, :, None])[..., 0]) < 1e-12
    assert rel(final["S"], S) < 1e-12


def test_longhorn_per_channel_matches_the_paper():
    """Longhorn (arXiv:2407.14207) solved per value channel: eps_i = beta_i / (1 + beta_i
    k^T k), S' = S - Diag(eps) (S k - v) k^T."""
    q, k, v, beta = longhorn_inputs(T=13)
    S = torch.zeros(2, H, V, K, dtype=torch.float64)
    o, _ = module(longhorn()).memory_op(q, k, v, beta)
    for t in range(13):
        kt, vt = k[:, t, :, :, None], v[:, t, :, :, None]
        eps = beta[:, t, :, :, None] / (1 + beta[:, t, :, :, None] * kt.square().sum(-2, True))
        S = S - eps * (S @ kt - vt) @ kt.mT
        assert rel(o[:, t], (S @ q[:, t, :, :, None])[..., 0]) < 1e-12


@pytest.mark.parametrize("retention", ["none", "decay(0.9, order = before)"])
def test_longhorn_per_channel_chunked_equals_recurrent_and_step(retention):
    chunked, step = layer_forms_agree(longhorn(retention=retention))
    assert chunked < 1e-12 and step < 1e-12


def test_longhorn_per_channel_verifies_against_the_catalog():
    assert claims_verified(longhorn())


@pytest.mark.parametrize("algorithm, retention, message", [
    ("momentum", "none", "learning rate 'beta' is [d_v]; it must be a scalar or [d_k]"),
    ("gd", "elastic_net(l1 = 0.1)", "with a rate per channel each channel would need its own"),
])
def test_rate_per_value_channel_refusals_are_located(algorithm, retention, message):
    text = longhorn(algorithm, retention)
    if algorithm == "momentum":
        text = text.replace("momentum(lr = beta)", "momentum(lr = beta, momentum = 0.5)")
    assert message in check_error(text).message


# ---------------------------------------------------------------- item 8: head counts
def test_a_cache_from_another_head_count_is_refused():
    text = LONGHORN.replace("ALGORITHM", "implicit").replace("RETENTION", "none") \
        .replace("q = x @ W_q", "q = conv(x @ W_q, 4)")
    cls = module(text).LonghornSmall
    three, two = cls(heads=3).double(), cls(heads=2).double()
    x = torch.randn(1, 5, 12, dtype=torch.float64)
    cache: dict = {}
    three(x, cache=cache)
    with pytest.raises(ValueError, match=r"convolution inputs 'conv0' are \[1, 3, 3, 8\], "
                                         r"but this call's are .* = \[1, 3, 2, 8\]"):
        two(x, cache=cache)
    del cache["convs"]
    with pytest.raises(ValueError, match=r"initial_state\['S'\] is \[1, 3, 6, 8\]; it must "
                                         r"start with \[B, H\] = \[1, 2\]"):
        two.step(x[:, 0], cache)


def test_implicit_rate_per_input_channel_is_a_located_error():
    text = longhorn().replace("beta = sigmoid(x @ W_beta)", "beta = sigmoid(x @ W_beta)\n"
                              "    bk = sigmoid(k)").replace("implicit(lr = beta)",
                                                             "implicit(lr = bk)")
    err = check_error(text)
    assert "a rate per input channel couples the channels" in err.message
    assert err.hint == "use gd for a rate per input channel"


def test_dot_objective_with_a_rate_per_value_channel_runs_chunked():
    """dot with a [d_v] rate writes (beta * v) k^T: the decay family's chunked form, whose
    input term is that outer product, == the token loop and the step, float64."""
    text = longhorn("gd").replace("objective l2(S(k), v)", "objective dot(S(k), v)")
    found = classified(text)
    assert found.family.family is KernelFamily.DECAY
    assert isinstance(found.execution, AffineChunk)
    chunked, step = layer_forms_agree(text)
    assert chunked < 1e-12 and step < 1e-12
    q, k, v, beta = longhorn_inputs()
    o, _ = module(text).memory_op(q, k, v, beta, mode="chunked", chunk_size=4)
    S = torch.zeros(2, H, V, K, dtype=torch.float64)
    for t in range(q.shape[1]):
        S = S + (beta[:, t] * v[:, t])[..., None] @ k[:, t, :, None, :]
        assert rel(o[:, t], (S @ q[:, t, :, :, None])[..., 0]) < 1e-12
