"""`nlc bench niah`: single needle in a haystack across context lengths, one `nlc train` run
per point (Titans, Behrouz et al. 2025, arXiv:2501.00663, Table 2: S-NIAH at 2K to 16K
tokens; the task is RULER's S-NIAH-1 on bytes, runtime/trainer/niah.py).

    for each spec, width, learning rate and seed:   RUN = OUT/runs/<model>-d<W>-lr<LR>-s<S>
        nlc train SPEC --task niah --seq-len L_train --niah-eval-lengths L_1 .. L_n ...
        RUN/summary.json "eval_lengths": accuracy per length and per depth band

Each model trains at one length (`seq_len`, needles at uniformly random depths) and is then
evaluated at every length of `eval_lengths`, `eval_examples` needles each, spread equally
over `depth_bands` depth bands (runtime/trainer/lengths.py: recurrent layers in segments of
the training length with their states carried, so memory does not grow with the length).
With `carry_state` S, the specs train (and are evaluated) in segments of S tokens with
their states carried (runtime/trainer/segments.py); the builtin attention, which keeps no
state, reads whole sequences. A learning rate's score is its mean accuracy over the lengths
(and seeds); the best per
model and width is reported (nlc/bench/niah_report.py). The runs are those of
nlc/bench/runs.py: separate processes, `jobs` at a time, finished ones read back.

Defaults, for one H200 (`--jobs 8`: 4 models x 2 learning rates at once): width 128, 2
layers and no MLP (as the recall protocol), 1000 steps of 16 sequences of 1024 bytes, 7-digit
needles (RULER's), learning rates 1e-3 and 3e-3, evaluation at 1K, 2K, 4K, 8K and 16K bytes,
128 needles per length in 4 depth bands. The slowest spec, examples/titans.nl, trains at
75k tokens/s eager at width 128 on an H200 (docs/perf.md): 16M tokens in about 4 minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nlc.bench.runs import ATTENTION, Point, check_sweep, train_config
from nlc.errors import NlcError


@dataclass(frozen=True)
class NiahSettings:
    """What a needle benchmark runs: these values unless the command line says."""

    widths: tuple[int, ...] = (128,)
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    seeds: tuple[int, ...] = (0,)
    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 1024
    eval_lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384)
    depth_bands: int = 4
    digits: int = 7
    n_layers: int = 2
    eval_examples: int = 128
    eval_interval: int = 250
    carry_state: int = 0
    cuda_graphs: bool = False
    devices: tuple[str, ...] = ("auto",)
    jobs: int = 1


# The docs' CPU smoke test (docs/results.md) and the CLI test: at width 32 with the specs'
# head dims scaled to it, about 4 minutes of one core for Titans' two runs, under one for
# each other model's.
QUICK = NiahSettings(widths=(32,), lrs=(3e-3, 1e-2), steps=200, batch_size=8, seq_len=256,
                     eval_lengths=(256, 512, 1024, 2048), digits=2, eval_examples=32,
                     eval_interval=100)


def config_for(point: Point, settings: NiahSettings, out: Path, device: str):
    """The `nlc train` config of one run; the needle must fit the training length and every
    evaluation length, which is checked before any run."""
    s = settings
    carry = 0 if point.model.spec == ATTENTION else s.carry_state  # attention keeps no state
    return train_config(point, s, out, device, "niah", niah_digits=s.digits,
                        niah_eval_lengths=list(s.eval_lengths), niah_depth_bands=s.depth_bands,
                        carry_state=carry, cuda_graphs=s.cuda_graphs)


def check_settings(settings: NiahSettings) -> None:
    s = settings
    check_sweep(s, ("eval_lengths",))
    if s.depth_bands > s.eval_examples:
        raise NlcError(f"--depth-bands {s.depth_bands} is more than --eval-examples "
                       f"{s.eval_examples}: some bands would hold no needle")
    if s.cuda_graphs and not all(_is_cuda(d) for d in s.devices):
        raise NlcError(f"--cuda-graphs needs CUDA devices; --device is {','.join(s.devices)}"
                       + (" and no CUDA device is present" if "auto" in s.devices else ""),
                       hint="drop --cuda-graphs, or pass --device cuda")
    if s.cuda_graphs and s.carry_state:
        raise NlcError("--cuda-graphs and --carry-state cannot be combined: a graph replays "
                       "one fixed call, and carried segments pass states between calls")
    if s.carry_state > s.seq_len:
        raise NlcError(f"--carry-state {s.carry_state} is longer than the training length "
                       f"--seq-len {s.seq_len}")


def _is_cuda(device: str) -> bool:
    if device == "auto":
        import torch
        return torch.cuda.is_available()
    return device.startswith("cuda")


def mean_accuracy(run: dict) -> float | None:
    """A finished run's score: its accuracy averaged over the evaluation lengths."""
    lengths = run.get("eval_lengths")
    if run["status"] != "ok" or not lengths:
        return None
    return sum(r["accuracy"] for r in lengths.values()) / len(lengths)
