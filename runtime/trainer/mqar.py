"""Multi-query associative recall (MQAR), the Zoology generator.

Arora, Eyuboglu, Timalsina, Johnson, Poli, Zou, Rudra, Re, "Zoology: Measuring and
Improving Recall in Efficient Language Models", 2023 (arXiv:2312.04927), Sec. 3.1 and its
`multiquery_ar` generator. One sequence of length L with N key-value pairs:

    positions 0 .. 2N-1   k_1 v_1 k_2 v_2 ... k_N v_N   keys distinct in [1, V/2),
                                                        values distinct in [V/2, V)
    positions 2N .. L-1   each key once more, at 2N + 2 g_i, where the gaps g_i are distinct,
                          drawn from {0 .. (L - 2N)/2 - 1} with p(g) ~ (g + 1)^(a - 1), a = 0.01
                          (a power law: most queries come soon after the pairs)
    everything else       random tokens in [0, V) (or 0 when random_non_queries is off)

The target at a query's position is its value; every other target is -100 (ignored), so
the loss and the accuracy count the queried values only. Unlike Zoology, which draws a fixed
training set, each step draws a fresh batch from (seed, step): the per-sequence distribution
is the same.
"""

from __future__ import annotations

import torch

from nlc.errors import NlcError

IGNORE = -100


def check_mqar(seq_len: int, vocab_size: int, num_kv_pairs: int) -> None:
    """Zoology's preconditions, as user errors."""
    if seq_len % 2:
        raise NlcError(f"mqar needs an even seq_len, got {seq_len}")
    if vocab_size <= seq_len:
        raise NlcError(f"mqar needs mqar_vocab_size > seq_len, got {vocab_size} <= {seq_len}")
    if num_kv_pairs < 1 or 4 * num_kv_pairs > seq_len:
        raise NlcError(f"mqar needs 1 <= 4 * mqar_num_kv_pairs <= seq_len, got "
                       f"{num_kv_pairs} pairs for seq_len {seq_len}")


def gap_distribution(seq_len: int, num_kv_pairs: int, power_a: float) -> torch.Tensor:
    """p(g) for the query gaps g = 0 .. space-1: proportional to (g + 1)^(a - 1)."""
    space = (seq_len - 2 * num_kv_pairs) // 2
    ranks = torch.arange(1, space + 1, dtype=torch.float64)
    weights = power_a * ranks ** (power_a - 1)
    return weights / weights.sum()


def distinct_integers(generator: torch.Generator, rows: int, count: int, low: int,
                      high: int) -> torch.Tensor:
    """`[rows, count]` int64, each row `count` distinct integers of [low, high), every such
    tuple equally likely. Rows with a repeat are drawn again: when count is small against the
    range (keys among thousands of tokens) a repeat is rare, and this draws `count` numbers
    per row where a multinomial over the range costs the whole range per row (12 ms a batch
    at a vocabulary of 8192, benchmarks/mqar_batch.py). A crowded range takes a permutation."""
    if count * count > 2 * (high - low):
        order = torch.rand(rows, high - low, generator=generator).argsort(dim=1)
        return low + order[:, :count]
    drawn = torch.randint(low, high, (rows, count), generator=generator)
    while True:
        ordered = drawn.sort(dim=1).values
        repeats = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
        if not bool(repeats.any()):
            return drawn
        drawn[repeats] = torch.randint(low, high, (int(repeats.sum()), count), generator=generator)


def mqar_batch(generator: torch.Generator, batch_size: int, seq_len: int,
               vocab_size: int = 8192, num_kv_pairs: int = 16, power_a: float = 0.01,
               random_non_queries: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`(inputs, targets)`, both int64 [batch_size, seq_len], drawn from `generator`."""
    check_mqar(seq_len, vocab_size, num_kv_pairs)
    B, N, half = batch_size, num_kv_pairs, vocab_size // 2
    keys = distinct_integers(generator, B, N, 1, half)
    values = distinct_integers(generator, B, N, half, vocab_size)

    p = gap_distribution(seq_len, N, power_a).float().expand(B, -1)
    gaps = torch.multinomial(p, N, replacement=False, generator=generator)
    query_positions = 2 * N + 2 * gaps

    # One extra position, as in next-token prediction: targets are the sequence shifted by one.
    sequence = torch.zeros(B, seq_len + 1, dtype=torch.long)
    sequence[:, 0:2 * N:2] = keys
    sequence[:, 1:2 * N:2] = values
    sequence.scatter_(1, query_positions, keys)
    shifted = torch.full((B, seq_len + 1), IGNORE, dtype=torch.long)
    shifted.scatter_(1, query_positions + 1, values)

    inputs, targets = sequence[:, :-1], shifted[:, 1:].contiguous()
    noise = torch.randint(0, vocab_size, (B, seq_len), generator=generator)
    if random_non_queries:
        inputs = torch.where(inputs == 0, noise, inputs)
    return inputs.contiguous(), targets


def token_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """(correct, counted) over the query positions: Zoology's accuracy."""
    mask = targets != IGNORE
    correct = (logits.argmax(-1) == targets) & mask
    return int(correct.sum()), int(mask.sum())
