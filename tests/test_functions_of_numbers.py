"""A function of values that are Python numbers when the generated code runs (a layer's
hypers, compiled in; an optimizer's hypers and step count `t`) is printed with Python's math:
`torch.sqrt(1 - b2**t)` raised "sqrt(): argument 'input' must be Tensor, not float" at the
first step, in a level's rule and in `apply` alike, and so did relu, max, min and clamp."""

from __future__ import annotations

import math

import torch

from nlc.emit import load_layer, load_optimizer
from test_chunk_triton import rel

# Adam's bias corrections written as square roots and exponentials of t, a rate bounded with
# min(t, ...) (a warm-up), and exp / log / relu of t in the apply line
OPTIMIZER = """optimizer Scheduled {
  hyper lr = 0.1, b2 = 0.9, warm = 3
  level mom over gradients g every 1 step {
    state m : like(param) = zeros
    objective dot(m, g)
    algorithm gd(lr = sqrt(1 - b2 ^ t) * min(t / warm, 1))
    apply param = param - lr * exp(-t) * log(2 + t) * relu(t - 1.5) * m / sqrt(1 - b2 ^ t)
  }
}
"""

LAYER = """layer Rated {
  dims d_model = 8, d_k = 4
  hyper eta = 0.25
  param W_k, W_q : [d_model, d_k]
  param W_o : [d_k, d_model]
  context from x {
    k = l2norm(x @ W_k)
    q = x @ W_q
  }
  level memory every 1 token {
    state S : matrix[d_k, d_k] = zeros
    objective l2(S(k), q)
    algorithm gd(lr = sqrt(eta) * min(eta, 1) * exp(-eta))
    read S(q)
  }
  output memory @ W_o
}
"""


def test_an_optimizers_functions_of_t_and_its_hypers_run(tmp_path):
    path = tmp_path / "scheduled.nl"
    path.write_text(OPTIMIZER)
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = load_optimizer(str(path))([w])
    m, want = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    for t in range(1, 6):
        w.grad = g.clone()
        opt.step()
        m = m + math.sqrt(1 - 0.9 ** t) * min(t / 3, 1) * g
        want = want - 0.1 * math.exp(-t) * math.log(2 + t) * max(t - 1.5, 0) * m \
            / math.sqrt(1 - 0.9 ** t)
        assert rel(w.detach(), want) < 1e-14, t
    assert want.abs().max() > 0


def test_a_layers_rate_of_hypers_alone_runs_in_every_mode(tmp_path):
    path = tmp_path / "rated.nl"
    path.write_text(LAYER)
    cls = load_layer(str(path))
    x = torch.randn(2, 9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    outs = []
    for mode in ("chunked", "recurrent"):
        torch.manual_seed(0)
        outs.append(cls(mode=mode, chunk_size=4).double()(x))
    assert rel(outs[0], outs[1]) < 1e-12 and outs[0].abs().max() > 0


# min and max of t beside a tensor (in the objective's target and a retention gate): the
# printer took the bare max for a tensor's, torch.clamp_min(1 - t / warm, 0), and the first
# step raised "clamp_min() received an invalid combination of arguments"
BESIDE = """optimizer Warm {
  hyper lr = 0.1, warm = 10
  level m1 over gradients g every 1 step {
    state m : like(param) = zeros
    objective dot(m, g * min(t / warm, 1))
    retention decay(max(1 - 1 / t, 0.5))
    algorithm gd(lr = 0.1)
    apply param = param - lr * m
  }
}
"""


def test_min_and_max_of_t_beside_a_tensor_run(tmp_path):
    path = tmp_path / "warm.nl"
    path.write_text(BESIDE)
    cls = load_optimizer(str(path))
    param = torch.nn.Parameter(torch.zeros(4, 3, dtype=torch.float64))
    opt = cls([param])
    m = torch.zeros(4, 3, dtype=torch.float64)
    expected = param.detach().clone()
    for t in range(1, 8):
        g = torch.randn(4, 3, dtype=torch.float64)
        param.grad = g.clone()
        opt.step()
        m = max(1 - 1 / t, 0.5) * m + 0.1 * g * min(t / 10, 1)
        expected = expected - 0.1 * m
        assert rel(param.detach(), expected) < 1e-14


NESTED = """optimizer Nested {
  hyper lr = 0.1, warm = 10
  level sgd over gradients g every 1 step {
    state m : like(param) = zeros
    objective dot(m, g)
    retention decay(0)
    algorithm gd(lr = 1)
    apply param = param - lr * (clamp(t / warm, 0, 1) + sqrt(max(t - 3, 0))
                                + min(max(t / warm, 0.5), 1)) * m
  }
}
"""


def test_functions_of_functions_of_t_run(tmp_path):
    """clamp(t / warm, 0, 1) is relu of relu, and sqrt(max(t - 3, 0)) a root of a max: the
    inner call was a Python number and the outer one a torch call on it (TypeError at the
    first step), while check and compile accepted the spec."""
    path = tmp_path / "nested.nl"
    path.write_text(NESTED)
    param = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = load_optimizer(str(path))([param])
    expected = torch.zeros(3, dtype=torch.float64)
    for t in range(1, 8):
        g = torch.randn(3, dtype=torch.float64)
        param.grad = g.clone()
        opt.step()
        scale = min(max(t / 10, 0), 1) + math.sqrt(max(t - 3, 0)) + min(max(t / 10, 0.5), 1)
        expected = expected - 0.1 * scale * g
        assert rel(param.detach(), expected) < 1e-14
