"""Single needle in a haystack, in the style of RULER's S-NIAH-1, on bytes.

Hsieh, Sun, Kriman, Acharya, Rekesh, Jia, Zhang, Ginsburg, "RULER: What's the Real Context
Size of Your Long-Context Language Models?", COLM 2024 (arXiv:2404.06654), Sec. 3.1 and
Table 2 (S-NIAH-1: a repeated-noise haystack, a word key, a number value). One sequence:

    The grass is green. The sky is blue. ... One of the special magic numbers for KEY is:
    VALUE. ... Here we go. There and back again. The grass is green. The sky ...
    What is the special magic number for KEY? VALUE

The needle sentence is RULER's, placed at a sentence boundary of uniformly random depth; the
haystack repeats RULER's noise sentences (and so holds no digit); the question is shortened
to fit small contexts. Tokens are bytes (vocabulary 256). Targets are the value's digits
only (-100 elsewhere); a sequence counts as correct when every digit is the argmax, which is
exactly when greedy decoding after the question recovers the needle.
"""

from __future__ import annotations

import torch

from nlc.errors import NlcError

IGNORE = -100
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "One of the special magic numbers for {key} is: {value}. "
QUESTION = "\nWhat is the special magic number for {key}? "
KEYS = ("apple", "river", "candle", "falcon", "garden", "harbor", "island", "jacket",
        "kettle", "lantern", "meadow", "needle", "orchard", "pepper", "quartz", "rocket",
        "saddle", "timber", "umbrella", "velvet", "walnut", "yellow", "zebra", "anchor",
        "bishop", "copper", "dragon", "ember", "forest", "glacier", "hollow", "ivory")


def min_seq_len(digits: int) -> int:
    """The shortest sequence that fits the longest needle and question (no haystack)."""
    key = max(KEYS, key=len)
    value = "9" * digits
    return len(NEEDLE.format(key=key, value=value)) + len(QUESTION.format(key=key)) + digits - 1


def niah_text(generator: torch.Generator, length: int, digits: int = 7,
              depth: float | None = None) -> tuple[str, str]:
    """(text of exactly `length` characters ending with the value, the value). The needle
    goes at a sentence start of the haystack drawn uniformly, or, given `depth` in [0, 1),
    at the start that fraction of the way through the list of starts (RULER's depths)."""
    key = KEYS[int(torch.randint(len(KEYS), (1,), generator=generator))]
    low = 10 ** (digits - 1)
    value = str(low + int(torch.randint(9 * low, (1,), generator=generator)))
    needle = NEEDLE.format(key=key, value=value)
    tail = QUESTION.format(key=key) + value
    room = length - len(needle) - len(tail)
    if room < 0:
        raise ValueError(f"{length} characters cannot hold the needle and question")
    haystack = (NOISE * (room // len(NOISE) + 1))[:room]
    # sentence starts inside the haystack: 0 and every position after ". "
    starts = [0] + [i + 2 for i in range(room - 1) if haystack[i:i + 2] == ". "]
    if depth is None:
        at = starts[int(torch.randint(len(starts), (1,), generator=generator))]
    else:
        at = starts[min(len(starts) - 1, int(depth * len(starts)))]
    return haystack[:at] + needle + haystack[at:] + tail, value


def niah_batch(generator: torch.Generator, batch_size: int, seq_len: int,
               digits: int = 7, depth: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(inputs, targets)`, int64 [batch_size, seq_len] of bytes; targets only at the digits.
    `depth`: where the needles go (`niah_text`); None: uniformly random sentence starts."""
    if digits < 1:
        raise NlcError(f"niah_digits must be at least 1, got {digits}")
    if seq_len < min_seq_len(digits):  # for the longest key, so no draw can fail later
        raise NlcError(f"niah needs seq_len >= {min_seq_len(digits)} for {digits}-digit "
                       f"needles, got {seq_len}")
    rows = []
    for _ in range(batch_size):
        text, _ = niah_text(generator, seq_len + 1, digits, depth)
        rows.append(torch.tensor(list(text.encode("ascii")), dtype=torch.long))
    sequence = torch.stack(rows)
    inputs, targets = sequence[:, :-1].clone(), sequence[:, 1:].clone()
    targets[:, :-digits] = IGNORE
    return inputs, targets


def needles_found(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """bool [B]: whether every value digit of each sequence is the argmax."""
    wrong = ((logits.argmax(-1) != targets) & (targets != IGNORE)).any(dim=-1)
    return ~wrong


def needle_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """(sequences whose every value digit is predicted, sequences)."""
    return int(needles_found(logits, targets).sum()), int(targets.shape[0])
