"""A level with several states: a momentum delta rule's (S, M) is jointly affine (family
joint) and runs by the joint chunked form (tests/test_joint_chunked.py); a jointly affine
level the form does not cover says why it runs token by token, and an MLP memory with
momentum and per-token gradients is not affine at all."""

from __future__ import annotations

from pathlib import Path

import sympy as sp

from nlc import pipeline
from nlc.derive.classify import KernelFamily
from nlc.derive.execution import JointChunk, TokenLoop

ROOT = Path(__file__).resolve().parents[1]


def _classified(tmp_path, example, old, new):
    text = (ROOT / "examples" / example).read_text()
    assert old in text
    path = tmp_path / example
    path.write_text(text.replace(old, new))
    (_, (classified,)), = pipeline.run(str(path), "classify")
    return classified


def _execution(tmp_path, example, old, new):
    return _classified(tmp_path, example, old, new).execution


def test_momentum_delta_rule_is_jointly_affine(tmp_path):
    found = _classified(tmp_path, "deltanet.nl", "algorithm gd(lr = beta)",
                        "algorithm momentum(lr = beta, momentum = 0.9)")
    assert found.family.family is KernelFamily.JOINT
    assert "(S, S_mom)" in found.family.reason
    ex = found.execution
    assert isinstance(ex, JointChunk) and ex.states == ("S", "S_mom") and ex.read == 0
    # S' = S (I - beta k k^T) + 0.9 M + beta v k^T, M' = -beta S k k^T + 0.9 M + beta v k^T
    assert ex.mix == ((1, 0), (sp.Rational(9, 10), sp.Rational(9, 10)))
    assert [[sp.sstr(c) for c in row] for row in ex.rank] == [["-beta", "-beta"], ["0", "0"]]
    assert [sp.sstr(v) for v in ex.values] == ["beta*v", "beta*v"]


def test_a_momentum_per_channel_is_jointly_affine_without_a_chunked_form(tmp_path):
    """A momentum [d_k] mixes M by Diag(theta): not a multiple of the identity, so the joint
    form does not apply and the level says so."""
    text = "algorithm momentum(lr = beta, momentum = theta)"
    path = tmp_path / "deltanet.nl"
    path.write_text((ROOT / "examples" / "deltanet.nl").read_text()
                    .replace("algorithm gd(lr = beta)", text)
                    .replace("    beta = sigmoid(x @ w_beta)\n",
                             "    beta = sigmoid(x @ w_beta)\n    theta = sigmoid(x @ W_k)\n"))
    (_, (classified,)), = pipeline.run(str(path), "classify")
    assert classified.family.family is KernelFamily.JOINT
    ex = classified.execution
    assert isinstance(ex, TokenLoop)
    assert "jointly affine per token, but" in ex.reason and "is not X, X k k^T" in ex.reason


def test_mlp_memory_with_momentum_per_token_is_not_affine(tmp_path):
    ex = _execution(tmp_path, "titans.nl", "every 1 token, gradients at chunk(64) {",
                    "every 1 token {")
    assert isinstance(ex, TokenLoop)
    assert "not affine" in ex.reason
