"""Training with an optimizer compiled from a spec: its class for the parameters it can take,
AdamW for the rest.

Muon's update orthogonalizes a matrix (Newton-Schulz); a bias or a norm's gain (1-D) has no
such update, and Muon users train those with AdamW. `SpecWithAdamW` does that for a compiled
optimizer that says so (its class's `matrices_only`): the vectors and scalars go to AdamW,
with the run's betas and weight decay, and the run says how many went where. Every other
parameter is the spec's: each shape is tried once (one step on a copy, a random gradient),
and a class that fails there stops the run with the error, before training: it is never
replaced by AdamW in silence. One optimizer object holds both, so checkpoints, `set_lr` and
the level periods (`every`) see one list of parameter groups and one state.

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


def accepts(cls: type[torch.optim.Optimizer], param: torch.Tensor, matrix: bool) -> bool:
    """Whether `cls` takes `param`: every parameter, or only matrices for a class that
    orthogonalizes them (`matrices_only`, set by the compiler). `matrix`: whether the
    parameter is one (optim.decays: a generated layer's `[d_model]` is a `[heads, d_model]`
    tensor, a vector per head, not a matrix)."""
    return not getattr(cls, "matrices_only", False) or matrix


def try_step(cls: type[torch.optim.Optimizer], shape: torch.Size, name: str,
             lr: float = 1e-3) -> None:
    """One step of `cls` on a copy of a parameter of `shape` with a random gradient: an
    error there, or a parameter that is no longer finite (a hyper that divides by zero at
    the first step, Adam's 1 - b2^t with b2 = 1), stops the run now, located, instead of at
    the first training step."""
    g = torch.Generator().manual_seed(0)
    probe = torch.nn.Parameter(torch.randn(shape, generator=g))
    probe.grad = torch.randn(shape, generator=g)
    try:
        cls([probe], lr=lr).step()
    except Exception as err:  # noqa: BLE001 - any failure of the compiled class is reported
        raise NlcError(f"{name}: {cls.__name__} fails its first step on a parameter of shape "
                       f"{list(shape)}: {type(err).__name__}: {err}",
                       hint="the spec compiled to a class that does not run; nlc train "
                            "does not replace it (rerun with NLC_DEBUG=1 for the traceback, "
                            "or train with --optimizer adamw)") from err
    if not torch.isfinite(probe.detach()).all():
        hypers = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()
                  if n not in ("self", "params", "lr")
                  and p.default is not inspect.Parameter.empty}
        shown = ", ".join(f"{n} = {v:g}" if isinstance(v, float) else f"{n} = {v}"
                          for n, v in hypers.items())
        raise NlcError(f"{name}: {cls.__name__}'s first step on a parameter of shape "
                       f"{list(shape)} (a random gradient, lr {lr:g}) made it non-finite "
                       "(NaN or inf)", hint=f"a hyper that divides by zero at the first step? "
                       f"its hypers: {shown or 'none besides lr'}")


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


def build_spec_optimizer(groups: list, config, spec_class,
                         matrices: dict | None = None) -> torch.optim.Optimizer:
    """Split each level's group (`every` kept) between the spec's class and AdamW.
    `matrices`: parameter -> whether it is a matrix (optim.decays; by the tensor's rank where
    it is not given)."""
    matrices = matrices or {}

    def matrix(p) -> bool:
        return matrices.get(p, p.dim() >= 2)
    if needs_recorder(spec_class):
        raise NlcError(f"{config.optimizer}: {spec_class.__name__} updates each nn.Linear "
                       "weight from the layer's inputs and output gradients, one sample at a "
                       "time (its step needs recorder=nl.LinearRecorder(model)); nlc train "
                       "does not record them",
                       hint="use it from Python with a LinearRecorder, or train with "
                            "--optimizer adamw")
    hypers = [n for n in inspect.signature(spec_class.__init__).parameters
              if n not in ("self", "params")]
    if "lr" not in hypers:
        raise NlcError(f"{config.optimizer}: {spec_class.__name__} has no hyper 'lr', and nlc "
                       f"train sets the learning rate (--lr, warmup, schedule) through it; its "
                       f"hypers are {', '.join(hypers) or 'none'}",
                       hint="name the spec's step size lr (hyper lr = ...)")
    spec_groups, adamw_groups = [], []
    for shape in {p.shape for g in groups for p in g["params"]
                  if accepts(spec_class, p, matrix(p))}:
        try_step(spec_class, shape, config.optimizer, config.lr)
    for group in groups:
        takes = [p for p in group["params"] if accepts(spec_class, p, matrix(p))]
        rest = [p for p in group["params"] if not accepts(spec_class, p, matrix(p))]
        if takes:
            spec_groups.append({"params": takes, "every": group["every"]})
        decay = [p for p in rest if matrix(p)]
        no_decay = [p for p in rest if not matrix(p)]
        for params, weight_decay in ((decay, config.weight_decay), (no_decay, 0.0)):
            if params:
                adamw_groups.append({"params": params, "weight_decay": weight_decay,
                                     "every": group["every"]})
    if not adamw_groups:
        return spec_class(spec_groups, lr=config.lr)
    optimizer = SpecWithAdamW(spec_class, spec_groups, adamw_groups, config.lr,
                              (config.beta1, config.beta2))
    n_spec = sum(len(g["params"]) for g in spec_groups)
    n_adamw = sum(len(g["params"]) for g in adamw_groups)
    optimizer.split_note = (f"{spec_class.__name__} takes {n_spec} matrices; AdamW takes the "
                            f"{n_adamw} vectors and scalars it does not (biases, gains)")
    return optimizer
