"""Whether a model fits in memory, found before it is built: `--d-model 200000` is refused
with the size it would need, not ended by the allocator (or the kernel's OOM killer).

The model is built once on the meta device, which allocates nothing, to count its parameter
bytes. Those alone are a lower bound of what training needs (gradients and optimizer state
come on top), so a run refused here could never have started. The model is built on the CPU
and then moved, so both the CPU's memory and the device's count.
"""

from __future__ import annotations

import os

import torch
from nlc.runtime.trainer.model import LanguageModel

from nlc.errors import NlcError

GIB = 1 << 30


def parameter_bytes(config, mixer_factory, mlp_factory) -> int | None:
    """The model's parameter bytes, or None for a module that cannot be built on meta."""
    try:
        with torch.device("meta"):
            model = LanguageModel(config, mixer_factory, mlp_factory)
    except Exception:  # a module that cannot be built on meta is measured by building it
        return None
    return sum(p.numel() * p.element_size() for p in model.parameters())


def memory_of(device: torch.device) -> tuple[int, str] | None:
    """The bytes of memory the model must fit in, and where they are; None if unknown."""
    try:
        found = [(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "the CPU")]
    except (AttributeError, ValueError, OSError):  # no sysconf: not POSIX
        found = []
    if device.type == "cuda":
        found.append((torch.cuda.get_device_properties(device).total_memory, str(device)))
    return min(found, default=None)


def too_large(config, need: int | None, memory: tuple[int, str] | None) -> NlcError:
    size = f"{need / GIB:,.1f} GiB" if need is not None else "more memory than there is"
    have = f", more than the {memory[0] / GIB:,.1f} GiB of {memory[1]}" if memory else ""
    return NlcError(
        f"--d-model {config.d_model}, --n-layers {config.n_layers}: the model's parameters "
        f"alone need {size}{have}",
        hint="use a smaller --d-model or --n-layers, or smaller dims of the spec (-D NAME=VALUE)")


def check_fits(config, mixer_factory, mlp_factory, device: torch.device) -> None:
    need = parameter_bytes(config, mixer_factory, mlp_factory)
    memory = memory_of(device)
    if need is not None and memory is not None and need > memory[0]:
        raise too_large(config, need, memory)


def build_model(config, mixer_factory, mlp_factory, device: torch.device) -> LanguageModel:
    """The model on `device`; an allocation that fails all the same is the same refusal."""
    try:
        return LanguageModel(config, mixer_factory, mlp_factory).to(device)
    except (MemoryError, RuntimeError) as err:
        if not isinstance(err, (MemoryError, torch.OutOfMemoryError)) \
                and "allocate" not in str(err):
            raise
        raise too_large(config, parameter_bytes(config, mixer_factory, mlp_factory),
                        memory_of(device)) from None
