"""M3 (Nested Learning's Multi-scale Momentum Muon) from examples/m3.nl: its levels verify
against the catalog's entries, and the compiled `torch.optim.Optimizer` follows the paper's
Algorithm 1 (nlc/catalog/optimizers.py, written from the paper) step by step in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import EXAMPLES

from nlc.catalog.optimizers import m3
from nlc.emit import load_optimizer
from nlc.syntax import parse
from nlc.verify.verify import verify_module

M3_SPEC = EXAMPLES / "m3.nl"
HYPERS = {"lr": 0.02, "b1": 0.9, "b2": 0.999, "b3": 0.1, "alpha": 0.5, "eps": 1e-8}


def _levels(text: str) -> dict[str, list[str]]:
    (report,) = verify_module(parse(text, "m3.nl"), "m3.nl")
    return {lv.level: sorted(c.entry.id for c in lv.matches) for lv in report.levels}


def test_each_level_is_its_entry_of_algorithm_1():
    assert _levels(M3_SPEC.read_text()) == {
        "fast": ["m3_fast"], "slow": ["m3_slow"], "second_moment": ["m3_second_moment"]}


def test_a_slow_momentum_updated_every_step_is_not_m3s():
    text = M3_SPEC.read_text().replace("every f steps", "every 1 step")
    assert _levels(text)["slow"] == ["m3_fast"]


def _run_compiled(f: int, shape, grads) -> list[np.ndarray]:
    cls = load_optimizer(str(M3_SPEC), f=f)
    param = torch.nn.Parameter(torch.from_numpy(np.array(THETA0[shape])))
    opt = cls([param], **HYPERS)
    out = []
    for g in grads:
        param.grad = torch.from_numpy(g.copy())
        opt.step()
        out.append(param.detach().numpy().copy())
    return out


THETA0 = {shape: np.random.default_rng(1).standard_normal(shape) for shape in ((4, 7), (6, 3))}


@pytest.mark.parametrize("shape", [(4, 7), (6, 3)])  # wide and tall
def test_the_compiled_step_is_algorithm_1(shape):
    """13 steps with f = 4 cross three chunk boundaries and end inside a chunk."""
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(shape) for _ in range(13)]
    ours = _run_compiled(4, shape, grads)
    paper = m3(THETA0[shape], lambda t, theta: grads[t - 1], 13, f=4, **HYPERS)
    for t, (a, b) in enumerate(zip(ours, paper), start=1):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"step {t}")
    # the chunk timing matters: the algorithm with another frequency is a different run
    other = m3(THETA0[shape], lambda t, theta: grads[t - 1], 13, f=2, **HYPERS)
    assert np.abs(other[-1] - paper[-1]).max() > 1e-6
