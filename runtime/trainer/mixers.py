"""Where a block's modules come from: a factory `d_model -> nn.Module` the caller hands in, or
a builtin for tests and baselines.

    builtin_mixer("builtin:attention", heads=4)   ->  softmax attention (model.py)
    builtin_block_mlp("builtin:mlp", ratio=4)     ->  the Transformer MLP; "none": no MLP
    mixer_factory_for(config)                     ->  config.spec's builtin, or an error

The trainer never compiles: a spec file reaches it as a factory (nlc/factories.py compiles
one; `nlc train` passes it to `train`). It only reads the spec's text, which a run copies and
its checkpoints are tied to (`spec_text`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from nlc.runtime.trainer.model import MLP, CausalSelfAttention, ModuleFactory

from nlc.errors import NlcError
from nlc.fileio import read_spec

BUILTINS = {
    "builtin:attention": "causal softmax attention with rotary positions (dims: heads)",
    "builtin:mlp": "the Transformer MLP, d -> ratio*d -> d with GELU (dims: ratio)",
}


def builtin_mixer(name: str, **dims) -> ModuleFactory:
    """A factory `d_model -> nn.Module` for a builtin; `dims` as `nlc train -D NAME=VALUE`."""
    allowed = {"builtin:attention": {"heads"}, "builtin:mlp": {"ratio"}}.get(name)
    if allowed is None:
        raise NlcError(f"unknown builtin '{name}' (expected one of {', '.join(BUILTINS)})")
    extra = sorted(set(dims) - allowed)
    if extra:
        raise NlcError(f"{name} has no dim(s) {', '.join(extra)} "
                       f"(it takes {', '.join(sorted(allowed))})")
    meaning = {"heads": "the number of attention heads",
               "ratio": "the hidden width is ratio * d_model"}
    for dim, value in dims.items():
        if isinstance(value, bool) or not float(value).is_integer() or value < 1:
            raise NlcError(f"-D {dim}={value:g}: {name}'s {dim} must be a positive whole number "
                           f"({meaning[dim]})")
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


def builtin_block_mlp(name: str, ratio: int) -> ModuleFactory:
    """The second half of each block: `builtin:mlp` (width ratio*d), `none`, or a builtin."""
    if name == "none" or (name == "builtin:mlp" and ratio == 0):
        return lambda d_model: None
    if name == "builtin:mlp":
        return builtin_mixer(name, ratio=ratio)
    return builtin_mixer(name)


def is_builtin(name: str) -> bool:
    """Whether the trainer builds `name` itself (a builtin, or `none` for the block MLP)."""
    return name.startswith("builtin:") or name == "none"


def is_spec_file(name: str) -> bool:
    """Whether a --mlp or --optimizer value names a spec file: not a builtin, `none` or
    `adamw` (those two in any case, as the flags take them)."""
    return not is_builtin(name) and name.lower() not in ("none", "adamw")


def mixer_factory_for(config) -> ModuleFactory:
    """The mixer `config.spec` names, when it is a builtin; a spec file must come compiled."""
    if not config.spec.startswith("builtin:"):
        raise needs_compiling(config.spec, "mixer_factory")
    return builtin_mixer(config.spec, **config.spec_overrides)


def mlp_factory_for(config) -> ModuleFactory:
    """The block MLP `config.mlp` names, when it is a builtin or `none`."""
    if not is_builtin(config.mlp):
        raise needs_compiling(config.mlp, "mlp_factory")
    return builtin_block_mlp(config.mlp, config.mlp_ratio)


def needs_compiling(path: str, argument: str) -> NlcError:
    """The refusal of a spec file given without its compiled form."""
    return NlcError(f"the trainer does not compile specs; pass the compiled form as "
                    f"train(..., {argument}=...)", path=path,
                    hint="nlc.factories.factories_for(config) compiles a config's specs, as "
                         "nlc train does")


def missing_spec_hint(path: str) -> str:
    """What a SPEC or --mlp that names no file may have meant."""
    if f"builtin:{path}" in BUILTINS:
        return f"did you mean 'builtin:{path}'?"
    return f"a .nl file, or one of {', '.join(BUILTINS)} (--mlp also takes none)"


def spec_text(path: str) -> str:
    """The text a run's checkpoints are tied to: the spec file's contents, or the builtin name."""
    if is_builtin(path):
        return path + "\n"
    if not Path(path).exists():
        raise NlcError(f"{path}: no such spec file", hint=missing_spec_hint(path))
    # bounded, and refuses devices and FIFOs; newlines normalized as text-mode reading did,
    # so the hash a checkpoint is tied to is unchanged
    return read_spec(path).replace("\r\n", "\n").replace("\r", "\n")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
