"""`nlc bench niah` and the evaluation at lengths it rests on (runtime/trainer/lengths.py):
needles at other lengths than the training one, depths stratified in bands, long inputs in
segments with the states carried; the command end to end at a tiny size; the refusals."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from nlc.runtime.trainer.config import TrainConfig
from nlc.runtime.trainer.lengths import digit_logits, eval_set, evaluate_lengths
from nlc.runtime.trainer.niah import IGNORE, NEEDLE, QUESTION
from torch import nn

from nlc.cli import main
from nlc.errors import NlcError

GDN = str(ROOT / "examples" / "gated_deltanet.nl")


def needle_config(**fields) -> TrainConfig:
    base = {"task": "niah", "seq_len": 128, "batch_size": 4, "eval_examples": 16,
            "niah_digits": 2, "niah_eval_lengths": [128, 300], "niah_depth_bands": 4}
    return TrainConfig(**{**base, **fields}).validate()


class Reader(nn.Module):
    """A model over bytes that reads the needle from its input: at each position it predicts
    the digit of the value that would come next, if the text so far ends in the question's
    prefix of a value. It records the shapes it is called with; `blind` predicts '5' always."""

    def __init__(self, blind: bool = False):
        super().__init__()
        self.blind, self.shapes = blind, []
        self.blocks = [nn.Module()]  # no mixer that keeps a state: one call per sequence
        self.blocks[0].mixer = nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(tokens.shape))
        logits = torch.zeros(*tokens.shape, 256)
        for row, sequence in enumerate(tokens.tolist()):
            text = bytes(sequence).decode("ascii")
            value = re.search(r"numbers for \w+ is: (\d+)\.", text).group(1)
            asked = text.rindex("? ") + 2  # the first digit is predicted at the "? "'s space
            for i, digit in enumerate("5" * len(value) if self.blind else value):
                if asked - 1 + i < len(sequence):
                    logits[row, asked - 1 + i, ord(digit)] = 1.0
        return logits


def test_a_model_that_reads_the_needle_finds_it_at_every_length_and_depth():
    config = needle_config(niah_eval_lengths=[128, 300, 1000])
    reader = Reader()
    results = evaluate_lengths(reader, config)
    assert list(results) == ["128", "300", "1000"]
    for r in results.values():
        assert r["accuracy"] == 1.0 and r["bands"] == [1.0] * 4 and r["examples"] == 16
    # each length in batches of at most batch_size * seq_len tokens (4 x 128), or of one
    assert {shape[1] for shape in reader.shapes} == {128, 300, 1000}
    assert {(b, t) for b, t in reader.shapes} == {(4, 128), (1, 300), (1, 1000)}
    assert sum(b for b, t in reader.shapes if t == 1000) == 16


def test_a_model_blind_to_the_needle_scores_about_chance():
    """Guessing '5' for a one-digit value (1..9) finds one needle in nine."""
    config = needle_config(niah_digits=1, eval_examples=450, niah_eval_lengths=[200, 400],
                           batch_size=64)
    results = evaluate_lengths(Reader(blind=True), config)
    for r in results.values():
        assert abs(r["accuracy"] - 1 / 9) < 0.05
        assert r["loss"] > 0


def test_needles_are_spread_over_the_depth_bands():
    config = needle_config(eval_examples=40, niah_depth_bands=4)
    inputs, targets, bands = eval_set(config, 1000)
    assert inputs.shape == targets.shape == (40, 1000)
    assert bands.tolist() == [i % 4 for i in range(40)]
    assert ((targets != IGNORE).sum(1) == 2).all()
    sentence = len("There and back again. ")  # the noise's longest sentence
    for row, band in zip(inputs.tolist(), bands.tolist()):
        text = bytes(row).decode("ascii")
        start = text.index("One of the special")
        key = re.search(r"numbers for (\w+) is", text).group(1)
        # the haystack: the sequence (1001 bytes with the last target) less needle and tail
        room = 1001 - len(NEEDLE.format(key=key, value="10") + QUESTION.format(key=key)) - 2
        assert band * room / 4 - sentence <= start <= (band + 1) * room / 4 + sentence


def test_long_inputs_in_segments_give_the_logits_of_one_call():
    """The digits straddle a segment boundary (40 - 2 = 38 < 40 - 2 + 2); a generated layer
    carries its state across the segments."""
    from nlc.runtime.trainer.model import LanguageModel

    from nlc.factories import mixer_from_spec
    torch.manual_seed(0)
    config = needle_config(d_model=16, n_layers=2, vocab_size=256, mlp_ratio=0)
    model = LanguageModel(config, mixer_from_spec(GDN, heads=2, d_k=8, d_v=8))
    tokens = torch.randint(0, 256, (2, 117))
    whole = model(tokens)[:, -3:]
    for segment in (16, 39, 58, 116):
        torch.testing.assert_close(digit_logits(model, tokens, 3, segment), whole,
                                   rtol=1e-4, atol=1e-5)


# ---- the command ------------------------------------------------------------------------

TINY = ["--quick", "--widths", "16", "--lrs", "0.003", "0.01", "--steps", "2", "--seq-len",
        "128", "--batch-size", "2", "--eval-examples", "4", "--depth-bands", "2",
        "--eval-lengths", "128", "256", "--scale", "d_k", "--scale", "d_v"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "niah"
    return out, main(["bench", "niah", GDN, *TINY, "-o", str(out)])


def test_the_sweep_writes_the_table_the_runs_and_the_plot(bench):
    out, status = bench
    assert status == 0
    rows = list(csv.DictReader((out / "niah.csv").open()))
    assert [(r["model"], float(r["lr"]), r["status"]) for r in rows] == [
        ("gated_deltanet", 0.003, "ok"), ("gated_deltanet", 0.01, "ok")]
    data = json.loads((out / "niah.json").read_text())
    means = {}
    for run, row in zip(data["runs"], rows):  # each number is the run's own evaluation
        summary = json.loads((Path(run["run"]) / "summary.json").read_text())
        at = {n: r["accuracy"] for n, r in summary["eval_lengths"].items()}
        assert list(at) == ["128", "256"] and summary["steps"] == 2
        assert [float(row["accuracy_128"]), float(row["accuracy_256"])] == list(at.values())
        means[run["lr"]] = sum(at.values()) / 2
        assert float(row["mean_accuracy"]) == means[run["lr"]]
    best = data["best"][0]
    assert best["accuracy"] == max(means.values()) and means[best["lr"]] == best["accuracy"]
    table = (out / "niah.md").read_text()
    assert "| model | d_model | best lr | 128 | 256 | mean | runs |" in table
    lengths = " | ".join(f"{best['lengths'][n]:.3f}" for n in ("128", "256"))
    assert (f"| gated_deltanet | 16 | {best['lr']:g} | {lengths} | {best['accuracy']:.3f} | 2 |"
            in table)
    assert "| model | d_model | length | 0-50% | 50-100% |" in table
    assert table.count("| gated_deltanet | 16 | 128 |") == 1
    assert (out / "niah.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_call_reads_the_finished_runs(bench, capsys):
    out, _ = bench
    assert main(["bench", "niah", GDN, *TINY, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("(already run)") == 2 and "start" not in printed


@pytest.mark.parametrize("args, message", [
    (["attention", "--eval-lengths", "50"], "50 tokens cannot hold a 2-digit needle"),
    (["attention", "--eval-lengths", "256", "256"], "a length given twice"),
    (["attention", "--seq-len", "40"], "niah needs seq_len >= "),
    (["attention", "--depth-bands", "64"], "--depth-bands 64 is more than --eval-examples 32"),
    (["attention", "--carry-state", "300"], "--carry-state 300 is longer than the training"),
    (["attention", "--cuda-graphs", "--device", "cpu"], "--cuda-graphs needs CUDA devices"),
    (["attention", "--cuda-graphs", "--carry-state", "32", "--device", "cuda"],
     "--cuda-graphs and --carry-state cannot be combined"),
    (["nothere.nl"], "nothere.nl: error: no such spec file"),
    ([str(ROOT / "examples" / "adam.nl")], "declares optimizer, not a layer"),
])
def test_bad_input_is_a_clear_error_and_exit_2(tmp_path, capsys, args, message):
    assert main(["bench", "niah", *args, "--quick", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o" / "runs").exists()


@pytest.mark.parametrize("option", [["--eval-lengths", "0"], ["--eval-lengths", "x"],
                                    ["--digits", "0"], ["--lrs", "nan"], ["--depth-bands"],
                                    ["--carry-state", "-1"]])
def test_bad_options_exit_2_with_usage(capsys, option):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "niah", "attention", *option])
    assert exit_.value.code == 2 and "nlc bench niah: error: argument" in capsys.readouterr().err


def test_lengths_are_refused_outside_the_niah_task_and_read_as_numbers():
    with pytest.raises(NlcError, match="niah_eval_lengths is for the niah task, not mqar"):
        TrainConfig(niah_eval_lengths=[512]).validate()
    with pytest.raises(NlcError, match="must be whole numbers"):
        TrainConfig.from_json('{"task": "niah", "niah_eval_lengths": ["512"]}').validate()
    import argparse

    from nlc.train_cli import config_from_args, register
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "builtin:attention", "--task", "niah",
                              "--niah-eval-lengths", "512", "1024"])
    assert config_from_args(args).niah_eval_lengths == [512, 1024]


def test_nlc_eval_evaluates_a_run_at_other_lengths(bench, capsys):
    """`nlc eval RUN --niah-eval-lengths`: the checkpoint at lengths it was not evaluated at;
    at one it was, the number is the training run's."""
    out, _ = bench
    run = json.loads((out / "niah.json").read_text())["runs"][0]["run"]
    assert main(["eval", run, "--niah-eval-lengths", "256", "300", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((Path(run) / "summary.json").read_text())
    assert list(printed["eval_lengths"]) == ["256", "300"]
    assert printed["eval_lengths"]["256"] == summary["eval_lengths"]["256"]
    assert printed["eval_lengths"]["300"]["examples"] == 4


def test_carried_state_is_for_the_specs_and_attention_reads_whole_sequences(tmp_path):
    import dataclasses

    from nlc.bench.niah import QUICK, config_for
    from nlc.bench.runs import ATTENTION, Model, Point
    settings = dataclasses.replace(QUICK, carry_state=64)
    spec = config_for(Point(Model("gdn", GDN), 32, 0.01, 0), settings, tmp_path, "cpu")
    attention = config_for(Point(Model("attention", ATTENTION), 32, 0.01, 0), settings,
                           tmp_path, "cpu")
    assert (spec.carry_state, attention.carry_state) == (64, 0)
    assert spec.niah_eval_lengths == [256, 512, 1024, 2048] and spec.seq_len == 256
