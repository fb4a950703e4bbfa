"""The function registry (nlc/functions.py): one entry per function is all a stage reads, so a
function registered at run time checks, derives, compiles and runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import sympy as sp
import torch

from nlc import functions, pipeline
from nlc.emit import load_module
from nlc.errors import NlcError

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"d_model": 8, "heads": 2, "d_k": 4, "d_v": 3}


def deltanet(beta: str, key: str) -> str:
    """examples/deltanet.nl with the key and the rate written by the test."""
    text = (ROOT / "examples" / "deltanet.nl").read_text()
    text = text.replace("    k = l2norm(silu(conv(x @ W_k, 4)))", f"    k = {key}")
    return text.replace("algorithm gd(lr = beta)", f"algorithm gd(lr = {beta})")


def run(tmp_path: Path, name: str, text: str) -> torch.Tensor:
    spec = tmp_path / f"{name}.nl"
    spec.write_text(text)
    layer = load_module(str(spec), SMALL).DeltaNet
    torch.manual_seed(0)
    model = layer().double()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    return model(x)


@pytest.fixture
def softsign():
    functions.register(functions.Function(
        "softsign", functions.Kind.ELEMENTWISE, "elementwise x / (1 + |x|)", "F.softsign",
        sympy="x / (1 + Abs(x))"))
    yield
    functions.unregister("softsign")


def test_a_registered_function_is_unknown_before(tmp_path):
    with pytest.raises(NlcError, match="softsign"):
        pipeline.run("d.nl", "check", text=deltanet("softsign(beta)", "softsign(x @ W_k)"))


def test_a_function_registered_at_run_time_compiles_and_runs(softsign, tmp_path):
    """In the context (printed as F.softsign) and inside the level's rule (derived through
    SymPy, printed from its expression), it computes what the written-out formula does."""
    used = run(tmp_path, "used", deltanet("softsign(beta)", "l2norm(softsign(x @ W_k))"))
    written = run(tmp_path, "written", deltanet("beta / (1 + abs(beta))",
                                                "l2norm((x @ W_k) / (1 + abs(x @ W_k)))"))
    assert torch.isfinite(used).all()
    assert (used - written).abs().max() < 1e-12
    (_, (rule,)), = pipeline.run("d.nl", "derive", text=deltanet("softsign(beta)", "x @ W_k"))
    assert any(e.has(sp.Abs) for _, e in rule.next_state)  # derived through its SymPy form


def test_registry_refuses_incomplete_entries():
    with pytest.raises(ValueError, match="needs its SymPy form"):
        functions.register(functions.Function("f", functions.Kind.ELEMENTWISE, "", "F.f"))
    with pytest.raises(ValueError, match="cannot register"):
        functions.register(functions.Function("silu", functions.Kind.ELEMENTWISE, "", "F.silu",
                                              sympy="x"))
