"""Optimizers and the learning-rate schedule.

AdamW (Loshchilov & Hutter 2019) by default, with weight decay on matrices and embeddings
only (nanoGPT's grouping). Any `torch.optim.Optimizer` subclass can replace it: an
optimizer compiled from a spec (`optimizer Adam { ... }`, Nested Learning's optimizers as
memories over gradients; nlc/factories.py compiles it, the trainer is handed the class) is
constructed as `cls(params, lr=config.lr)`. The schedule sets each group's `lr` before
every step, so it applies to either kind and holds no state.
"""

from __future__ import annotations

import math

import torch
from nlc.runtime.trainer.mixers import needs_compiling


def level_periods(model: torch.nn.Module) -> dict[torch.nn.Parameter, int]:
    """Each parameter's period in optimizer steps, from the generated layers'
    `parameter_groups()` (a level `every k steps` owns the parameters declared in it)."""
    periods = {}
    for module in model.modules():
        groups = getattr(module, "parameter_groups", None)
        if callable(groups):
            for group in groups():
                for p in group["params"]:
                    periods[p] = int(group["every"])
    return periods


def decays(model: torch.nn.Module) -> dict[torch.nn.Parameter, bool]:
    """Whether AdamW decays each parameter: matrices and embeddings, not vectors, gains,
    biases or scalars. A generated layer's parameters carry a leading heads axis (docs/emit.md:
    `w_beta : [d_model]` is `[heads, d_model]`), so their rank is the spec's, one less than
    the tensor's: a per-head vector or bias is not a matrix and is not pulled toward zero."""
    per_head = {p for module in model.modules()
                if callable(getattr(module, "parameter_groups", None))
                for group in module.parameter_groups() for p in group["params"]}
    return {p: p.dim() - (p in per_head) >= 2 for p in model.parameters()}


def build_optimizer(model: torch.nn.Module, config,
                    optimizer_class: type[torch.optim.Optimizer] | None = None
                    ) -> torch.optim.Optimizer:
    """AdamW over `model`'s parameters, or `optimizer_class(groups, lr=config.lr)`. Each
    parameter group carries `every`, its level's period in steps (see `step_levels`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    periods = level_periods(model)
    decayed = decays(model)
    groups = []
    for every in sorted({periods.get(p, 1) for p in params}):
        mine = [p for p in params if periods.get(p, 1) == every]
        if optimizer_class is not None:
            groups.append({"params": mine, "every": every})
            continue
        decay = [p for p in mine if decayed[p]]
        no_decay = [p for p in mine if not decayed[p]]
        groups += [{"params": decay, "weight_decay": config.weight_decay, "every": every},
                   {"params": no_decay, "weight_decay": 0.0, "every": every}]
    if optimizer_class is not None and optimizer_class.__module__.startswith("nlc_generated_"):
        from nlc.runtime.trainer.spec_optim import build_spec_optimizer  # compiled from a spec
        return build_spec_optimizer(groups, config, optimizer_class, decayed)
    if optimizer_class is not None:  # a class of the caller's: all parameters, as given
        return optimizer_class(groups, lr=config.lr)
    # foreach=False: one parameter at a time, the same arithmetic on every machine
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2),
                             foreach=False)


def due(group: dict, step: int) -> bool:
    """Whether a group with period `every` steps after optimizer step `step` (from 0)."""
    return (step + 1) % group.get("every", 1) == 0


def step_levels(optimizer: torch.optim.Optimizer, step: int) -> None:
    """Optimizer step `step` (from 0) for the groups whose level is due: a group with
    `every = k` steps after steps k - 1, 2k - 1, ... with the sum of its gradients since its
    last step; the other groups keep their gradients. Then the stepped groups' gradients
    are cleared (the training step does not zero them)."""
    held = []
    for group in optimizer.param_groups:
        if not due(group, step):
            for p in group["params"]:
                held.append((p, p.grad))
                p.grad = None  # torch optimizers skip parameters without a gradient
    optimizer.step()
    for p, grad in held:
        p.grad = grad
    for group in optimizer.param_groups:
        if due(group, step):
            for p in group["params"]:
                p.grad = None


def optimizer_class_for(config) -> type[torch.optim.Optimizer] | None:
    """None for AdamW (built by `build_optimizer`); an optimizer spec must come compiled."""
    if config.optimizer.lower() == "adamw":
        return None
    raise needs_compiling(config.optimizer, "optimizer_class")


WARMUP_SHARE = 10  # warmup takes at most 1/10 of the run's steps


def warmup_steps(config) -> int:
    """`config.warmup`, clamped to a tenth of `config.steps`: a short run (the default warmup
    of 100 with `--steps 100`) must not spend all its steps warming up."""
    return min(config.warmup, config.steps // WARMUP_SHARE)


def lr_at(step: int, config) -> float:
    """Linear warmup over `warmup_steps(config)` steps, then cosine decay to
    `lr * min_lr_ratio`.

    `step` counts from 0; step 0 already trains at lr / warmup.
    """
    warmup = warmup_steps(config)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    span = max(1, config.steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
