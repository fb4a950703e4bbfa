"""Where a block's modules come from: a compiled spec, or a builtin for tests and baselines.

    mixer_from_spec("examples/deltanet.nl", heads=4)  ->  factory(d_model) -> nn.Module
    mixer_from_spec("builtin:attention")              ->  softmax attention (model.py)

A spec is compiled by `nlc.emit.load_layer(path, d_model=D, **overrides)` at the model's
width D (every layer spec declares `dims d_model`), which returns an `nn.Module` class
constructed as `cls(d_model=D)`; nlc.emit is imported only when a spec is used, so the
runtime trains the builtins on its own.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from nlc.runtime.trainer.model import MLP, CausalSelfAttention, ModuleFactory

from nlc.errors import NlcError

BUILTINS = {
    "builtin:attention": "causal softmax attention with rotary positions (dims: heads)",
    "builtin:mlp": "the Transformer MLP, d -> ratio*d -> d with GELU (dims: ratio)",
}


def mixer_from_spec(path: str, **dims) -> ModuleFactory:
    """A factory `d_model -> nn.Module` for a layer spec (`.nl`) or a builtin name.

    `dims` override the spec's dims and hypers (as `nlc train -D NAME=VALUE` does).
    """
    if path.startswith("builtin:"):
        return _builtin(path, dims)
    if not Path(path).is_file():
        raise NlcError(f"{path}: no such spec file (or use one of {', '.join(BUILTINS)})")
    try:
        from nlc.emit import load_layer
    except ImportError:
        raise NlcError(f"{path}: this nlc cannot compile specs to PyTorch yet "
                       "(nlc.emit.load_layer is missing); use builtin:attention") from None
    compiled: dict[int, type] = {}

    def layer(d_model: int):
        # the spec's d_model is the model's width: compile at that width, once per width
        if dims.get("d_model", d_model) != d_model:
            raise NlcError(f"{path}: -D d_model={dims['d_model']:g} differs from the model's "
                           f"width {d_model}; set the width with --d-model")
        if d_model not in compiled:
            try:
                compiled[d_model] = load_layer(path, **{**dims, "d_model": d_model})
            except OSError as err:  # the generated module's file, named after the spec
                raise NlcError(f"{path}: cannot write the compiled module ({err.strerror}); "
                               "is the spec's file name too long?") from None
        return compiled[d_model](d_model=d_model)
    return layer


def _builtin(name: str, dims: dict) -> ModuleFactory:
    allowed = {"builtin:attention": {"heads"}, "builtin:mlp": {"ratio"}}.get(name)
    if allowed is None:
        raise NlcError(f"unknown builtin '{name}' (expected one of {', '.join(BUILTINS)})")
    extra = sorted(set(dims) - allowed)
    if extra:
        raise NlcError(f"{name} has no dim(s) {', '.join(extra)} "
                       f"(it takes {', '.join(sorted(allowed))})")
    if name == "builtin:attention":
        heads = int(dims["heads"]) if "heads" in dims else None

        def attention(d_model: int):
            try:
                return CausalSelfAttention(d_model, heads)
            except ValueError as err:
                raise NlcError(f"builtin:attention: {err}") from None
        return attention
    ratio = int(dims.get("ratio", 4))
    return lambda d_model: MLP(d_model, ratio)


def block_mlp_factory(name: str, ratio: int) -> ModuleFactory:
    """The second half of each block: `builtin:mlp` (width ratio*d), `none`, or a spec."""
    if name == "none" or (name == "builtin:mlp" and ratio == 0):
        return lambda d_model: None
    if name == "builtin:mlp":
        return mixer_from_spec(name, ratio=ratio)
    return mixer_from_spec(name)


def spec_text(path: str) -> str:
    """The text a run's checkpoints are tied to: the spec file's contents, or the builtin name."""
    if path.startswith("builtin:") or path == "none":
        return path + "\n"
    if not Path(path).exists():
        raise NlcError(f"{path}: no such spec file (or use one of {', '.join(BUILTINS)})")
    from nlc.pipeline import read_spec
    # bounded, and refuses devices and FIFOs; newlines normalized as text-mode reading did,
    # so the hash a checkpoint is tied to is unchanged
    return read_spec(path).replace("\r\n", "\n").replace("\r", "\n")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
