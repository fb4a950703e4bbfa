"""The fused context kernels (runtime/library/context_triton.py) == the PyTorch ops in float64,
and generated layers print the fused calls and compute the same with the kernels forced on.

Kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before triton is imported; if
another module imported triton first, the kernel tests rerun this file in a fresh process).
NLC_TRITON_TEST_DEVICE=cuda runs them on a GPU instead. The kernels run in float32 and must agree
with the float64 PyTorch ops (runtime/library/ops.py) to a relative error (Frobenius norm) below
1e-5 in the output and every gradient (input, convolution weight, gate)."""

from __future__ import annotations

import os
import sys

DEVICE = os.environ.get("NLC_TRITON_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import itertools
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")

from nlc.runtime.library import ops as nl

from nlc.emit import compile_spec, load_layer

INTERPRETED = type(triton.language.sum).__name__ == "InterpretedFunction"
needs_kernels = pytest.mark.skipif(
    DEVICE == "cpu" and not INTERPRETED,
    reason="triton was imported before TRITON_INTERPRET=1; see the rerun test")
TOL = 1e-5
ROOT = Path(__file__).resolve().parents[1]


def rel(a, b) -> float:
    b = b.double()
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


def reference_grads(fn, inputs, dy):
    """fn's output and its gradients in float64, the PyTorch ops (no kernels)."""
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    y = fn(*leaves)
    return y, torch.autograd.grad(y, leaves, dy.double())


def kernel_grads(fn, inputs, dy):
    leaves = [t.detach().to(DEVICE).requires_grad_() for t in inputs]
    y = fn(*leaves)
    return y.cpu(), [g.cpu() for g in torch.autograd.grad(y, leaves, dy.to(DEVICE))]


CONV_SHAPES = [(16, 1, 2), (24, 7, 3), (48, 65, 4), (16, 65, 3), (24, 65, 2), (48, 7, 4)]
FUSIONS = [(None, None), ("silu", None), ("silu", "l2"), (None, "l2"), ("sigmoid", "l2")]


@needs_kernels
@pytest.mark.parametrize(("act", "norm"), FUSIONS)
@pytest.mark.parametrize(("D", "T", "W"), CONV_SHAPES)
def test_short_conv_kernel_equals_pytorch(D, T, W, act, norm, monkeypatch):
    from nlc.runtime.library import context_triton
    monkeypatch.setenv("NLC_CONTEXT_TRITON", "0")  # the reference: the PyTorch ops
    torch.manual_seed(D * 100 + T * 10 + W)
    x, w, dy = torch.randn(2, T, 3, D), torch.randn(3, D, W), torch.randn(2, T, 3, D)
    ref, ref_grads = reference_grads(
        lambda x, w: nl.short_conv(x, w, act=act, norm=norm), (x, w), dy)
    y, grads = kernel_grads(
        lambda x, w: context_triton.short_conv(x, w, act=act, norm=norm), (x, w), dy)
    assert y.dtype == torch.float32
    assert rel(y, ref) < TOL
    for got, want in zip(grads, ref_grads, strict=True):
        assert rel(got, want) < TOL


@needs_kernels
@pytest.mark.parametrize(("act", "norm"), [("silu", "l2"), (None, None)])
@pytest.mark.parametrize(("D", "W", "bounds"), [
    (16, 4, [0, 1, 8, 40, 65]), (24, 3, [0, 3, 4, 7]), (48, 2, [0, 30, 31, 65])])
def test_short_conv_kernel_keeps_packed_sequences_apart(D, W, bounds, act, norm, monkeypatch):
    from nlc.runtime.library import context_triton
    monkeypatch.setenv("NLC_CONTEXT_TRITON", "0")
    torch.manual_seed(D + W)
    T = bounds[-1]
    cu = torch.tensor(bounds)
    x, w, dy = torch.randn(1, T, 2, D), torch.randn(2, D, W), torch.randn(1, T, 2, D)
    ref, ref_grads = reference_grads(
        lambda x, w: nl.short_conv(x, w, cu, act=act, norm=norm), (x, w), dy)
    y, grads = kernel_grads(
        lambda x, w: context_triton.short_conv(x, w, cu.to(DEVICE), act=act, norm=norm),
        (x, w), dy)
    assert rel(y, ref) < TOL
    for got, want in zip(grads, ref_grads, strict=True):
        assert rel(got, want) < TOL
    # and each sequence alone gives its own rows: nothing crosses a boundary
    alone = torch.cat([nl.short_conv(x[:, a:b].double(), w.double(), act=act, norm=norm)
                       for a, b in itertools.pairwise(bounds)], dim=1)
    assert rel(y, alone) < TOL


def _row_reference(act, norm, gate):
    """The PyTorch ops, written out: F.layer_norm for "layer" (ops.layernorm)."""
    def fn(x, *g):
        a = nl.ACTIVATIONS[act](x)
        n = {"l2": nl.l2norm, "rms": nl.rmsnorm, "layer": nl.layernorm}[norm](a)
        return n * nl.ACTIVATIONS[gate](g[0]) if gate else n
    return fn


@needs_kernels
@pytest.mark.parametrize(("act", "norm", "gate"), [
    (None, "l2", None), ("silu", "l2", None), ("sigmoid", "l2", None), (None, "rms", None),
    (None, "rms", "silu"), ("silu", "rms", "silu"), (None, "rms", "sigmoid"),
    (None, "layer", None), (None, "layer", "silu"), ("silu", "layer", "sigmoid")])
@pytest.mark.parametrize("D", [16, 24, 48])
def test_row_norm_kernel_equals_pytorch(D, act, norm, gate, monkeypatch):
    from nlc.runtime.library import context_triton
    monkeypatch.setenv("NLC_CONTEXT_TRITON", "0")
    torch.manual_seed(D)
    shape = (2, 7, 3, D)
    inputs = [torch.randn(shape) * 3 + 1] + ([torch.randn(shape) * 2] if gate else [])
    dy = torch.randn(shape)
    ref, ref_grads = reference_grads(_row_reference(act, norm, gate), inputs, dy)
    y, grads = kernel_grads(
        lambda x, *g: context_triton.row_norm(x, g[0] if g else None, act, norm,
                                              gate or "silu"), inputs, dy)
    assert rel(y, ref) < TOL
    assert len(grads) == len(inputs)
    for got, want in zip(grads, ref_grads, strict=True):
        assert rel(got, want) < TOL


@needs_kernels
def test_kernels_take_bfloat16_inputs_and_accumulate_in_float32(monkeypatch):
    """bf16 in and out (rounded once at the end), against float64 on the same bf16 values."""
    from nlc.runtime.library import context_triton
    monkeypatch.setenv("NLC_CONTEXT_TRITON", "0")
    torch.manual_seed(1)
    x = torch.randn(2, 33, 2, 24).bfloat16()
    w = torch.randn(2, 24, 4)  # the layer's float32 parameter, as under autocast
    y = context_triton.short_conv(x.to(DEVICE), w.to(DEVICE), act="silu", norm="l2")
    assert y.dtype == torch.bfloat16
    assert rel(y.cpu(), nl.short_conv(x.double(), w.double(), act="silu", norm="l2")) < 1e-2
    g = torch.randn(2, 33, 2, 24).bfloat16()
    y = context_triton.row_norm(x.to(DEVICE), g.to(DEVICE), norm="rms")
    assert y.dtype == torch.bfloat16
    assert rel(y.cpu(), nl.rmsnorm(x.double()) * F.silu(g.double())) < 1e-2


def test_ops_dispatch_only_where_asked(monkeypatch):
    """CPU tensors take the PyTorch ops unless NLC_CONTEXT_TRITON=force; NLC_TRITON=0 and
    NLC_CONTEXT_TRITON=0 turn the kernels off; float64 has no kernel."""
    from nlc.runtime.library import context_triton
    x = torch.zeros(1, 2, 1, 4)
    monkeypatch.delenv("NLC_CONTEXT_TRITON", raising=False)
    assert not nl.fused_context(x)
    monkeypatch.setenv("NLC_CONTEXT_TRITON", "force")
    assert nl.fused_context(x)
    assert not context_triton.conv_supported(x.double(), torch.zeros(1, 4, 4).double())
    assert not context_triton.conv_supported(x, torch.zeros(1, 4, context_triton.MAX_WIDTH + 1))
    assert not context_triton.row_supported(x, torch.zeros(1, 2, 1, 1))  # a broadcast gate
    monkeypatch.setenv("NLC_CONTEXT_TRITON", "0")
    assert not nl.fused_context(x)
    assert context_triton.EPS == nl.EPS


# --------------------------------------------------------------------------- generated code
FUSING_SPEC = """
layer Fusing {
  dims d_model = 16, heads = 2, d_k = 8
  param W_q, W_k, W_v, W_g : [d_model, d_k]
  param W_o : [d_k, d_model]
  context from x {
    q = l2norm(silu(x @ W_q))
    k = l2norm(conv(x @ W_k, 3))
    v = silu(conv(x @ W_v, 2))
  }
  level memory every 1 token {
    state S : matrix[d_k, d_k] = zeros
    objective dot(S(k), v)
    retention none
    algorithm gd(lr = 1)
    read S(q)
  }
  output (silu(x @ W_g) * rmsnorm(memory)) @ W_o
}
"""


def test_printer_fuses_the_compositions_wherever_a_spec_writes_them(tmp_path):
    source = compile_spec(str(tmp_path / "fusing.nl"), text=FUSING_SPEC)
    squashed = " ".join(source.split()).replace("( ", "(").replace(" )", ")")
    assert "xp = nl.head_projections(xh, self.W_q, self.W_k, self.W_v, self.W_g)" in squashed
    assert "nl.l2norm(xp[0], act=\"silu\")" in squashed
    assert "self.conv0, cu_seqlens, convs, \"conv0\", norm=\"l2\")" in squashed
    assert "self.conv1, cu_seqlens, convs, \"conv1\", act=\"silu\")" in squashed
    assert "nl.gated_norm(memory, xp[3])" in squashed
    assert "F.silu" not in source and "nl.rmsnorm" not in source
    other = FUSING_SPEC.replace("silu(x @ W_g) * rmsnorm(memory)",
                                "layernorm(memory) * sigmoid(x @ W_g)")
    source = compile_spec(str(tmp_path / "fusing.nl"), text=other)
    squashed = " ".join(source.split()).replace("( ", "(").replace(" )", ")")
    assert ("nl.gated_norm(memory, xp[3], norm=\"layer\", "
            "act=\"sigmoid\")") in squashed


def _run_layer(layer, x, cu_seqlens=None):
    xx = x.clone().requires_grad_()
    y = layer(xx, cu_seqlens=cu_seqlens)
    grads = torch.autograd.grad(y.square().sum(), [xx, *layer.parameters()])
    return y, grads


@needs_kernels
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("spec", ["gated_deltanet", "fusing"])
def test_generated_layer_fused_path_equals_pytorch_path(spec, packed, tmp_path, monkeypatch):
    """The same layer, its context ops on the kernels (forced on the CPU) and on the PyTorch
    ops: outputs and every gradient agree, and the kernels really ran, forward and backward."""
    from nlc.runtime.library import context_triton
    if spec == "fusing":
        (tmp_path / "fusing.nl").write_text(FUSING_SPEC)
        path = tmp_path / "fusing.nl"
    else:
        path = ROOT / "examples" / f"{spec}.nl"
    torch.manual_seed(0)
    layer = load_layer(str(path), d_model=16, heads=2, d_k=8,
                       **({"d_v": 8} if spec == "gated_deltanet" else {}))().to(DEVICE)
    T = 37
    x = torch.randn(1 if packed else 2, T, 16, device=DEVICE)
    cu = torch.tensor([0, 5, 6, T], device=DEVICE) if packed else None
    monkeypatch.setenv("NLC_CONTEXT_TRITON", "0")
    y0, g0 = _run_layer(layer, x, cu)
    context_triton.LAUNCHES.clear()
    monkeypatch.setenv("NLC_CONTEXT_TRITON", "force")
    y1, g1 = _run_layer(layer, x, cu)
    for kind in ("short_conv_fwd", "short_conv_bwd", "row_norm_fwd", "row_norm_bwd"):
        assert context_triton.LAUNCHES[kind] >= 1, (kind, dict(context_triton.LAUNCHES))
    assert rel(y1, y0) < TOL
    for a, b in zip(g1, g0, strict=True):
        assert rel(a, b) < TOL


@needs_kernels
def test_decoding_cache_stays_on_pytorch_and_continues_the_fused_prompt(monkeypatch):
    """A prompt through the fused ops, then tokens one at a time through the cache (PyTorch):
    the same outputs as the whole sequence at once."""
    monkeypatch.setenv("NLC_CONTEXT_TRITON", "force")
    torch.manual_seed(0)
    layer = load_layer(str(ROOT / "examples" / "gated_deltanet.nl"), d_model=16, heads=2,
                       d_k=8, d_v=8)().to(DEVICE)
    x = torch.randn(2, 9, 16, device=DEVICE)
    with torch.no_grad():
        whole = layer(x)
        cache = {}
        parts = [layer(x[:, :6], cache=cache)]
        parts += [layer.step(x[:, t], cache)[0][:, None] for t in range(6, 9)]
    assert rel(torch.cat(parts, dim=1), whole) < TOL


@needs_kernels
def test_fused_layer_traces_under_torch_compile(monkeypatch):
    """With the kernels on, torch.compile traces the PyTorch ops (Inductor fuses them): the
    compiled layer equals the eager one on the kernels, outputs and gradients."""
    monkeypatch.setenv("NLC_CONTEXT_TRITON", "force")
    torch.manual_seed(0)
    layer = load_layer(str(ROOT / "examples" / "gated_deltanet.nl"), d_model=16, heads=2,
                       d_k=8, d_v=8)().to(DEVICE)
    x = torch.randn(2, 37, 16, device=DEVICE)
    y0, g0 = _run_layer(layer, x)
    torch._dynamo.reset()
    y1, g1 = _run_layer(torch.compile(layer, backend="aot_eager"), x)
    assert rel(y1, y0) < TOL
    for a, b in zip(g1, g0, strict=True):
        assert rel(a, b) < TOL


COMPILE_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from nlc.runtime.library import context_triton as ct
conv = dict(H=8, D=64, W=4, BT=64, BD=64, ACT=1, NORM=1, VARLEN=True, EPS=1e-6)
taps = dict(H=8, D=64, W=4, BT=64, BD=64, VARLEN=True)
row = dict(D=64, BR=64, BD=64, ACT=0, NORM=2, GATE=1, EPS=1e-6)
for fn, pointers, ints, consts in [
        (ct._conv_fwd, "x w starts y", "N T", conv), (ct._conv_dpre, "x w starts dy dpre", "N T", conv),
        (ct._conv_bwd, "x w starts dpre dx dw", "N T", taps),
        (ct._row_fwd, "x g y", "R", row), (ct._row_bwd, "x g dy dx dg", "R", row)]:
    sig = {p: "*i32" if p == "starts" else "*fp32" if p in ("w", "dw", "dpre") else "*bf16"
           for p in pointers.split()}
    sig |= dict.fromkeys(ints.split(), "i32") | dict.fromkeys(consts, "constexpr")
    built = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                           target=GPUTarget("cuda", 90, 32))
    assert built.asm["cubin"], fn
print("compiled")
"""


def test_kernels_compile_for_an_h100_class_gpu_without_one():
    """The interpreter runs Python, not Triton's compiler: compile the variants a Gated DeltaNet
    layer launches (bf16) to cubins for sm_90 with the wheel's ptxas, in a process without
    TRITON_INTERPRET, so that what only the compiler refuses (types, scopes) fails here too."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_SM90], env=env, capture_output=True,
                          text=True, check=False, cwd=ROOT, timeout=600)
    if "ptxas" in done.stderr and "No such file" in done.stderr:
        pytest.skip("this triton has no bundled ptxas")
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


def test_kernels_rerun_in_a_fresh_interpreter_process():
    """Only when triton was imported before this module (so the interpreter is off here)."""
    if INTERPRETED or DEVICE != "cpu":
        pytest.skip("the kernels run in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           __file__], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
