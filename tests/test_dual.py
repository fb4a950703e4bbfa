"""The dual form of frozen-gradient chunks (runtime/library/dual.py): chosen when the emitter can
prove it applies, and equal to the token-by-token recurrence where it is chosen."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from nlc.emit import compile_spec, load_module

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL = {"d_model": 16.0, "heads": 2.0, "d_head": 8.0}

TITANS = (EXAMPLES / "titans.nl").read_text()
VARIANTS = {
    "titans": TITANS,
    "titans, read before the write": TITANS.replace("    read M(q)", "    read before M(q)"),
    "titans, chunk 5, no momentum": TITANS.replace("chunk(64)", "chunk(5)").replace(
        "algorithm momentum(lr = theta, momentum = eta)", "algorithm gd(lr = theta)"),
    "titans, linear memory": TITANS.replace(
        "mlp(d_head -> 4 * d_head -> d_head, act = gelu, residual)",
        "matrix[d_head, d_head]"),
}


def _path(folder: Path, name: str) -> Path:
    return folder / f"{name.replace(',', '').replace(' ', '_')}.nl"


def _layer(text: str, tmp_path: Path, name: str):
    path = _path(tmp_path, name)
    path.write_text(text)
    torch.manual_seed(0)
    module = load_module(str(path), SMALL)
    return module, module.Titans().double()


def test_titans_and_ttt_compile_to_the_dual_form():
    for spec, dual in (("titans.nl", True), ("ttt_mlp.nl", True), ("ttt_linear.nl", True),
                       ("hope.nl", False)):
        code = compile_spec(str(EXAMPLES / spec))
        assert ("nl.dual_chunked(" in code) is dual, spec


def test_erase_takes_the_affine_chunk_form_not_the_dual_one():
    """erase multiplies the state by a per-token matrix: not a scalar combine, no dual form;
    each state's combine is affine, so the chunk runs by its transitions
    (tests/test_affine_chunk.py)."""
    code = compile_spec(str(EXAMPLES / "hope.nl"))
    assert "nl.frozen_chunked(" in code and "_outer(" not in code and "transition=" in code


@pytest.mark.parametrize("name", list(VARIANTS))
def test_dual_form_equals_the_recurrence(name, tmp_path):
    module, layer = _layer(VARIANTS[name], tmp_path, name)
    assert "nl.dual_chunked(" in compile_spec(str(_path(tmp_path, name)), SMALL)
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    layer.mode = "recurrent"
    reference = layer(x)
    grads_ref = torch.autograd.grad(reference.square().sum(), list(layer.parameters()),
                                    allow_unused=True)
    layer.mode = "chunked"
    out = layer(x)
    grads = torch.autograd.grad(out.square().sum(), list(layer.parameters()), allow_unused=True)
    assert (out - reference).abs().max() < 1e-12 * reference.abs().max()
    for g, r in zip(grads, grads_ref):
        assert (g is None) == (r is None)
        if r is not None:
            assert (g - r).abs().max() <= 1e-10 * r.abs().max().clamp_min(1e-30)


def test_dual_form_carries_its_state_across_calls(tmp_path):
    """Two calls, the second from the first's final state (which stops mid-chunk, then ends
    in the dual form again), equal one call: the state after a chunk is rebuilt from the
    coefficients and the outer products."""
    module, layer = _layer(VARIANTS["titans, chunk 5, no momentum"], tmp_path, "carry")
    op = module.memory_op
    names = [p.name for p in inspect.signature(op).parameters.values()
             if p.kind is p.POSITIONAL_OR_KEYWORD]
    inputs = {n: torch.randn(2, 23, 2, 8, dtype=torch.float64) if n in "qkv"
              else torch.rand(2, 23, 2, dtype=torch.float64) * 0.5 for n in names}
    state = layer.initial_state(2)["memory"]
    full, final = op(**inputs, initial_state=state, output_final_state=True)
    first, mid = op(**{n: x[:, :10] for n, x in inputs.items()}, initial_state=state,
                    output_final_state=True)
    second, end = op(**{n: x[:, 10:] for n, x in inputs.items()}, initial_state=mid,
                     output_final_state=True)
    assert (torch.cat([first, second], 1) - full).abs().max() < 1e-12 * full.abs().max()
    for name, value in final.items():
        if torch.is_tensor(value) and value.is_floating_point():
            assert (end[name] - value).abs().max() <= 1e-12 * value.abs().max(), name


@pytest.mark.parametrize("a_shape, b_shape", [
    ((4, 6), (2, 5, 3, 6, 1)), ((3, 4, 6), (2, 5, 3, 6, 1)), ((1, 4, 6), (2, 5, 3, 6, 1)),
    ((3, 4, 6), (2, 5, 1, 6, 1)), ((2, 5, 3, 1, 6), (6, 7)), ((2, 5, 3, 1, 6), (3, 6, 7)),
    ((2, 5, 1, 1, 6), (3, 6, 7)), ((2, 5, 3, 1, 6), (1, 6, 7))])
def test_mm_meets_a_parameter_per_token_as_matmul_does(a_shape, b_shape):
    """nl.mm of a parameter (`[r, k]` or `[H, r, k]`) with a column or row per token equals
    `@`, values and gradients, without broadcasting the parameter over the tokens."""
    from nlc.runtime.library.dual import mm
    torch.manual_seed(0)
    a = torch.randn(a_shape, dtype=torch.float64, requires_grad=True)
    b = torch.randn(b_shape, dtype=torch.float64, requires_grad=True)
    got, want = mm(a, b), a @ b
    assert got.shape == want.shape and torch.allclose(got, want, rtol=0, atol=1e-13)
    for x, y in zip(torch.autograd.grad(got.square().sum(), [a, b]),
                    torch.autograd.grad(want.square().sum(), [a, b])):
        assert torch.allclose(x, y, rtol=1e-12, atol=1e-12)
