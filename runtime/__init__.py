"""nlc.runtime: the shared trainer that compiled layers plug into (nanoGPT-sized, one concept
per module; docs/runtime.md is the user's guide).

    config.py       TrainConfig: every knob, saved as RUN/config.json
    model.py        LanguageModel: embedding, blocks of norm -> mixer -> norm -> MLP, head
    mixers.py       mixer_from_spec: a compiled spec or a builtin -> a module factory
    optim.py        AdamW or a compiled optimizer; warmup + cosine schedule
    tasks.py        mqar (mqar.py), niah (niah.py), lm (lm_data.py) behind one interface
    checkpoint.py   safetensors + JSON, atomic, checked before anything is loaded
    distributed.py  DistributedDataParallel under torchrun (gloo on CPU, nccl on CUDA)
    progress.py     progress bar and metrics.jsonl
    train.py        train(config): the loop; evaluate(model, task)
    plot.py         PNG curves of one or more runs (matplotlib)

Generated layers import their building blocks from here too (ops.py, scan.py, chunked.py,
attention.py).
"""

import importlib

# imported on first use, so that `nlc check` (which reads TrainConfig's fields for its
# command line) does not load torch
_LAZY = {"TrainConfig": "config", "mixer_from_spec": "mixers", "LanguageModel": "model",
         "evaluate": "train", "train": "train"}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"nlc.runtime.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'nlc.runtime' has no attribute {name!r}")
