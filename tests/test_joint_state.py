"""A level with several states says why it runs token by token: a momentum delta rule's
(S, M) is jointly affine (it has a chunked form nlc does not implement yet), an MLP memory
with momentum and per-token gradients is not affine at all."""

from __future__ import annotations

from pathlib import Path

from nlc import pipeline
from nlc.derive.execution import TokenLoop

ROOT = Path(__file__).resolve().parents[1]


def _execution(tmp_path, example, old, new):
    text = (ROOT / "examples" / example).read_text()
    assert old in text
    path = tmp_path / example
    path.write_text(text.replace(old, new))
    (_, (classified,)), = pipeline.run(str(path), "classify")
    return classified.execution


def test_momentum_delta_rule_is_jointly_affine(tmp_path):
    ex = _execution(tmp_path, "deltanet.nl", "algorithm gd(lr = beta)",
                    "algorithm momentum(lr = beta, momentum = 0.9)")
    assert isinstance(ex, TokenLoop)
    assert "jointly affine" in ex.reason and "(S, S_mom)" in ex.reason


def test_mlp_memory_with_momentum_per_token_is_not_affine(tmp_path):
    ex = _execution(tmp_path, "titans.nl", "every 1 token, gradients at chunk(64) {",
                    "every 1 token {")
    assert isinstance(ex, TokenLoop)
    assert "not affine" in ex.reason
