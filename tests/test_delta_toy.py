"""The delta-momentum toy (nlc/delta_toy.py, `nlc demo --toy`): its trajectories are the
compiled specs' updates, checked against the three rules written out by hand here; the
starts run together exactly as they would alone; the demo writes its plot."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import EXAMPLES

from nlc import delta_toy
from nlc.demo import delta_momentum_toy

LR, MU = 0.005, 0.9
STARTS = np.array([[0.4, 0.3], [-0.2, 0.5], [0.1, -0.45]])


def _by_hand(optimizer: str, start: np.ndarray, steps: int) -> np.ndarray:
    """Each rule on one start (w a row, x the step's input, u = l'(w . x)):
    momentum m = mu m - lr u x; delta momentum m = mu m - lr (m . x + u) x, both w = w + m;
    DGD w = w - lr' (w . x + u) x with lr' = lr / (1 + lr ||x||^2)."""
    w, m, out = start.astype(float), np.zeros(2), [start.astype(float)]
    for t in range(steps):
        x = np.array(delta_toy.INPUTS[t % 2])
        y = w @ x
        u = 4 * y * (y * y - 1) + delta_toy.TILT
        if optimizer == "delta gradient descent":
            w = w - LR / (1 + LR * x @ x) * (y + u) * x
        else:
            decay = (m @ x) * x if optimizer == "delta momentum" else 0
            m = MU * m - LR * (decay + u * x)
            w = w + m
        out.append(w)
    return np.stack(out)


@pytest.mark.parametrize("optimizer", list(delta_toy.SPECS))
def test_the_trajectories_are_the_compiled_rules(optimizer):
    run = delta_toy.run(optimizer, STARTS, 30, EXAMPLES, **delta_toy.hypers(optimizer, LR, MU))
    assert run.points.shape == (31, 3, 2)
    for i, start in enumerate(STARTS):
        np.testing.assert_allclose(run.points[:, i], _by_hand(optimizer, start, 30),
                                   rtol=1e-10, atol=1e-12)


def test_delta_momentum_is_not_momentum():
    """The l2 objective's decay along the input changes the path (same lr, mu, starts)."""
    runs = [delta_toy.run(n, STARTS, 30, EXAMPLES, lr=LR, mu=MU)
            for n in ("momentum", "delta momentum")]
    assert np.abs(runs[0].points[-1] - runs[1].points[-1]).max() > 1e-3


def test_starts_run_together_as_alone():
    together = delta_toy.run("delta momentum", STARTS, 25, EXAMPLES, lr=LR, mu=MU)
    alone = delta_toy.run("delta momentum", STARTS[1:2], 25, EXAMPLES, lr=LR, mu=MU)
    np.testing.assert_array_equal(together.points[:, 1], alone.points[:, 0])


def test_the_global_basin_is_where_both_outputs_are_in_the_deeper_well():
    w_global = np.linalg.solve(np.array(delta_toy.INPUTS), np.full(2, -1.04))
    w_local = np.linalg.solve(np.array(delta_toy.INPUTS), np.full(2, 0.96))
    run = delta_toy.Trajectories("x", np.stack([np.stack([w_global, w_local])]))
    assert run.in_global_basin().tolist() == [True, False]
    assert delta_toy.total_loss(w_global) < delta_toy.total_loss(w_local)


def test_the_demo_toy_prints_and_plots(tmp_path, capsys):
    assert delta_momentum_toy(EXAMPLES, tmp_path)
    text = capsys.readouterr().out
    for spec in delta_toy.SPECS.values():
        assert f"of starts end in the global basin  ({spec})" in text
    assert (tmp_path / "delta_momentum.png").stat().st_size > 10_000


@pytest.mark.parametrize("extra, says", [(["--steps", "5"], "takes no --steps"),
                                         (["--quick"], "takes no --quick")])
def test_the_toy_alone_refuses_training_options(tmp_path, capsys, extra, says):
    """`nlc demo --toy --steps 5` ran the toy and ignored --steps without a word."""
    from nlc.cli import main
    assert main(["demo", "--toy", *extra, "--out", str(tmp_path / "d")]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
