"""The fused group kernels of Hope's generating memories (issue 17): the closed form of a chunk
and its hand-derived backward (runtime/library/mlp_group.py) against autograd and against the
group's own token loop, float64; the Triton kernels (runtime/library/mlp_group_triton.py) in
float32 against the closed form in float64 at awkward lengths, outputs, last states and every
gradient below 1e-5 relative; the compiler's proposal (nlc/emit/fused_group.py) and its check
at run time (runtime/library/fused_group.py); Hope's layer with the kernels forced against the
same layer without them, across calls that carry the state and stop mid-chunk.

Kernels run under Triton's interpreter, as in tests/test_chunk_triton.py (whose import sets
TRITON_INTERPRET=1 before triton is imported)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from nlc.runtime.library import fused_group, mlp_group
from test_chunk_triton import (  # sets TRITON_INTERPRET=1 (neither import above loads triton)
    DEVICE,
    INTERPRETED,
    needs_kernels,
    rel,
    rerun_under_interpreter,
)

from nlc.emit import load_module

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
HOPE = mlp_group.Group(tails=("l2norm", "l2norm", ("sigmoid_mean", 0), ("sigmoid_mean", 1)),
                       key=0, value=1, rate=2, retention=3)
# the kernels need d, F and the chunk powers of 2 of at least 16
SMALL = {"d_model": 32.0, "heads": 2.0, "d_head": 16.0}


def _inputs(N, T, d, F, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(N, 4, F, d, generator=g, dtype=F64) * scale / d ** 0.5 * 2
    W2 = torch.randn(N, 4, d, F, generator=g, dtype=F64) * scale / F ** 0.5 * 2
    h = torch.randn(N, T, d, generator=g, dtype=F64)
    bias = torch.randn(N, 2, generator=g, dtype=F64)
    return h, W1, W2, bias


def _closed(group, h, W1, W2, bias, chunk=16):
    reads = []
    for c0 in range(0, h.shape[1], chunk):
        o, W1, W2 = mlp_group.chunk_forward(group, W1, W2, h[:, c0:c0 + chunk], bias)
        reads.append(o)
    return [torch.cat([r[i] for r in reads], 1) for i in range(4)] + [W1, W2]


@pytest.mark.parametrize("tails", [HOPE.tails, ("none", "l2norm", *HOPE.tails[2:])])
def test_the_hand_derived_backward_equals_autograd(tails):
    """chunk_backward against autograd through chunk_forward, float64, every input's
    gradient (the biases per row)."""
    group = dataclasses.replace(HOPE, tails=tails)
    h, W1, W2, bias = _inputs(3, 7, 5, 12, seed=1)
    leaves = [x.clone().requires_grad_() for x in (W1, W2, h, bias)]
    outs, W1n, W2n = mlp_group.chunk_forward(group, *leaves[:2], leaves[2], leaves[3])
    g = torch.Generator().manual_seed(2)
    d_outs = [torch.randn(o.shape, generator=g, dtype=F64) for o in outs]
    dW1n = torch.randn(W1n.shape, generator=g, dtype=F64)
    dW2n = torch.randn(W2n.shape, generator=g, dtype=F64)
    loss = sum((o * d).sum() for o, d in zip(outs, d_outs)) + (W1n * dW1n).sum() \
        + (W2n * dW2n).sum()
    want = torch.autograd.grad(loss, leaves)
    got = mlp_group.chunk_backward(group, W1, W2, h, bias, d_outs, dW1n, dW2n)
    for name, a, b in zip(("W1", "W2", "h", "bias"), got, want):
        assert rel(a, b) < 1e-12, name


def _hope_members(hope):
    """The members and consts the generated group op hands to coupled_chunked."""
    from nlc.runtime.library import ops
    seen = []
    real = ops.coupled_chunked

    def spy(members, tokens, states, **kw):
        seen.append((members, kw))
        return real(members, tokens, states, **kw)
    ops.coupled_chunked = spy
    try:
        layer = hope.SelfModifyingTitans().double()
        with torch.no_grad():
            layer(torch.randn(1, 20, 32, dtype=F64))
    finally:
        ops.coupled_chunked = real
    return seen[0]


@pytest.fixture(scope="module")
def hope():
    return load_module(str(EXAMPLES / "hope.nl"), SMALL)


def test_the_compiler_proposes_hope_and_the_proposal_passes_its_check(hope):
    """The generated group op names the fused form (key k, value v, rate eta, retention alpha,
    both vector reads l2-normalized), and the run-time check finds the closed form equal to
    the members' own token loop; a proposal with roles or a tail changed fails it."""
    members, kw = _hope_members(hope)
    fused = kw["fused"]
    assert fused == fused_group.FusedGroup(
        ("k", "v", "eta", "alpha"),
        (("K_W1", "K_W2"), ("V_W1", "V_W2"), ("E_W1", "E_W2"), ("A_W1", "A_W2")),
        "h", (True, True), ("b_eta", "b_alpha"))
    consts = kw["consts"]
    assert fused_group.verified(fused, members, consts, H=2, d=16, F=64, chunk=16)
    swapped = dataclasses.replace(fused, members=("v", "k", "eta", "alpha"),
                                  states=(fused.states[1], fused.states[0], *fused.states[2:]))
    assert not fused_group.verified(swapped, members, consts, H=2, d=16, F=64, chunk=16)
    plain = dataclasses.replace(fused, norms=(False, True))
    assert not fused_group.verified(plain, members, consts, H=2, d=16, F=64, chunk=16)
    biases = dataclasses.replace(fused, biases=("b_alpha", "b_eta"))
    assert not fused_group.verified(biases, members, consts, H=2, d=16, F=64, chunk=16)


def test_only_hopes_group_is_proposed():
    """Of the examples, only Hope's group has the fused form (every other generated module
    runs its levels as before)."""
    named = [p.name for p in sorted((ROOT / "generated").glob("*.py"))
             if "nl.FusedGroup(" in p.read_text()]
    assert named == ["hope.py"]


@needs_kernels
@pytest.mark.parametrize("T, norms", [(1, (True, True)), (63, (True, True)),
                                      (65, (False, True))])
def test_kernels_equal_the_closed_form(T, norms):
    """float32 kernels against the closed form in float64 (a partial last chunk at 63 and
    65; a key read without a norm): reads, last states and the gradients of h, both maps'
    initial states and the biases, below 1e-5 relative."""
    from nlc.runtime.library import mlp_group_triton
    group = dataclasses.replace(HOPE, tails=tuple(
        "l2norm" if n else "none" for n in norms) + HOPE.tails[2:])
    h, W1, W2, bias = _inputs(3, T, 16, 64, seed=T)
    if not norms[0]:
        h = h / 4  # |k|^2 about 1, not 16: alpha I - eta k k^T keeps the states bounded
    ref_leaves = [x.clone().requires_grad_() for x in (h, W1, W2, bias)]
    want = _closed(group, *ref_leaves)
    g = torch.Generator().manual_seed(5)
    weights = [torch.randn(w.shape, generator=g, dtype=F64) for w in want]
    want_grads = torch.autograd.grad(sum((w * o).sum() for w, o in zip(weights, want)),
                                     ref_leaves)
    leaves = [x.to(DEVICE, torch.float32).requires_grad_() for x in (h, W1, W2, bias)]
    got = mlp_group_triton.group_chunks(*leaves, chunk=16, norm_k=norms[0], norm_v=norms[1])
    got_grads = torch.autograd.grad(
        sum((w.to(o.device) * o.double()).sum() for w, o in zip(weights, got)), leaves)
    names = ["k", "v", "eta", "alpha", "W1 end", "W2 end"]
    for name, a, b in zip(names, got, want):
        assert rel(a, b) < 1e-5, name
    for name, a, b in zip(["dh", "dW1", "dW2", "dbias"], got_grads, want_grads):
        assert rel(a, b) < 1e-5, name


def _layer_run(hope, monkeypatch, kernels: bool, dtype, lengths, seed=3):
    """Hope's self-modifying layer over consecutive calls carrying the state, its output
    and every parameter's gradient (the learned initial states among them)."""
    monkeypatch.setenv("NLC_GROUP_KERNEL", "1" if kernels else "0")
    monkeypatch.setenv("NLC_TRITON", "force" if kernels else "0")
    torch.manual_seed(seed)
    layer = hope.SelfModifyingTitans().to(dtype)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, sum(lengths), 32, generator=g, dtype=F64).to(dtype).requires_grad_()
    outs, cache, start = [], {}, 0
    for n in lengths:
        y = layer(x[:, start:start + n], cache=cache)
        outs.append(y)
        start += n
    y = torch.cat(outs, 1)
    w = torch.randn(y.shape, generator=g, dtype=F64)
    params = dict(layer.named_parameters())
    grads = torch.autograd.grad((y.double() * w).sum(), [x, *params.values()])
    return y, dict(zip(["x", *params], grads))


@needs_kernels
@pytest.mark.skipif(DEVICE != "cpu", reason="forces the dispatch on CPU tensors")
def test_hopes_layer_on_the_kernels_equals_it_without(hope, monkeypatch):
    """Hope's layer with the kernels forced (float32), over calls of 40 and 30 tokens (the
    first stops mid-chunk, so the second runs token by token from there), against the same
    layer in float64 without them: output and every gradient below 1e-5; the kernels ran."""
    from nlc.runtime.library import mlp_group_triton
    calls = []
    real = mlp_group_triton.group_chunks

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)
    monkeypatch.setattr(mlp_group_triton, "group_chunks", counted)
    y, grads = _layer_run(hope, monkeypatch, True, torch.float32, [40, 30])
    assert calls == [torch.Size([4, 32, 16])]  # 2 x 2 rows, the 2 whole chunks before the last
    y_ref, grads_ref = _layer_run(hope, monkeypatch, False, F64, [40, 30])
    assert rel(y, y_ref) < 1e-5
    for name, ref in grads_ref.items():
        assert rel(grads[name], ref) < 1e-5, name
    # float64 keeps the PyTorch form (the kernels would compute it in float32)
    y64, _ = _layer_run(hope, monkeypatch, True, F64, [40, 30])
    assert len(calls) == 1 and rel(y64, y_ref) < 1e-12


def test_kernels_rerun_in_a_fresh_interpreter_process():
    """Only when triton was imported before this module (so the interpreter is off here)."""
    if INTERPRETED or DEVICE != "cpu":
        pytest.skip("the kernels run in this process")
    rerun_under_interpreter(__file__)


@pytest.mark.parametrize("group_flag, triton_flag, on_cuda, runs", [
    (None, None, True, True),       # on by default on CUDA
    (None, None, False, False),     # not on the CPU
    ("0", None, True, False),       # NLC_GROUP_KERNEL=0 turns them off
    (None, "0", True, False),       # so does NLC_TRITON=0
    ("0", "force", False, False),   # even when forced
    (None, "force", False, True),   # forced anywhere (how these tests run them)
])
def test_the_group_kernels_run_by_default_on_cuda(monkeypatch, group_flag, triton_flag,
                                                   on_cuda, runs):
    """The opt-in rule of runtime/library/chunk_triton.opted_in with its default on, as the
    fused group asks it (the device is stood in for: triton_enabled says whether a tensor is
    on a card Triton runs on, and whether NLC_TRITON=0)."""
    from nlc.runtime.library import chunk_triton
    for name, value in (("NLC_GROUP_KERNEL", group_flag), ("NLC_TRITON", triton_flag)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(chunk_triton, "triton_enabled",
                        lambda ref: on_cuda and triton_flag != "0")
    ref = torch.zeros(1)
    assert chunk_triton.opted_in(ref, "NLC_GROUP_KERNEL", default=True) == runs
    # kernels without the default still wait to be asked
    assert not chunk_triton.opted_in(ref, "NLC_AFFINE_TRITON") or triton_flag == "force"
