"""Training with an optimizer compiled from a spec: its class for the parameters it can take,
AdamW for the rest.

Muon's update orthogonalizes a matrix (Newton-Schulz); a bias or a norm's gain (1-D) has no
such update, and Muon users train those with AdamW. `SpecWithAdamW` does that for any compiled
optimizer: each parameter shape is probed once (one step of the spec's class on a copy with a
random gradient); a shape the class fails on goes to AdamW, with the run's betas and weight
decay. One optimizer object holds both, so checkpoints, `set_lr` and the level periods
(`every`) see one list of parameter groups and one state.

An optimizer whose `step` needs a recorder of each `nn.Linear`'s inputs and output gradients
(delta gradient descent, examples/dgd.nl) is refused with the reason: the trainer does not
record them.

Only classes compiled from specs (loaded as `nlc_generated_*` modules) are split; a class
passed to `train(optimizer_class=...)` gets every parameter, as documented there."""

from __future__ import annotations

import inspect

import torch

from nlc.errors import NlcError


def needs_recorder(cls: type[torch.optim.Optimizer]) -> bool:
    return "recorder" in inspect.signature(cls.step).parameters


def accepts(cls: type[torch.optim.Optimizer], shape: torch.Size, cache: dict) -> bool:
    """Whether one step of `cls` runs on a parameter of `shape` (cached per shape)."""
    if shape not in cache:
        probe = torch.nn.Parameter(torch.zeros(shape))
        probe.grad = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        try:
            cls([probe], lr=1e-3).step()
            cache[shape] = bool(torch.isfinite(probe).all())
        except (IndexError, RuntimeError, ValueError, TypeError):
            cache[shape] = False
    return cache[shape]


class SpecWithAdamW(torch.optim.Optimizer):
    """`spec_class` over `spec_groups`, AdamW over `adamw_groups`; one state, one group list
    (the spec's groups first)."""

    def __init__(self, spec_class, spec_groups: list, adamw_groups: list, lr: float,
                 betas: tuple[float, float]):
        self.spec = spec_class(spec_groups, lr=lr) if spec_groups else None
        self.adamw = (torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, foreach=False)
                      if adamw_groups else None)
        self.n_spec = len(spec_groups)
        inner = [o for o in (self.spec, self.adamw) if o is not None]
        super().__init__([g for o in inner for g in o.param_groups], {})
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this one's groups and state (after a load too)."""
        if self.spec is not None:
            self.spec.param_groups = self.param_groups[:self.n_spec]
            self.spec.state = self.state
        if self.adamw is not None:
            self.adamw.param_groups = self.param_groups[self.n_spec:]
            self.adamw.state = self.state

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in (self.spec, self.adamw):
            if optimizer is not None:
                optimizer.step()
        return loss


def build_spec_optimizer(groups: list, config, spec_class) -> torch.optim.Optimizer:
    """Split each level's group (`every` kept) between the spec's class and AdamW."""
    if needs_recorder(spec_class):
        raise NlcError(f"{config.optimizer}: {spec_class.__name__} updates each nn.Linear "
                       "weight from the layer's inputs and output gradients, one sample at a "
                       "time (its step needs recorder=nl.LinearRecorder(model)); nlc train "
                       "does not record them",
                       hint="use it from Python with a LinearRecorder, or train with "
                            "--optimizer adamw")
    cache: dict = {}
    spec_groups, adamw_groups = [], []
    for group in groups:
        takes = [p for p in group["params"] if accepts(spec_class, p.shape, cache)]
        rest = [p for p in group["params"] if not accepts(spec_class, p.shape, cache)]
        if takes:
            spec_groups.append({"params": takes, "every": group["every"]})
        decay = [p for p in rest if p.dim() >= 2]
        no_decay = [p for p in rest if p.dim() < 2]
        for params, weight_decay in ((decay, config.weight_decay), (no_decay, 0.0)):
            if params:
                adamw_groups.append({"params": params, "weight_decay": weight_decay,
                                     "every": group["every"]})
    if not adamw_groups:
        return spec_class(spec_groups, lr=config.lr)
    return SpecWithAdamW(spec_class, spec_groups, adamw_groups, config.lr,
                         (config.beta1, config.beta2))
