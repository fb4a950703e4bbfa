"""The delta-momentum toy (`nlc demo`, benchmarks/delta_momentum_toy.py): three optimizers
compiled from specs -- SGD with momentum (examples/sgd_momentum.nl), delta momentum
(examples/delta_momentum.nl) and delta gradient descent (examples/dgd.nl) -- on a
two-parameter loss with a global and a local minimum.

The model is a linear map y = w . x with w in R^2, fed one input per step, alternately x_a =
3 (1, 0) and x_b = 3 (cos 70deg, sin 70deg); the loss of an output is a tilted double well
l(y) = (y^2 - 1)^2 + 0.3 y, deeper at y ~ -1.04 than at y ~ 0.96, so the loss over both
inputs, L(w) = (l(w . x_a) + l(w . x_b)) / 2, has its global minimum where both outputs are
in the deeper well and local minima where one or both are in the shallow one. (Inputs of
norm 3 make delta momentum's decay along the input, mu - lr ||x||^2, differ from momentum's
mu by more than a few percent at the learning rates where momentum is stable.) Nested
Learning (NeurIPS 2025) reports a toy of this kind where delta momentum finds the global
minimum and plain momentum runs past it.

Many starting points run at once, exactly as separate runs: they are the rows of one
`nn.Linear(2, N)` weight; every row sees the same input and only its own output's gradient,
and the three update rules act row by row. Everything is float64 on the CPU."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TILT = 0.3
ANGLE = math.radians(70)
NORM = 3.0
INPUTS = ((NORM, 0.0), (NORM * math.cos(ANGLE), NORM * math.sin(ANGLE)))
HALF_WIDTH = 1.6 / NORM  # starts whose outputs on x_a lie in [-1.6, 1.6]
SPECS = {"momentum": "sgd_momentum.nl", "delta momentum": "delta_momentum.nl",
         "delta gradient descent": "dgd.nl"}
SETTING = (0.005, 0.9)  # (lr, mu) of `nlc demo`'s run and plot
STEPS = 400


def hypers(optimizer: str, lr: float, mu: float) -> dict:
    """The same lr for all three, the same mu for both momenta (DGD has none)."""
    return {"lr": lr} if optimizer == "delta gradient descent" else {"lr": lr, "mu": mu}


def well(y):
    return (y * y - 1) ** 2 + TILT * y


def barrier() -> float:
    """The local maximum of the well between its two minima: l'(y) = 4y^3 - 4y + TILT."""
    roots = np.roots([4.0, 0.0, -4.0, TILT]).real
    return float(sorted(roots)[1])


def total_loss(w: np.ndarray) -> np.ndarray:
    """L at points w [..., 2]."""
    return sum(well(w @ np.array(x)) for x in INPUTS) / len(INPUTS)


@dataclass
class Trajectories:
    optimizer: str
    points: np.ndarray       # [steps + 1, N, 2]

    def final_outputs(self) -> np.ndarray:
        """[N, 2]: each start's outputs on x_a and x_b at the end."""
        return self.points[-1] @ np.array(INPUTS).T

    def in_global_basin(self) -> np.ndarray:
        """[N]: both outputs past the barrier, on the deeper side; a run that diverged (a
        non-finite point) is not."""
        y = self.final_outputs()
        return np.isfinite(y).all(axis=1) & (y < barrier()).all(axis=1)


def run(optimizer: str, starts: np.ndarray, steps: int, examples: Path,
        **hypers) -> Trajectories:
    """Train from every row of `starts` [N, 2] with the optimizer compiled from its spec."""
    from nlc.emit import load_optimizer
    from nlc.runtime.library.ops import LinearRecorder
    from nlc.runtime.trainer.spec_optim import needs_recorder
    cls = load_optimizer(str(examples / SPECS[optimizer]))
    layer = torch.nn.Linear(2, len(starts), bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.asarray(starts, dtype=np.float64)))
    opt = cls(layer.parameters(), **hypers)
    recorder = LinearRecorder(layer) if needs_recorder(cls) else None
    inputs = torch.tensor(INPUTS, dtype=torch.float64)
    points = [layer.weight.detach().numpy().copy()]
    try:
        for t in range(steps):
            opt.zero_grad()
            well(layer(inputs[t % 2][None])).sum().backward()
            opt.step(**({"recorder": recorder} if recorder else {}))
            points.append(layer.weight.detach().numpy().copy())
    finally:
        if recorder:
            recorder.close()
    return Trajectories(optimizer, np.stack(points))


def grid(n: int, half_width: float = HALF_WIDTH) -> np.ndarray:
    """n x n starting points on [-half_width, half_width]^2, [n * n, 2]."""
    axis = np.linspace(-half_width, half_width, n)
    return np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)


def shown_starts(n: int) -> list[int]:
    """The grid's four corners (indices into `grid(n)`): the starts the plot draws."""
    return [0, n - 1, n * (n - 1), n * n - 1]


def plot(runs: list[Trajectories], shown: list[int], path: Path, title: str) -> Path:
    """The loss's contours and each optimizer's trajectories from the starts `shown`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    edge = 1.3 * HALF_WIDTH
    span = np.linspace(-edge, edge, 241)
    mesh = np.stack(np.meshgrid(span, span), axis=-1)
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4.6), sharey=True)
    for ax, r in zip(np.atleast_1d(axes), runs):
        ax.contour(span, span, total_loss(mesh), levels=30, cmap="Greys", linewidths=0.6)
        for i in shown:
            p = r.points[:, i]
            p = p[np.isfinite(p).all(axis=1) & (np.abs(p) < edge).all(axis=1)]
            line, = ax.plot(p[:, 0], p[:, 1], lw=1.2)
            ax.plot(*p[0], "o", color=line.get_color(), ms=4)
            ax.plot(*p[-1], "*", color=line.get_color(), ms=10)
        ax.set_title(f"{r.optimizer}: {r.in_global_basin().mean():.0%} of starts end "
                     "in the global basin", fontsize=9)
        ax.set_xlabel("w1")
        ax.set_xlim(-edge, edge)
        ax.set_ylim(-edge, edge)
    np.atleast_1d(axes)[0].set_ylabel("w2")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
