"""Checkpoints: written atomically, last N kept; truncated, corrupt or foreign ones are
refused with an NlcError naming the file, and a refused checkpoint changes nothing."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from nlc.runtime.trainer import checkpoint as ckpt
from nlc.runtime.trainer.config import TrainConfig
from nlc.runtime.trainer.mixers import builtin_mixer, sha256_text
from nlc.runtime.trainer.model import LanguageModel
from nlc.runtime.trainer.optim import build_optimizer
from nlc.runtime.trainer.progress import read_metrics
from nlc.runtime.trainer.train import train

from nlc.errors import NlcError


# one thread (conftest.py): the machine is shared; tiny models gain nothing from threads
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(out, **changes) -> TrainConfig:
    base = TrainConfig(task="mqar", steps=6, batch_size=4, seq_len=32, d_model=16, n_layers=1,
                       mqar_vocab_size=64, mqar_num_kv_pairs=2, eval_examples=8,
                       eval_interval=0, log_interval=1, checkpoint_interval=2, keep_last=2,
                       warmup=2, lr=3e-3, out=str(out))
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "base"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train(tiny(out), progress=False)
    torch.set_num_threads(threads)
    return out


@pytest.fixture
def run(trained_run, tmp_path):
    """A private copy of the trained run, free to damage."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


def latest_files(run):
    return ckpt.latest_checkpoint(run)


def test_layout_and_keep_last(run):
    names = [p.name for p in ckpt.checkpoint_dirs(run)]
    assert names == ["step_00000004", "step_00000006"]  # keep_last = 2
    latest = ckpt.latest_checkpoint(run)
    assert sorted(p.name for p in latest.iterdir()) == ["model.safetensors",
                                                          "optimizer.safetensors", "state.json"]
    state = json.loads((latest / "state.json").read_text())
    assert state["step"] == 6 and state["format"] == ckpt.FORMAT
    assert state["spec"]["sha256"] == sha256_text(state["spec"]["text"])
    assert state["config"]["d_model"] == 16 and state["data"]["next_step"] == 6
    assert {"torch", "python"} <= set(state["rng"])
    assert not list((run / "checkpoints").glob(".*"))  # no temporary folders left


def test_a_leftover_temporary_folder_is_not_a_checkpoint(run):
    stale = run / "checkpoints" / ".step_00000008.tmp-123"
    stale.mkdir()
    (stale / "state.json").write_text("{")
    assert ckpt.latest_checkpoint(run).name == "step_00000006"
    train(tiny(run, steps=8), resume=True, progress=False)  # resumes, cleans up
    assert not stale.exists() and ckpt.latest_checkpoint(run).name == "step_00000008"


def test_truncated_weights_are_refused(run):
    path = latest_files(run) / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NlcError, match="truncated") as err:
        ckpt.read_checkpoint(path.parent)
    assert str(path) in str(err.value)


def test_corrupted_weights_are_refused(run):
    path = latest_files(run) / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # a flipped bit in a weight: safetensors alone would not notice
    path.write_bytes(bytes(data))
    with pytest.raises(NlcError, match="corrupt checkpoint file") as err:
        ckpt.read_checkpoint(path.parent)
    assert str(path) in str(err.value)


def test_corrupted_optimizer_state_is_refused(run):
    path = latest_files(run) / "optimizer.safetensors"
    path.write_bytes(b"\0" * path.stat().st_size)
    with pytest.raises(NlcError, match="optimizer.safetensors: corrupt"):
        ckpt.read_checkpoint(path.parent)


def test_truncated_metadata_is_refused(run):
    path = latest_files(run) / "state.json"
    path.write_text(path.read_text()[:100])
    with pytest.raises(NlcError, match="corrupt or truncated checkpoint metadata") as err:
        ckpt.read_checkpoint(path.parent)
    assert str(path) in str(err.value)


def test_missing_metadata_is_refused(run):
    (latest_files(run) / "state.json").unlink()
    with pytest.raises(NlcError, match="not a complete checkpoint"):
        ckpt.read_checkpoint(latest_files(run))


def test_a_checkpoint_folder_that_does_not_exist_is_named_as_such(run):
    """Not 'state.json: missing; ... not a complete checkpoint': the hint lists the run's."""
    latest = latest_files(run)
    with pytest.raises(NlcError, match="step_99: no such checkpoint folder") as err:
        ckpt.read_checkpoint(latest.parent / "step_99")
    assert latest.name in err.value.hint


def test_other_spec_is_refused(run):
    with pytest.raises(NlcError, match="written for another spec") as err:
        ckpt.read_checkpoint(latest_files(run), spec_sha256=sha256_text("layer Other {}\n"))
    assert "state.json" in str(err.value) and "the spec given now" in str(err.value)
    # the run keeps a copy of the spec it trained on: the hint names it, not a placeholder
    assert f"{run}/spec.nl" in err.value.hint


def test_other_model_shape_is_refused(run):
    saved = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    wider = dataclasses.replace(saved, d_model=32)
    with pytest.raises(NlcError, match="another model shape: d_model 16 in the checkpoint, 32"):
        ckpt.read_checkpoint(latest_files(run), wider)


def test_resume_refuses_a_changed_spec_file(tmp_path):
    spec = tmp_path / "mine.nl"
    spec.write_text("# my layer, version 1\n")
    attention = builtin_mixer("builtin:attention")
    out = tmp_path / "run"
    train(tiny(out, spec=str(spec), steps=2), mixer_factory=attention, progress=False)
    assert (out / "spec.nl").read_text() == spec.read_text()
    spec.write_text("# my layer, version 2\n")
    with pytest.raises(NlcError, match="written for another spec"):
        train(tiny(out, spec=str(spec), steps=4), mixer_factory=attention, resume=True,
              progress=False)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 2]  # untouched


def test_a_refused_checkpoint_leaves_the_model_untouched(run):
    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    checkpoint = ckpt.read_checkpoint(latest_files(run), config)
    other = dataclasses.replace(config, mlp_ratio=2)  # same names, other MLP shapes
    model = LanguageModel(other, builtin_mixer("builtin:attention"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NlcError, match="has shape"):
        ckpt.apply_checkpoint(checkpoint, model, build_optimizer(model, other))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_optimizer_mismatch_is_refused_before_anything_is_assigned(run):
    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    checkpoint = ckpt.read_checkpoint(latest_files(run), config)
    model = LanguageModel(config, builtin_mixer("builtin:attention"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NlcError, match="state of optimizer torch.optim.adamw.AdamW"):
        ckpt.apply_checkpoint(checkpoint, model, sgd)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_run_folder_is_not_overwritten_without_resume(run):
    with pytest.raises(NlcError, match="already holds a run; pass --resume"):
        train(tiny(run), progress=False)


def test_a_shape_refusal_writes_the_settings_as_a_user_does():
    """spec_overrides were printed as a dict of floats: {'heads': 2.0} ... {'heads': 4.0}."""
    from nlc.runtime.trainer.checkpoint import _setting
    assert _setting({"heads": 4.0, "d_k": 16.0}) == "-D d_k=16 -D heads=4"
    assert _setting({}) == "none" and _setting(16) == "16" and _setting(0.5) == "0.5"
