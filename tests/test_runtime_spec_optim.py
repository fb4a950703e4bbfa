"""Training with the shipped optimizer specs: Muon takes the matrices and AdamW the rest;
an optimizer the trainer cannot feed (DGD's recorder) is refused with its reason."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from nlc.runtime.trainer import checkpoint as ckpt
from nlc.runtime.trainer.config import TrainConfig
from nlc.runtime.trainer.spec_optim import SpecWithAdamW
from nlc.runtime.trainer.train import train

from conftest import EXAMPLES
from nlc.errors import NlcError
from nlc.factories import factories_for
from nlc.train_cli import main


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def tiny(out, **changes) -> TrainConfig:
    base = TrainConfig(task="mqar", steps=4, batch_size=4, seq_len=32, d_model=16, n_layers=1,
                       mqar_vocab_size=64, mqar_num_kv_pairs=2, eval_examples=8,
                       eval_interval=0, log_interval=1, checkpoint_interval=2, warmup=0,
                       optimizer=str(EXAMPLES / "muon.nl"), out=str(out))
    return dataclasses.replace(base, **changes)


def compiled_train(config, **kwargs) -> dict:
    """`train` with the config's specs compiled, as `nlc train` runs it."""
    return train(config, **factories_for(config), **kwargs)


def weights(run):
    return ckpt.read_checkpoint(ckpt.latest_checkpoint(run)).model


def test_muon_trains_matrices_and_adamw_the_vectors(tmp_path):
    from nlc.runtime.trainer.model import LanguageModel
    from nlc.runtime.trainer.optim import build_optimizer, decays
    config = dataclasses.replace(tiny(tmp_path / "x"), vocab_size=64,
                                 spec=str(EXAMPLES / "deltanet.nl"))
    given = factories_for(config)
    model = LanguageModel(config, given["mixer_factory"], given["mlp_factory"])
    optimizer = build_optimizer(model, config, given["optimizer_class"])
    assert isinstance(optimizer, SpecWithAdamW) and type(optimizer.spec).__name__ == "Muon"
    by_spec = {id(p) for g in optimizer.spec.param_groups for p in g["params"]}
    by_adamw = {id(p) for g in optimizer.adamw.param_groups for p in g["params"]}
    matrices = decays(model)  # a layer's per-head [d_model] is a vector, [heads, d_model]
    assert any(p.dim() == 2 and not matrices[p] for p in model.parameters())
    for p in model.parameters():
        assert (id(p) in by_spec) == matrices[p] and (id(p) in by_adamw) == (not matrices[p])


def test_a_muon_run_resumes_exactly(tmp_path):
    """Resuming from the step-2 checkpoint of a 4-step run gives the same step-4 weights (so
    the combined optimizer's state survives a checkpoint)."""
    import shutil
    straight = tmp_path / "straight"
    compiled_train(tiny(straight), progress=False)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000004")
    (resumed / "summary.json").unlink()
    compiled_train(tiny(resumed), resume=True, progress=False)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    start = ckpt.read_checkpoint(ckpt.checkpoint_dirs(straight)[0]).model
    assert any(not torch.equal(start[n], v) for n, v in a.items())  # it did train


def test_dgd_as_the_trainer_optimizer_is_refused_with_its_reason(tmp_path, capsys):
    config = tiny(tmp_path / "dgd", optimizer=str(EXAMPLES / "dgd.nl"))
    with pytest.raises(NlcError, match="needs recorder=nl.LinearRecorder"):
        compiled_train(config, progress=False)
    args = ["train", "builtin:attention", "--task", "mqar", "--steps", "2", "--batch-size", "4",
            "--seq-len", "32", "--d-model", "16", "--n-layers", "1", "--mqar-vocab-size", "64",
            "--mqar-num-kv-pairs", "2", "--eval-examples", "8", "--quiet",
            "--optimizer", str(EXAMPLES / "dgd.nl"), "--out", str(tmp_path / "cli")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{EXAMPLES / 'dgd.nl'}: DeltaGradientDescent updates each nn.Linear" in err
    assert "internal error" not in err


MULTI_FREQUENCY = """optimizer TwoMomenta {
  hyper lr = 0.02, mu1 = 0.9, mu2 = 0.99

  level fast over gradients g every 1 step {
    state M1 : like(param) = zeros
    objective dot(M1, g)
    retention decay(mu1)
    algorithm gd(lr = 1)
    read M1
  }

  level slow over gradients g every 4 steps {
    state M2 : like(param) = zeros
    objective dot(M2, g)
    retention decay(mu2)
    algorithm gd(lr = 1)
    apply param = param - lr * (fast + M2)
  }
}
"""


def test_a_level_every_c_steps_keeps_its_chunk_start_state(tmp_path):
    """Momenta at two frequencies (Nested Learning's M3 shape): the slow level takes its
    gradient step at the state of its chunk's first step (the anchor), which the optimizer
    keeps and refreshes every 4 steps. Checked against the rule `nlc derive` prints, run by
    hand: M2 += (mu2 - 1) M2_0 + g, M2_0 the state at steps 1, 5, 9, ..."""
    from nlc.emit import load_optimizer
    path = tmp_path / "two_momenta.nl"
    path.write_text(MULTI_FREQUENCY)
    cls = load_optimizer(str(path))
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(3, 5, dtype=torch.float64))
    expected = param.detach().clone()
    opt = cls([param])
    m1 = torch.zeros_like(expected)
    m2 = torch.zeros_like(expected)
    for t in range(1, 11):
        g = torch.randn_like(expected)
        param.grad = g.clone()
        opt.step()
        if (t - 1) % 4 == 0:
            anchor = m2.clone()
        m1 = 0.9 * m1 + g
        m2 = m2 + (0.99 - 1) * anchor + g
        expected = expected - 0.02 * (m1 + m2)
        torch.testing.assert_close(param.detach(), expected, rtol=1e-12, atol=1e-12)


def _compiled(tmp_path, text: str, name: str):
    from nlc.emit import load_optimizer
    path = tmp_path / f"{name}.nl"
    path.write_text(text)
    return path, load_optimizer(str(path))


def test_a_compiled_optimizer_that_fails_is_reported_not_replaced_by_adamw(tmp_path):
    """A compiled class whose step raises stops the run before training, with the error; it
    had been swapped for AdamW on every parameter in silence (a helper's run reported the
    losses of plain AdamW)."""
    from nlc.runtime.trainer.spec_optim import build_spec_optimizer
    _, cls = _compiled(tmp_path, MULTI_FREQUENCY, "two_momenta")

    class Broken(cls):
        def step(self, closure=None):
            raise TypeError("clamp_min() received an invalid combination of arguments")
    Broken.__module__ = cls.__module__
    config = tiny(tmp_path / "x", optimizer="broken.nl")
    groups = [{"params": [torch.nn.Parameter(torch.zeros(3, 4))], "every": 1}]
    with pytest.raises(NlcError, match=r"broken.nl: Broken fails its first step on a "
                                       r"parameter of shape \[3, 4\]: TypeError: clamp_min"):
        build_spec_optimizer(groups, config, Broken)


def test_an_optimizer_without_lr_is_refused_with_its_hypers(tmp_path):
    path, cls = _compiled(tmp_path, MULTI_FREQUENCY.replace("hyper lr", "hyper eta")
                              .replace("- lr *", "- eta *"), "eta")
    from nlc.runtime.trainer.spec_optim import build_spec_optimizer
    config = tiny(tmp_path / "x", optimizer=str(path))
    groups = [{"params": [torch.nn.Parameter(torch.zeros(3))], "every": 1}]
    with pytest.raises(NlcError, match="has no hyper 'lr'.*its hypers are eta, mu1, mu2"):
        build_spec_optimizer(groups, config, cls)


def test_the_run_says_which_parameters_adamw_takes(tmp_path, capsys):
    compiled_train(tiny(tmp_path / "x", steps=1, checkpoint_interval=0), progress=True)
    err = capsys.readouterr()
    text = err.out + err.err
    assert "optimizer: Muon takes" in text and "AdamW takes the" in text, text


OWN_NAME = """optimizer OwnName {
  hyper lr = 0.1
  level fast over gradients g every 1 step {
    state m : like(param) = zeros
    objective dot(m, g)
    retention decay(0.9)
    algorithm gd(lr = 1)
    apply param = param - lr * FAST
  }
  level slow over gradients g every 3 steps {
    state M : like(param) = zeros
    objective dot(M, g)
    retention decay(0.5)
    algorithm gd(lr = 1)
    apply param = param - lr * SLOW
  }
}
"""


def test_a_level_names_itself_in_its_own_apply(tmp_path):
    """A level's name in its own `apply` is its read after this step's write, as in another
    level's apply: the state after the write for a level every step (the same as naming the
    state), the chunk-start state for a level every 3 steps. It was refused as a loop."""
    named = OWN_NAME.replace("FAST", "fast").replace("SLOW", "slow")
    _, by_name = _compiled(tmp_path, named, "by_name")
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(4, 2, dtype=torch.float64))
    opt = by_name([w])
    m, M = torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64)
    want = torch.zeros(4, 2, dtype=torch.float64)
    for t in range(1, 8):
        g = torch.randn(4, 2, dtype=torch.float64)
        w.grad = g.clone()
        opt.step()
        if (t - 1) % 3 == 0:
            anchor = M.clone()
        m = 0.9 * m + g
        M = M + (0.5 - 1) * anchor + g
        want = want - 0.1 * anchor - 0.1 * m
        torch.testing.assert_close(w.detach(), want, rtol=1e-13, atol=1e-13)


CLI_TINY = ["--task", "mqar", "--steps", "2", "--batch-size", "4", "--seq-len", "32",
            "--d-model", "16", "--n-layers", "1", "--mqar-vocab-size", "64",
            "--mqar-num-kv-pairs", "2", "--eval-interval", "0", "--warmup", "0",
            "--checkpoint-interval", "0", "--device", "cpu"]


def test_a_spec_optimizers_own_lr_is_the_peak_unless_lr_is_given(tmp_path, capsys):
    """--lr's default (1e-3) replaced the spec's own lr in silence (SGD momentum's 0.01,
    Muon's 0.02); the spec's lr is the peak now, and the run says so; --lr still sets
    another."""
    import json
    sgd = str(EXAMPLES / "sgd_momentum.nl")
    own = tmp_path / "own"
    assert main(["train", "builtin:attention", *CLI_TINY, "--optimizer", sgd,
                 "--out", str(own)]) == 0
    assert "peak learning rate 0.01, " in capsys.readouterr().err
    assert json.loads((own / "config.json").read_text())["lr"] == 0.01
    given = tmp_path / "given"
    assert main(["train", "builtin:attention", *CLI_TINY, "--optimizer", sgd, "--lr", "0.003",
                 "--out", str(given)]) == 0
    assert "peak learning rate" not in capsys.readouterr().err
    assert json.loads((given / "config.json").read_text())["lr"] == 0.003


@pytest.mark.parametrize("flag", ["--weight-decay", "--beta1", "--beta2"])
def test_adamws_flags_are_refused_where_no_adamw_runs(tmp_path, capsys, flag):
    """SGD momentum trains every parameter, so AdamW's settings would change nothing (they
    were ignored in silence); Muon leaves the vectors to AdamW, which they set."""
    out = tmp_path / "r"
    assert main(["train", "builtin:attention", *CLI_TINY, "--optimizer",
                 str(EXAMPLES / "sgd_momentum.nl"), flag, "0.5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{flag} sets AdamW's" in err and "no AdamW runs" in err, err
    assert not out.exists()
    assert main(["train", "builtin:attention", *CLI_TINY, "--optimizer",
                 str(EXAMPLES / "muon.nl"), flag, "0.5", "--out", str(tmp_path / "m")]) == 0


def test_an_optimizer_whose_first_step_is_not_finite_is_refused_before_training(tmp_path,
                                                                                capsys):
    """Adam with b2 = 1 divides by 1 - b2^t = 0 at its first step: the run trained into NaN
    (check cannot see it); the first step on a probe refuses it now, naming the hypers."""
    spec = tmp_path / "adam_b2.nl"
    text = (EXAMPLES / "adam.nl").read_text()
    spec.write_text(text.replace("b2 = 0.999", "b2 = 1"))
    assert spec.read_text() != text
    out = tmp_path / "r"
    assert main(["train", "builtin:attention", *CLI_TINY, "--optimizer", str(spec),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "first step on a parameter of shape" in err and "made it non-finite" in err, err
    assert "b2 = 1" in err and not out.exists()
