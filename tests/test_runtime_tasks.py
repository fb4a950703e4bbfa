"""The runtime's tasks: MQAR matches the Zoology distribution, NIAH hides exactly one
needle, the byte corpus splits by file; every batch is a function of (seed, step)."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from nlc.runtime.trainer.config import TrainConfig
from nlc.runtime.trainer.lm_data import split_files, stdlib_sources
from nlc.runtime.trainer.mqar import IGNORE, gap_distribution, mqar_batch
from nlc.runtime.trainer.niah import NEEDLE, NOISE, min_seq_len, niah_batch
from nlc.runtime.trainer.tasks import generator_for, make_task

from nlc.errors import NlcError


def draw(batch=64, seq_len=64, vocab=128, pairs=4, seed=0, **kw):
    return mqar_batch(torch.Generator().manual_seed(seed), batch, seq_len, vocab, pairs, **kw)


# ---- MQAR (Zoology, Arora et al. 2023) --------------------------------------------------

def test_mqar_keys_and_values_fill_the_context_from_their_halves():
    V, N = 128, 4
    inputs, _ = draw(vocab=V, pairs=N)
    keys, values = inputs[:, 0:2 * N:2], inputs[:, 1:2 * N:2]
    assert ((keys >= 1) & (keys < V // 2)).all()
    assert ((values >= V // 2) & (values < V)).all()
    for row in range(inputs.shape[0]):  # distinct within a sequence
        assert len(set(keys[row].tolist())) == N and len(set(values[row].tolist())) == N


def test_mqar_labels_only_at_queries_and_they_are_the_paired_values():
    N, L = 4, 64
    inputs, targets = draw(seq_len=L, pairs=N, random_non_queries=False)
    assert inputs.shape == targets.shape == (64, L) and inputs.dtype == torch.long
    for row in range(inputs.shape[0]):
        pairs = dict(zip(inputs[row, 0:2 * N:2].tolist(), inputs[row, 1:2 * N:2].tolist()))
        positions = (targets[row] != IGNORE).nonzero().flatten().tolist()
        assert len(positions) == N  # one query per key
        assert all(p >= 2 * N and (p - 2 * N) % 2 == 0 for p in positions)
        queried = [inputs[row, p].item() for p in positions]
        assert sorted(queried) == sorted(pairs)  # every key is queried once
        assert all(targets[row, p].item() == pairs[inputs[row, p].item()] for p in positions)
        rest = torch.ones(L, dtype=torch.bool)
        rest[:2 * N] = False
        rest[positions] = False
        assert (inputs[row][rest] == 0).all()  # without noise, the filler is 0


def test_mqar_noise_replaces_only_the_filler():
    clean, targets = draw(random_non_queries=False, seed=3)
    noisy, targets2 = draw(random_non_queries=True, seed=3)
    assert torch.equal(targets, targets2)
    kept = clean != 0
    assert torch.equal(noisy[kept], clean[kept])
    assert ((noisy >= 0) & (noisy < 128)).all() and (noisy[~kept] != 0).any()


def test_mqar_query_gaps_follow_the_power_law():
    # one pair: the gap is a single draw from p(g) ~ (g + 1)^(a - 1), g = 0 .. L/2 - 2
    L, samples = 64, 20000
    _, targets = draw(batch=samples, seq_len=L, pairs=1, power_a=0.01)
    gaps = ((targets != IGNORE).nonzero()[:, 1] - 2) // 2
    p = gap_distribution(L, 1, 0.01)
    observed = torch.bincount(gaps, minlength=p.numel()).double() / samples
    assert 0.5 * (observed - p).abs().sum() < 0.02  # total variation
    assert p[0] > p[1] > p[-1] and math.isclose(float(p.sum()), 1.0)


def test_mqar_many_pairs_still_prefer_early_queries():
    N, L = 8, 128
    _, targets = draw(batch=2000, seq_len=L, vocab=256, pairs=N)
    gaps = ((targets != IGNORE).nonzero()[:, 1] - 2 * N) // 2
    counts = torch.bincount(gaps, minlength=(L - 2 * N) // 2)
    assert counts.sum() == 2000 * N and counts[0] > counts[-1]


def test_mqar_refuses_zoology_preconditions():
    with pytest.raises(NlcError, match="even seq_len"):
        draw(seq_len=63)
    with pytest.raises(NlcError, match="mqar_vocab_size > seq_len"):
        draw(seq_len=64, vocab=64)
    with pytest.raises(NlcError, match="4 \\* mqar_num_kv_pairs"):
        draw(seq_len=64, pairs=17)


def test_batches_are_functions_of_seed_and_step():
    config = TrainConfig(task="mqar", seq_len=64, batch_size=8, mqar_vocab_size=128,
                         mqar_num_kv_pairs=4, eval_examples=20)
    task = make_task(config)
    a, b = task.train_batch(5), make_task(config).train_batch(5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(task.train_batch(6)[0], a[0])
    other = make_task(dataclasses.replace(config, seed=1)).train_batch(5)
    assert not torch.equal(other[0], a[0])
    sizes = [x.shape[0] for x, _ in task.eval_batches()]
    assert sizes == [8, 8, 4]
    evals = torch.cat([x for x, _ in task.eval_batches()])
    wider = make_task(dataclasses.replace(config, batch_size=5))  # same set, other batches
    assert torch.equal(torch.cat([x for x, _ in wider.eval_batches()]), evals)
    g1, g2 = generator_for(0, "s", 1), generator_for(0, "s", 1)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


# ---- NIAH (RULER S-NIAH-1, Hsieh et al. 2024) -------------------------------------------

def decode(row: torch.Tensor) -> str:
    return bytes(row.tolist()).decode("ascii")


def test_niah_places_exactly_one_needle():
    digits, L = 7, 200
    inputs, targets = niah_batch(torch.Generator().manual_seed(0), 64, L, digits)
    assert inputs.shape == targets.shape == (64, L)
    depths = set()
    for row in range(64):
        text = decode(inputs[row]) + chr(int(targets[row, -1]))  # the full sequence
        value = "".join(chr(int(t)) for t in targets[row][targets[row] != IGNORE])
        assert len(value) == digits and value[0] != "0"
        context, question = text.rsplit("\nWhat is", 1)
        assert context.count("special magic number") == 1  # one needle
        assert re.findall(r"\d+", context) == [value]  # its value, and no other digits
        key = re.search(r"numbers for (\w+) is", context).group(1)
        assert question == f" the special magic number for {key}? {value}"
        start = context.index("One of the special")
        assert start == 0 or context[start - 2:start] == ". "  # at a sentence boundary
        depths.add(start)
        assert NEEDLE.format(key=key, value=value) in context
        haystack = context.replace(NEEDLE.format(key=key, value=value), "")
        assert haystack == (NOISE * 10)[:len(haystack)]  # the rest is the repeated noise
        assert (targets[row, :-digits] == IGNORE).all()
    assert len(depths) > 3  # the needle moves


def test_niah_refuses_contexts_too_short_for_the_needle():
    need = min_seq_len(7)
    niah_batch(torch.Generator(), 2, need, 7)  # the shortest that fits
    with pytest.raises(NlcError, match=f"niah needs seq_len >= {need}"):
        niah_batch(torch.Generator(), 2, need - 1, 7)


def test_niah_accuracy_is_exact_recovery():
    task = make_task(TrainConfig(task="niah", seq_len=160, niah_digits=3))
    _, targets = next(task.eval_batches())
    perfect = torch.nn.functional.one_hot(targets.clamp(min=0), 256).float()
    assert task.metrics(task.score(perfect, targets))["accuracy"] == 1.0
    one_wrong = perfect.clone()
    one_wrong[0, -1] = one_wrong[0, -1].roll(1)
    sums = task.score(one_wrong, targets)
    assert sums["correct"] == targets.shape[0] - 1


# ---- byte-level LM ----------------------------------------------------------------------

def test_lm_default_corpus_is_the_standard_library_split_by_file():
    files = stdlib_sources()
    assert files == sorted(files) and all(f.suffix == ".py" for f in files)
    train, val = split_files(files, 0.1)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(files)
    assert len(val) == math.ceil(0.1 * len(files))
    assert split_files(list(reversed(files)), 0.1)[1] == list(reversed(val))  # order-free


def test_lm_given_files_windows_and_bits_per_byte(tmp_path):
    for i in range(5):
        (tmp_path / f"f{i}.txt").write_text(f"file {i} " * 40)
    config = TrainConfig(task="lm", lm_files=[str(tmp_path)], seq_len=32, batch_size=4,
                         eval_examples=6, lm_val_fraction=0.2)
    task = make_task(config)
    assert task.vocab_size == 256 and task.corpus.files == 5
    x, y = task.train_batch(0)
    assert x.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(task.train_batch(0)[0], x)
    batches = list(task.eval_batches())
    assert [b[0].shape[0] for b in batches] == [4, 2]
    uniform = torch.zeros(2, 32, 256)
    metrics = task.metrics(task.score(uniform, batches[1][1]))
    assert metrics["bits_per_byte"] == pytest.approx(8.0)  # log2(256) for a uniform guess


def test_lm_refuses_missing_files(tmp_path):
    with pytest.raises(NlcError, match="no such file or folder"):
        make_task(TrainConfig(task="lm", lm_files=[str(tmp_path / "nope")]))


@pytest.mark.parametrize("count, low, high", [(2, 0, 5), (3, 10, 50), (16, 1, 512)])
def test_distinct_integers_are_distinct_in_range_and_uniform(count, low, high):
    """Both paths (a permutation for crowded ranges, redrawing rows with a repeat otherwise)
    give distinct values in [low, high), each value equally often in every position."""
    from nlc.runtime.trainer.mqar import distinct_integers
    drawn = distinct_integers(torch.Generator().manual_seed(0), 60000, count, low, high)
    assert drawn.shape == (60000, count) and drawn.dtype == torch.int64
    assert int(drawn.min()) >= low and int(drawn.max()) < high
    assert (drawn.sort(dim=1).values.diff(dim=1) > 0).all()
    for column in drawn.unbind(1):
        counts = torch.bincount(column - low, minlength=high - low).double()
        expected = 60000 / (high - low)
        assert (counts - expected).abs().max() < 5 * expected ** 0.5 + 1
