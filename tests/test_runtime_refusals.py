"""Hostile command lines and hand-edited checkpoints: each gets a clean refusal (`nlc: error:
...`, exit 2) naming what is wrong, never an internal error, and loses no data."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from nlc.runtime.trainer import checkpoint as ckpt
from safetensors.torch import load_file, save_file

from nlc.train_cli import main

TINY = ["--task", "mqar", "--steps", "4", "--batch-size", "4", "--seq-len", "32",
        "--d-model", "16", "--n-layers", "1", "--mqar-vocab-size", "64",
        "--mqar-num-kv-pairs", "2", "--eval-examples", "8", "--log-interval", "2",
        "--checkpoint-interval", "2", "--keep-last", "1", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def refused(argv, capsys, *expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nlc: error: ") and "internal error" not in err, err
    for text in expected:
        assert text in err, err
    return err


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "lr must be a finite number, got nan"),
    (["--n-layers", "10000000"], "--n-layers must be at most 4096, got 10000000"),
    (["--eval-examples", "1000000000"], "--eval-examples must be at most 16777216"),
    (["--lr", "1e300"], "lr must be positive and at most 1e+06, got 1e+300"),
    (["--lr", "1e38"], "lr must be positive and at most 1e+06, got 1e+38"),
    (["--beta1", "2"], "beta1 must be in [0, 1), got 2.0"),
    (["--mqar-power-a", "nan"], "--mqar-power-a must be a finite number"),
    (["--mqar-power-a", "0"], "--mqar-power-a must be positive"),
    (["--out", ""], "out must name a run folder, got an empty string"),
    (["--out", "/proc/nlc-run"], "/proc/nlc-run: cannot create the run folder"),
    (["--batch-size", "3", "--nproc", "2"], "batch_size 3 does not split over 2 ranks"),
    (["--cuda-graphs", "--compile"], "--cuda-graphs and --compile cannot be combined"),
    (["--cuda-graphs", "--carry-state", "16"], "--cuda-graphs and --carry-state cannot be combined"),
    (["--cuda-graphs", "--device", "cpu"], "cuda_graphs needs a CUDA device; this run is on cpu"),
    (["--tf32", "--device", "cpu"], "tf32 needs a CUDA device; this run is on cpu"),
    (["--compile-chunks", "--compile"], "--compile-chunks and --compile cannot be combined"),
    (["--d-model", "200000"], "--d-model 200000, --n-layers 1: the model's parameters"),
    (["--weight-decay", "-1"], "--weight-decay must not be negative, got -1"),
    (["--device", "cuda:abc"], "unknown device 'cuda:abc' (expected auto, cpu, cuda or cuda:N)"),
    (["--device", "cudax"], "unknown device 'cudax'"),
    (["--task", "lm", "--mqar-vocab-size", "99"],
     "--mqar-vocab-size is an option of the mqar task; this run's task is lm"),
])
def test_bad_flags_are_refused(flags, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where a run with --out "" once went
    refused(["train", "builtin:attention", *TINY, "--out", "never-written", *flags], capsys,
            message)
    assert list(tmp_path.iterdir()) == []


def test_out_at_or_under_a_file_is_refused(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    refused(["train", "builtin:attention", *TINY, "--out", str(afile)], capsys,
            "--out names a file, not a folder")
    refused(["train", "builtin:attention", *TINY, "--out", str(afile / "sub")], capsys,
            "cannot create the run folder (Not a directory)")
    assert afile.read_text() == "keep"


def test_an_allocation_that_fails_at_build_names_the_size(tmp_path, monkeypatch, capsys):
    from nlc.runtime.trainer import memory

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 149.00 GiB")
    monkeypatch.setattr(memory, "memory_of", lambda device: None)  # no check before building
    monkeypatch.setattr(torch.nn.Module, "to", out_of_memory)
    refused(["train", "builtin:attention", *TINY, "--d-model", "200000", "--out",
             str(tmp_path / "run")], capsys, "the model's parameters alone need 1,788.2 GiB")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_with_files_a_run_writes_is_not_overwritten(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text("mine")
    refused(["train", "builtin:attention", *TINY, "--out", "."], capsys,
            "holds config.json, which a new run would overwrite")
    assert (tmp_path / "config.json").read_text() == "mine"


def test_a_config_with_a_non_numeric_override_is_refused(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"spec_overrides": {"d_k": "abc"}}))
    refused(["train", "builtin:attention", *TINY, "--config", str(config)], capsys,
            f"{config}: spec_overrides: 'd_k' must map to a finite number, got 'abc'")


def test_a_config_with_a_nan_names_its_file_and_field(tmp_path, capsys):
    """JSON's NaN parses; the refusal named neither the file nor where it came from."""
    config = tmp_path / "c.json"
    config.write_text('{"lr": NaN}')
    refused(["train", "builtin:attention", *TINY, "--config", str(config)], capsys,
            f"{config}: field 'lr' must be a finite number, got nan")


def test_a_spec_file_name_too_long_for_the_file_system(tmp_path, capsys):
    spec = tmp_path / ("a" * 241 + ".nl")
    spec.write_text((__import__("conftest").EXAMPLES / "deltanet.nl").read_text())
    refused(["train", str(spec), *TINY, "-D", "heads=2"], capsys, "File name too long")
    refused(["train", str(spec), *TINY, "-D", "heads=2", "--out", str(tmp_path / "r")], capsys,
            "is the spec's file name too long?")


# ---- hand-edited checkpoints ------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("refusals") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert main(["train", "builtin:attention", *TINY, "--out", str(out)]) == 0
    torch.set_num_threads(threads)
    return out


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def edit_state(run, change):
    folder = ckpt.latest_checkpoint(run)
    state = json.loads((folder / "state.json").read_text())
    change(state)
    (folder / "state.json").write_text(json.dumps(state))


def edit_tensors(run, name, change):
    """Rewrite one .safetensors file and record its new size and hash, as a careful forger
    would: only the content checks can catch it."""
    folder = ckpt.latest_checkpoint(run)
    tensors = load_file(str(folder / name))
    change(tensors)
    save_file(tensors, str(folder / name))
    edit_state(run, lambda s: s["files"].__setitem__(name, {
        "bytes": (folder / name).stat().st_size, "sha256": ckpt.sha256_file(folder / name)}))


def set_every(state, value):
    state["optimizer"]["param_groups"][0]["every"] = value


@pytest.mark.parametrize("change, message", [
    (lambda s: s.__setitem__("files", "model.safetensors"), "'files' must be an object"),
    (lambda s: set_every(s, 0), "'optimizer.param_groups[0].every' must be a whole number >= 1"),
    (lambda s: s["rng"].__setitem__("torch", "not base64!"), "'rng.torch' is not valid base64"),
    (lambda s: s["rng"].__setitem__("python", [3, [1, 2], None]), "'rng.python' is not a state"),
    (lambda s: s.__setitem__("step", -7), "'step' must be a whole number >= 0, got -7"),
    (lambda s: s.__setitem__("step", 2), "'step' is 2, the folder is step_00000004"),
])
def test_edited_state_values_are_refused(run, change, message, capsys):
    edit_state(run, change)
    refused(["eval", str(run)], capsys, "state.json: corrupt checkpoint metadata", message)
    refused(["train", "builtin:attention", *TINY, "--out", str(run), "--resume"], capsys, message)


def set_group(key, value):
    return lambda s: s["optimizer"]["param_groups"][0].__setitem__(key, value)


def first_scalar(name, value):
    return lambda s: s["optimizer"]["scalars"].__setitem__("0", {name: value})


@pytest.mark.parametrize("change, message", [
    (set_group("betas", "xx"), "'optimizer.param_groups[0].betas' is 'xx'"),
    (set_group("eps", "abc"), "'optimizer.param_groups[0].eps' is 'abc'"),
    (set_group("maximize", True), "'optimizer.param_groups[0].maximize' is True"),  # ascent
    (set_group("every", 10 ** 30), "'optimizer.param_groups[0].every' is 10000"),  # frozen
    (set_group("amsgrad", None), "'optimizer.param_groups[0].amsgrad' is None"),
    (lambda s: s["optimizer"]["param_groups"][0].pop("weight_decay"), "has settings"),
    (lambda s: s["optimizer"]["param_groups"][0].__setitem__(
        "params", [0] * len(s["optimizer"]["param_groups"][0]["params"])),
     "'optimizer.param_groups[0].params' must be [0, 1"),
    (first_scalar("exp_avg", 5), "'optimizer.scalars.0.exp_avg' is also a tensor"),
    (first_scalar("count", "x"), "'optimizer.scalars.0.count' must be a finite number"),
    (lambda s: s["rng"]["python"].__setitem__(0, 10 ** 30), "'rng.python' is not a state"),
])
def test_edited_optimizer_settings_are_refused_at_resume(run, change, message, capsys):
    """Each crashed the resume with an internal error, or (maximize, every) trained on in
    silence with the loss climbing or a level frozen; refused, naming the field, and the run
    folder left as it was."""
    edit_state(run, change)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    refused(["train", "builtin:attention", *TINY, "--out", str(run), "--resume"], capsys,
            "state.json: corrupt checkpoint metadata", message)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def rename_first_key(tensors):
    key = next(iter(tensors))
    tensors["bogus"] = tensors.pop(key)


def reshape_exp_avg(tensors):
    key = next(k for k in tensors if k.endswith(".exp_avg"))
    tensors[key] = torch.zeros(3, 5)


def retype_first(dtype):
    def change(tensors):
        key = next(k for k, v in tensors.items() if v.dim())
        tensors[key] = tensors[key].to(dtype)
    return change


@pytest.mark.parametrize("name, change, message", [
    ("optimizer.safetensors", rename_first_key, "tensor key 'bogus' is not PARAM_INDEX.NAME"),
    ("optimizer.safetensors", reshape_exp_avg, "has shape [3, 5], its parameter"),
    ("optimizer.safetensors", retype_first(torch.int64), "dtype torch.int64"),
    ("model.safetensors", retype_first(torch.float16), "dtype torch.float16, the model has"),
    ("model.safetensors", retype_first(torch.int64), "dtype torch.int64, the model has"),
])
def test_forged_tensors_are_refused(run, name, change, message, capsys):
    edit_tensors(run, name, change)
    refused(["train", "builtin:attention", *TINY, "--out", str(run), "--resume"], capsys, message)


def test_a_kill_while_pruning_leaves_no_partial_checkpoint(run, monkeypatch):
    """Deletion dies half way (as under kill -9): the victim was renamed to a trash name
    first, so every step_* folder stays complete, and the next prune removes the trash."""
    folder = run / "checkpoints"
    src = ckpt.latest_checkpoint(run)
    for step in (1, 2):
        shutil.copytree(src, folder / f"step_{step:08d}")

    def dies_half_way(path, ignore_errors=False):
        (next(p for p in sorted(path.iterdir()) if p.is_file())).unlink()
        raise KeyboardInterrupt("killed")
    monkeypatch.setattr(ckpt.shutil, "rmtree", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune(folder, keep_last=1)
    monkeypatch.undo()
    for step_dir in ckpt.checkpoint_dirs(run):
        assert sorted(p.name for p in step_dir.iterdir()) == [
            "model.safetensors", "optimizer.safetensors", "state.json"], step_dir
    assert list(folder.glob(".trash-step_*"))
    ckpt.prune(folder, keep_last=1)
    assert sorted(p.name for p in folder.iterdir()) == ["step_00000004"]


def test_a_hyper_set_to_zero_under_a_division_is_refused_before_training(tmp_path, capsys):
    """gla.nl computes `1 / tau`: with -D tau=0 the generated forward once raised
    ZeroDivisionError after the run folder was written."""
    from conftest import ROOT
    out = tmp_path / "g"
    assert main(["train", str(ROOT / "examples" / "gla.nl"), *TINY, "-D", "heads=2", "-D", "d_k=8",
                 "-D", "d_v=8", "-D", "tau=0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "gla.nl:22:47: error: division by zero in '1 / tau': hyper 'tau' is 0" in err, err
    assert not out.exists()


@pytest.mark.parametrize("builtin, define", [
    ("builtin:attention", "heads=-2"), ("builtin:attention", "heads=0"),
    ("builtin:attention", "heads=2.5"), ("builtin:mlp", "ratio=-1"), ("builtin:mlp", "ratio=0"),
    ("builtin:mlp", "ratio=0.5"),
])
def test_a_builtins_bad_define_is_refused_before_any_file(builtin, define, tmp_path, capsys):
    """heads=0 once fell back to the default, 2.5 to 2, and ratio=0.5 trained a zero-width
    layer; negative values were internal errors."""
    out = tmp_path / "r"
    name, value = define.split("=")
    refused(["train", builtin, *TINY, "-D", define, "--out", str(out)], capsys,
            f"-D {name}={float(value):g}: {builtin}'s {name} must be a positive whole number")
    assert not out.exists()
