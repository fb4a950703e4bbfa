"""The chunked Triton kernels (runtime/library/chunk_delta_triton.py) == a float64 token loop, and every
chunked form (Triton and PyTorch) stays finite with gates at their limits.

Kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before triton is imported; if
another module imported triton first, the kernel tests rerun this file in a fresh process).
NLC_TRITON_TEST_DEVICE=cuda runs them on a GPU instead. The reference is written from the
update rules, token by token, in float64; the kernels run in float32 and must agree to a
relative error (Frobenius norm) below 1e-5 in the output, the final state and every gradient.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections import Counter

DEVICE = os.environ.get("NLC_TRITON_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")

from nlc.runtime.library.chunked import decay_chunked_torch, delta_chunked_torch

INTERPRETED = type(triton.language.sum).__name__ == "InterpretedFunction"
needs_kernels = pytest.mark.skipif(
    DEVICE == "cpu" and not INTERPRETED,
    reason="triton was imported before TRITON_INTERPRET=1; see the rerun test")
TOL = 1e-5
ROOT = Path(__file__).resolve().parents[1]


def token_loop(q, k, v, beta, log_decay, h0, bounds):
    """o_t = S_t q_t with S_t = a_t S_{t-1} (I - b_t k_t k_t^T) + v_t k_t^T (no b: the decay
    family; a per channel scales S's columns). The batch rows are packed into one sequence
    axis; each sequence between `bounds` starts from its own h0 (or zeros)."""
    B, T, H, K = q.shape

    def packed(x):
        return None if x is None else x.reshape(1, B * T, *x.shape[2:])
    q, k, v, beta, log_decay = map(packed, (q, k, v, beta, log_decay))
    outs, finals = [], []
    for i, (bos, eos) in enumerate(itertools.pairwise(bounds)):
        S = h0[i:i + 1] if h0 is not None else q.new_zeros(1, H, v.shape[-1], K)
        for t in range(bos, eos):
            if log_decay is not None:
                a = log_decay[:, t].exp()
                S = S * (a[..., None, None] if a.dim() == 2 else a[:, :, None, :])
            kt = k[:, t]
            if beta is not None:
                Sk = torch.einsum("bhvk,bhk->bhv", S, kt)
                S = S - beta[:, t][..., None, None] * Sk[..., None] * kt[:, :, None, :]
            S = S + v[:, t][..., None] * kt[:, :, None, :]
            outs.append(torch.einsum("bhvk,bhk->bhv", S, q[:, t]))
        finals.append(S)
    return torch.stack(outs, 1).reshape(B, T, H, -1), torch.cat(finals, 0)


def inputs(family, decay, B, T, H, K, V, h0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = {"q": torch.randn(B, T, H, K, generator=g) * K ** -0.5,
         "k": F.normalize(torch.randn(B, T, H, K, generator=g), dim=-1),
         "v": torch.randn(B, T, H, V, generator=g),
         "beta": torch.rand(B, T, H, generator=g) if family == "delta" else None,
         "ld": None, "h0": None}
    if decay == "scalar":
        x["ld"] = F.logsigmoid(torch.randn(B, T, H, generator=g) + 2.0)
    elif decay == "channel":
        x["ld"] = F.logsigmoid(torch.randn(B, T, H, K, generator=g) + 2.0)
    if h0:
        x["h0"] = torch.randn(h0, H, V, K, generator=g) * 0.5
    return {n: None if t is None else t.to(dtype).to(DEVICE) for n, t in x.items()}


def rel(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


def close(x, ref, tol) -> bool:
    """Relative error below tol, or (a reference of exactly 0, e.g. a state's gradient behind
    a decay of 0) an absolute one far below anything float32 can hold."""
    return (x.double() - ref.double()).norm().item() <= tol * ref.double().norm().item() + 1e-30


@contextlib.contextmanager
def launches():
    """Counts the interpreter's kernel launches inside the block, by kernel name."""
    from triton.runtime.interpreter import InterpretedFunction
    counts = Counter()
    run = InterpretedFunction.run

    def counted(self, *args, **kwargs):
        counts[self.fn.__name__] += 1
        return run(self, *args, **kwargs)
    InterpretedFunction.run = counted
    try:
        yield counts
    finally:
        InterpretedFunction.run = run


def run_and_grad(fn, x, weights):
    leaves = {n: t.clone().requires_grad_() for n, t in x.items() if t is not None}
    o, ht = fn(**{n: leaves.get(n) for n in x})
    wo, wh = weights
    loss = (o * wo.to(o.dtype)).sum() + (ht * wh.to(ht.dtype)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return o, ht, dict(zip(leaves, grads))


def triton_fn(cu_seqlens, chunk):
    from nlc.runtime.library.chunk_decay_triton import chunk_channel
    from nlc.runtime.library.chunk_delta_triton import chunk_scalar

    def fn(q, k, v, beta, ld, h0):
        kernel = chunk_channel if ld is not None and ld.dim() == 4 else chunk_scalar
        return kernel(q, k, v, beta, ld, initial_state=h0, cu_seqlens=cu_seqlens,
                      chunk_size=chunk)
    return fn


def reference_fn(bounds):
    def fn(q, k, v, beta, ld, h0):
        return token_loop(q, k, v, beta, ld, h0, bounds)
    return fn


# every value of every axis appears; (family, decay) pairs each meet chunk sizes 16 and 64,
# with and without an initial state, and packed sequences
# (family, decay, T, chunk, K, V, initial state, packed)
CASES = [
    ("delta", "scalar", 200, 16, 32, 32, True, False),
    ("delta", "scalar", 65, 64, 48, 16, False, False),
    ("delta", "scalar", 63, 16, 16, 48, True, True),
    ("delta", "scalar", 65, 32, 16, 16, True, False),  # the 32-token block inverse
    ("delta", "none", 63, 64, 16, 16, True, False),
    ("delta", "none", 15, 16, 32, 48, False, False),
    ("delta", "none", 65, 64, 48, 32, True, True),
    ("decay", "scalar", 1, 16, 48, 16, True, False),
    ("decay", "scalar", 200, 64, 16, 32, False, True),
    ("decay", "scalar", 15, 64, 32, 16, False, False),
    ("decay", "none", 65, 16, 16, 48, True, False),
    ("decay", "none", 1, 64, 32, 32, False, False),
    ("decay", "none", 63, 16, 48, 16, False, True),
    ("decay", "channel", 200, 16, 16, 16, True, False),
    ("decay", "channel", 65, 64, 32, 48, False, True),
    ("decay", "channel", 15, 64, 48, 32, False, False),
    # T = 1 from a zero state has a log-decay gradient of exactly 0: relative errors need a state
    ("decay", "channel", 1, 16, 32, 16, True, False),
    ("decay", "channel", 63, 32, 16, 32, True, True),
]


@needs_kernels
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_chunked_triton_matches_token_loop(case):
    check_against_token_loop(case)


@needs_kernels
@pytest.mark.parametrize("case", [("delta", "scalar", 15, 16, 256, 256, True, False),
                                  ("decay", "channel", 15, 16, 256, 256, True, True)],
                         ids=lambda c: "-".join(map(str, c)))
def test_chunked_triton_at_the_widest_keys_and_values(case):
    """K = V = 256, the widest the kernels take (chunk_triton.MAX_DIM): values in several
    programs' blocks, and the channel family's input gradients in four key blocks."""
    check_against_token_loop(case)


@needs_kernels
@pytest.mark.parametrize("case", [("decay", "scalar", 65, 16, 48, 32, True, True),
                                  ("decay", "none", 63, 32, 40, 16, False, False),
                                  ("decay", "channel", 65, 16, 48, 32, True, False)],
                         ids=lambda c: "-".join(map(str, c)))
def test_forward_state_pass_split_along_keys(case, monkeypatch):
    """Without the delta rule the forward state pass also splits the key axis
    (`split_state_launch`); blocks of 16 make three key blocks of the 48 keys here (the
    default 64 x 64 blocks split only keys wider than 64)."""
    from nlc.runtime.library import chunk_triton
    monkeypatch.setitem(chunk_triton.STATE_PASSES, "split_BK", 16)
    monkeypatch.setitem(chunk_triton.STATE_PASSES, "split_BV", 16)
    assert chunk_triton.split_state_launch(64, 32, 1000)[:2] == (16, 16)
    check_against_token_loop(case)


@needs_kernels
@pytest.mark.parametrize("launch, chunk, packed", [
    ({"output_BV": 16, "scores_warps": 1, "scores_split": False}, 16, False),
    ({"scores_split": True, "scores_warps": 2}, 64, True),
    ({"states_few": (16, 16, 4)}, 16, False),
    ({"few": 0}, 16, True),
    ({"scores_diag_dot": False}, 64, True)])
def test_channel_forward_launch_table(monkeypatch, launch, chunk, packed):
    """chunk_channel's forward launch (chunk_decay_triton.FORWARD, what kernel_profile.py
    --models gla --sweep-forward tries): an output V block narrower than V, scores per chunk
    or a program per row block of 16 (chunks of 64, sequences packed, one of them shorter
    than a row block), a state pass split in K and V blocks of 16, the state launch of
    many sequences x heads (`few` 0), or every diagonal block of scores by columns, forward
    and backward (`scores_diag_dot` off), still give the token loop's output, state and
    gradients."""
    from nlc.runtime.library import chunk_decay_triton, chunk_triton
    for key, value in launch.items():
        table = chunk_triton.STATE_PASSES if key == "few" else chunk_decay_triton.FORWARD
        monkeypatch.setitem(table, key, value)
    check_against_token_loop(("decay", "channel", 65, chunk, 32, 48, True, packed))


@needs_kernels
@pytest.mark.parametrize("packed", [False, True])
def test_channel_backward_split_along_keys(monkeypatch, packed):
    """chunk_channel's input-gradient kernel splits the key axis across programs
    (chunk_decay_triton.BACKWARD): key and value blocks of 16 make three key blocks of the 48
    keys here and three value blocks of the 40 values (the last one partial); dv, which sums
    over the keys, is the scores-gradient kernel's whole. Output, state and every gradient
    still match the token loop."""
    from nlc.runtime.library import chunk_decay_triton
    monkeypatch.setitem(chunk_decay_triton.BACKWARD, "input_BK", 16)
    monkeypatch.setitem(chunk_decay_triton.BACKWARD, "input_BV", 16)
    check_against_token_loop(("decay", "channel", 65, 16, 48, 40, True, packed))


def check_against_token_loop(case):
    family, decay, T, chunk, K, V, with_h0, packed = case
    torch.manual_seed(T + K)
    if packed:  # three sequences packed along T (one of them shorter than a chunk)
        bounds = [0, min(5, T), min(5 + chunk + 3, T), T]
        B, cu = 1, torch.tensor(bounds, dtype=torch.int32, device=DEVICE)
    else:
        B, bounds, cu = 2, [0, T, 2 * T], None
    S = len(bounds) - 1
    x = inputs(family, decay, B, T, 2, K, V, S if with_h0 else 0, seed=T * K)
    weights = (torch.randn(B, T, 2, V, device=DEVICE), torch.randn(S, 2, V, K, device=DEVICE))
    o, ht, grads = run_and_grad(triton_fn(cu, chunk), x, weights)
    x64 = {n: None if t is None else t.double() for n, t in x.items()}
    ro, rht, rgrads = run_and_grad(reference_fn(bounds), x64,
                                   tuple(w.double() for w in weights))
    errors = {"o": rel(o, ro), "final state": rel(ht, rht)}
    errors.update({f"d{n}": rel(grads[n], rgrads[n]) for n in rgrads})
    assert set(rgrads) == {n for n, t in x.items() if t is not None}
    assert max(errors.values()) < TOL, errors


@needs_kernels
@pytest.mark.parametrize("kind, product", [("delta/scalar", False), ("decay/channel", False),
                                           ("decay/channel", True)])
def test_chunked_triton_half_precision(kind, product, monkeypatch):
    """fp16 inputs (the half-precision path: operands rounded, float32 accumulation; bf16 is
    not emulated faithfully by the interpreter) stay within fp16 rounding of the loop. The
    channel family's diagonal blocks keep their column sums in fp16 and take their product
    form in bf16 (`chunk_decay_triton._diag_dot`); `product` forces that form on these fp16
    inputs (their decays span little), to hold its half-precision operands to the bound."""
    from nlc.runtime.library import chunk_decay_triton
    if product:
        monkeypatch.setattr(chunk_decay_triton, "_diag_dot", lambda x: True)
    family, decay = kind.split("/")
    dtype = torch.float16
    x = inputs(family, decay, 1, 70, 2, 32, 32, 1, seed=5, dtype=dtype)
    assert chunk_decay_triton._diag_dot(x["q"]) is product
    assert chunk_decay_triton._diag_dot(x["q"].bfloat16())
    weights = (torch.randn(1, 70, 2, 32, device=DEVICE), torch.randn(1, 2, 32, 32, device=DEVICE))
    o, ht, grads = run_and_grad(triton_fn(None, 64), x, weights)
    assert o.dtype == dtype
    x64 = {n: None if t is None else t.double() for n, t in x.items()}
    ro, rht, rgrads = run_and_grad(reference_fn([0, 70]), x64,
                                   tuple(w.double() for w in weights))
    errors = {"o": rel(o, ro), "final state": rel(ht, rht)}
    errors.update({f"d{n}": rel(grads[n], rgrads[n]) for n in rgrads})
    assert max(errors.values()) < 3e-3, errors


# gates at their limits: decays of 0, 1e-30 and 1 (mixed within a sequence), rates of 0
# and 1, keys of large norm (for the delta rule with b |k|^2 <= 1, the stable range)
FLOOR_TOL = 1e-4
LIMITS = ["decay0", "decay1e-30", "decay1", "beta0", "beta1", "bigkeys"]


def limit_inputs(family, decay, limit, T=40, K=16, V=16):
    x = inputs(family, decay, 1, T, 2, K, V, 1, seed=7)
    if decay != "none" and limit.startswith("decay"):
        value = {"decay0": 0.0, "decay1e-30": 1e-30, "decay1": 1.0}[limit]
        alpha = x["ld"].exp()
        alpha[:, ::3] = value  # every third token at the limit, the rest ordinary
        x["ld"] = torch.log(alpha)  # -inf for a decay of 0
    if family == "delta" and limit in ("beta0", "beta1"):
        x["beta"] = torch.full_like(x["beta"], 0.0 if limit == "beta0" else 1.0)
    if limit == "bigkeys":
        x["k"] = x["k"] * 1e3
        x["q"] = x["q"] * 1e3
        if family == "delta":
            x["beta"] = x["beta"] * 1e-6  # b |k|^2 <= 1
    return x


@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("kind", ["delta/none", "delta/scalar", "decay/none", "decay/scalar",
                                  "decay/channel"])
def test_pytorch_chunked_forms_at_gate_limits(kind, limit):
    """The PyTorch chunked forms: finite output and gradients, and equal to the token loop."""
    family, decay = kind.split("/")
    if decay == "none" and limit.startswith("decay"):
        pytest.skip("no decay")
    x = {n: None if t is None else t.double().cpu() for n, t in
         limit_inputs(family, decay, limit).items()}

    def chunked(q, k, v, beta, ld, h0):
        if family == "delta":
            return delta_chunked_torch(q, k, v, beta, ld, initial_state=h0, chunk_size=16)
        return decay_chunked_torch(q, k, v, ld, initial_state=h0, chunk_size=16)
    weights = (torch.randn(1, 40, 2, 16, dtype=torch.float64),
               torch.randn(1, 2, 16, 16, dtype=torch.float64))
    o, ht, grads = run_and_grad(chunked, x, weights)
    ro, rht, rgrads = run_and_grad(reference_fn([0, 40]), x, weights)
    for name, t in [("o", o), ("state", ht), *grads.items()]:
        assert t is not None and torch.isfinite(t).all(), name
    assert close(o, ro, 1e-9) and close(ht, rht, 1e-9)
    for n in ("q", "k", "v", "beta", "h0"):
        if n in rgrads:
            assert close(grads[n], rgrads[n], 1e-9), n


@needs_kernels
@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("kind", ["delta/scalar", "decay/scalar", "delta/none",
                                  "decay/channel"])
def test_chunked_triton_at_gate_limits(kind, limit):
    """The Triton kernels: finite output and gradients, and equal to the float64 token loop
    in everything but the log decays' gradient (0 where a decay is 0, by the clamp). Where a
    decay is clamped (0 and 1e-30), to FLOOR_TOL: every later cumulative log decay of its
    chunk then carries the floor, -110, and holds its own part to float32's spacing there
    (7.6e-6 per clamped decay), so the ordinary decays' products lose about 1e-5 relative
    (5e-6 to 7e-6 under the interpreter, above 1e-5 on an H100)."""
    family, decay = kind.split("/")
    if decay == "none" and limit.startswith("decay"):
        pytest.skip("no decay")
    x = limit_inputs(family, decay, limit)
    weights = (torch.randn(1, 40, 2, 16, device=DEVICE), torch.randn(1, 2, 16, 16, device=DEVICE))
    o, ht, grads = run_and_grad(triton_fn(None, 16), x, weights)
    for name, t in [("o", o), ("state", ht), *grads.items()]:
        assert t is not None and torch.isfinite(t).all(), name
    x64 = {n: None if t is None else t.double() for n, t in x.items()}
    ro, rht, rgrads = run_and_grad(reference_fn([0, 40]), x64,
                                   tuple(w.double() for w in weights))
    tol = FLOOR_TOL if limit in ("decay0", "decay1e-30") and decay != "none" else TOL
    assert close(o, ro, tol) and close(ht, rht, tol)
    for n in ("q", "k", "v", "beta", "h0"):
        if n in rgrads:
            assert close(grads[n], rgrads[n], tol), n


def test_log_gate_is_finite_at_zero():
    from nlc.runtime.library.ops import log_gate
    alpha = torch.tensor([0.0, 1e-30, 0.5, 1.0], requires_grad=True)
    y = log_gate(alpha)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(alpha.grad).all()
    assert y[2].item() == pytest.approx(torch.log(torch.tensor(0.5)).item())
    assert alpha.grad[0].item() == 0.0


def test_generated_layer_gradients_finite_with_a_zero_decay():
    """Gated DeltaNet's level op in chunked mode (PyTorch) with decays of exactly 0: the
    generated code takes nl.log_gate of the gate, so no gradient is NaN."""
    from nlc.emit import load_module
    from tests.test_emit import small_overrides
    path = ROOT / "examples" / "gated_deltanet.nl"
    module = load_module(str(path), small_overrides(path))
    layer = module.GatedDeltaNet()
    B, T, H, K, V = 1, 20, layer.heads, layer.W_q.shape[-1], layer.W_v.shape[-1]
    g = torch.Generator().manual_seed(0)
    q, k, v = (F.normalize(torch.randn(B, T, H, D, generator=g), dim=-1) for D in (K, K, V))
    alpha = torch.rand(B, T, H, generator=g)
    alpha[:, ::4] = 0.0
    beta = torch.rand(B, T, H, generator=g)
    leaves = [t.requires_grad_() for t in (q, k, v, alpha, beta)]
    os.environ["NLC_TRITON"] = "0"
    try:
        o, _ = module.memory_op(*leaves, mode="chunked", chunk_size=8)
        ro, _ = module.memory_op(*leaves, mode="recurrent")
    finally:
        del os.environ["NLC_TRITON"]
    grads = torch.autograd.grad(o.square().sum(), leaves)
    assert all(torch.isfinite(t).all() for t in (o, *grads))
    assert rel(o, ro) < 1e-5


DISPATCH = """
import os, sys, torch
from nlc.emit import load_module
from nlc.runtime.library import (chunk_decay_triton, chunk_delta_triton, chunk_dplr_triton,
                                 chunk_kda_triton, ops)
from tests.test_emit import small_overrides, EXAMPLES, rel
name, layer_class, T = sys.argv[1], sys.argv[2], int(sys.argv[3])
path = EXAMPLES / f"{name}.nl"
module = load_module(str(path), small_overrides(path))
torch.manual_seed(0)
layer = getattr(module, layer_class)()
calls = set()
for kernels, function in ((chunk_delta_triton, "ChunkScalarDecay"),
                          (chunk_decay_triton, "ChunkChannelDecay"),
                          (chunk_kda_triton, "ChunkKDA"), (chunk_dplr_triton, "ChunkDPLR")):
    apply = getattr(kernels, function).apply
    getattr(kernels, function).apply = lambda *a, apply=apply, f=function: calls.add(f) or apply(*a)
x = torch.randn(1, T, layer.d_model, requires_grad=True)
os.environ["NLC_TRITON"] = "force"
y = layer(x)
gx, = torch.autograd.grad(y.square().sum(), x)
path = ",".join(sorted(calls)) or ("recurrent" if ops._KERNELS else "pytorch")
os.environ["NLC_TRITON"] = "0"
z = layer(x)
hx, = torch.autograd.grad(z.square().sum(), x)
print(path, rel(y, z), rel(gx, hx))
"""


def dispatched(name: str, layer: str, T: int) -> tuple[str, float, float]:
    """The generated layer of examples/<name>.nl with Triton forced (on the CPU, under the
    interpreter), in a fresh process: which chunked kernels' autograd functions ran
    ("recurrent": the fused recurrent kernel, "pytorch": neither), and the output's and the
    input gradient's relative errors against the PyTorch forms."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", DISPATCH, name, layer, str(T)], check=False,
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    taken, out_err, grad_err = done.stdout.split()
    return taken, float(out_err), float(grad_err)


SPEC_DISPATCH = """
import os, sys, importlib, torch
from nlc.emit import load_layer
from tests.test_emit import rel
path, T, kernels, function = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
cls = load_layer(path)
print(sys.modules[cls.__module__].__doc__.replace(chr(10), " "))
torch.manual_seed(0)
layer = cls()
module = importlib.import_module(f"nlc.runtime.library.{kernels}")
calls = []
apply = getattr(module, function).apply
getattr(module, function).apply = lambda *a: calls.append(a) or apply(*a)
x = torch.randn(2, T, layer.d_model, requires_grad=True)
os.environ["NLC_TRITON"] = "force"
y = layer(x)
gx, = torch.autograd.grad(y.square().sum(), x)
os.environ["NLC_TRITON"] = "0"
z = layer(x)
hx, = torch.autograd.grad(z.square().sum(), x)
print(len(calls), rel(y, z), rel(gx, hx))
"""


def spec_dispatched(path, T: int, kernels: str, function: str):
    """The generated layer of the spec at `path` with Triton forced (on the CPU, under the
    interpreter), in a fresh process: (its module's docstring, how often the autograd
    function `function` of runtime/library/<kernels>.py ran, the output's and the input
    gradient's relative errors against the PyTorch forms)."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", SPEC_DISPATCH, str(path), str(T), kernels,
                           function], check=False, capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    doc, result = done.stdout.rstrip("\n").rsplit("\n", 1)
    calls, out_err, grad_err = result.split()
    return doc, int(calls), float(out_err), float(grad_err)


def rerun_under_interpreter(path) -> None:
    """Run a kernel test file in a fresh process with TRITON_INTERPRET=1 (for when triton was
    imported before it, so the interpreter is off in this one)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(path)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


@needs_kernels
@pytest.mark.skipif(DEVICE != "cpu", reason="forces the dispatch on CPU tensors")
@pytest.mark.parametrize("name, layer, T, path", [
    ("gated_deltanet", "GatedDeltaNet", 70, "ChunkScalarDecay"),
    ("gated_deltanet", "GatedDeltaNet", 9, "recurrent"),
    ("gla", "GLA", 70, "ChunkChannelDecay"),
])
def test_generated_layer_dispatches_to_chunked_kernels(name, layer, T, path):
    """A generated layer with Triton forced (on the CPU, under the interpreter): a
    training-length input runs the chunked Triton kernels (Gated DeltaNet's scalar decay,
    GLA's per-channel decay), a short one the fused recurrent kernel; both equal the
    PyTorch forms."""
    taken, out_err, grad_err = dispatched(name, layer, T)
    assert taken == path
    assert out_err < 1e-5 and grad_err < 1e-5


def test_kernels_rerun_in_a_fresh_interpreter_process():
    """Only when triton was imported before this module (so the interpreter is off here)."""
    if INTERPRETED or DEVICE != "cpu":
        pytest.skip("the kernels run in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           __file__], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


def test_use_triton_leaves_long_inputs_to_the_chunked_kernels(monkeypatch):
    from nlc.runtime.library.ops import use_triton
    monkeypatch.setenv("NLC_TRITON", "force")
    long, short = torch.zeros(2, 64, 3), torch.zeros(2, 63, 3)
    assert not use_triton(long, chunked="delta/scalar")
    assert not use_triton(long, chunked="decay/none")
    assert not use_triton(long, chunked="decay/channel")
    assert use_triton(short, chunked="delta/scalar")
    assert use_triton(long)  # levels without a chunked form keep their recurrent kernel
    # float64 tokens keep the PyTorch forms: the kernels raised their dtype error
    assert not use_triton(short.double()) and use_triton(short.half())
    monkeypatch.setenv("NLC_TRITON", "0")
    assert not use_triton(short, chunked="delta/scalar") and not use_triton(short)


@pytest.mark.parametrize("change, message", [
    ({"beta": torch.zeros(2, 8, 2, 1)}, "beta must be [2, 8, 2]"),
    ({"ld": torch.zeros(2, 8, 3)}, "log_decay must be [2, 8, 2]"),
    ({"h0": torch.zeros(1, 2, 16, 16)}, "initial_state must be [2, 2, 16, 16]"),
    ({"k": torch.zeros(2, 8, 2, 8)}, "k must be [2, 8, 2, 16]"),
    ({"v": torch.zeros(2, 8, 2, 300), "h0": None}, "up to 256"),
    ({"q": torch.zeros(2, 8, 16)}, "q and v must be [B, T, H, D]"),
    ({"beta": torch.zeros(2, 8, 2, dtype=torch.float64)}, "beta must be float32"),
])
def test_chunked_kernels_reject_bad_inputs(change, message):
    """Checked before any kernel runs (no interpreter needed), with the tensor's name."""
    from nlc.runtime.library.chunk_delta_triton import chunk_scalar
    good = {n: t.cpu() for n, t in inputs("delta", "scalar", 2, 8, 2, 16, 16, 2).items()}
    x = {**good, **change}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        chunk_scalar(x["q"], x["k"], x["v"], x["beta"], x["ld"], initial_state=x["h0"])
    with pytest.raises(ValueError, match="chunk_size must be 16, 32 or 64"):
        chunk_scalar(*(good[n] for n in ("q", "k", "v", "beta", "ld")), chunk_size=48)


def test_kernels_take_the_autocast_dtype():
    """Under autocast the chunked kernels' operands are autocast's dtype (as a matmul's):
    float32 operands take exact float32 products, without tensor cores."""
    from nlc.runtime.library.chunk_triton import compute_dtype
    q = torch.zeros(1, 4, 2, 8)
    assert compute_dtype(q) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compute_dtype(q) == torch.bfloat16
    assert compute_dtype(q.to(torch.float16)) == torch.float16


def unit_lower_inverse64(A):
    """(I + A)^-1 in float64, for a batch of strictly lower A."""
    eye = torch.eye(A.shape[-1], dtype=torch.float64)
    return torch.linalg.inv(eye + A.double().cpu())


@needs_kernels
@pytest.mark.parametrize("BT, batched", [(16, False), (32, False), (64, False), (32, True),
                                        (64, True)])
def test_block_inverse_writes_every_entry(BT, batched):
    """`_solve_kernel` into a NaN-filled T (its callers allocate T uninitialized): every
    entry is written, and T = (I + A)^-1 to float32 rounding, with the diagonal blocks
    inverted one by one or as one batch."""
    from nlc.runtime.library.chunk_inverse_triton import _solve_kernel
    g = torch.Generator().manual_seed(BT)
    k = F.normalize(torch.randn(3, 2, BT, 32, generator=g), dim=-1)
    A = (torch.rand(3, 2, BT, 1, generator=g) * (k @ k.mT)).tril(-1).to(DEVICE)
    tinv = torch.full_like(A, float("nan"))
    _solve_kernel[(3, 2)](A.contiguous(), tinv, H=2, BT=BT, BATCHED=batched, num_warps=1)
    assert close(tinv, unit_lower_inverse64(A), TOL)


@needs_kernels
@pytest.mark.parametrize("BT, K, decay, batched", [(16, 16, True, False), (32, 96, False, True),
                                                   (64, 96, True, False), (64, 48, False, True)])
def test_fused_prepare_matches_float64(BT, K, decay, batched):
    """The forward's fused kkt + solve (`_prepare_kernel`) on packed sequences (chunks cut
    short by a sequence's end; K = 96 takes two key slices of 64, the second half masked):
    g and T = (I + strict_lower(b_t e^{g_t - g_s} k_t.k_s))^-1 per chunk equal float64, and
    T's rows past a sequence's end are the identity's."""
    from nlc.runtime.library.chunk_inverse_triton import _prepare_kernel
    from nlc.runtime.library.chunk_triton import LOG_DECAY_FLOOR, chunk_table, pow2
    bounds, H = [0, 5, 5 + BT + 3, 2 * BT + 20], 2
    x = inputs("delta", "scalar" if decay else "none", 1, bounds[-1], H, K, 16, 0, seed=K)
    k, beta = x["k"][0].contiguous(), x["beta"][0].contiguous()
    ld = x["ld"][0].contiguous() if decay else None
    table = chunk_table(bounds, BT, DEVICE)
    gc = torch.full((bounds[-1], H), float("nan"), device=DEVICE)
    tinv = torch.full((table.chunks, H, BT, BT), float("nan"), device=DEVICE)
    _prepare_kernel[(table.chunks, H)](
        k, beta, ld, gc, tinv, table.starts, table.ends, H=H, K=K, BT=BT,
        BK=min(pow2(K), 64), HAS_G=decay, FLOOR=LOG_DECAY_FLOOR, PREC="ieee", BATCHED=batched,
        num_warps=2)
    for c, (bos, eos) in enumerate(zip(table.starts.tolist(), table.ends.tolist())):
        n = min(BT, eos - bos)
        g = (ld[bos:bos + n].double().clamp_min(LOG_DECAY_FLOOR).cumsum(0) if decay
             else torch.zeros(n, H, dtype=torch.float64))
        kc, bc = k[bos:bos + n].double().transpose(0, 1), beta[bos:bos + n].double().T
        gamma = (g.T[:, :, None] - g.T[:, None, :]).exp()
        A = torch.zeros(H, BT, BT, dtype=torch.float64)
        A[:, :n, :n] = (bc[:, :, None] * gamma * (kc @ kc.mT)).tril(-1)
        assert close(gc[bos:bos + n], g, TOL)
        assert close(tinv[c], unit_lower_inverse64(A), TOL)


@needs_kernels
def test_half_precision_T_gives_the_same_W_and_U():
    """The forward keeps T in the operands' dtype (fp16 here): stored rounded, it equals the
    float32 T rounded, and W, U computed from either are the same bits."""
    from nlc.runtime.library.chunk_delta_triton import _wu_kernel
    from nlc.runtime.library.chunk_inverse_triton import _prepare_kernel
    from nlc.runtime.library.chunk_triton import LOG_DECAY_FLOOR, chunk_table
    H, K, V, BT = 2, 32, 16, 32
    x = inputs("delta", "scalar", 1, 70, H, K, V, 0, seed=3, dtype=torch.float16)
    k, v, beta, ld = (x[n][0].contiguous() for n in ("k", "v", "beta", "ld"))
    table = chunk_table([0, 70], BT, DEVICE)
    out = {}
    for dtype in (torch.float32, torch.float16):
        gc = torch.empty(70, H, device=DEVICE)
        tinv = torch.empty(table.chunks, H, BT, BT, dtype=dtype, device=DEVICE)
        w, u = torch.empty_like(k), torch.empty_like(v)
        common = {"H": H, "K": K, "BT": BT, "PREC": "tf32"}
        _prepare_kernel[(table.chunks, H)](k, beta, ld, gc, tinv, table.starts, table.ends,
                                           BK=32, HAS_G=True, FLOOR=LOG_DECAY_FLOOR,
                                           BATCHED=False, **common)
        _wu_kernel[(table.chunks, H)](k, v, beta, gc, tinv, w, u, table.starts, table.ends,
                                      V=V, BK=32, BV=16, **common)
        out[dtype] = tinv, w, u
    (t32, w32, u32), (t16, w16, u16) = out.values()
    assert torch.equal(t32.half(), t16) and torch.equal(w32, w16) and torch.equal(u32, u16)
    assert w16.abs().sum() > 0 and u16.abs().sum() > 0
