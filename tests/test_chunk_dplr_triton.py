"""The dplr family (RWKV-7: S_t = S_{t-1} (D_t + a_t b_t^T) + v_t k_t^T, D_t a decay per key
channel) runs chunked: the PyTorch form (runtime/library/chunked.py's `dplr_chunked_torch`) and
the Triton kernels (runtime/library/chunk_dplr_triton.py) equal a float64 token loop, stay
finite with gates at their limits, and the generated layer of examples/rwkv7.nl dispatches to
them.

Kernels run under Triton's interpreter, as in tests/test_chunk_triton.py (whose helpers this
file imports, and whose import sets TRITON_INTERPRET=1 before triton is imported)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from nlc.runtime.library.chunked import dplr_chunked_torch
from test_chunk_triton import (
    DEVICE,
    INTERPRETED,
    ROOT,
    TOL,
    close,
    dispatched,
    launches,
    needs_kernels,
    rel,
)

NAMES = ("q", "k", "v", "a", "b", "ld", "h0")


def dplr_loop(q, k, v, a, b, ld, h0, bounds, read_before=False):
    """o_t = S_t q_t (S_{t-1} q_t if read_before), S_t = S_{t-1} (Diag(e^ld_t) + a_t b_t^T)
    + v_t k_t^T, token by token; the batch rows packed into one sequence axis, each sequence
    between `bounds` from its own h0 (or zeros)."""
    B, T, H, K = q.shape

    def packed(x):
        return None if x is None else x.reshape(1, B * T, *x.shape[2:])
    q, k, v, a, b, ld = map(packed, (q, k, v, a, b, ld))
    outs, finals = [], []
    for i, (bos, eos) in enumerate(itertools.pairwise(bounds)):
        S = h0[i:i + 1] if h0 is not None else q.new_zeros(1, H, v.shape[-1], K)
        for t in range(bos, eos):
            if read_before:
                outs.append(torch.einsum("bhvk,bhk->bhv", S, q[:, t]))
            Sa = torch.einsum("bhvk,bhk->bhv", S, a[:, t])
            decay = ld[:, t].exp() if ld is not None else torch.ones_like(a[:, t])
            decay = decay[..., None, None] if decay.dim() == 2 else decay[:, :, None, :]
            S = S * decay + Sa[..., None] * b[:, t][:, :, None, :] \
                + v[:, t][..., None] * k[:, t][:, :, None, :]
            if not read_before:
                outs.append(torch.einsum("bhvk,bhk->bhv", S, q[:, t]))
        finals.append(S)
    return torch.stack(outs, 1).reshape(B, T, H, -1), torch.cat(finals, 0)


def dplr_inputs(B, T, K, V, h0, seed, H=2, decay="channel", dtype=torch.float32):
    """RWKV-7's shape of the rank-one term: a = -kh, b = kh * rate with a unit removal key kh
    and a rate in (0, 1), so D + a b^T stays a contraction."""
    g = torch.Generator().manual_seed(seed)
    kh = F.normalize(torch.randn(B, T, H, K, generator=g), dim=-1)
    x = {"q": torch.randn(B, T, H, K, generator=g) * K ** -0.5,
         "k": F.normalize(torch.randn(B, T, H, K, generator=g), dim=-1),
         "v": torch.randn(B, T, H, V, generator=g),
         "a": -kh, "b": kh * torch.rand(B, T, H, K, generator=g), "ld": None, "h0": None}
    if decay == "channel":
        x["ld"] = F.logsigmoid(torch.randn(B, T, H, K, generator=g) + 2.0)
    elif decay == "scalar":
        x["ld"] = F.logsigmoid(torch.randn(B, T, H, generator=g) + 2.0)
    if h0:
        x["h0"] = torch.randn(h0, H, V, K, generator=g) * 0.5
    return {n: None if t is None else t.to(dtype).to(DEVICE) for n, t in x.items()}


def run_and_grad(fn, x, weights):
    leaves = {n: t.clone().requires_grad_() for n, t in x.items() if t is not None}
    o, ht = fn(*(leaves.get(n) for n in NAMES))
    wo, wh = weights
    loss = (o * wo.to(o.dtype)).sum() + (ht * wh.to(ht.dtype)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return o, ht, dict(zip(leaves, grads))


def loop_fn(bounds, read_before=False):
    def fn(q, k, v, a, b, ld, h0):
        return dplr_loop(q, k, v, a, b, ld, h0, bounds, read_before)
    return fn


def torch_fn(chunk, read_before=False):
    def fn(q, k, v, a, b, ld, h0):
        return dplr_chunked_torch(q, k, v, a, b, ld, initial_state=h0, read_before=read_before,
                                  chunk_size=chunk)
    return fn


def triton_fn(cu_seqlens, chunk):
    from nlc.runtime.library.chunk_dplr_triton import chunk_dplr

    def fn(q, k, v, a, b, ld, h0):
        return chunk_dplr(q, k, v, a, b, ld, initial_state=h0, cu_seqlens=cu_seqlens,
                          chunk_size=chunk)
    return fn


def weights_for(x, S):
    g = torch.Generator().manual_seed(1)
    q, v = x["q"], x["v"]
    return (torch.randn(*v.shape, generator=g).to(q.device),
            torch.randn(S, q.shape[2], v.shape[-1], q.shape[-1], generator=g).to(q.device))


def errors_against_loop(fn, x, bounds, read_before=False):
    """Relative errors of fn's output, final state and every gradient against the float64
    token loop."""
    weights = weights_for(x, len(bounds) - 1)
    o, ht, grads = run_and_grad(fn, x, weights)
    x64 = {n: None if t is None else t.double() for n, t in x.items()}
    ro, rht, rgrads = run_and_grad(loop_fn(bounds, read_before), x64,
                                   tuple(w.double() for w in weights))
    assert set(grads) == set(rgrads) == {n for n, t in x.items() if t is not None}
    errors = {"o": rel(o, ro), "final state": rel(ht, rht)}
    errors.update({f"d{n}": rel(grads[n], rgrads[n]) for n in rgrads})
    return errors


# ------------------------------------------------------------------ the PyTorch form
@pytest.mark.parametrize("decay", ["channel", "scalar", "none"])
@pytest.mark.parametrize("read_before", [False, True])
def test_pytorch_chunked_matches_token_loop(decay, read_before):
    """float64: the chunked form (chunks of 16, 50 tokens: a short last chunk) == the loop."""
    x = {n: None if t is None else t.double().cpu() for n, t in
         dplr_inputs(2, 50, 16, 8, 2, seed=3, decay=decay).items()}
    errors = errors_against_loop(torch_fn(16, read_before), x, [0, 50, 100], read_before)
    assert max(errors.values()) < 1e-12, errors


# ------------------------------------------------------------------ the Triton kernels
# every value of every axis appears: T in {1, 15, 63, 65, 200}, chunk 16 / 64 (and 32), K and
# V in {16, 32, 48} and the widest, 256, with and without an initial state, packed sequences
# (cu_seqlens; at T = 15 the third one is empty). T = 1 from a zero state has a log-decay
# gradient of 0: relative errors need a state. (T, chunk, K, V, initial state, packed)
CASES = [
    (200, 16, 32, 16, True, True),
    (65, 64, 48, 32, False, True),
    (63, 16, 16, 48, True, True),
    (15, 64, 32, 32, False, True),
    (1, 16, 48, 16, True, False),
    (65, 32, 16, 16, True, False),
    (63, 64, 16, 48, False, True),
    (63, 64, 48, 48, True, False),
    (15, 16, 256, 256, True, True),  # the widest: V in several programs' blocks
]


def packing(T, packed):
    """(batch, cu_seqlens or None, boundaries of the token loop)."""
    if not packed:
        return 2, None, [0, T, 2 * T]
    cuts = [0, T // 3, T // 3 + T // 2, T] if T > 15 else [0, 7, T, T]
    return 1, torch.tensor(cuts, dtype=torch.int32, device=DEVICE), cuts


@needs_kernels
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_chunked_triton_matches_token_loop(case):
    """fp32 kernels vs the float64 loop: output, final state and every gradient < 1e-5."""
    T, chunk, K, V, h0, packed = case
    B, cu, bounds = packing(T, packed)
    x = dplr_inputs(B, T, K, V, (len(bounds) - 1) if h0 else 0, seed=T + K)
    errors = errors_against_loop(triton_fn(cu, chunk), x, bounds)
    assert max(errors.values()) < TOL, errors


@needs_kernels
def test_chunked_triton_half_precision():
    """fp16 operands (float32 accumulation; bf16 is not emulated faithfully by the
    interpreter) stay within fp16 rounding of the loop."""
    x = dplr_inputs(1, 40, 32, 32, 1, seed=5, dtype=torch.float16)
    weights = weights_for(x, 1)
    o, ht, grads = run_and_grad(triton_fn(None, 32), x, weights)
    assert o.dtype == torch.float16 and grads["q"].dtype == torch.float16
    x64 = {n: None if t is None else t.double() for n, t in x.items()}  # the rounded inputs
    ro, rht, rgrads = run_and_grad(loop_fn([0, 40]), x64, tuple(w.double() for w in weights))
    errors = {"o": rel(o, ro), "final state": rel(ht, rht)}
    errors.update({f"d{n}": rel(grads[n], rgrads[n]) for n in rgrads})
    assert max(errors.values()) < 3e-3, errors


@needs_kernels
@pytest.mark.skipif(DEVICE != "cpu", reason="counts the interpreter's launches")
def test_score_kernels_launch_once_per_row_input():
    """One forward + backward launches `_scores_kernel` and `_intra_grads_kernel` twice each:
    once per row input (q with k and b, a with k and b), not once per score matrix."""
    x = dplr_inputs(1, 40, 16, 16, 1, seed=0)
    with launches() as counts:
        run_and_grad(triton_fn(None, 32), x, weights_for(x, 1))
    assert counts["_scores_kernel"] == 2 and counts["_intra_grads_kernel"] == 2, counts


def test_chunk_dplr_rejects_bad_inputs():
    """Checked before any kernel runs (no interpreter needed), with the tensor's name."""
    from nlc.runtime.library.chunk_dplr_triton import chunk_dplr
    x = {n: t.cpu() for n, t in dplr_inputs(2, 8, 16, 16, 0, seed=0).items() if t is not None}
    with pytest.raises(ValueError, match=r"log_decay must be \[2, 8, 2, 16\]"):
        chunk_dplr(x["q"], x["k"], x["v"], x["a"], x["b"], x["ld"][..., 0])
    with pytest.raises(ValueError, match=r"b must be \[2, 8, 2, 16\]"):
        chunk_dplr(x["q"], x["k"], x["v"], x["a"], x["b"][..., :8], x["ld"])
    with pytest.raises(ValueError, match="a must be float32, bfloat16 or float16"):
        chunk_dplr(x["q"], x["k"], x["v"], x["a"].int(), x["b"], x["ld"])
    with pytest.raises(ValueError, match="chunk_size must be 16, 32 or 64"):
        chunk_dplr(x["q"], x["k"], x["v"], x["a"], x["b"], x["ld"], chunk_size=8)


# ------------------------------------------------------------------ gates at their limits
# decays of 0, 1e-30 and 1 (every third token, the rest ordinary), a rank-one term of zero
# (a = b = 0) and of full rate (b = the removal key), keys and queries of large norm
LIMITS = ["decay0", "decay1e-30", "decay1", "ab0", "rate1", "bigkeys"]


def limit_inputs(limit, T=24, K=16, V=16):
    x = dplr_inputs(1, T, K, V, 1, seed=7)
    if limit.startswith("decay"):
        alpha = x["ld"].exp()
        alpha[:, ::3] = {"decay0": 0.0, "decay1e-30": 1e-30, "decay1": 1.0}[limit]
        x["ld"] = torch.log(alpha)  # -inf for a decay of 0
    elif limit == "ab0":
        x["a"], x["b"] = torch.zeros_like(x["a"]), torch.zeros_like(x["b"])
    elif limit == "rate1":
        x["b"] = -x["a"]
    elif limit == "bigkeys":
        x["k"], x["q"] = x["k"] * 1e3, x["q"] * 1e3
    return x


def check_limit(fn, x, tol):
    """Finite output and gradients, equal to the float64 loop in all but the log decays'
    gradient (0 where a decay is 0, by the clamp)."""
    weights = weights_for(x, 1)
    o, ht, grads = run_and_grad(fn, x, weights)
    for name, t in [("o", o), ("state", ht), *grads.items()]:
        assert t is not None and torch.isfinite(t).all(), name
    x64 = {n: None if t is None else t.double() for n, t in x.items()}
    ro, rht, rgrads = run_and_grad(loop_fn([0, x["q"].shape[1]]), x64,
                                   tuple(w.double() for w in weights))
    assert close(o, ro, tol) and close(ht, rht, tol)
    for n in ("q", "k", "v", "a", "b", "h0"):
        assert close(grads[n], rgrads[n], tol), n


@pytest.mark.parametrize("limit", LIMITS)
def test_pytorch_chunked_at_gate_limits(limit):
    x = {n: None if t is None else t.double().cpu() for n, t in limit_inputs(limit).items()}
    check_limit(torch_fn(16), x, 1e-9)


@needs_kernels
@pytest.mark.parametrize("limit", LIMITS)
def test_chunked_triton_at_gate_limits(limit):
    """A decay of 0 or 1e-30 puts float32 cumulative log decays at -110 (or -69) per such
    token, where one rounding is ~1e-5 of a ratio e^{g_t - g_s}: measured 1.03e-5 on db
    after a decay of 0, so those two get 3e-5."""
    tol = 3 * TOL if limit in ("decay0", "decay1e-30") else TOL
    check_limit(triton_fn(None, 16), limit_inputs(limit), tol)


# ------------------------------------------------------------------ the generated layer
def test_generated_rwkv7_chunked_equals_recurrent():
    """The generated level op of examples/rwkv7.nl in float64: mode="chunked" (the PyTorch
    chunked form, decays of exactly 0 among the gates) == mode="recurrent", output, final
    state and every input's gradient (the decay's only where it is not 0: there the chunked
    form's is 0 by design, nl.log_gate's clamp)."""
    from test_emit import small_overrides

    from nlc.emit import load_module
    path = ROOT / "examples" / "rwkv7.nl"
    module = load_module(str(path), small_overrides(path))
    assert "chunk_dplr_triton.chunk_dplr" in module.__doc__
    B, T, H, K, V = 2, 37, 2, 8, 6
    g = torch.Generator().manual_seed(0)

    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)
    r, kt = draw(B, T, H, K), draw(B, T, H, K)
    kh = F.normalize(draw(B, T, H, K), dim=-1)
    v = draw(B, T, H, V)
    rate = torch.rand(B, T, H, K, generator=g, dtype=torch.float64)
    w = torch.rand(B, T, H, K, generator=g, dtype=torch.float64)
    w[:, ::5, :, ::2] = 0.0
    leaves = [t.requires_grad_() for t in (r, kt, v, rate, kh, w)]
    runs = {}
    for mode in ("chunked", "recurrent"):
        o, final = module.memory_op(*leaves, mode=mode, chunk_size=8, output_final_state=True)
        loss = o.square().sum() + final["S"].square().sum()
        runs[mode] = (o, final["S"], *torch.autograd.grad(loss, leaves))
    chunked, recurrent = runs.values()
    names = ("o", "S", "dr", "dkt", "dv", "da", "dkh", "dw")
    for name, x, ref in zip(names, chunked, recurrent):
        if name == "dw":
            x, ref = x[w > 0], ref[w > 0]
        assert torch.isfinite(x).all() and rel(x, ref) < 1e-10, name


def test_product_with_a_dplr_transition_runs_chunked(tmp_path):
    """Two gd steps with one key, a channel gate and order parallel make one dplr transition
    per token (tests/test_classify_families.py): its layer runs the chunked dplr form, and in
    float64 mode="chunked" == mode="recurrent", output and the input's gradient."""
    from test_classify_families import variant

    from nlc.emit import load_layer
    spec = tmp_path / "product_dplr.nl"
    spec.write_text(variant("l2(S(k), v)", "parallel", 2, True))
    layer_class = load_layer(str(spec), d_model=16, heads=2, d_k=8, d_v=8)
    assert "chunk_dplr_triton.chunk_dplr" in sys.modules[layer_class.__module__].__doc__
    x = torch.randn(2, 21, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    runs = []
    for mode in ("chunked", "recurrent"):
        torch.manual_seed(0)
        layer = layer_class(mode=mode, chunk_size=8).double()
        xi = x.clone().requires_grad_()
        y = layer(xi)
        runs.append((y, *torch.autograd.grad(y.square().sum(), [xi])))
    for got, ref in zip(*runs):
        assert rel(got, ref) < 1e-10


@needs_kernels
@pytest.mark.skipif(DEVICE != "cpu", reason="forces the dispatch on CPU tensors")
@pytest.mark.parametrize("T, path", [(70, "ChunkDPLR"), (9, "recurrent")])
def test_generated_rwkv7_layer_dispatches_to_chunk_dplr(T, path):
    """The generated RWKV-7 layer with Triton forced (on the CPU, under the interpreter): a
    training-length input runs chunk_dplr (its autograd function is called), a short one the
    fused recurrent kernel; both equal the PyTorch forms."""
    taken, out_err, grad_err = dispatched("rwkv7", "Rwkv7", T)
    assert taken == path
    assert out_err < 1e-5 and grad_err < 1e-5


def test_dplr_kernels_rerun_in_a_fresh_interpreter_process():
    """Only when triton was imported before this module (so the interpreter is off here)."""
    if INTERPRETED or DEVICE != "cpu":
        pytest.skip("the kernels run in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           __file__], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
