"""`carry_state`: a document trained as segments, the layers' states carried between them
(runtime/trainer/segments.py). A level that updates every 64 tokens, read in 16-token
segments, updates only when its state is carried; a new document starts afresh."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import ROOT
from nlc.runtime.trainer.config import TrainConfig
from nlc.runtime.trainer.model import LanguageModel
from nlc.runtime.trainer.segments import forward_segments
from nlc.runtime.trainer.train import train

from nlc.errors import NlcError
from nlc.factories import mixer_from_spec
from nlc.train_cli import main

SLOW = """
layer Slow {
  dims d_model = 8, d_k = 4
  param W_q, W_k, W_v : [d_model, d_k]
  param W_o : [d_k, d_model]
  context from x {
    q = l2norm(x @ W_q)
    k = l2norm(x @ W_k)
    v = x @ W_v
  }
  level slow every 64 tokens {
    state A : matrix[d_k, d_k] = zeros
    objective l2(A(k), v)
    algorithm gd(lr = 0.5)
    read A(q)
  }
  output slow @ W_o
}
"""

CONFIG = {"task": "mqar", "vocab_size": 0, "d_model": 8, "n_layers": 1, "mlp": "none",
          "mlp_ratio": 0, "steps": 2, "batch_size": 2, "seq_len": 128, "mqar_vocab_size": 160,
          "mqar_num_kv_pairs": 4, "eval_examples": 4, "eval_interval": 0,
          "checkpoint_interval": 0, "log_interval": 1, "warmup": 0, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "slow.nl"
    path.write_text(SLOW)
    return str(path)


def slow_model(spec):
    torch.manual_seed(0)
    config = TrainConfig(vocab_size=16, d_model=8, n_layers=1, mlp="none", mlp_ratio=0)
    return LanguageModel(config, mixer_from_spec(spec), lambda d: None).double()


def test_a_slow_level_updates_across_carried_segments_and_not_within_one(spec):
    model = slow_model(spec)
    tokens = torch.randint(0, 16, (2, 128), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(tokens)
        kept, caches = forward_segments(model, tokens, 16)
        carried = torch.cat(kept, 1)
        fresh = torch.cat([model(tokens[:, s:s + 16]) for s in range(0, 128, 16)], 1)
        one = {}
        model.blocks[0].mixer(model.embed(tokens[:, :16]), cache=one)
    # carried segments compute what one call over the document computes
    assert (carried - whole).abs().max() <= 1e-12 * whole.abs().max()
    # the weights the level reads (A_0, its state at the last chunk start) changed at token 64
    state = caches[0]["mixer"]["states"]["slow"]
    assert state["#position"] == 128 and state["A_0"].abs().max() > 0.01
    # a 16-token sequence never reaches the level's first update: it reads the initial state
    assert one["states"]["slow"]["A_0"].abs().max() == 0
    # so segments that each start afresh never read anything: the first 64 tokens agree
    # (the level reads zeros there either way), the rest differ
    assert (fresh[:, :64] - carried[:, :64]).abs().max() <= 1e-12
    assert (fresh[:, 64:] - carried[:, 64:]).abs().max() > 1e-3


@pytest.mark.parametrize("example, dims", [
    ("gated_deltanet", {"heads": 2, "d_k": 8, "d_v": 8}),  # short convolutions' tails carried
    ("titans", {"heads": 2, "d_head": 8}),                  # anchors and position in the chunk
    ("cms", {"d_hidden": 16}),                              # levels every 16, 256, 4096 tokens
    ("hope", {}),                                           # a `model`: caches per layer
])
def test_carried_segments_of_the_examples_equal_one_call(example, dims):
    torch.manual_seed(0)
    config = TrainConfig(vocab_size=16, d_model=16, n_layers=1, mlp="none", mlp_ratio=0)
    spec = str(ROOT / "examples" / f"{example}.nl")
    model = LanguageModel(config, mixer_from_spec(spec, **dims), lambda d: None).double()
    tokens = torch.randint(0, 16, (2, 96), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = model(tokens)
        carried = torch.cat(forward_segments(model, tokens, 24)[0], 1)
        fresh = torch.cat([model(tokens[:, s:s + 24]) for s in range(0, 96, 24)], 1)
    assert (carried - whole).abs().max() <= 1e-10 * whole.abs().max()
    assert (fresh - whole).abs().max() > 1e-4 * whole.abs().max()  # the carry matters


def test_states_reset_at_each_document(spec, tmp_path, monkeypatch):
    """Each training step's batch holds new documents: their first segment starts from the
    initial states, the later ones from the previous segment's; evaluation does the same."""
    seen = []
    mixer_factory = mixer_from_spec(spec)

    def spy(d_model):
        layer = mixer_factory(d_model)
        forward = layer.forward

        def recording(x, cu_seqlens=None, cache=None):
            seen.append(None if cache is None else int(cache.get("states", {})
                                                       .get("slow", {}).get("#position", 0)))
            return forward(x, cu_seqlens, cache)
        layer.forward = recording
        return layer

    config = TrainConfig(**CONFIG, carry_state=32, out=str(tmp_path / "run"))
    summary = train(config, mixer_factory=spy, progress=False)
    assert summary["steps"] == 2 and 0 <= summary["eval"]["accuracy"] <= 1
    document = [0, 32, 64, 96]
    # two training steps, then the eval set (4 examples in batches of 2)
    assert seen == document * 4


def test_carried_training_starts_where_whole_sequences_do(spec, tmp_path):
    """Step 1's loss is the same with and without carrying (the forward value is the same);
    the updates differ (the gradient stops at segment boundaries)."""
    losses = {}
    for carry in (0, 16):
        config = TrainConfig(**CONFIG, carry_state=carry, out=str(tmp_path / f"c{carry}"))
        train(config, mixer_factory=mixer_from_spec(spec), progress=False)
        lines = (tmp_path / f"c{carry}" / "metrics.jsonl").read_text().splitlines()
        losses[carry] = [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]
    assert losses[0][0] == pytest.approx(losses[16][0], rel=1e-5)
    assert losses[0][1] != losses[16][1]


def test_carry_state_refuses_layers_without_a_state(tmp_path):
    config = TrainConfig(**{**CONFIG, "mlp": "none"}, spec="builtin:attention",
                         carry_state=16, out=str(tmp_path / "att"))
    with pytest.raises(NlcError, match="carry a state across calls"):
        train(config, progress=False)
    with pytest.raises(NlcError, match="carry_state must be between 0"):
        dataclasses.replace(config, carry_state=129).validate()


def test_the_cli_flag(spec, tmp_path, capsys):
    args = ["train", spec, "--carry-state", "32", "--out", str(tmp_path / "cli"), "--quiet"]
    for name, value in CONFIG.items():
        if name not in ("vocab_size", "mlp_ratio"):
            args += ["--" + name.replace("_", "-"), str(value)]
    assert main(args) == 0
    saved = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert saved["carry_state"] == 32
    assert main(args[:3] + ["1000"] + args[4:-2] + ["--out", str(tmp_path / "bad")]) == 2
    assert "--carry-state must be between 0 (off) and --seq-len 128" in capsys.readouterr().err


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch without gloo")
def test_two_gloo_ranks_carry_states_as_one_process(spec, tmp_path, monkeypatch):
    """Under DDP the model is wrapped; the caches are still per block, and the gradients
    summed over segments (one all-reduce each) equal one process's."""
    from nlc.runtime.trainer.progress import read_metrics
    args = ["train", spec, "--carry-state", "32", "--quiet", "--steps", "3",
            "--batch-size", "4", "--seq-len", "128", "--d-model", "8", "--n-layers", "1",
            "--mlp", "none", "--mqar-vocab-size", "160", "--mqar-num-kv-pairs", "4",
            "--eval-examples", "4", "--eval-interval", "0", "--checkpoint-interval", "0",
            "--log-interval", "1", "--warmup", "0"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(args + ["--out", str(tmp_path / "two"), "--nproc", "2"]) == 0
    one = read_metrics(tmp_path / "one" / "metrics.jsonl")
    two = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["kind"] for r in two] == [r["kind"] for r in one] and len(one) == 4
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-6, (a, b)
