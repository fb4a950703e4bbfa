"""Chunk bodies compiled by torch.compile (`compiled_chunk`, NLC_COMPILE_CHUNKS=1,
runtime/library/scan.py), each chunk recomputed in the backward pass (NLC_RECOMPUTE_CHUNKS=1,
the CUDA default) under bf16 autocast, as in an LM step. Hope's chunks once pinned their
compiled code to the chunk's own retention tensor (`affine_chunk._products` keyed its
sharing by `id()`, which torch.compile guards as that object's identity): every chunk of
every step compiled anew, until the recompile limit sent chunks back to eager code. On the
CPU the graphs run with the `aot_eager` backend (dynamo and AOT autograd as on the GPU, no
code generation), which keeps the test short."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import test_chunk_triton  # noqa: F401  sets TRITON_INTERPRET=1 before any test loads triton
import torch
from nlc.runtime.library import scan

from nlc.emit import load_module

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL = {"d_model": 16.0, "heads": 2.0, "d_head": 8.0}


TORCH_COMPILE = torch.compile  # the tests replace it


def _compile_on(backend):
    """torch.compile on `backend` (`aot_eager` generates no code, which keeps the tests
    short) without the Inductor settings compiled chunks ask for (scan.inductor_options),
    which other backends do not take."""
    def run(fn, options=None, **kwargs):
        return TORCH_COMPILE(fn, backend=backend, **kwargs)
    return run


def _step(layer, x):
    """One forward and backward under bf16 autocast: the output and the gradients."""
    xx = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(xx)
    grads = torch.autograd.grad(y.float().square().sum(), [xx, *layer.parameters()],
                                allow_unused=True)
    return y, grads


def test_hope_chunks_compile_once_per_kind_and_match_eager(tmp_path, monkeypatch):
    """Hope's main memory in chunks of 16 (three in 48 tokens) beside its group: a chunk
    whose start state is the learned one broadcast and a chunk that follows another compile
    one graph each, per chunk body; a second step compiles nothing; outputs and gradients
    are the eager chunks'."""
    spec = tmp_path / "hope.nl"
    spec.write_text((EXAMPLES / "hope.nl").read_text().replace("chunk(64)", "chunk(16)"))
    hope = load_module(str(spec), SMALL)
    torch.manual_seed(0)
    layer = hope.SelfModifyingTitans()
    x = torch.randn(2, 48, 16)
    monkeypatch.setenv("NLC_RECOMPUTE_CHUNKS", "1")
    monkeypatch.delenv("NLC_COMPILE_CHUNKS", raising=False)
    y0, g0 = _step(layer, x)

    graphs: list[str] = []  # the names of the compiled graphs, one per compilation

    def backend(gm, inputs):
        graphs.append(type(gm).__name__)
        return torch._dynamo.lookup_backend("aot_eager")(gm, inputs)

    monkeypatch.setenv("NLC_COMPILE_CHUNKS", "1")
    monkeypatch.setattr(scan, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", _compile_on(backend))
    torch._dynamo.reset()
    try:
        y1, g1 = _step(layer, x)
        first = len(graphs)
        y2, g2 = _step(layer, x)
    finally:
        torch._dynamo.reset()
    # two chunk bodies (the group's, the main memory's), two kinds of chunk each
    assert first == 4, graphs
    assert len(graphs) == first, graphs
    assert torch.equal(y1, y2)
    for a, b in zip(g1, g2):
        assert (a is None and b is None) or torch.equal(a, b)
    assert torch.allclose(y1.float(), y0.float(), rtol=2e-2, atol=2e-2)
    for a, b in zip(g1, g0):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-5), (a - b).abs().max()


def test_titans_compiled_chunks_can_read_through_the_dual_kernels(monkeypatch):
    """By default Titans' compiled chunks (two of 64 tokens, recomputed in
    the backward pass, bf16 autocast) call the dual form's read kernels as custom ops
    (runtime/library/dual_ops.py) instead of tracing their PyTorch forms; the coefficient
    scan runs before the chunk loop, for every chunk at once, as its kernel. Outputs and
    gradients match the eager chunks, which run the same kernels."""
    from test_dual_triton import launches, ran  # sets TRITON_INTERPRET=1 before triton loads
    titans = load_module(str(EXAMPLES / "titans.nl"), SMALL)
    torch.manual_seed(0)
    layer = titans.Titans()
    x = torch.randn(1, 100, 16)
    monkeypatch.setenv("NLC_TRITON", "force")
    monkeypatch.setenv("NLC_RECOMPUTE_CHUNKS", "1")
    monkeypatch.delenv("NLC_COMPILE_CHUNKS", raising=False)
    y0, g0 = _step(layer, x)
    monkeypatch.setenv("NLC_COMPILE_CHUNKS", "1")
    monkeypatch.delenv("NLC_COMPILE_DUAL_KERNELS", raising=False)
    monkeypatch.setattr(scan, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", _compile_on("aot_eager"))
    torch._dynamo.reset()
    before = launches()
    try:
        y1, g1 = _step(layer, x)
    finally:
        torch._dynamo.reset()
    # through the custom ops (an eager fallback after a graph break would skip them)
    assert ran(before, "read_op", "scan_fwd", "scan_bwd", "product_fwd", "product_bwd")
    assert torch.allclose(y1.float(), y0.float(), rtol=2e-2, atol=2e-2)
    # bf16 autocast: the graphs round some products in another order (7e-4 at most when
    # written; bf16's epsilon is 7.8e-3)
    _same_gradients(g1, g0, bound=5e-3)


def test_train_compile_chunks_flag_compiles_the_chunk_bodies_for_its_run(tmp_path,
                                                                          monkeypatch):
    """`nlc train --compile-chunks` hands Titans' chunk bodies to torch.compile (replaced here
    by a recorder that returns the body, so nothing is compiled) during its run only: after
    it, chunks run as before."""
    from nlc.train_cli import main
    monkeypatch.delenv("NLC_COMPILE_CHUNKS", raising=False)
    monkeypatch.setattr(scan, "_COMPILED", {})
    bodies = []

    def recorder(fn, **options):
        bodies.append(fn.__name__)
        return fn
    monkeypatch.setattr(torch, "compile", recorder)
    code = main(["train", str(EXAMPLES / "titans.nl"), "--task", "mqar", "--steps", "1",
                 "--d-model", "16", "--n-layers", "1", "--batch-size", "2", "--seq-len", "80",
                 "--mqar-num-kv-pairs", "2", "--mlp", "none", "--eval-examples", "4",
                 "--out", str(tmp_path / "run"), "--quiet", "--compile-chunks",
                 "-D", "heads=2", "-D", "d_head=8"])
    assert code == 0
    assert bodies, "no chunk body reached torch.compile"
    assert not scan.COMPILE_CHUNKS
    assert scan.compiled_chunk(_step) is _step


def _titans_backward(monkeypatch, **env):
    """Titans' layer (two chunks of 64 tokens) with compiled chunks (`aot_eager`), recomputed
    in the backward pass, the dual kernels in the interpreter and `env` set: its output, its
    gradients, and the ops its backward pass ran, counted by name."""
    from test_dual_triton import launches  # noqa: F401  sets TRITON_INTERPRET=1
    from torch.profiler import profile
    titans = load_module(str(EXAMPLES / "titans.nl"), SMALL)
    torch.manual_seed(0)
    layer = titans.Titans()
    x = torch.randn(1, 128, 16, requires_grad=True)
    env = {"NLC_TRITON": "force", "NLC_RECOMPUTE_CHUNKS": "1", "NLC_COMPILE_CHUNKS": "1", **env}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch, "compile", _compile_on("aot_eager"))
    monkeypatch.setattr(scan, "_COMPILED", {})
    torch._dynamo.reset()
    try:
        y = layer(x)
        with profile() as prof:
            grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()],
                                        allow_unused=True)
    finally:
        torch._dynamo.reset()
    return y, grads, collections.Counter(e.name for e in prof.events())


def _same_gradients(ga, gb, bound: float = 1e-6):
    """The same gradients (None for the same inputs), each within `bound` in relative norm
    (by default float32 summed in another order)."""
    for a, b in zip(ga, gb):
        assert (a is None) == (b is None)
        if a is not None:
            err = ((a.double() - b.double()).norm() / b.double().norm()).item()
            assert err < bound, err


def test_recomputed_compiled_chunks_rerun_only_what_their_backward_reads(monkeypatch):
    """A compiled chunk that is recomputed compiles the checkpointed body
    (`scan.chunk_runner`): its backward recomputes what the gradients need, not the whole
    chunk. Titans' chunk end (the next chunk's start states: one product per term and shape)
    is not needed to differentiate it, so the backward runs fewer batched products than with
    the checkpoint around the compiled chunk (`NLC_CHECKPOINT_OUTSIDE=1`, which runs the
    chunk's whole forward again); outputs and gradients are the same."""
    # (no reads kept: NLC_SAVE_READS=0, so the two placements run the same reads)
    y_in, g_in, inside = _titans_backward(monkeypatch, NLC_CHECKPOINT_OUTSIDE="0",
                                          NLC_SAVE_READS="0")
    y_out, g_out, outside = _titans_backward(monkeypatch, NLC_CHECKPOINT_OUTSIDE="1",
                                             NLC_SAVE_READS="0")
    # two chunks, each chunk end two products (the memory's two layers): four fewer
    assert inside["aten::bmm"] == outside["aten::bmm"] - 4, (inside, outside)
    assert torch.equal(y_in, y_out)
    _same_gradients(g_in, g_out)


def test_narrow_reads_are_kept_and_not_run_again_in_the_backward_pass(monkeypatch):
    """Recomputed compiled chunks keep the outputs of the dual reads (a selective
    checkpoint policy): every read by default (`NLC_SAVE_READS=1`); with `=narrow` those no
    wider than their input: Titans' second layer reads 16 outputs from 32 inputs here and is
    not run again in the backward pass, its first layer (32 from 8) is; `=0` none. The
    gradients are the same."""
    _, g_default, default = _titans_backward(monkeypatch)
    _, g_none, none = _titans_backward(monkeypatch, NLC_SAVE_READS="0")
    _, g_narrow, narrow = _titans_backward(monkeypatch, NLC_SAVE_READS="narrow")
    # two chunks of two reads (the memory's two layers)
    assert [c["nlc::dual_read"] for c in (none, narrow, default)] == [4, 2, 0]
    _same_gradients(g_default, g_none)
    _same_gradients(g_narrow, g_none)


def test_an_unknown_read_policy_is_refused_by_name(monkeypatch):
    from nlc.errors import NlcError
    monkeypatch.setenv("NLC_COMPILE_CHUNKS", "1")
    monkeypatch.setenv("NLC_SAVE_READS", "yes")
    monkeypatch.setattr(scan, "_COMPILED", {})
    with pytest.raises(NlcError, match="NLC_SAVE_READS='yes': expected 0 .*, narrow .* or 1"):
        scan.chunk_runner(_step, True, reads=True)


def test_inductor_settings_reach_the_compiled_chunks(monkeypatch):
    """`NLC_CHUNK_INDUCTOR` (name=value pairs, spaces between them) becomes torch.compile's
    Inductor options for every compiled chunk body, each value of its setting's type."""
    asked = []

    def compile_(fn, **kwargs):
        asked.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", compile_)
    monkeypatch.setattr(scan, "_COMPILED", {})
    monkeypatch.setenv("NLC_COMPILE_CHUNKS", "1")
    monkeypatch.setenv("NLC_CHUNK_INDUCTOR", " combo_kernels=1  max_autotune_gemm_backends="
                                             "TRITON,ATEN triton.cudagraphs=0 "
                                             "max_autotune_subproc_result_timeout_seconds=61 "
                                             "max_fusion_size=20")
    scan.chunk_runner(_step, recompute=False)
    scan.chunk_runner(_step, recompute=True)
    want = {"combo_kernels": True, "max_autotune_gemm_backends": "TRITON,ATEN",
            "triton.cudagraphs": False, "max_autotune_subproc_result_timeout_seconds": 61.0,
            "max_fusion_size": 20}
    assert [a["options"] for a in asked] == [want, want]
    monkeypatch.delenv("NLC_CHUNK_INDUCTOR")  # unset: combo kernels (scan.CHUNK_INDUCTOR)
    monkeypatch.setattr(scan, "_COMPILED", {})
    scan.chunk_runner(_step, recompute=False)
    assert asked[-1]["options"] == {"combo_kernels": True}
    monkeypatch.setenv("NLC_CHUNK_INDUCTOR", "")  # empty: Inductor's defaults
    monkeypatch.setattr(scan, "_COMPILED", {})
    scan.chunk_runner(_step, recompute=False)
    assert asked[-1]["options"] is None


@pytest.mark.parametrize("text, problem", [
    ("combo_kernels=yes", "combo_kernels takes 0 or 1, not 'yes'"),
    ("no_such_setting=1", "'no_such_setting' is not a torch._inductor.config setting"),
    ("triton.nothing=1", "'triton.nothing' is not a torch._inductor.config setting"),
    ("triton=1", r"'triton' is a group of settings: name one of them \(triton.SETTING\)"),
    ("combo_kernels", "'combo_kernels' is not name=value"),
    ("max_autotune_subproc_result_timeout_seconds=soon", "takes a number, not 'soon'"),
    ("max_fusion_size=2.5", "max_fusion_size takes an integer, not '2.5'"),
])
def test_inductor_settings_refused_by_name(monkeypatch, text, problem):
    from nlc.errors import NlcError
    monkeypatch.setenv("NLC_CHUNK_INDUCTOR", text)
    with pytest.raises(NlcError, match=f"NLC_CHUNK_INDUCTOR=.*{problem}"):
        scan.inductor_options()


@pytest.mark.parametrize("name, value, problem", [
    ("NLC_CHUNK_INDUCTOR", "combo_kernels=yes", "combo_kernels takes 0 or 1, not 'yes'"),
    ("NLC_SAVE_READS", "all", "NLC_SAVE_READS='all': expected 0"),
])
def test_train_refuses_bad_chunk_settings_before_its_run_starts(tmp_path, monkeypatch, capsys,
                                                                name, value, problem):
    """`nlc train` reads the chunked levels' settings from the environment before it makes
    the run's folder: exit 2 with the variable named, and no folder left behind."""
    from nlc.train_cli import main
    monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    code = main(["train", str(EXAMPLES / "titans.nl"), "--task", "lm", "--steps", "1",
                 "--d-model", "16", "--n-layers", "1", "--batch-size", "2", "--seq-len", "64",
                 "--out", str(out), "--quiet", "-D", "heads=2", "-D", "d_head=8"])
    assert code == 2
    assert problem in capsys.readouterr().err
    assert not out.exists()
