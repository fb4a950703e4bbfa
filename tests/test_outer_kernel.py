"""Chunk-start terms kernels (nlc/emit/outer_render.py, runtime/library/outer_launch.py):
every token's (column, row) factors of the dual-form levels of Titans, TTT-MLP and TTT-Linear
and of Hope's main memory (low rank, `*_pairs`), printed from the derived terms, against the
layer module's PyTorch terms in
float64 (the factors and the gradients of every token input and of the anchors, relative
error below 1e-5), at token counts that fill blocks of 16 partly; and the generated ops route
through the kernels (the whole dual form is checked against the recurrence in
tests/test_dual_triton.py, which now runs these kernels too).

Kernels run under Triton's interpreter, as in tests/test_chunk_triton.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_chunk_triton import (  # sets TRITON_INTERPRET=1 (neither import above loads triton)
    DEVICE,
    TOL,
    close,
    needs_kernels,
    rel,
)

from nlc.derive.execution import FrozenSplit
from nlc.emit import load_module
from nlc.pipeline import run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DIMS = {"titans": {"d_head": 8}, "ttt_mlp": {"d_head": 8}, "ttt_linear": {"d_head": 8},
        "hope": {"d_head": 8}}


def terms_level(name: str):
    """(the generated module, the plan of the level whose terms have kernels, its kernel's
    names, its PyTorch terms): a dual-form level (`*_outer`), or a low-rank one outside a
    group (`*_pairs`: Hope's main memory)."""
    from nlc.emit.outer_render import outer_kernel
    path = str(EXAMPLES / f"{name}.nl")
    module = load_module(path, DIMS[name])
    plans = run(path, "plan", {"overrides": DIMS[name]})
    for plan in plans.layers:
        for level in plan.levels:
            ex = level.execution
            if isinstance(ex, FrozenSplit) and (ex.dual or ex.low_rank and not level.group):
                fallback = getattr(module, f"{level.fn}_{'outer' if ex.dual else 'pairs'}")
                return module, level, outer_kernel(level, ex, DIMS[name]), fallback
    raise AssertionError(f"{name} has no level with a terms kernel")


def _size(size, dims: dict) -> int:
    import sympy as sp
    size = sp.sympify(size)
    return int(size.xreplace({s: dims[s.name] for s in size.free_symbols}))


def leaves_of(level, kernel, dims: dict, B: int, T: int, H: int, seed: int = 0) -> dict:
    """float64 inputs of the terms: the kernel's tokens `[B, T, H, n, 1]` (scalars
    `[B, T, H, 1, 1]` in (0.05, 0.3), like a rate) and its anchors `[B, 1, H, r, c]` of the
    states' shapes, entries of scale 1 / sqrt(c)."""
    g = torch.Generator().manual_seed(seed)
    tokens = {t.name: t for t in level.tokens}
    states = dict(level.rule.states)
    out = {}
    for name in kernel.tokens:
        t = tokens[name]
        out[name] = (torch.randn(B, T, H, _size(t.size, dims), 1, generator=g,
                                 dtype=torch.float64) if t.kind == "vector" else
                     0.05 + 0.25 * torch.rand(B, T, H, 1, 1, generator=g, dtype=torch.float64))
    for anchor, state in level.anchors:
        if anchor in kernel.anchors:
            rows, cols = (_size(n, dims) for n in states[state].shape)
            out[anchor] = torch.randn(B, 1, H, rows, cols, generator=g,
                                      dtype=torch.float64) / cols ** 0.5
    return out


@needs_kernels
@pytest.mark.parametrize("name", ["titans", "ttt_mlp", "ttt_linear", "hope"])
@pytest.mark.parametrize("T", [1, 15, 17, 40])
def test_kernel_factors_and_gradients_match_the_pytorch_terms(name, T, monkeypatch):
    from nlc.runtime.library import ops as nl
    from nlc.runtime.library.outer_launch import LAUNCHES
    module, level, kernel, fallback = terms_level(name)
    B, H = 2, 3
    leaves = leaves_of(level, kernel, DIMS[name], B, T, H)
    for x in leaves.values():
        x.requires_grad_()
    want = fallback(dict(leaves))
    flat_want = [f for pairs in want.values() for pair in pairs for f in pair]
    g = torch.Generator().manual_seed(7)
    seeds = [torch.randn(f.expand(B, T, H, *f.shape[3:]).shape, generator=g,
                         dtype=torch.float64) for f in flat_want]
    grads_want = torch.autograd.grad(
        sum((f * s).sum() for f, s in zip(flat_want, seeds)), list(leaves.values()))

    monkeypatch.setenv("NLC_TRITON", "force")
    terms = nl.outer_terms(module.__file__, kernel.module, fallback, kernel.tokens,
                           kernel.anchors, kernel.layout)
    leaves32 = {n: x.detach().to(DEVICE, torch.float32).requires_grad_()
                for n, x in leaves.items()}
    before = dict(LAUNCHES)
    got = terms(dict(leaves32))
    flat_got = [f for pairs in got.values() for pair in pairs for f in pair]
    seeds = [s.to(DEVICE) for s in seeds]
    grads_got = torch.autograd.grad(
        sum((f * s.to(f)).sum() for f, s in zip(flat_got, seeds)), list(leaves32.values()))
    assert LAUNCHES["forward"] > before["forward"] and LAUNCHES["backward"] > before["backward"]
    assert list(got) == list(want)
    for f, ref in zip(flat_got, flat_want, strict=True):
        assert f.shape == ref.expand(B, T, H, *ref.shape[3:]).shape
        assert rel(f.cpu(), ref.expand_as(f)) < TOL
    for n, x, ref in zip(leaves, grads_got, grads_want, strict=True):
        assert close(x.cpu(), ref, TOL), (n, rel(x.cpu(), ref))


@needs_kernels
def test_generated_titans_op_runs_the_terms_kernel(monkeypatch):
    """The generated Titans layer, chunked with the kernels forced, goes through the terms
    kernels forward and backward (its numbers: tests/test_dual_triton.py)."""
    from nlc.runtime.library.outer_launch import LAUNCHES

    from nlc.emit import load_layer
    torch.manual_seed(0)
    layer = load_layer(str(EXAMPLES / "titans.nl"), d_model=32, heads=2, d_head=16)().to(DEVICE)
    monkeypatch.setenv("NLC_TRITON", "force")
    before = dict(LAUNCHES)
    layer(torch.randn(1, 20, 32, device=DEVICE)).sum().backward()
    assert LAUNCHES["forward"] > before["forward"] and LAUNCHES["backward"] > before["backward"]


@pytest.mark.parametrize("flag", ["NLC_TERMS_TRITON", "NLC_AFFINE_TRITON"])
def test_kernels_that_lost_or_are_unchecked_run_only_when_asked(flag, monkeypatch):
    """The terms and affine kernels are opt-in: never with FLAG=0, always with
    NLC_TRITON=force, otherwise only FLAG=1 on CUDA (a CPU tensor never)."""
    from nlc.runtime.library.chunk_triton import opted_in
    cpu = torch.zeros(1)
    monkeypatch.delenv("NLC_TRITON", raising=False)
    monkeypatch.delenv(flag, raising=False)
    assert not opted_in(cpu, flag)
    monkeypatch.setenv(flag, "1")
    assert not opted_in(cpu, flag)
    monkeypatch.setenv("NLC_TRITON", "force")
    assert opted_in(cpu, flag)
    monkeypatch.setenv(flag, "0")
    assert not opted_in(cpu, flag)
    if torch.cuda.is_available():
        gpu = cpu.cuda()
        monkeypatch.delenv("NLC_TRITON")
        monkeypatch.delenv(flag)
        assert not opted_in(gpu, flag)
        monkeypatch.setenv(flag, "1")
        assert opted_in(gpu, flag)


def test_float64_and_cpu_inputs_keep_the_pytorch_terms(monkeypatch):
    """Without NLC_TRITON=force a CPU tensor never reaches the kernels, nor does anything
    under NLC_TERMS_TRITON=0, nor float64: the PyTorch terms run."""
    from nlc.runtime.library import ops as nl
    from nlc.runtime.library.outer_launch import LAUNCHES
    module, level, kernel, fallback = terms_level("titans")
    leaves = leaves_of(level, kernel, DIMS["titans"], 1, 5, 2)
    terms = nl.outer_terms(module.__file__, kernel.module, fallback, kernel.tokens,
                           kernel.anchors, kernel.layout)
    before = dict(LAUNCHES)
    monkeypatch.setenv("NLC_TRITON", "0")
    terms({n: x.float() for n, x in leaves.items()})
    monkeypatch.setenv("NLC_TRITON", "force")
    monkeypatch.setenv("NLC_TERMS_TRITON", "0")
    terms({n: x.float() for n, x in leaves.items()})
    monkeypatch.delenv("NLC_TERMS_TRITON")
    got = terms(dict(leaves))
    assert LAUNCHES == before
    want = fallback(dict(leaves))
    assert all(torch.equal(a, b) for k in want for p, q in zip(got[k], want[k])
               for a, b in zip(p, q))


@needs_kernels
def test_shared_pairs_wrapper_matches_the_shared_function(monkeypatch):
    """Hope's five MLP memories share one pairs function; the wrapper the generated code
    calls (`nl.shared_outer_terms`, anchors as arguments, as a group passes its members'
    stacked anchors) against that function in float64: factors and every gradient."""
    from nlc.runtime.library.outer_launch import LAUNCHES
    module, level, kernel, _ = terms_level("hope")
    shared = module.SelfModifyingTitans_mlp_memory_pairs
    wrapped = module.SelfModifyingTitans_mlp_memory_pairs_terms
    leaves = leaves_of(level, kernel, DIMS["hope"], 8, 17, 2)   # 4 members x B = 2, stacked
    tokens = {n: x.requires_grad_() for n, x in leaves.items() if n in kernel.tokens}
    anchors = [leaves[a].requires_grad_() for a in kernel.anchors]
    want = shared(dict(tokens), *anchors)
    flat_want = [f for pairs in want.values() for pair in pairs for f in pair]
    g = torch.Generator().manual_seed(3)
    seeds = [torch.randn(f.expand(8, 17, 2, *f.shape[3:]).shape, generator=g,
                         dtype=torch.float64) for f in flat_want]
    leaves64 = [*tokens.values(), *anchors]
    grads_want = torch.autograd.grad(sum((f * s).sum() for f, s in zip(flat_want, seeds)),
                                     leaves64)
    monkeypatch.setenv("NLC_TRITON", "force")
    tokens32 = {n: x.detach().to(DEVICE, torch.float32).requires_grad_()
                for n, x in tokens.items()}
    anchors32 = [a.detach().to(DEVICE, torch.float32).requires_grad_() for a in anchors]
    before = dict(LAUNCHES)
    got = wrapped(dict(tokens32), *anchors32)
    flat_got = [f for pairs in got.values() for pair in pairs for f in pair]
    grads_got = torch.autograd.grad(
        sum((f * s.to(f)).sum() for f, s in zip(flat_got, seeds)),
        [*tokens32.values(), *anchors32])
    assert LAUNCHES["forward"] > before["forward"] and LAUNCHES["backward"] > before["backward"]
    for f, ref in zip(flat_got, flat_want, strict=True):
        assert rel(f.cpu(), ref.expand_as(f)) < TOL
    for x, ref in zip(grads_got, grads_want, strict=True):
        assert close(x.cpu(), ref, TOL), rel(x.cpu(), ref)


@needs_kernels
def test_members_read_the_tokens_once_and_get_their_gradients_summed(monkeypatch):
    """A group's members stacked (member_batch.Repeated, as scan._batched_members passes
    them): the kernels take the tokens once, not repeated, through their strides (here a
    transposed view and one broadcast over the heads), and the tokens' gradients come back
    summed over the members in the backward kernel; the factors' gradients are read through
    their strides too (transposed). Against the shared function on the tokens repeated, in
    float64: factors and every gradient."""
    from nlc.runtime.library import member_batch
    from nlc.runtime.library.outer_launch import LAUNCHES
    module, level, kernel, _ = terms_level("hope")
    shared = module.SelfModifyingTitans_mlp_memory_pairs
    wrapped = module.SelfModifyingTitans_mlp_memory_pairs_terms
    n, B, T, H = 4, 2, 17, 3
    g = torch.Generator().manual_seed(5)
    tokens = {k: x for k, x in leaves_of(level, kernel, DIMS["hope"], B, T, H).items()
              if k in kernel.tokens}
    first = kernel.tokens[0]   # laid out [B, H, T, ...], seen as [B, T, H, ...]
    tokens[first] = tokens[first].transpose(1, 2).contiguous().transpose(1, 2)
    last = kernel.tokens[-1]   # one value for every head
    tokens[last] = tokens[last][:, :, :1]
    anchors = [leaves_of(level, kernel, DIMS["hope"], n * B, 1, H, seed=1)[a]
               for a in kernel.anchors]
    for x in [*tokens.values(), *anchors]:
        x.requires_grad_()
    repeated = {k: torch.cat([x.expand(B, T, H, *x.shape[3:])] * n) for k, x in tokens.items()}
    want = shared(repeated, *anchors)
    flat_want = [f for pairs in want.values() for pair in pairs for f in pair]
    seeds = [torch.randn(n * B, H, T, *f.shape[3:], generator=g,
                         dtype=torch.float64).transpose(1, 2) for f in flat_want]
    leaves = [*tokens.values(), *anchors]
    grads_want = torch.autograd.grad(sum((f * s).sum() for f, s in zip(flat_want, seeds)),
                                     leaves)
    monkeypatch.setenv("NLC_TRITON", "force")
    tokens32 = {k: x.detach().to(DEVICE, torch.float32).requires_grad_()
                for k, x in tokens.items()}
    anchors32 = [a.detach().to(DEVICE, torch.float32).requires_grad_() for a in anchors]
    stacks = member_batch.Stacks({})
    batch = member_batch.Repeated(dict(tokens32), dict(tokens32), n, stacks)
    before = dict(LAUNCHES)
    got = wrapped(batch, *anchors32)
    assert not stacks.made   # no token was repeated for the kernels
    flat_got = [f for pairs in got.values() for pair in pairs for f in pair]
    grads_got = torch.autograd.grad(
        sum((f * s.to(f)).sum() for f, s in zip(flat_got, seeds)),
        [*tokens32.values(), *anchors32])
    assert LAUNCHES["forward"] > before["forward"] and LAUNCHES["backward"] > before["backward"]
    for f, ref in zip(flat_got, flat_want, strict=True):
        assert f.shape == ref.shape
        assert rel(f.cpu(), ref) < TOL
    for x, ref in zip(grads_got, grads_want, strict=True):
        assert x.shape == ref.shape
        assert close(x.cpu(), ref, TOL), rel(x.cpu(), ref)


def hope_layer_run():
    """examples/hope.nl's self-modifying Titans at small dims on one float32 input, and a
    function that runs it (chunked): (output, {name: gradient}) for the input and every
    parameter."""
    module = load_module(str(EXAMPLES / "hope.nl"), DIMS["hope"])
    torch.manual_seed(0)
    layer = module.SelfModifyingTitans(d_model=32, heads=2, d_head=8).to(DEVICE)
    x = torch.randn(1, 40, 32, device=DEVICE)

    def run():
        xx = x.clone().requires_grad_()
        y = layer(xx)
        names = ["x", *(n for n, _ in layer.named_parameters())]
        grads = torch.autograd.grad((y * y).sum(), [xx, *layer.parameters()],
                                    allow_unused=True)
        return y.detach(), dict(zip(names, grads))
    return run


def assert_same_run(got, want, tol=1e-4):
    """Two of `hope_layer_run`'s results agree: the output and every gradient."""
    (y, grads), (y0, grads0) = got, want
    assert rel(y.cpu(), y0.cpu()) < tol
    for n, ref in grads0.items():
        if ref is not None:
            assert close(grads[n].cpu(), ref.cpu(), tol), (n, rel(grads[n].cpu(), ref.cpu()))


@needs_kernels
def test_hope_layer_runs_the_terms_kernels_for_its_group_and_main_memory(monkeypatch):
    """The self-modifying Titans layer of examples/hope.nl, chunked in float32: with the
    kernels forced its group's members and its main memory go through them, and the output
    and every parameter's gradient agree with the PyTorch terms' run."""
    from nlc.runtime.library.outer_launch import LAUNCHES
    run = hope_layer_run()
    monkeypatch.setenv("NLC_TRITON", "0")
    want = run()
    monkeypatch.setenv("NLC_TRITON", "force")
    before = dict(LAUNCHES)
    got = run()
    # the group's four members as one stacked call, and the main memory: per chunk
    assert LAUNCHES["forward"] - before["forward"] >= 2
    assert_same_run(got, want)
