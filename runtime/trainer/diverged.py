"""Where a diverged run blew up: the first parameter, module and level with non-finite values.

When a step's loss is not finite the trainer skips that step's update (runtime/trainer/train.py), so
the weights are still those of the last finite step. `locate_nonfinite` then replays the
failing batch through the model, block by block, and names

- the parameters that are already non-finite (a run resumed from corrupt weights), else
- the first module (`blocks.1.mixer`, `blocks.0.mlp`, `head`, ...) whose output is not finite,
  and, for a generated layer, which of its levels ended the sequence with a non-finite state
  (its forward with a `cache` returns every level's final state by level name).
"""

from __future__ import annotations

import torch

from nlc.runtime.trainer.model import first_output


def _finite(value) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return all(_finite(v) for v in value)
    return True


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if not _finite(p.detach())]


def nonfinite_gradients(model: torch.nn.Module) -> list[str]:
    """The parameters whose gradient holds inf or NaN, in the model's order."""
    return [name for name, p in model.named_parameters()
            if p.grad is not None and not _finite(p.grad)]


def describe_gradients(loss: float, names) -> str:
    """Where a backward pass with a finite loss went non-finite, in one clause."""
    names = list(names)
    first = f"; non-finite gradients in {listed(names)}" if names else ""
    return (f"the loss is finite ({loss:.4g}) but the backward pass overflowed{first} "
            "(weights grown by a learning rate too large for the model: a lower --lr; or a "
            "recurrence that amplifies gradients over a long sequence: a shorter --seq-len, "
            "--carry-state segments, or gates that retain less)")


def nonfinite_levels(mixer: torch.nn.Module, x: torch.Tensor) -> list[str] | None:
    """Levels of a generated layer whose final state on input `x` is not finite; None for
    modules whose levels' states are not known (the builtins, a compiled model)."""
    if not callable(getattr(mixer, "initial_state", None)):
        return None
    cache: dict = {}
    try:
        mixer(x, cache=cache)
    except (TypeError, RuntimeError):  # not the generated calling convention
        return None
    if not isinstance(cache.get("states"), dict):
        return None
    return sorted(name for name, state in cache["states"].items() if not _finite(state))


def _where(module: torch.nn.Module, x: torch.Tensor) -> str:
    """Which levels of a generated layer reached a non-finite state; where none did, that
    the reads or the output made the values (a division by a norm that is zero). In a
    generated model (`model Name { block A -> B }`: its layers and norms inside), its first
    layer whose output is not finite, and that layer's levels."""
    if getattr(module, "residual", False) and hasattr(module, "layers"):
        for j, (norm, layer) in enumerate(zip(module.norms, module.layers)):
            h = norm(x)
            out = first_output(layer(h))
            if not _finite(out):
                return f" (its layer {j}, {type(layer).__name__}){_where(layer, h)}"
            x = x + out
        return ""
    levels = nonfinite_levels(module, x)
    if levels:
        return f"; level(s) {', '.join(levels)} reached a non-finite state"
    if levels is not None:
        return ("; every level's state is finite, so a read, a context value or the output "
                "made it (a division by zero, such as a norm of a zero state?)")
    return ""


def listed(names: list[str]) -> str:
    """The first three names, and how many more."""
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f"{', '.join(names[:3])}{more}"


@torch.no_grad()
def locate_nonfinite(model: torch.nn.Module, tokens: torch.Tensor) -> str:
    """One line naming where `model` first produces non-finite values on `tokens`."""
    bad = nonfinite_parameters(model)
    if bad:
        return f"non-finite parameters: {listed(bad)}"
    x = model.embed(tokens)
    if not _finite(x):
        return "the embedding's output is not finite"
    for i, block in enumerate(model.blocks):
        inside = block.norm1 is None  # a compiled model: its norms and residuals inside it
        h = x if inside else block.norm1(x)
        out = first_output(block.mixer(h))
        if not _finite(out):
            return f"the first non-finite output is blocks.{i}.mixer's{_where(block.mixer, h)}"
        x = out if inside else x + out
        if block.mlp is not None:
            h = block.norm2(x)
            out = first_output(block.mlp(h))
            if not _finite(out):
                return f"the first non-finite output is blocks.{i}.mlp's{_where(block.mlp, h)}"
            x = x + out
    if not _finite(model.head(model.norm(x))):
        return "the first non-finite output is the head's (the logits)"
    return "the forward pass is finite again on a replay (the loss overflowed in float32)"
