"""The dual chunk form's Triton kernels (runtime/library/dual_triton.py): the coefficient scan
and the masked [C, C] read products, float32 kernels against dual.py's PyTorch forms in
float64 (outputs and every gradient, relative error below 1e-5); the generated Titans and
TTT-MLP ops with the kernels forced against their token-by-token recurrence in float64,
across calls that carry the state (and stop mid-chunk), with the learned initial state's
gradient; gates at their limits.

Kernels run under Triton's interpreter, as in tests/test_chunk_triton.py (whose import sets
TRITON_INTERPRET=1 before triton is imported); NLC_TRITON_TEST_DEVICE=cuda runs them on a GPU
instead (every tensor is made on the CPU, then moved: the same draws on either device)."""

from __future__ import annotations

import functools
import inspect
import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import scratch_dir
from nlc.runtime.library import dual
from test_chunk_triton import (  # sets TRITON_INTERPRET=1 (neither import above loads triton)
    DEVICE,
    INTERPRETED,
    TOL,
    close,
    needs_kernels,
    rel,
    rerun_under_interpreter,
)

from nlc.emit import load_layer, load_module

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOKENS = [1, 15, 16, 63, 64, 65]  # chunk lengths the kernels see (16 and 64: whole chunks)


def launches() -> dict:
    from nlc.runtime.library.dual_triton import LAUNCHES
    return dict(LAUNCHES)


def ran(before: dict, *names: str) -> bool:
    """Whether each named autograd function of dual_triton.py ran since `before`."""
    after = launches()
    return all(after.get(n, 0) > before.get(n, 0) for n in names)


def grads_of(outputs, leaves: dict, seed: int = 7) -> dict:
    """The gradients of a fixed random weighting of `outputs` (float64 weights, cast), for the
    leaves that reach them."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o)).sum()
               for o in outputs)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {n: x for n, x in zip(leaves, grads) if x is not None}


def leaves_as(values: dict, dtype) -> dict:
    return {n: v.to(DEVICE, dtype).requires_grad_() for n, v in values.items()}


# --------------------------------------------------------------------------- the scan
def generic_combine(n: int, d: int):
    """s_i' = sum_m a_im s_m + sum_e b_ie t_e: every step matrix and input coefficient a
    per-token scalar input."""
    def combine(state, inputs):
        return {f"s{i}": sum(inputs[f"a{i}{m}"] * state[f"s{m}"] for m in range(n))
                + sum(inputs[f"b{i}{e}"] * inputs[f"t{e}"] for e in range(d)) for i in range(n)}
    return combine


@functools.cache
def small_op(name: str, chunk: int = 16, read_before: bool = False):
    """examples/<name>.nl at d_head 8 (MLP 8 -> 32 -> 8), gradients at chunks of `chunk`,
    its read after the write (as written) or before it."""
    text = (EXAMPLES / f"{name.split()[0]}.nl").read_text()
    text = text.replace("chunk(64)", f"chunk({chunk})").replace("chunk(16)", f"chunk({chunk})")
    if read_before:
        text = text.replace("    read M(q)", "    read before M(q)")
        assert "read before" in text
    path = scratch_dir() / f"{name.split()[0]}_{chunk}{'_before' * read_before}.nl"
    path.write_text(text)
    module = load_module(str(path), {"d_model": 16.0, "heads": 2.0, "d_head": 8.0})
    assert f"read_before={read_before}" in Path(module.__file__).read_text()
    return module


SCANS = {  # name -> (combine, states, terms, scalar inputs: name -> (low, high))
    "titans": (lambda: small_op("titans").memory_combine, ["M_W1", "M_W2", "M_W1_mom", "M_W2_mom"],
               ["drive0", "drive1"], {"alpha": (0.0, 1.0), "eta": (0.0, 1.0)}),
    "n3 d2": (lambda: generic_combine(3, 2), ["s0", "s1", "s2"], ["t0", "t1"],
              {f"{c}{i}{j}": (-0.8, 0.8) for c, w in (("a", 3), ("b", 2))
               for i in range(3) for j in range(w)}),
}


def scan_run(name: str, T: int, dtype):
    combine, order, terms, ranges = SCANS[name]
    g = torch.Generator().manual_seed(T)
    B, H = 2, 2
    values = {n: lo + (hi - lo) * torch.rand(B, T, H, 1, 1, generator=g, dtype=torch.float64)
              for n, (lo, hi) in ranges.items()}
    leaves = leaves_as(values, dtype)
    phi, psi = dual._coefficients(combine(), leaves, order, terms, (B, T, H))
    return (phi, psi), grads_of((phi, psi), leaves)


@needs_kernels
@pytest.mark.parametrize("name, T", [("titans", T) for T in TOKENS]
                         + [("n3 d2", T) for T in (1, 15, 65)])
def test_scan_kernel_matches_the_pytorch_scan(name, T, monkeypatch):
    """Phi, Psi and the gradients of every gate: Titans' combine (n = 4 states, d = 2 terms,
    decay and momentum gates in [0, 1]) and a generic one (n = 3, d = 2, full step matrices)."""
    monkeypatch.setenv("NLC_TRITON", "0")
    want, want_grads = scan_run(name, T, torch.float64)
    monkeypatch.setenv("NLC_TRITON", "force")
    before = launches()
    got, got_grads = scan_run(name, T, torch.float32)
    assert ran(before, "scan_fwd", "scan_bwd")
    for x, ref in zip(got, want):
        assert rel(x, ref) < TOL
    for n, ref in want_grads.items():
        assert close(got_grads[n], ref, TOL), n


# --------------------------------------------------------------------------- the reads
def read_inputs(T: int, R: int, K: int, seed: int = 0) -> dict:
    """A chunk's coefficients, chunk-start states and pairs: states W, Wm `[R, K]` and V
    `[K, R]`; term d0 has two pairs of W's shape (one broadcast over heads, one over the
    batch), d1 one of V's; psi is zero above the diagonal, as the scan leaves it."""
    g = torch.Generator().manual_seed(seed)
    B, H = 2, 2

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)
    lower = torch.ones(T, T, dtype=torch.float64).tril()[None, :, None, :, None]
    return {"phi": r(B, T, H, 3), "psi": r(B, T, H, T, 2) * lower,
            "W": r(B, H, R, K), "V": r(1, H, K, R), "Wm": r(B, H, R, K),
            "c0": r(B, T, H, R, 1), "r0": r(B, T, H, 1, K), "c1": r(B, T, 1, R, 1),
            "r1": r(1, T, H, 1, K), "c2": r(B, T, H, K, 1), "r2": r(B, T, H, 1, R),
            "xW": r(B, T, H, K, 1), "xV": r(B, T, 1, R, 1)}


def read_run(leaves: dict, name: str, pairs_of_w: bool = True):
    B = leaves["W"].shape[0]
    start = {"W": leaves["W"], "V": leaves["V"].expand(B, -1, -1, -1), "Wm": leaves["Wm"]}
    pairs = {"d0": [(leaves["c0"], leaves["r0"]), (leaves["c1"], leaves["r1"])],
             "d1": [(leaves["c2"], leaves["r2"])]}
    if not pairs_of_w:  # d0's pairs of V's shape instead: W's read meets no pair
        pairs["d0"] = [(leaves["c2"] * 0.5, leaves["r2"])]
    state = dual.DualState(name, leaves["phi"], leaves["psi"], start, pairs, ["W", "V", "Wm"],
                           ["d0", "d1"])
    out = state.product(leaves[f"x{name}"])
    return out, grads_of((out,), leaves)


READS = [(T, R, K, name) for T in TOKENS for R, K in ((16, 48), (48, 16)) for name in "WV"]


@needs_kernels
@pytest.mark.parametrize("T, R, K, name", READS[::2] + [READS[-1]],
                         ids=lambda v: str(v))
def test_read_kernel_matches_the_pytorch_read(T, R, K, name, monkeypatch):
    """S_t @ x_t of a DualState: output and the gradients of x, the chunk-start states, phi,
    psi, and every pair's column and row (broadcast ones included)."""
    values = read_inputs(T, R, K)
    monkeypatch.setenv("NLC_TRITON", "0")
    want, want_grads = read_run(leaves_as(values, torch.float64), name)
    monkeypatch.setenv("NLC_TRITON", "force")
    before = launches()
    got, got_grads = read_run(leaves_as(values, torch.float32), name)
    assert ran(before, "product_fwd", "product_bwd")
    assert rel(got, want) < TOL
    assert got_grads.keys() == want_grads.keys()
    for n, ref in want_grads.items():
        assert close(got_grads[n], ref, TOL), n


def permuted(x: torch.Tensor) -> torch.Tensor:
    """x's values with the token axis innermost in memory (as a generated layer's columns
    come, views of `[B, H, D, T]` products): strides a kernel must not assume."""
    return x.transpose(1, -1).contiguous().transpose(1, -1) if x.dim() >= 4 else x


@needs_kernels
def test_read_kernel_takes_inputs_in_any_layout(monkeypatch):
    """Every input with the token axis innermost: stacking such tensors keeps their order of
    strides, which the kernels' packing must undo."""
    values = read_inputs(15, 48, 16)
    monkeypatch.setenv("NLC_TRITON", "0")
    want, want_grads = read_run(leaves_as(values, torch.float64), "W")
    monkeypatch.setenv("NLC_TRITON", "force")
    leaves = {n: permuted(v) for n, v in leaves_as(values, torch.float32).items()}
    assert not leaves["r0"].is_contiguous()
    got, got_grads = read_run({n: v.detach().requires_grad_() for n, v in leaves.items()}, "W")
    assert rel(got, want) < TOL
    for n, ref in want_grads.items():
        assert close(got_grads[n], ref, TOL), n


def test_packing_views_evenly_spaced_slices_instead_of_stacking():
    """The reads' packing takes the previous chunk's end states (views of one stacked
    tensor) without a copy, and stacks anything else as torch.stack does."""
    from nlc.runtime.library.dual_triton import _stack
    base = torch.randn(2, 3, 4, 5, 6)
    cases = [(list(base.unbind(2)), 2, True), (list(base.unbind(-1)), -1, True),
             ([base[..., 0], base[..., 2], base[..., 4]], -1, True),
             ([base[..., 0], base[..., 2], base[..., 3]], -1, False),   # uneven
             ([base[:, 1], base[:, 0]], 1, False),                      # backwards
             ([torch.randn(3, 4), torch.randn(3, 4)], 0, False)]        # two storages
    for xs, dim, shared in cases:
        got = _stack(xs, dim)
        assert torch.equal(got, torch.stack(xs, dim))
        assert (got.untyped_storage().data_ptr() == xs[0].untyped_storage().data_ptr()) == shared


@needs_kernels
def test_read_kernel_of_a_state_that_meets_no_pair(monkeypatch):
    """No term has W's shape: W's read is its chunk-start part alone (no pair in the kernel)."""
    values = read_inputs(15, 16, 48)
    monkeypatch.setenv("NLC_TRITON", "0")
    want, want_grads = read_run(leaves_as(values, torch.float64), "W", pairs_of_w=False)
    monkeypatch.setenv("NLC_TRITON", "force")
    before = launches()
    got, got_grads = read_run(leaves_as(values, torch.float32), "W", pairs_of_w=False)
    assert ran(before, "product_fwd", "product_bwd")
    assert rel(got, want) < TOL and got_grads.keys() == want_grads.keys()
    for n, ref in want_grads.items():
        assert close(got_grads[n], ref, TOL), n


@needs_kernels
def test_kernels_take_bfloat16_with_float32_accumulation(monkeypatch):
    """bf16 inputs, given to the kernels directly (dual.py sends only float32, see the next
    test): the reads and the scan run (tensor-core precision for the products) and agree with
    float64 to bf16's rounding. On an H200 the reads' backward failed here (docs/triton.md)."""
    if DEVICE != "cpu":
        pytest.skip("half-precision dual kernels fail on the GPU; dual.py does not send them")
    values = read_inputs(63, 48, 16)
    monkeypatch.setenv("NLC_TRITON", "0")
    want, want_grads = read_run(leaves_as(values, torch.float64), "W")
    from nlc.runtime.library import dual_triton
    monkeypatch.setattr(dual, "_kernels", lambda ref: dual_triton)  # past the float32 check
    before = launches()
    got, got_grads = read_run(leaves_as(values, torch.bfloat16), "W")
    assert ran(before, "product_fwd", "product_bwd")
    assert got.dtype == torch.bfloat16 and rel(got, want) < 2e-2
    assert all(rel(got_grads[n], ref) < 2e-2 for n, ref in want_grads.items())
    (phi, psi), grads = scan_run("titans", 63, torch.bfloat16)
    assert ran(before, "scan_fwd", "scan_bwd")
    monkeypatch.undo()
    monkeypatch.setenv("NLC_TRITON", "0")
    (phi64, psi64), grads64 = scan_run("titans", 63, torch.float64)
    assert rel(phi, phi64) < 2e-2 and rel(psi, psi64) < 2e-2
    assert all(rel(grads[n], ref) < 2e-2 for n, ref in grads64.items())


def test_float64_and_nlc_triton_0_keep_the_pytorch_forms(monkeypatch):
    """The dispatch: float64 and half-precision tensors, and any tensors with NLC_TRITON=0,
    never reach the kernels."""
    monkeypatch.setenv("NLC_TRITON", "force")
    assert dual._kernels(torch.zeros(1, dtype=torch.float64)) is None
    assert dual._kernels(torch.zeros(1, dtype=torch.bfloat16)) is None
    monkeypatch.setenv("NLC_TRITON", "0")
    assert dual._kernels(torch.zeros(1)) is None


def test_torch_compile_calls_the_kernels_unless_told_not_to(monkeypatch):
    """While torch.compile traces (a compiled chunk or model), the kernels still serve (as
    custom ops, dual_ops.py), unless NLC_COMPILE_DUAL_KERNELS=0, which traces the PyTorch
    forms."""
    pytest.importorskip("triton")
    monkeypatch.setenv("NLC_TRITON", "force")
    monkeypatch.delenv("NLC_COMPILE_DUAL_KERNELS", raising=False)
    assert dual._kernels(torch.zeros(1)) is not None
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert dual._kernels(torch.zeros(1)) is not None
    monkeypatch.setenv("NLC_COMPILE_DUAL_KERNELS", "0")
    assert dual._kernels(torch.zeros(1)) is None


@needs_kernels
def test_chunks_longer_than_the_read_tiles_keep_the_pytorch_read(monkeypatch):
    """A chunk of 129 tokens (over the reads' 128) reads by the PyTorch form, kernels forced."""
    values = read_inputs(129, 16, 16)
    monkeypatch.setenv("NLC_TRITON", "force")
    before = launches()
    got, _ = read_run(leaves_as(values, torch.float32), "W")
    assert launches().get("product_fwd", 0) == before.get("product_fwd", 0)
    monkeypatch.setenv("NLC_TRITON", "0")
    want, _ = read_run(leaves_as(values, torch.float64), "W")
    assert rel(got, want) < TOL


# --------------------------------------------------------------------------- generated ops
# Gates drawn in [0, high): about the specs' own ranges (Titans: theta = 0.01 sigmoid(.),
# eta = 0.9 sigmoid(.), alpha = sigmoid(. - 5); TTT-MLP's rate 0.1 sigmoid(.) / d_head), a
# little wider so that the memory's updates matter. Larger rates make the memory itself
# ill-conditioned: at theta up to 0.5 the float32 recurrence is 2e-4 from float64.
GATES = {"titans": {"alpha": 0.1, "eta": 0.9, "theta": 0.02}, "ttt_mlp": {"eta": 0.3},
         "ttt_linear": {"eta": 0.3}}


def op_inputs(name: str, module, T: int, gates: dict | None = None) -> dict:
    names = [p.name for p in inspect.signature(module.memory_op).parameters.values()
             if p.kind is p.POSITIONAL_OR_KEYWORD]
    g = torch.Generator().manual_seed(T)
    out = {}
    for n in names:
        if n in ("q", "k"):
            out[n] = F.normalize(torch.randn(2, T, 2, 8, generator=g, dtype=torch.float64), dim=-1)
        elif n == "v":
            out[n] = torch.randn(2, T, 2, 8, generator=g, dtype=torch.float64)
        else:  # gates: decay, momentum, rates
            out[n] = torch.rand(2, T, 2, generator=g, dtype=torch.float64) * GATES[name][n]
    for n, value in (gates or {}).items():
        out[n] = torch.full_like(out[n], value)
    return out


def op_run(module, values: dict, learned: dict, dtype, splits: list[int], mode: str):
    """The op over the tokens in calls split at `splits` (each from the last one's final state),
    from the learned initial state `[H, r, c]` (zeros for the other states): the outputs,
    the final state's tensors, and the gradients of every input and of the learned states."""
    leaves = leaves_as({**values, **learned}, dtype)
    batch = values["q"].shape[0]
    layer_state = module.memory_initial_state(batch, 2, leaves["q"][..., None], 8)
    state = {n: leaves[n].expand(batch, -1, -1, -1) if n in learned else s
             for n, s in layer_state.items()}
    outs = []
    for a, b in itertools.pairwise(splits):
        o, state = module.memory_op(**{n: leaves[n][:, a:b] for n in values},
                                    initial_state=state, output_final_state=True, mode=mode)
        outs.append(o)
    final = [s for n, s in sorted(state.items()) if torch.is_tensor(s) and s.is_floating_point()]
    o = torch.cat(outs, 1)
    return o, final, grads_of([o, *final], leaves)


def learned_state(module, seed: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = module.memory_initial_state(1, 2, torch.zeros(1, 1, 2, 8, dtype=torch.float64), 8)
    return {n: torch.randn(state[n].shape[1:], generator=g, dtype=torch.float64) * 0.3
            for n in sorted(state) if not n.endswith("_mom")}  # the MLP's layers, learned


def compare_op(name: str, chunk: int, T: int, monkeypatch, gates=None, splits=None):
    module = small_op(name, chunk, read_before=name.endswith("read before"))
    values = op_inputs(name.split()[0], module, T, gates)
    learned = learned_state(module)
    want = op_run(module, values, learned, torch.float64, [0, T], "recurrent")
    monkeypatch.setenv("NLC_TRITON", "force")
    before = launches()
    splits = splits or [0, T]
    got = op_run(module, values, learned, torch.float32, splits, "chunked")
    # TTT's combine has no gates (W' = W + drive): its scan has no backward pass
    gated = ("scan_bwd",) if name.startswith("titans") else ()
    # past the first chunk, reads take the previous chunk's stacked end states as they are
    later = ("stacked_starts",) if max(b - a for a, b in zip(splits, splits[1:])) > chunk else ()
    assert ran(before, "scan_fwd", "product_fwd", "product_bwd", *gated, *later)
    return got, want


def assert_op_close(got, want):
    (o, final, grads), (o64, final64, grads64) = got, want
    assert rel(o, o64) < TOL
    for x, ref in zip(final, final64, strict=True):
        assert rel(x, ref) < TOL
    for n, ref in grads64.items():
        assert close(grads[n], ref, TOL), (n, rel(grads[n], ref))


@needs_kernels
@pytest.mark.parametrize("name, T", [("titans", 1), ("titans", 63), ("titans", 65),
                                     ("ttt_mlp", 1), ("ttt_mlp", 63), ("ttt_mlp", 65),
                                     ("titans read before", 40), ("ttt_linear", 65)])
def test_generated_op_with_kernels_equals_its_recurrence(name, T, monkeypatch):
    """The generated level op (chunk 16; Titans also with its read before the write, and
    TTT-Linear: n = 1 state, d = 1 term) with the kernels forced, in calls of 32, 21 and the
    rest of the tokens: the second starts from the first's state at a chunk boundary, the third
    from a state that stopped mid-chunk (it goes on token by token). Output, final state and
    the gradients of every input and of the learned initial weights against one float64 call
    of the recurrence."""
    splits = sorted({0, min(32, T), min(53, T), T})
    assert_op_close(*compare_op(name, 16, T, monkeypatch, splits=splits))


@needs_kernels
def test_generated_titans_at_chunk_64(monkeypatch):
    """Titans' own chunk of 64 at T = 65: a whole chunk and a chunk of one token."""
    assert_op_close(*compare_op("titans", 64, 65, monkeypatch))


@needs_kernels
def test_generated_titans_layer_with_kernels_equals_its_recurrence(monkeypatch):
    """The whole generated layer (d_head 16, chunk 64, T = 40: its q, k, v columns are views
    with the token axis innermost) with the kernels forced, in float32, against the layer's
    recurrent mode in float64: output and the gradients of the input and every parameter."""
    torch.manual_seed(0)
    layer = load_layer(str(EXAMPLES / "titans.nl"), d_model=32, heads=2, d_head=16)()
    x = torch.randn(2, 40, 32, dtype=torch.float64)

    def run(mode, dtype):
        module = layer.to(DEVICE, dtype)
        module.mode = mode
        xx = x.to(DEVICE, dtype).requires_grad_()
        y = module(xx)
        return y, grads_of((y,), {"x": xx, **dict(module.named_parameters())})
    want, want_grads = run("recurrent", torch.float64)
    monkeypatch.setenv("NLC_TRITON", "force")
    before = launches()
    got, got_grads = run("chunked", torch.float32)
    assert ran(before, "scan_fwd", "scan_bwd", "product_fwd", "product_bwd")
    assert rel(got, want) < TOL
    for n, ref in want_grads.items():
        assert close(got_grads[n], ref, TOL), n


@needs_kernels
@pytest.mark.parametrize("gates", [{"alpha": 0.0}, {"alpha": 1.0, "eta": 0.0}, {"eta": 0.0}],
                         ids=str)
def test_titans_gates_at_their_limits_stay_finite(gates, monkeypatch):
    """No decay (alpha = 0), a decay that erases the memory every token (alpha = 1), no
    momentum: finite outputs, states and gradients, as close to the float64 recurrence as
    the PyTorch dual form in float32 gets. (Erased every token, the memory holds one token's
    small update, which the memory's norm scales up: there even the float32 recurrence is
    5e-5 from float64 in the keys' gradient, so the bound is relative to that form.)"""
    got, want = compare_op("titans", 16, 20, monkeypatch, gates=gates)
    o, final, grads = got
    assert torch.isfinite(o).all() and all(torch.isfinite(s).all() for s in final)
    assert all(torch.isfinite(g).all() for g in grads.values())
    monkeypatch.setenv("NLC_TRITON", "0")
    module = small_op("titans")
    torch_form = op_run(module, op_inputs("titans", module, 20, gates), learned_state(module),
                        torch.float32, [0, 20], "chunked")
    for x, y, ref in zip((o, *final, *grads.values()),
                         (torch_form[0], *torch_form[1], *torch_form[2].values()),
                         (want[0], *want[1], *want[2].values()), strict=True):
        assert rel(x, ref) < max(TOL, 2 * rel(y, ref))


@needs_kernels
def test_backward_pass_follows_the_forward_dispatch(monkeypatch):
    """The forward pass picks the kernels, the backward pass runs with NLC_TRITON=0 (as
    benchmarks/titans_dual.py's rows do): the scan is not recomputed by a checkpoint in the
    other form, and the gradients are the kernels'."""
    module = small_op("titans")
    values = op_inputs("titans", module, 20)
    leaves = leaves_as(values, torch.float32)
    monkeypatch.setenv("NLC_TRITON", "force")
    o, _ = module.memory_op(**leaves)
    monkeypatch.setenv("NLC_TRITON", "0")
    before = launches()
    grads = torch.autograd.grad(o.square().sum(), list(leaves.values()))
    assert ran(before, "scan_bwd", "product_bwd")
    reference = leaves_as(values, torch.float64)
    o64, _ = module.memory_op(**reference, mode="recurrent")
    for g, ref in zip(grads, torch.autograd.grad(o64.square().sum(), list(reference.values()))):
        assert rel(g, ref) < TOL


def test_dual_kernels_rerun_in_a_fresh_interpreter_process():
    """Only when triton was imported before this module (so the interpreter is off here)."""
    if INTERPRETED or DEVICE != "cpu":
        pytest.skip("the kernels run in this process")
    rerun_under_interpreter(__file__)


def test_narrow_states_keep_exact_products_when_tf32_is_asked(monkeypatch):
    """`nlc train --tf32` asks the float32 reads for TF32 products; states narrower than
    TENSOR_CORE_MIN_WIDTH keep exact ones (their tensor-core reads faulted on an H100),
    half-precision inputs keep their own precision, and wide states take what was asked."""
    from nlc.runtime.library import dual_triton
    monkeypatch.setattr(dual_triton, "FLOAT32_PREC", "tf32")
    wide = dual_triton.TENSOR_CORE_MIN_WIDTH
    assert dual_triton._product_tiles(64, 4 * wide, wide, torch.float32)["PREC"] == "tf32"
    assert dual_triton._product_tiles(64, 32, 8, torch.float32)["PREC"] == "ieee"
    assert dual_triton._product_tiles(64, 8, 4 * wide, torch.float32)["PREC"] == "ieee"
    narrow_half = dual_triton._product_tiles(64, 32, 8, torch.bfloat16)["PREC"]
    assert narrow_half == dual_triton.dot_precision(torch.bfloat16)


@needs_kernels
@pytest.mark.parametrize("what", ["read", "scan"])
def test_compiled_code_calls_the_kernels_as_custom_ops(what, monkeypatch):
    """By default, code that torch.compile traces (here with the aot_eager backend: dynamo
    and AOT autograd, no code generation) runs the reads and the scan as the kernels' custom
    ops (dual_ops.py), forward and backward, and matches the PyTorch forms in float64; with
    NLC_COMPILE_DUAL_KERNELS=0 the traced code runs no kernel."""
    T, R, K = 15, 16, 48

    def run(dtype):
        if what == "scan":
            return scan_run("titans", T, dtype)
        return read_run(leaves_as(read_inputs(T, R, K), dtype), "W")

    monkeypatch.setenv("NLC_TRITON", "0")
    want, want_grads = run(torch.float64)
    monkeypatch.setenv("NLC_TRITON", "force")
    names = ("scan_fwd", "scan_bwd") if what == "scan" else ("product_fwd", "product_bwd")
    compiled = torch.compile(run, backend="aot_eager", fullgraph=False)
    torch._dynamo.reset()
    monkeypatch.setenv("NLC_COMPILE_DUAL_KERNELS", "0")
    before = launches()
    compiled(torch.float32)
    assert not any(launches().get(n, 0) > before.get(n, 0) for n in names)
    torch._dynamo.reset()
    monkeypatch.delenv("NLC_COMPILE_DUAL_KERNELS")  # the default: the kernels
    before = launches()
    got, got_grads = compiled(torch.float32)
    torch._dynamo.reset()
    assert ran(before, *names, f"{what}_op")
    for x, ref in zip(got if what == "scan" else (got,), want if what == "scan" else (want,)):
        assert rel(x, ref) < TOL
    assert got_grads.keys() == want_grads.keys()
    for n, ref in want_grads.items():
        assert close(got_grads[n], ref, TOL), n


@needs_kernels
def test_custom_ops_pass_torch_library_opcheck():
    """The custom ops' fake implementations, autograd registration and dispatch agree with
    their real ones (`torch.library.opcheck`), for a read with pairs of both shapes and
    the scan."""
    from nlc.runtime.library import dual_ops, dual_triton
    T, R, K = 15, 16, 48
    leaves = leaves_as(read_inputs(T, R, K), torch.float32)
    B = leaves["W"].shape[0]
    pieces = [leaves["W"], leaves["Wm"], leaves["c0"].squeeze(-1), leaves["r0"].squeeze(-2)]
    x = leaves["xW"].squeeze(-1)
    packed = dual_triton.pack(((0, 2), (0,), False), x, leaves["phi"], leaves["psi"], pieces)
    torch.library.opcheck(dual_ops.dual_read_op, tuple(t.contiguous() for t in packed))
    g = torch.Generator().manual_seed(0)
    step = torch.rand(B, T, 2, 3, 3, generator=g).to(DEVICE).requires_grad_()
    add = torch.randn(B, T, 2, 3, 2, generator=g).to(DEVICE).requires_grad_()
    torch.library.opcheck(dual_ops.dual_scan_op, (step, add))
