"""nlc.runtime: two packages, told apart by name.

    library/   what generated modules import (ops, scans, chunked forms, Triton kernels)
    trainer/   the trainer that compiled layers plug into (docs/runtime.md); it is handed
               module factories and never imports the compiler (nlc/factories.py compiles)
"""

import importlib

# imported on first use, so that `nlc check` (which reads TrainConfig's fields for its
# command line) does not load torch
_LAZY = {"TrainConfig": "config", "builtin_mixer": "mixers", "LanguageModel": "model",
         "evaluate": "train", "train": "train"}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"nlc.runtime.trainer.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'nlc.runtime' has no attribute {name!r}")
