"""`nlc bench recall`: Zoology's recall protocol over specs, one `nlc train` run per point.

Arora et al., "Zoology: Measuring and Improving Recall in Efficient Language Models", 2023
(arXiv:2312.04927), Sec. 3 and its Figure 2 configs: MQAR with a vocabulary of 8192, 256
tokens and 16 key-value pairs, two layers and no MLP, model widths 64 to 512, a sweep of
four learning rates (numpy.logspace(-4, -2, 4)) per model and width, 64 epochs of 100,000
examples in batches of 256 (25,000 steps), 3,000 test examples, runs stopped once accuracy
passes 0.99; the best run per model and width is reported.

    for each spec, width, learning rate and seed:   RUN = OUT/runs/<model>-d<W>-lr<LR>-s<S>
        python -m nlc.train_cli train SPEC --config RUN.json --out RUN --quiet   (> RUN/log.txt)

Runs are separate processes, `jobs` at a time (a GPU is filled with several small runs;
nlc/bench/runs.py runs them); nlc/bench/report.py writes the table and the plot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nlc.bench.runs import ATTENTION, Model, Point, check_sweep, train_config


@dataclass(frozen=True)
class RecallSettings:
    """What a recall benchmark runs: the protocol's values unless the command line says."""

    widths: tuple[int, ...] = (64, 128, 256, 512)
    lrs: tuple[float, ...] = (1e-4, 4.6e-4, 2.2e-3, 1e-2)
    seeds: tuple[int, ...] = (0,)
    steps: int = 25_000
    batch_size: int = 256
    seq_len: int = 256
    pairs: int = 16
    vocab: int = 8192
    n_layers: int = 2
    eval_examples: int = 3000
    eval_interval: int = 500
    stop_accuracy: float = 0.99
    devices: tuple[str, ...] = ("auto",)
    jobs: int = 1


# The docs example and the CLI test: a few minutes on two CPU cores (docs/results.md).
QUICK = RecallSettings(widths=(32, 64), lrs=(3e-3, 1e-2), steps=300, batch_size=32,
                       seq_len=64, pairs=4, vocab=256, eval_examples=256, eval_interval=100)


def config_for(point: Point, settings: RecallSettings, out: Path, device: str):
    """The `nlc train` config of one run; MQAR's preconditions (pairs, vocabulary, length)
    are checked before any run."""
    s = settings
    return train_config(point, s, out, device, "mqar", stop_accuracy=s.stop_accuracy,
                        mqar_vocab_size=s.vocab, mqar_num_kv_pairs=s.pairs,
                        mqar_random_non_queries=False)


def check_settings(settings: RecallSettings) -> None:
    check_sweep(settings)


def state_floats(model: Model, width: int, settings: RecallSettings) -> int:
    """Floats of recurrent state per layer and sequence: the generated layer's initial state
    (every level, without positions), or attention's keys and values at the last token."""
    if model.spec == ATTENTION:
        return 2 * settings.seq_len * width
    from nlc.factories import mixer_from_spec
    module = mixer_from_spec(model.spec, **model.dims_at(width))(width)
    layers = getattr(module, "layers", [module])  # a spec's `model`: its layers' states
    total = 0
    for layer in layers:
        for level in layer.initial_state(1).values():
            total += sum(v.numel() for k, v in level.items() if not k.startswith("#"))
    return total
