"""The language-model wrapper, the mixer sources, the optimizer hook, the schedule and the
config's JSON round trip."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import sys
import types

import pytest
import torch
from conftest import ROOT
from nlc.runtime.trainer.config import TrainConfig
from nlc.runtime.trainer.mixers import builtin_block_mlp, builtin_mixer
from nlc.runtime.trainer.model import LanguageModel
from nlc.runtime.trainer.optim import build_optimizer, lr_at
from nlc.runtime.trainer.progress import ProgressBar, format_duration, read_metrics
from nlc.runtime.trainer.train import train
from torch import nn

from nlc.errors import NlcError
from nlc.factories import mixer_from_spec, optimizer_from_spec

SMALL = TrainConfig(vocab_size=50, d_model=32, n_layers=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_language_model_shapes_and_causality():
    torch.manual_seed(0)
    model = LanguageModel(SMALL, builtin_mixer("builtin:attention", heads=2))
    tokens = torch.randint(0, 50, (3, 10))
    logits = model(tokens)
    assert logits.shape == (3, 10, 50)
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 50
    assert torch.allclose(model(changed)[:, :6], logits[:, :6], atol=1e-6)  # no peeking
    assert not torch.allclose(model(changed)[:, 6:], logits[:, 6:])
    names = [n for n, _ in model.named_parameters()]
    assert "blocks.0.mixer.qkv.weight" in names and "blocks.1.mlp.up.weight" in names


class TupleMixer(nn.Module):
    """A layer in the flash-linear-attention style: forward returns (o, attentions, cache)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x), None, None


def test_mixers_returning_tuples_and_blocks_without_mlp():
    model = LanguageModel(dataclasses.replace(SMALL, mlp_ratio=0), TupleMixer)
    assert model(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, 50)
    assert all(block.mlp is None for block in model.blocks)
    assert builtin_block_mlp("none", 4)(8) is None


def test_mixer_from_spec_compiles_through_nlc_emit(tmp_path, monkeypatch):
    spec = tmp_path / "mine.nl"
    spec.write_text("layer Mine {}\n")
    calls = []

    def load_declaration(path, name, kind, overrides):
        assert (name, kind) == ("", "layer")
        calls.append((path, overrides))
        return TupleMixer

    monkeypatch.setitem(sys.modules, "nlc.emit",
                        types.SimpleNamespace(load_declaration=load_declaration))
    factory = mixer_from_spec(str(spec), heads=4)
    assert isinstance(factory(16), TupleMixer) and isinstance(factory(16), TupleMixer)
    assert calls == [(str(spec), {"heads": 4, "d_model": 16})]  # compiled once per width
    with pytest.raises(NlcError, match="set the width with --d-model"):
        mixer_from_spec(str(spec), d_model=8)(16)


def test_mixer_from_spec_errors():
    with pytest.raises(NlcError, match="no such spec file"):
        mixer_from_spec("missing.nl")
    with pytest.raises(NlcError, match="unknown builtin 'builtin:mamba'"):
        mixer_from_spec("builtin:mamba")
    with pytest.raises(NlcError, match="builtin:attention has no dim"):
        mixer_from_spec("builtin:attention", d_k=4)
    with pytest.raises(NlcError, match="heads of even width"):
        mixer_from_spec("builtin:attention", heads=3)(32)


def test_optimizer_from_spec_requires_an_optimizer_class(tmp_path, monkeypatch):
    spec = tmp_path / "opt.nl"
    spec.write_text("optimizer Mine {}\n")
    emit = types.SimpleNamespace(load_optimizer=lambda path, **kw: torch.optim.SGD)
    monkeypatch.setitem(sys.modules, "nlc.emit", emit)
    assert optimizer_from_spec(str(spec)) is torch.optim.SGD
    emit.load_optimizer = lambda path, **kw: TupleMixer
    with pytest.raises(NlcError, match="not a torch.optim.Optimizer"):
        optimizer_from_spec(str(spec))


def test_an_optimizer_class_trains_and_the_schedule_drives_it(tmp_path):
    seen = []

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    config = TrainConfig(task="mqar", steps=20, batch_size=2, seq_len=32, d_model=16,
                         n_layers=1, mqar_vocab_size=64, mqar_num_kv_pairs=2, eval_examples=4,
                         warmup=2, lr=0.5, min_lr_ratio=0.1, log_interval=1,
                         out=str(tmp_path / "run"))
    train(config, optimizer_class=RecordingSGD, progress=False)
    assert seen == pytest.approx([lr_at(s, config) for s in range(20)])
    assert seen[:2] == pytest.approx([0.25, 0.5]) and seen[-1] > 0.05
    assert len([r for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
                if r["kind"] == "train"]) == 20


def test_adamw_decays_matrices_only():
    model = LanguageModel(SMALL, builtin_mixer("builtin:attention"))
    optimizer = build_optimizer(model, SMALL)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == SMALL.weight_decay and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])


def test_adamw_decays_a_generated_layers_matrices_not_its_per_head_vectors():
    """Generated parameters carry a heads axis: Gated DeltaNet's `w_beta : [d_model]` is
    `[heads, d_model]`, a vector per head, and is not decayed; `W_g : [d_model, d_v]` is."""
    model = LanguageModel(SMALL, mixer_from_spec(str(ROOT / "examples" / "gated_deltanet.nl"), heads=2))
    decay, no_decay = build_optimizer(model, SMALL).param_groups
    names = {id(p): n.split(".")[-1] for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"W_q", "W_g", "W_o", "conv0", "weight"} <= decayed  # "weight": embedding and head
    assert not decayed & {"w_beta", "w_alpha", "A_log", "dt_bias"}
    assert {names[id(p)] for p in no_decay["params"]} == {"w_beta", "w_alpha", "A_log",
                                                          "dt_bias", "weight"}  # + norm gains


def test_warmup_then_cosine():
    c = TrainConfig(steps=110, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.55)  # half way down the cosine
    assert lr_at(110, c) == pytest.approx(0.1) and lr_at(500, c) == pytest.approx(0.1)
    values = [lr_at(s, c) for s in range(10, 110)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_a_short_run_leaves_warmup_after_a_tenth_of_its_steps():
    c = TrainConfig(steps=100, lr=1.0, min_lr_ratio=0.1)  # the default warmup of 100
    assert c.warmup == 100
    assert lr_at(9, c) == pytest.approx(1.0)  # warmed up after 10 steps
    assert lr_at(99, c) < 0.2  # and decayed by the end
    assert lr_at(0, TrainConfig(steps=5, lr=1.0)) == pytest.approx(1.0)  # too short to warm up


def test_config_json_round_trip_and_errors():
    config = TrainConfig(task="lm", lm_files=["a", "b"], spec_overrides={"heads": 2.0},
                         lr=0.01, compile=True)
    assert TrainConfig.from_json(config.to_json()) == config
    data = json.loads(config.to_json())
    assert TrainConfig.from_dict(dict(data, lr=1)) == dataclasses.replace(config, lr=1.0)
    with pytest.raises(NlcError, match="unknown config field"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(NlcError, match="field 'steps' must be int"):
        TrainConfig.from_dict({"steps": "10"})
    with pytest.raises(NlcError, match="not valid JSON"):
        TrainConfig.from_json("{")
    with pytest.raises(NlcError, match="unknown task 'copy'"):
        TrainConfig(task="copy").validate()
    with pytest.raises(NlcError, match="batch_size must be at least 1"):
        TrainConfig(batch_size=0).validate()


def test_progress_prints_the_first_step_then_every_interval():
    """Off a terminal: a line after the first step (speed and ETA at once), then every
    `every` steps and at the end; a heartbeat of 0 s makes every step due."""
    stream = io.StringIO()
    bar = ProgressBar(25, start=0, every=10, stream=stream, heartbeat=1e9)
    for step in range(1, 26):
        bar.update(step, 2.5, 1e-3, 1500.0)
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["1/25", "10/25", "20/25", "25/25"]
    assert all("tok/s" in line and "eta" in line and "loss 2.5000" in line for line in lines)
    assert "1.5k tok/s" in lines[0]
    stream = io.StringIO()
    bar = ProgressBar(30, start=20, every=10, stream=stream, heartbeat=0.0)
    for step in range(21, 25):
        bar.update(step, 1.0, 1e-3, 10.0)
    assert [line.split()[1] for line in stream.getvalue().splitlines()] == [
        "21/30", "22/30", "23/30", "24/30"]


def test_progress_formats():
    assert format_duration(65) == "1m05s" and format_duration(3 * 3600 + 60) == "3h01m"
    assert format_duration(9.4) == "9s"
