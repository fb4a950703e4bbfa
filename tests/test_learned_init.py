"""How a spec initializes a meta-learned initial state: `= learned` draws normal(0.02),
`learned(std = s)` normal(s), `learned(scheme = xavier)` normal(sqrt(2 / (rows + cols))) for
each weight matrix of the state (Glorot & Bengio 2010). The draws are checked statistically,
on enough entries that a wrong scale (or the default where another was asked) fails."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from nlc.emit import load_layer

ROOT = Path(__file__).resolve().parents[1]
TITANS = (ROOT / "examples" / "titans.nl").read_text()


def layer_with(init: str, tmp_path: Path):
    line = next(ln for ln in TITANS.splitlines() if "state M :" in ln)
    spec = tmp_path / "titans_init.nl"
    spec.write_text(TITANS.replace(line, line[:line.index(") = ") + 1] + f" = {init}"))
    return load_layer(str(spec), d_model=32, heads=2, d_head=32)()


def learned_weights(layer):
    return {n: p for n, p in layer.named_parameters() if n.endswith("_init")}


@pytest.mark.parametrize(("init", "std"), [
    ("learned", lambda rows, cols: 0.02),
    ("learned(std = 0.3)", lambda rows, cols: 0.3),
    ("learned(scheme = xavier)", lambda rows, cols: math.sqrt(2 / (rows + cols))),
])
def test_learned_state_draw(init, std, tmp_path):
    weights = learned_weights(layer_with(init, tmp_path))
    assert len(weights) == 2  # the MLP's two matrices
    for name, w in weights.items():
        rows, cols = w.shape[-2:]
        want = std(rows, cols)
        got = w.detach().double().std().item()
        # 2 x 4096 entries per matrix: the sample std is within 3% of the true one
        assert abs(got - want) < 0.03 * want, (name, got, want)
        assert abs(w.detach().double().mean().item()) < 0.1 * want


def test_xavier_sizes_follow_the_dims(tmp_path):
    """The scale is printed from the dims, so a layer built at other sizes draws at its own."""
    line = next(ln for ln in TITANS.splitlines() if "state M :" in ln)
    spec = tmp_path / "titans_init.nl"
    spec.write_text(TITANS.replace(line, line[:line.index(") = ") + 1] + " = learned(scheme = xavier)"))
    cls = load_layer(str(spec), d_model=32, heads=2, d_head=32)
    layer = cls(d_model=32, heads=2, d_head=64)
    for w in learned_weights(layer).values():
        rows, cols = w.shape[-2:]
        assert {rows, cols} == {64, 256}
        assert abs(w.detach().double().std().item() - math.sqrt(2 / 320)) < 0.03 * math.sqrt(2 / 320)
