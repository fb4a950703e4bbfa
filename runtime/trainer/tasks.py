"""The tasks a run trains on, behind one interface, and the seeding that makes data exact.

Every batch is a pure function of (seed, stream, index): the training batch of step s is
drawn from `generator_for(seed, "mqar-train", s)`, so a resumed run sees the same batches as
an uninterrupted one, and data-parallel ranks slice one global batch
(runtime/trainer/distributed.py) instead of drawing their own. The eval set is fixed by the seed and drawn from its own stream.

    task     tokens              targets                         metric
    mqar     Zoology vocabulary  the queried values (mqar.py)    accuracy over queries
    niah     bytes               the needle's digits (niah.py)   needles recovered exactly
    lm       bytes               every next byte (lm_data.py)    bits per byte
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from nlc.runtime.trainer.lm_data import ByteCorpus
from nlc.runtime.trainer.mqar import mqar_batch, token_accuracy
from nlc.runtime.trainer.niah import needle_accuracy, niah_batch

IGNORE = -100
Batch = tuple[torch.Tensor, torch.Tensor]


def generator_for(seed: int, stream: str, index: int) -> torch.Generator:
    """A CPU generator seeded from sha256(seed/stream/index): independent, reproducible streams."""
    digest = hashlib.sha256(f"{seed}/{stream}/{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class Task:
    """`train_batch(step)` and `eval_batches()` give global batches `(inputs, targets)` of
    int64 [B, T] on the CPU; `score` counts what `metrics` turns into the reported numbers."""

    name = ""
    vocab_size = 0
    metric = "accuracy"

    def __init__(self, config):
        self.config = config
        self._eval_set: Batch | None = None

    def draw(self, generator: torch.Generator, size: int) -> Batch:
        raise NotImplementedError

    def train_batch(self, step: int) -> Batch:
        c = self.config
        return self.draw(generator_for(c.seed, f"{self.name}-train", step), c.batch_size)

    def eval_batches(self) -> Iterator[Batch]:
        """The eval set in batches of `batch_size`; example i is drawn from its own stream,
        so the set does not depend on the batch size or the number of ranks."""
        c = self.config
        if self._eval_set is None:
            rows = [self.draw(generator_for(c.seed, f"{self.name}-eval", i), 1)
                    for i in range(c.eval_examples)]
            self._eval_set = (torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows]))
        inputs, targets = self._eval_set
        for first in range(0, c.eval_examples, c.batch_size):
            yield inputs[first:first + c.batch_size], targets[first:first + c.batch_size]

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> dict:
        """Sums over a batch (they add across batches and ranks)."""
        losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                 ignore_index=IGNORE, reduction="none")
        loss = losses.double().sum()  # float64 sums: the same total however the set is split
        correct, counted = self.count_correct(logits, targets)
        return {"loss_sum": float(loss), "tokens": int((targets != IGNORE).sum()),
                "correct": correct, "counted": counted}

    def count_correct(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
        return token_accuracy(logits, targets)

    def metrics(self, sums: dict) -> dict:
        loss = sums["loss_sum"] / max(1, sums["tokens"])
        out = {"loss": loss}
        if self.metric == "accuracy":
            out["accuracy"] = sums["correct"] / max(1, sums["counted"])
        else:
            out["bits_per_byte"] = loss / math.log(2)
        return out


class MqarTask(Task):
    """Multi-query associative recall (Zoology, Arora et al. 2023): runtime/trainer/mqar.py."""

    name = "mqar"

    def __init__(self, config):
        super().__init__(config)
        self.vocab_size = config.mqar_vocab_size
        self.draw(generator_for(0, "check", 0), 1)  # refuse bad parameters before training

    def draw(self, generator, size):
        c = self.config
        return mqar_batch(generator, size, c.seq_len, c.mqar_vocab_size, c.mqar_num_kv_pairs,
                          c.mqar_power_a, c.mqar_random_non_queries)


class NiahTask(Task):
    """S-NIAH-1-style passkey retrieval (RULER, Hsieh et al. 2024): runtime/trainer/niah.py."""

    name = "niah"
    vocab_size = 256

    def __init__(self, config):
        super().__init__(config)
        self.draw(generator_for(0, "check", 0), 1)

    def draw(self, generator, size):
        return niah_batch(generator, size, self.config.seq_len, self.config.niah_digits)

    def count_correct(self, logits, targets):
        return needle_accuracy(logits, targets)


class LmTask(Task):
    """Byte-level language modeling, bits per byte: runtime/trainer/lm_data.py."""

    name = "lm"
    vocab_size = 256
    metric = "bits_per_byte"

    def __init__(self, config):
        super().__init__(config)
        self.corpus = ByteCorpus.load(config.lm_files, config.lm_val_fraction)
        self.windows = self.corpus.eval_windows(config.seq_len, config.eval_examples)

    def draw(self, generator, size):
        return self.corpus.train_batch(generator, size, self.config.seq_len)

    def eval_batches(self):
        c = self.config
        for first in range(0, self.windows, c.batch_size):
            yield self.corpus.eval_batch(first, min(c.batch_size, self.windows - first), c.seq_len)


TASK_CLASSES = {"mqar": MqarTask, "niah": NiahTask, "lm": LmTask}


def make_task(config) -> Task:
    return TASK_CLASSES[config.task](config)
