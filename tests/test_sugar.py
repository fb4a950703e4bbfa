"""max, min and clamp are spelled with relu before check reads a declaration
(nlc/levels/sugar.py): a spec that writes them compiles to the layer its relu spelling
compiles to, `nlc fmt` keeps them as written, and a call with the wrong number of values is
a located error."""

from __future__ import annotations

import subprocess
import sys

import torch

from conftest import ROOT
from nlc.emit import load_layer, load_optimizer

# mLSTM's normalized read (Beck et al. 2024, xLSTM, eq. for h_t): C q / max(|n . q|, 1)
MLSTM = """layer MLSTM {
  dims d_model = 16, heads = 2, d_k = 4, d_v = 4
  param W_q, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param w_i, w_f : [d_model]
  param W_o : [d_v, d_model]

  context from x {
    q = x @ W_q
    k = x @ W_k
    v = x @ W_v
    i = MIN_GATE
    f = CLAMP_GATE
  }

  level memory every 1 token {
    state C : matrix[d_v, d_k] = zeros
    objective dot(C(k), v)
    retention decay(f)
    algorithm gd(lr = i)
    read C(q)
  }

  level normalizer every 1 token {
    state n : vector[d_k] = zeros
    objective dot(n(k), 1)
    retention decay(f)
    algorithm gd(lr = i)
    read n(q)
  }

  output (memory / MAX_NORM) @ W_o
}
"""

SPELLINGS = {
    "written": {"MIN_GATE": "min(exp(x @ w_i), 2)",
                "CLAMP_GATE": "clamp(x @ w_f, 0.1, 0.9)",
                "MAX_NORM": "max(abs(normalizer), 1)"},
    "relu": {"MIN_GATE": "2 - relu(2 - exp(x @ w_i))",
             "CLAMP_GATE": "0.9 - relu(0.9 - (0.1 + relu(x @ w_f - 0.1)))",
             "MAX_NORM": "(1 + relu(abs(normalizer) - 1))"},
}


def _spec(tmp_path, spelling: str):
    text = MLSTM
    for key, value in SPELLINGS[spelling].items():
        text = text.replace(key, value)
    path = tmp_path / f"mlstm_{spelling}.nl"
    path.write_text(text)
    return path


def test_max_min_and_clamp_compile_to_their_relu_spelling(tmp_path):
    x = torch.randn(2, 21, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    runs = []
    for spelling in SPELLINGS:
        torch.manual_seed(0)
        layer = load_layer(str(_spec(tmp_path, spelling)))(chunk_size=8).double()
        xi = x.clone().requires_grad_()
        y = layer(xi)
        runs.append((y, *torch.autograd.grad(y.square().sum(), [xi, *layer.parameters()])))
    for written, relu in zip(*runs):
        assert torch.equal(written, relu)
    assert torch.isfinite(runs[0][0]).all() and runs[0][0].abs().max() > 0


def _nlc(*args):
    return subprocess.run([sys.executable, "-m", "nlc", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_fmt_keeps_the_spelling_as_written(tmp_path):
    path = _spec(tmp_path, "written")
    done = _nlc("fmt", str(path))
    assert done.returncode == 0, done.stderr
    assert "max(abs(normalizer), 1)" in done.stdout and "clamp(x @ w_f, 0.1, 0.9)" in done.stdout
    assert "relu" not in done.stdout


def test_a_call_with_the_wrong_number_of_values_is_located(tmp_path):
    path = tmp_path / "bad.nl"
    path.write_text(_spec(tmp_path, "written").read_text().replace(
        "clamp(x @ w_f, 0.1, 0.9)", "clamp(x @ w_f, 0.1)"))
    done = _nlc("check", str(path))
    assert done.returncode == 2
    assert f"{path}:13:9: error: clamp takes 3 values, clamp(x, lo, hi), by position" in \
        done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# SGD with each gradient entry clipped, and its step bounded (Adan-style masks and schedules
# are written with min of the step count t)
CLIPPED = """optimizer Clipped {
  hyper lr = 0.5, c = 2
  level buf over gradients g every 1 step {
    state m : like(param) = zeros
    objective dot(m, max(g, -c))
    retention decay(0)
    algorithm gd(lr = 1)
    apply param = param - lr * min(t, 1) * (clamp(g, -1, 1) + min(m, c))
  }
}
"""


def test_the_bounds_come_back_exactly_however_large_the_value(tmp_path):
    """Each form keeps the fixed argument outside its relu: clamp(3e7, -1, 1) is 1 in
    float32, not 0 (the form lo + relu(x - lo) - relu(x - hi) cancelled), and the same for
    max and min against a hyper, in a level's rule and in `apply`."""
    path = tmp_path / "clipped.nl"
    path.write_text(CLIPPED)
    cls = load_optimizer(str(path))
    for scale in (3e7, -3e7, float("inf"), 0.25):
        w = torch.nn.Parameter(torch.zeros(4))
        opt = cls([w])
        w.grad = torch.full((4,), scale)
        opt.step()
        clipped = max(-1.0, min(scale, 1.0))
        m = max(scale, -2.0)  # the buffer: the clipped-below gradient
        want = -0.5 * (clipped + min(m, 2.0))
        assert torch.equal(w.detach(), torch.full((4,), want)), (scale, w)
