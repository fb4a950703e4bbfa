"""nlc.runtime.trainer: the trainer that compiled layers plug into (nanoGPT-sized, one concept
per module; docs/runtime.md is the user's guide). It never imports the compiler: a spec
reaches it compiled, as a module factory or optimizer class (nlc/factories.py makes them;
tests/test_runtime_layout.py checks the imports).

    config.py       TrainConfig: every knob, saved as RUN/config.json
    model.py        LanguageModel: embedding, blocks of norm -> mixer -> norm -> MLP, head
    memory.py       a model too large for memory refused with its size, before it is built
    mixers.py       builtin mixers and MLPs as module factories; the spec text a run keeps
    optim.py        AdamW or a given (compiled) optimizer class; warmup + cosine schedule
    spec_optim.py   a compiled optimizer beside AdamW for the parameters it cannot take
    tasks.py        mqar (mqar.py), niah (niah.py), lm (lm_data.py) behind one interface
    lengths.py      niah needles at other lengths than the training one, by depth band
    checkpoint.py   safetensors + JSON, atomic, checked before anything is loaded
                    (checkpoint_state.py checks state.json's values)
    distributed.py  DistributedDataParallel under torchrun (gloo on CPU, nccl on CUDA)
    progress.py     progress bar and metrics.jsonl
    diverged.py     which module and level blew up when a run diverges
    train.py        train(config): the loop; evaluate(model, task)
    plot.py         PNG curves of one or more runs (matplotlib)
"""
