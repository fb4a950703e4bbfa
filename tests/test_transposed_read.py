"""A matrix state read as W^T q (`read q @ W`, state [d_k, d_v]) runs the chunked forms and
the kernels of its family on S = W^T, instead of token by token."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from conftest import ROOT

from nlc import pipeline
from nlc.derive.execution import AffineChunk
from nlc.emit import load_layer

SPEC = """layer Transposed {
  dims d_model = 12, heads = 2, d_k = 8, d_v = 4
  param W_q, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param W_o : [d_v, d_model]
  param w_a : [d_model]
  context from x {
    q = l2norm(x @ W_q)
    k = l2norm(x @ W_k)
    v = x @ W_v
    alpha = sigmoid(x @ w_a)
  }
  level memory every 1 token {
    state W : matrix[d_k, d_v] = zeros
    objective dot(W(v), k)
    retention decay(alpha)
    algorithm gd(lr = 1)
    read q @ W
  }
  output memory @ W_o
}
"""


def _spec(tmp_path):
    path = tmp_path / "transposed.nl"
    path.write_text(SPEC)
    return path


def test_a_transposed_read_gets_the_chunked_form(tmp_path):
    (_, (classified,)), = pipeline.run(str(_spec(tmp_path)), "classify")
    ex = classified.execution
    assert isinstance(ex, AffineChunk) and ex.transposed and ex.family == "decay"
    assert "on the transposed state" in ex.to_text()


def test_chunked_equals_recurrent_and_step(tmp_path):
    torch.manual_seed(0)
    layer = load_layer(str(_spec(tmp_path)))(d_model=12, heads=2, d_k=8, d_v=4).double()
    layer.chunk_size = 8
    x = torch.randn(2, 37, 12, dtype=torch.float64)
    chunked = layer(x)
    layer.mode = "recurrent"
    recurrent = layer(x)
    torch.testing.assert_close(chunked, recurrent, rtol=1e-10, atol=1e-10)
    cache, steps = None, []
    for t in range(x.shape[1]):
        y, cache = layer.step(x[:, t], cache)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), recurrent, rtol=1e-10, atol=1e-10)
    # the state keeps the spec's layout [B, H, d_k, d_v] in both forms
    layer.mode = "chunked"
    cache = {}
    layer(x, cache=cache)
    assert cache["states"]["memory"]["W"].shape == (2, 2, 8, 4)


KERNEL = """
import os, sys, torch
from nlc.emit import load_layer
torch.manual_seed(0)
layer = load_layer(sys.argv[1])()
x = torch.randn(1, 9, 12)
os.environ["NLC_TRITON"] = "force"
y = layer(x)
os.environ["NLC_TRITON"] = "0"
z = layer(x)
print(((y - z).abs().max() / z.abs().max()).item())
"""


def test_the_recurrent_kernel_runs_on_the_transposed_state(tmp_path):
    """Triton forced on CPU tensors under the interpreter: the fused recurrent kernel takes
    S = W^T and hands W back."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", KERNEL, str(_spec(tmp_path))], check=False,
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 1e-5


def _verify(tmp_path, text, name):
    from nlc.syntax.parser import parse
    from nlc.verify.verify import verify_module
    path = tmp_path / f"{name}.nl"
    path.write_text(text)
    (report,) = verify_module(parse(text, str(path)), str(path))
    (level,) = report.levels
    return level


# W [d_k, d_v] regresses k on v (the roles of DeltaNet's key and value swapped) and reads
# q @ W = W^T q: its write is DeltaNet's with k and v renamed, but read on the other side
SWAPPED = (SPEC.replace("objective dot(W(v), k)", "objective l2(W(v), k)")
           .replace("retention decay(alpha)", "retention none")
           .replace("algorithm gd(lr = 1)", "algorithm gd(lr = alpha)"))


def test_identify_compares_the_read_side(tmp_path):
    """The transposed read of linear attention's write is linear attention (here Mamba2's
    scalar gate: its update and read, only its rate not tied to the gate); the swapped-role
    delta rule read as W^T q is not DeltaNet: as S = W^T its transition multiplies S on the
    left, S' = (I - b v v^T) S + b v k^T."""
    same = _verify(tmp_path, SPEC, "same")
    assert same.nearest == ["mamba2"] and "with a constant rate 1" in same.differs
    tied = _verify(tmp_path, SPEC.replace("gd(lr = 1)", "gd(lr = 1 - alpha)"), "tied")
    assert [c.entry.id for c in tied.matches] == ["mamba2"]
    swapped = _verify(tmp_path, SWAPPED, "swapped")
    assert swapped.matches == []
    assert "deltanet" in swapped.nearest


def test_a_swapped_claim_is_a_mismatch(tmp_path):
    from nlc.cli import main
    path = tmp_path / "swapped.nl"
    path.write_text(SWAPPED.replace("layer Transposed {", "layer Transposed claims deltanet {"))
    assert main(["verify", str(path)]) != 0
