"""The needle at other lengths than the training one: S-NIAH accuracy per haystack length and
per needle-depth band (Titans, Behrouz et al. 2025, arXiv:2501.00663, Table 2; the task is
RULER's S-NIAH-1, niah.py).

    for each length L of config.niah_eval_lengths:
        example i (of eval_examples) from the stream "niah-eval-L/i": its needle in depth band
            b = i mod niah_depth_bands, at a depth drawn uniformly inside the band
        batches of at most batch_size * seq_len tokens (a training batch's token count)
        the model over each batch: whole, or in segments with the states carried (segments.py)
    -> {"L": {"accuracy", "loss", "examples", "bands": [the accuracy of each band]}}

Any length runs: the model has no absolute positions (the builtin attention rotates its
queries and keys, RoPE, at any length; recurrent layers are ordered by construction), so
a longer context is only a longer input. Segments: `carry_state` when the run trains with
it; else `seq_len` when every mixer keeps a state, which gives the value of one call while
memory stays that of a training-length sequence; attention keeps none and reads the whole
sequence. Only the logits at the value's digits are kept.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from nlc.runtime.trainer import distributed
from nlc.runtime.trainer.model import keeps_state
from nlc.runtime.trainer.niah import IGNORE, needles_found, niah_batch
from nlc.runtime.trainer.segments import forward_segments
from nlc.runtime.trainer.tasks import generator_for


def eval_set(config, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, band) of the `eval_examples` needles at `length`, depths stratified
    over `niah_depth_bands` bands; example i comes from its own stream, so the set does not
    depend on the batch size or the number of ranks."""
    c = config
    rows, bands = [], []
    for i in range(c.eval_examples):
        generator = generator_for(c.seed, f"niah-eval-{length}", i)
        band = i % c.niah_depth_bands
        depth = (band + float(torch.rand((), generator=generator))) / c.niah_depth_bands
        rows.append(niah_batch(generator, 1, length, c.niah_digits, depth))
        bands.append(band)
    return (torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows]),
            torch.tensor(bands))


def segment_for(model, config) -> int:
    """Tokens per call at long lengths: carry_state, else seq_len when every mixer keeps a
    state, else 0 (the whole sequence)."""
    if config.carry_state:
        return config.carry_state
    if all(keeps_state(block.mixer) for block in model.blocks):
        return config.seq_len
    return 0


def digit_logits(model, inputs: torch.Tensor, digits: int, segment: int) -> torch.Tensor:
    """The logits [B, digits, vocab] at the last `digits` positions, where the value is."""
    if not segment or segment >= inputs.shape[1]:
        return model(inputs)[:, -digits:]
    first = inputs.shape[1] - digits

    def keep(start, end, logits):
        return logits[:, max(0, first - start):] if end > first else None

    kept, _ = forward_segments(model, inputs, segment, on_segment=keep)
    return torch.cat([k for k in kept if k is not None], 1)


@torch.no_grad()
def evaluate_lengths(model, config, world=None, autocast=None) -> dict:
    """Accuracy and loss at each of `config.niah_eval_lengths` (see the module docstring);
    ranks split each set and add their counts."""
    world = world or distributed.World()
    autocast = autocast or contextlib.nullcontext
    was_training = model.training
    model.eval()
    segment, n_bands, results = segment_for(model, config), config.niah_depth_bands, {}
    for length in config.niah_eval_lengths:
        inputs, targets, bands = eval_set(config, length)
        per_batch = max(1, config.batch_size * config.seq_len // length)
        sums = {"loss_sum": 0.0, **{f"found_{b}": 0 for b in range(n_bands)}}
        for first in range(world.rank * per_batch, config.eval_examples,
                           per_batch * world.world_size):
            rows = slice(first, first + per_batch)
            with autocast():
                logits = digit_logits(model, inputs[rows].to(world.device), config.niah_digits,
                                      segment).float()
            tail = targets[rows, -config.niah_digits:].to(world.device)
            sums["loss_sum"] += float(F.cross_entropy(logits.flatten(0, 1), tail.flatten(),
                                                      ignore_index=IGNORE, reduction="sum"))
            found = needles_found(logits, tail).cpu()
            for b in range(n_bands):
                sums[f"found_{b}"] += int(found[bands[rows] == b].sum())
        sums = distributed.all_reduce_sums(sums, world)
        per_band = [int((bands == b).sum()) for b in range(n_bands)]
        found = [sums[f"found_{b}"] for b in range(n_bands)]
        results[str(length)] = {
            "accuracy": sum(found) / config.eval_examples,
            "loss": sums["loss_sum"] / (config.eval_examples * config.niah_digits),
            "examples": config.eval_examples,
            "bands": [f / n if n else None for f, n in zip(found, per_band)]}
    model.train(was_training)
    return results
