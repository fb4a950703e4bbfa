"""`nlc train / eval / plot` through `nlc.train_cli` (as nlc/cli.py registers them): exit
codes, `error: ...` for user mistakes, the files a run leaves."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from nlc.train_cli import main

TINY = ["--task", "mqar", "--steps", "4", "--batch-size", "4", "--seq-len", "32",
        "--d-model", "16", "--n-layers", "1", "--mqar-vocab-size", "64",
        "--mqar-num-kv-pairs", "2", "--eval-examples", "8", "--log-interval", "2",
        "--checkpoint-interval", "2", "--warmup", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "attention"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert main(["train", "builtin:attention", *TINY, "--out", str(out), "-D", "heads=2"]) == 0
    torch.set_num_threads(threads)
    return out


def test_train_writes_a_run(run, capsys):
    names = sorted(p.name for p in run.iterdir())
    assert names == ["checkpoints", "config.json", "metrics.jsonl", "summary.json"]
    config = json.loads((run / "config.json").read_text())
    assert config["spec_overrides"] == {"heads": 2.0} and config["vocab_size"] == 64
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and 0.0 <= summary["eval"]["accuracy"] <= 1.0


def test_train_prints_progress_and_a_summary_line(tmp_path, capsys):
    assert main(["train", "builtin:attention", *TINY, "--out", str(tmp_path / "r")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["out"] == str(tmp_path / "r")
    assert "step 2/4" in err and "tok/s" in err and "eta" in err and "done: 4 steps" in err


def test_progress_shows_the_first_step_before_the_first_log_interval(tmp_path, capsys):
    """A run whose log interval is longer than the run still reports step 1 with its speed."""
    args = ["train", "builtin:attention", *TINY, "--out", str(tmp_path / "r")]
    args[args.index("--log-interval") + 1] = "100"
    assert main(args) == 0
    lines = capsys.readouterr().err.splitlines()
    first = next(line for line in lines if line.startswith("step 1/4 "))
    assert "tok/s" in first and "eta" in first and "loss" in first
    assert lines.index(first) < next(i for i, line in enumerate(lines) if "step 4/4" in line)


def test_eval_reports_the_latest_checkpoint(run, capsys):
    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    assert result["step"] == 4
    assert result["accuracy"] == summary["eval"]["accuracy"]
    assert result["loss"] == pytest.approx(summary["eval"]["loss"], abs=1e-6)


def test_eval_names_a_checkpoint_by_its_folder_and_labels_one_from_elsewhere(run, tmp_path,
                                                                            capsys):
    """--checkpoint step_00000002 (as the run's folder names it) was looked for in the current
    folder; a checkpoint of another run was reported as this run's step."""
    import shutil
    assert main(["eval", str(run), "--checkpoint", "step_00000002"]) == 0
    assert capsys.readouterr().out.startswith(f"{run} step 2: ")
    other = tmp_path / "other"
    shutil.copytree(run / "checkpoints" / "step_00000004", other / "step_00000004")
    assert main(["eval", str(run), "--checkpoint", str(other / "step_00000004")]) == 0
    assert capsys.readouterr().out.startswith(f"{other / 'step_00000004'} (step 4, in {run}'s")


def test_resume_extends_a_run(run, tmp_path, capsys):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert main(["train", "builtin:attention", "--out", str(copy), "--resume", "--steps", "6",
                 "--quiet"]) == 0  # the rest of the config comes from the run
    config = json.loads((copy / "config.json").read_text())
    assert config["steps"] == 6 and config["d_model"] == 16
    assert [r["step"] for r in map(json.loads, (copy / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"] == [2, 4, 6]
    capsys.readouterr()
    assert main(["train", "builtin:attention", "--out", str(copy), "--resume"]) == 0  # done
    out, err = capsys.readouterr()
    assert "nothing to train: the run is at step 6 of 6" in err
    assert json.loads(out)["final_loss"] == json.loads((copy / "summary.json").read_text())[
        "final_loss"]
    # a lower --steps does not take the run back, and says so
    assert main(["train", "builtin:attention", "--out", str(copy), "--resume", "--steps",
                 "4"]) == 0
    err = capsys.readouterr().err
    assert "the run is at step 6, past --steps 4 (a resume trains up to --steps; it never " \
        "goes back)" in err, err


def test_a_resume_with_nothing_to_train_leaves_the_run_files_alone(run, tmp_path, capsys):
    """It once rewrote summary.json (elapsed 0, tokens_per_s 0) and config.json's steps."""
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    before = {name: (copy / name).read_bytes() for name in ("config.json", "summary.json")}
    for extra in ([], ["--steps", "2"]):
        assert main(["train", "builtin:attention", "--out", str(copy), "--resume", *extra]) == 0
        assert "nothing to train" in capsys.readouterr().err
        assert {name: (copy / name).read_bytes() for name in before} == before


@pytest.mark.parametrize("argv, message", [
    (["train", "builtin:attention", "--steps", "0"], "--steps must be at least 1"),
    (["train", "builtin:attention", *TINY, "--mqar-num-kv-pairs", "9"], "4 * --mqar-num-kv-pairs <= --seq-len, got 9 pairs"),
    (["train", "no_such.nl", *TINY], "no_such.nl: no such spec file"),
    (["train", "/dev/null", *TINY], "/dev/null: not a regular file (a device or a pipe), so no "
                                    "spec file"),
    (["train", "", *TINY], "the spec file is an empty path"),
    (["train", "builtin:attention", *TINY, "--optimizer", "/"], "/: a folder, not an optimizer "
                                                                  "spec"),
    (["train", "builtin:attention", *TINY, "-D", "heads"], "-D expects NAME=VALUE"),
    (["train", "builtin:attention", "--task", "niah", "--steps", "4", "--seq-len", "32",
      "--d-model", "16"], "niah needs seq_len >="),
    (["train", "builtin:attention", *TINY, "--task", "niah"],
     "--mqar-vocab-size is an option of the mqar task; this run's task is niah"),
    (["train", "builtin:attention", "--task", "niah", "--seq-len", "128", "--eval-examples",
      "2", "--niah-eval-lengths", "128", "--niah-depth-bands", "4"],
     "--niah-depth-bands 4 is more than --eval-examples 2: a band would hold no needle"),
    (["eval", "nowhere"], "nowhere: no such folder; is it a run folder of nlc train?"),
    (["plot", "nowhere", "-o", "x.png"], "nowhere/metrics.jsonl: missing"),
])
def test_user_errors_exit_2_with_a_message(argv, message, tmp_path, capsys):
    argv = argv + (["--out", str(tmp_path / "r")] if argv[0] == "train" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err and "Traceback" not in err


def test_a_corrupt_checkpoint_is_refused_by_the_cli(run, tmp_path, capsys):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    weights = max((copy / "checkpoints").iterdir()) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    assert main(["eval", str(copy)]) == 2
    assert main(["train", "builtin:attention", "--out", str(copy), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count(f"error: {weights}: truncated") == 2


def test_plot_overlays_runs(run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    target = tmp_path / "curves.png"
    assert main(["plot", str(run), str(run), "-o", str(target), "--title", "t"]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_what_to_install(run, tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["plot", str(run), "-o", str(tmp_path / "x.png")]) == 2
    assert "nlc plot needs matplotlib: pip install matplotlib" in capsys.readouterr().err


def test_relaunch_rebuilds_the_command(monkeypatch, tmp_path):
    from nlc.runtime.trainer import distributed
    seen = {}
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(distributed, "launch_local",
                        lambda n, argv: seen.update(n=n, cmd=distributed.rank_command(argv)) or 0)
    assert main(["train", "builtin:attention", "--nproc", "3", "--steps", "7", "--no-bf16",
                 "--batch-size", "6", "--task", "lm",
                 "--lm-files", "a", "b", "-D", "heads=2", "--out", str(tmp_path)]) == 0
    cmd = seen["cmd"]
    assert seen["n"] == 3 and "--nproc" not in cmd
    tail = cmd[cmd.index("nlc.train_cli") + 1:]
    assert tail[:4] == ["train", "builtin:attention", "-D", "heads=2"]
    for flag in (["--steps", "7"], ["--no-bf16"], ["--lm-files", "a", "b"]):
        assert any(tail[i:i + len(flag)] == flag for i in range(len(tail)))


def test_time_budget_ends_the_run_early_with_an_eval(tmp_path, capsys):
    out = tmp_path / "short"
    args = ["train", "builtin:attention", *TINY, "--out", str(out), "--time-budget", "1e-9"]
    args[args.index("--steps") + 1] = "50"
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["steps_planned"] == 50
    assert 0.0 <= summary["eval"]["accuracy"] <= 1.0
    assert (out / "checkpoints" / "step_00000001").is_dir()
    assert "time budget of 1e-09 s spent: stopping at step 1 of 50" in capsys.readouterr().err


def test_a_diverging_run_stops_saves_nothing_and_exits_1(tmp_path, capsys):
    """At lr 1e6 the first step makes the weights huge: the run stops at the first
    non-finite loss or gradient, keeps the checkpoint it had, and says so."""
    out = tmp_path / "wild"
    args = ["train", "builtin:attention", *TINY, "--out", str(out), "--warmup", "0",
            "--checkpoint-interval", "1", "--grad-clip", "0"]
    args[args.index("--steps") + 1] = "20"
    assert main([*args, "--steps", "1"]) == 0
    assert main([*args, "--resume", "--lr", "1e6"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["diverged_at"] is not None and summary["diverged_at"] < 20
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved[-1] == f"step_{summary['diverged_at'] - 1:08d}"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "diverged"
    err = capsys.readouterr().err
    # the weights of 1e30 make the loss or, with the loss still finite, the gradients overflow
    assert (f"the loss is not finite at step {summary['diverged_at']}" in err
            or f"the gradients are not finite at step {summary['diverged_at']}" in err)
    assert f"To resume from them: nlc train builtin:attention --out {out} --resume --lr " in err


BOOM = """layer Boom {
  dims d_model = 8, d_k = 4, d_v = 4
  param W_q, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param W_o : [d_v, d_model]
  context from x {
    q = x @ W_q
    k = x @ W_k
    v = x @ W_v
  }
  level memory every 1 token {
    state S : matrix[d_v, d_k] = zeros
    objective l2(S(k), v)
    algorithm gd(lr = RATE)
    read S(q)
  }
  output memory @ W_o
}
"""


def _diverge(text: str, out, capsys) -> str:
    """Train the spec `text` into `out` until it diverges (exit 1); what it printed."""
    spec = out.parent / f"{out.name}.nl"
    spec.write_text(text)
    args = ["train", str(spec), *TINY, "--out", str(out), "--checkpoint-interval", "100"]
    args[args.index("--seq-len") + 1] = "64"
    args[args.index("--mqar-vocab-size") + 1] = "128"
    assert main(args) == 1
    return capsys.readouterr().err


def test_a_run_diverging_in_a_level_names_it_and_leaves_weights_to_evaluate(tmp_path, capsys):
    """A delta rule at rate 1e5 overflows within the first sequence: the run names the level
    whose state went non-finite, saves the weights it had (there is no earlier checkpoint)
    and the run folder evaluates."""
    out = tmp_path / "boom"
    err = _diverge(BOOM.replace("RATE", "100000"), out, capsys)
    assert "blocks.0.mixer" in err and "level(s) memory reached a non-finite state" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000000"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["diverged_at"] == 1 and "level(s) memory" in summary["divergence"]
    # the saved weights evaluate, and the gate above 1 overflows them too: said, exit 1
    assert main(["eval", str(out), "--json"]) == 1
    done = capsys.readouterr()
    assert json.loads(done.out)["step"] == 0 and "not finite" in done.err


def test_a_run_with_an_mlp_spec_evaluates_from_its_own_copy(tmp_path, monkeypatch, capsys):
    mlp = tmp_path / "other.nl"
    mlp.write_text(BOOM.replace("RATE", "0.5"))
    out = tmp_path / "run"
    assert main(["train", "builtin:attention", *TINY, "--out", str(out), "--mlp", str(mlp)]) == 0
    assert (out / "mlp.nl").read_text() == mlp.read_text()
    mlp.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 4


def test_train_help_states_the_real_default_of_out_and_the_warmup_clamp(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the run folder (default: runs/<spec name>-<task>)" in text
    assert "runs/run" not in text
    assert "at most a tenth of --steps" in text


def test_run_files_follow_the_umask(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert main(["train", "builtin:attention", *TINY, "--out", str(tmp_path / "r")]) == 0
    finally:
        os.umask(old)
    for name in ("config.json", "summary.json", "metrics.jsonl"):
        assert stat.S_IMODE((tmp_path / "r" / name).stat().st_mode) == 0o644, name


class _FiniteForwardNaNBackward(torch.nn.Module):
    """A linear mixer plus sqrt(|x - x|): 0 in the forward pass, NaN in the backward pass (the
    derivative of sqrt at 0 times that of |.| at 0), as an overflowing recurrence's
    backward pass would be."""

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = torch.nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x) + (x - x.detach()).abs().sqrt()


def test_a_run_whose_gradients_overflow_says_so_not_that_the_loss_did(tmp_path, capsys):
    """A finite loss with non-finite gradients: the run stops at step 1 and names the
    backward pass and the parameters, where it used to say the loss was not finite."""
    from nlc.runtime.trainer.config import TrainConfig
    from nlc.runtime.trainer.train import train
    out = tmp_path / "nan_grads"
    config = TrainConfig(task="mqar", steps=3, batch_size=4, seq_len=32, d_model=16,
                         n_layers=1, mqar_vocab_size=64, mqar_num_kv_pairs=2, eval_examples=8,
                         checkpoint_interval=0, warmup=0, out=str(out), spec="builtin:attention")
    summary = train(config, mixer_factory=_FiniteForwardNaNBackward, progress=False)
    assert summary["diverged_at"] == 1
    message = summary["divergence"]
    assert message.startswith("the gradients are not finite at step 1, before any update")
    assert "the loss is finite" in message and "backward pass overflowed" in message
    assert "non-finite gradients in" in message and "blocks.0.mixer.proj" in message
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "diverged" and records[-1]["nonfinite_gradients"]


def test_an_interrupted_train_says_how_to_resume(monkeypatch, capsys):
    """Ctrl-C in `nlc train`: exit 130, no traceback, and the way to continue the run."""
    from nlc import cli, train_cli

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_cli, "config_from_args", interrupted)
    assert cli.main(["train", "examples/deltanet.nl"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err


def test_an_optimizer_given_as_the_layer_and_the_reverse_say_so(tmp_path, capsys):
    """Not `-D d_model: no dim of that name` (an override the user never gave)."""
    from conftest import ROOT
    adam, deltanet = str(ROOT / "examples" / "adam.nl"), str(ROOT / "examples" / "deltanet.nl")
    assert main(["train", adam, "--steps", "1", "--out", str(tmp_path / "a")]) == 2
    assert "holds optimizer declarations, no layer" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # the refused run leaves no empty folder behind
    assert main(["train", deltanet, "--optimizer", deltanet, "--steps", "1",
                 "--out", str(tmp_path / "b")]) == 2
    assert "holds layer declarations, no optimizer" in capsys.readouterr().err


def test_a_define_aimed_at_the_mlp_spec_says_where_defines_go(tmp_path, capsys):
    """-D d_hidden with --mlp cms.nl (whose dim it is): the refusal says -D reaches SPEC only."""
    from conftest import ROOT
    deltanet, cms = str(ROOT / "examples" / "deltanet.nl"), str(ROOT / "examples" / "cms.nl")
    assert main(["train", deltanet, "--mlp", cms, "-D", "d_hidden=32", *TINY,
                 "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "-D d_hidden: no dim or hyper of that name" in err
    assert "-D sets SPEC's dims and hypers only" in err and "Traceback" not in err


def test_an_optimizer_file_with_two_optimizers_says_one_per_file(tmp_path, capsys):
    """Its hint pointed at --layer (which picks SPEC's declaration) and at a `model`."""
    from conftest import ROOT
    two = tmp_path / "two.nl"
    two.write_text((ROOT / "examples" / "adam.nl").read_text() + "\n"
                   + (ROOT / "examples" / "sgd_momentum.nl").read_text())
    assert main(["train", "builtin:attention", "--optimizer", str(two), *TINY,
                 "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "expected one optimizer in the spec, found 2" in err and "--layer" not in err
    assert "a file of its own" in err


def test_a_saved_config_with_a_spec_needs_no_spec_argument(run, tmp_path):
    """`nlc train --config RUN/config.json --out NEW` starts a new run of the file's spec
    (it said "SPEC is missing" though the file names it)."""
    out = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.json"), "--out", str(out),
                 "--steps", "1", "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["spec"] == "builtin:attention" and config["spec_overrides"] == {"heads": 2.0}


def test_a_define_of_a_declaration_layer_does_not_train_is_refused(tmp_path, capsys):
    """hope.nl --layer SelfModifyingTitans -D d_hidden=64: d_hidden is ContinuumMemory's,
    which is not trained; the run went ahead and the override did nothing."""
    from conftest import ROOT
    hope = str(ROOT / "examples" / "hope.nl")
    assert main(["train", hope, "--layer", "SelfModifyingTitans", "-D", "d_hidden=64",
                 *TINY, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "-D d_hidden: not a dim or hyper of SelfModifyingTitans" in err
    assert "it is ContinuumMemory's" in err and not (tmp_path / "a").exists()


def test_resume_without_out_reads_the_default_run_folder(tmp_path, monkeypatch, capsys):
    """A run without --out goes to runs/<spec>-<task>; --resume without --out ignored that
    folder's config.json and resumed under the defaults (another model shape)."""
    monkeypatch.chdir(tmp_path)
    args = ["train", "builtin:attention", *TINY, "--quiet"]
    assert main(args) == 0
    assert (tmp_path / "runs" / "attention-mqar" / "config.json").is_file()
    capsys.readouterr()
    assert main(["train", "builtin:attention", "--resume", "--steps", "6", "--quiet"]) == 0
    summary = json.loads((tmp_path / "runs" / "attention-mqar" / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["resumed_from"] == 4


def test_an_lm_run_evaluates_and_resumes_from_another_folder(tmp_path, monkeypatch, capsys):
    """--lm-files given relative to where the run started are saved absolute: `nlc eval RUN`
    from elsewhere said 'corpus: no such file or folder'."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (data / name).write_text("the quick brown fox jumps over the lazy dog. " * 20)
    monkeypatch.chdir(data)
    out = tmp_path / "run"
    args = ["train", "builtin:attention", "--task", "lm", "--steps", "1", "--batch-size", "2",
            "--seq-len", "16", "--d-model", "16", "--n-layers", "1", "--eval-examples", "2",
            "--quiet", "--lm-files", "a.txt", "b.txt", "c.txt", "--out", str(out)]
    assert main(args) == 0
    saved = json.loads((out / "config.json").read_text())["lm_files"]
    assert saved == [str(data / n) for n in ("a.txt", "b.txt", "c.txt")]
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(out)]) == 0
    assert main(["train", "--out", str(out), "--resume", "--steps", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", "builtin:attention", "--task", "lm", "--lm-files", "data/a.txt",
                 "--out", str(tmp_path / "one"), "--quiet"]) == 2
    assert "split the text into two files or more" in capsys.readouterr().err


def test_a_nonfinite_output_with_finite_states_says_so():
    """A layer whose states stay finite while its output is NaN (a read dividing by a norm
    of zero) named no level, and the line pointed only at rates and gates."""
    import torch

    from nlc.runtime.trainer.diverged import _where

    class ZeroNorm(torch.nn.Module):  # the generated calling convention: cache["states"]
        def initial_state(self, batch):
            return {}

        def forward(self, x, cache=None):
            if cache is not None:
                cache["states"] = {"memory": {"S": torch.zeros(2, 2)}}
            return x / x.sum() * 0 / 0

    assert "every level's state is finite" in _where(ZeroNorm(), torch.ones(1, 3))
    assert _where(torch.nn.Identity(), torch.ones(1, 3)) == ""


def test_a_diverging_model_spec_is_located_and_saved(tmp_path, capsys):
    """A compiled `model` keeps its norms and residuals inside it (its block has no norm1):
    locating the blow-up called None, an internal error with no checkpoint saved."""
    out = tmp_path / "boom_model"
    err = _diverge(BOOM.replace("RATE", "100000") + "\nmodel Twice {\n  block Boom -> Boom\n}\n",
                   out, capsys)
    assert "the first non-finite output is blocks.0.mixer's (its layer 0, Boom); level(s)" in err
    assert "internal" not in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000000"]


TWO_MODELS = """layer A {
  dims d_model = 16, d_k = 4
  param W_k, W_v, W_q : [d_model, d_k]
  param W_o : [d_k, d_model]
  context from x {
    k = l2norm(x @ W_k)
    v = x @ W_v
    q = x @ W_q
  }
  level memory {
    state S : matrix[d_k, d_k] = zeros
    objective dot(S(k), v)
    retention decay(0.9)
    algorithm gd(lr = 1)
    read S(q)
  }
  output memory @ W_o
}
model One {
  block A
}
model Two {
  block A -> A
}
"""


def test_layer_picks_a_declaration_of_a_file_with_several(tmp_path, capsys):
    """A file with two models was refused by nlc train; --layer NAME picks one (or the layer
    alone), is kept in the run's config for eval and resume, and a resume that names
    another is refused as another model shape."""
    spec = tmp_path / "two.nl"
    spec.write_text(TWO_MODELS)
    assert main(["train", str(spec), *TINY, "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "found 2 models (One, Two)" in err and "--layer NAME" in err
    assert main(["train", str(spec), *TINY, "--out", str(tmp_path / "x"), "--layer", "Three"]) == 2
    assert "no layer or model named 'Three' in the spec (it has A, One, Two)" in \
        capsys.readouterr().err
    for name in ("Two", "A"):
        out = tmp_path / name
        assert main(["train", str(spec), *TINY, "--out", str(out), "--layer", name]) == 0
        assert json.loads((out / "config.json").read_text())["layer"] == name
        assert main(["eval", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", str(spec), "--out", str(tmp_path / "Two"), "--resume", "--steps", "6",
                 "--layer", "One"]) == 2
    assert "layer 'Two' in the checkpoint, 'One' now" in capsys.readouterr().err
    assert main(["train", "builtin:attention", *TINY, "--out", str(tmp_path / "b"),
                 "--layer", "A"]) == 2
    assert "builtin:attention has none" in capsys.readouterr().err


def test_a_run_written_before_layer_existed_still_evaluates_and_resumes(run, tmp_path):
    """Checkpoints from before `layer` was a config field have no such key: it counts as its
    default, not as another model shape."""
    import shutil
    copy = tmp_path / "old"
    shutil.copytree(run, copy)
    for state in copy.glob("checkpoints/*/state.json"):
        data = json.loads(state.read_text())
        del data["config"]["layer"]
        state.write_text(json.dumps(data))
    config = json.loads((copy / "config.json").read_text())
    del config["layer"]
    (copy / "config.json").write_text(json.dumps(config))
    assert main(["eval", str(copy)]) == 0
    assert main(["train", "builtin:attention", "--out", str(copy), "--resume", "--steps", "6"]) == 0


def test_an_update_that_writes_non_finite_weights_saves_none_of_them(tmp_path, capsys):
    """Adam with eps = 0 divides 0 by 0 for a parameter without gradient: the weights after
    step 1 hold NaN. They were saved as "the last finite weights"; now the message names the
    optimizer's update, and the checkpoint saved before them stays the latest."""
    from conftest import EXAMPLES
    adam = tmp_path / "adam0.nl"
    adam.write_text((EXAMPLES / "adam.nl").read_text().replace("eps = 1e-8", "eps = 0"))
    out = tmp_path / "nan"
    args = ["train", "builtin:attention", *TINY, "--out", str(out), "--checkpoint-interval", "1",
            "--optimizer", str(adam)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "the weights are not finite after step 1: the optimizer's update at step 1 made " \
        "parameters non-finite" in err, err
    assert "Not saving these weights; no checkpoint was saved before them" in err
    assert not list(out.glob("checkpoints/step_*"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "diverged" and records[-1]["step"] == 1


@pytest.mark.parametrize("where", [".", "/"])
def test_a_run_into_the_current_or_root_folder_is_refused(tmp_path, monkeypatch, capsys, where):
    """`--out /` wrote config.json, metrics.jsonl and checkpoints/ into the root folder."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "builtin:attention", *TINY, "--out", where]) == 2
    assert "--out names the current, home or root folder" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_eval_of_an_lm_run_whose_files_moved_takes_them_from_lm_files(tmp_path, capsys):
    """`nlc eval` of an lm run whose --lm-files moved had no way to name the new place."""
    data = tmp_path / "text"
    data.mkdir()
    for i in range(3):
        (data / f"f{i}.txt").write_text("the quick brown fox jumps over the lazy dog. " * 30)
    out = tmp_path / "lm"
    assert main(["train", "builtin:attention", "--task", "lm", "--lm-files", str(data),
                 "--steps", "2", "--d-model", "16", "--n-layers", "1", "--batch-size", "2",
                 "--seq-len", "32", "-D", "heads=2", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    data.rename(tmp_path / "moved")
    assert main(["eval", str(out), "--json"]) == 2
    assert "--lm-files NEW" in capsys.readouterr().err
    assert main(["eval", str(out), "--json", "--lm-files", str(tmp_path / "moved")]) == 0
    moved = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert moved["loss"] == pytest.approx([r for r in logged if r["kind"] == "eval"][-1]["loss"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_special_files_in_place_of_a_run_s_files_are_refused_not_read(tmp_path, capsys):
    """A run's config.json, a --config file or a checkpoint's state.json that is a FIFO hung
    for ever, and /dev/zero read until memory ran out: each is refused as not a regular
    file, exit status 2."""
    from nlc.runtime.trainer.checkpoint import read_checkpoint
    from nlc.runtime.trainer.progress import read_metrics

    from nlc.errors import NlcError
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000001").mkdir(parents=True)
    os.mkfifo(run / "config.json")
    os.mkfifo(run / "checkpoints" / "step_00000001" / "state.json")
    os.mkfifo(run / "metrics.jsonl")
    assert main(["eval", str(run)]) == 2
    assert "config is not a regular file" in capsys.readouterr().err
    assert main(["train", "--config", str(run / "config.json"), "--out",
                 str(tmp_path / "new")]) == 2
    assert "config is not a regular file" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    with pytest.raises(NlcError, match="not a regular file"):
        read_checkpoint(run / "checkpoints" / "step_00000001")
    with pytest.raises(NlcError, match="not a regular file"):
        read_metrics(run / "metrics.jsonl")
    if os.path.exists("/dev/zero"):
        (run / "config.json").unlink()
        (run / "config.json").symlink_to("/dev/zero")
        assert main(["eval", str(run)]) == 2
        assert "config is not a regular file" in capsys.readouterr().err
