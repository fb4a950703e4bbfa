"""`model` declarations: the generated module class that composes a file's layers, what
`load_layer` returns for it, and `nlc train`, `eval` and `plot` on it end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nlc.cli import main
from nlc.emit import compile_outputs, load_layer
from nlc.errors import NlcError

ROOT = Path(__file__).resolve().parents[1]
HOPE = ROOT / "examples" / "hope.nl"
HOPE_SMALL = {"d_model": 16, "heads": 2, "d_head": 8, "d_hidden": 24}



def hybrid(width_window: int, width_delta: int) -> str:
    """A sliding-window + delta-rule hybrid, as a user would write it from the examples."""
    def small(name: str, width: int) -> str:
        text = (ROOT / "examples" / f"{name}.nl").read_text()
        return text.replace("d_model = 256, heads = 4, d_k = 64, d_v = 64",
                            f"d_model = {width}, heads = 2, d_k = 8, d_v = 8").replace(
                            "window = 512", "window = 4")
    return (small("sliding_window", width_window) + small("deltanet", width_delta)
            + "\nmodel Hybrid {\n  block SlidingWindow -> DeltaNet\n}\n")


def test_load_layer_returns_the_model_class():
    cls = load_layer(str(HOPE), **HOPE_SMALL)
    assert cls.__name__ == "Hope"
    torch.manual_seed(0)
    model = cls().double()
    names = [type(layer).__name__ for layer in model.layers]
    assert names == ["SelfModifyingTitans", "ContinuumMemory"]
    x = torch.randn(2, 20, 16, dtype=torch.float64, requires_grad=True)
    y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    # CMS levels write first at token 512 or later: their value views get no gradient in 20
    missing = {n for n, p in model.named_parameters() if p.grad is None}
    assert missing == {f"layers.1.W_v{i}" for i in (1, 2, 3, 4)}


def test_model_forward_is_its_layers_with_residuals():
    cls = load_layer(str(HOPE), **HOPE_SMALL)
    torch.manual_seed(1)
    model = cls().double()
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    h = x
    for norm, layer in zip(model.norms, model.layers):
        h = h + layer(norm(h))
    assert torch.equal(model(x), h)


def test_model_step_matches_forward():
    cls = load_layer(str(HOPE), **HOPE_SMALL)
    torch.manual_seed(2)
    model = cls(mode="recurrent").double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    whole = model(x)
    cache, steps = None, []
    for t in range(x.shape[1]):
        y, cache = model.step(x[:, t], cache)
        steps.append(y)
    assert (torch.stack(steps, 1) - whole).abs().max() < 1e-10


def test_a_hybrid_model_compiles_with_its_class(tmp_path):
    spec = tmp_path / "hybrid.nl"
    spec.write_text(hybrid(16, 16))
    source = compile_outputs(str(spec))["hybrid"]
    assert "class Hybrid(nn.Module):" in source
    cls = load_layer(str(spec))
    assert cls.__name__ == "Hybrid"
    out = cls()(torch.randn(2, 7, 16))
    assert out.shape == (2, 7, 16)


def test_model_layers_of_different_widths_are_refused(tmp_path):
    spec = tmp_path / "hybrid.nl"
    text = hybrid(16, 32)
    spec.write_text(text)
    with pytest.raises(NlcError, match="differ in d_model") as err:
        compile_outputs(str(spec))
    assert err.value.span.line == text.splitlines().index("model Hybrid {") + 1


def test_check_refuses_what_compile_would(tmp_path, capsys):
    """Layers of two widths passed `nlc check` and failed at compile; a model's dims were
    accepted and never reached its layers (its layers kept their own d_model)."""
    spec = tmp_path / "hybrid.nl"
    spec.write_text(hybrid(16, 32))
    assert main(["check", str(spec)]) == 2
    assert "differ in d_model (SlidingWindow: 16, DeltaNet: 32)" in capsys.readouterr().err
    text = hybrid(16, 16).replace("model Hybrid {\n", "model Hybrid {\n  dims d_model = 64\n")
    spec.write_text(text)
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    line = text.splitlines().index("  dims d_model = 64") + 1
    assert f"{spec}:{line}:3: error: a model's dims do not reach its layers" in err, err


def test_train_eval_plot_a_model_spec(tmp_path):
    run = tmp_path / "run"
    dims = [arg for name, v in HOPE_SMALL.items() if name != "d_model"
            for arg in ("-D", f"{name}={v}")]
    code = main(["train", str(HOPE), "--task", "mqar", "--steps", "2", "--d-model", "16",
                 "--n-layers", "1", "--batch-size", "2", "--seq-len", "32",
                 "--mqar-num-kv-pairs", "2", "--mlp", "none", "--out", str(run), "--quiet",
                 *dims])
    assert code == 0
    assert (run / "summary.json").is_file()
    assert main(["eval", str(run)]) == 0
    assert main(["plot", str(run), "-o", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 0
