"""The solve family (Mesa, MesaNet) compiles: the derived read against the ridge minimizer
found by autograd, recurrent == step == chunked (exact solves) in float64, the conjugate-
gradient read against the exact one, the generated module's gradients, and the catalog."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES, ROOT, TESTS
from nlc.runtime.library.solve import ridge_chunked

from nlc import pipeline
from nlc.derive.execution import SolveChunk
from nlc.emit import load_layer, load_module
from nlc.emit.torch_printer import TorchPrinter
from nlc.errors import NlcError
from nlc.syntax import parse
from nlc.verify.verify import verify_module

MESA, MESANET = str(TESTS / "specs" / "mesa.nl"), str(TESTS / "specs" / "mesanet.nl")
REG = 0.5  # both test specs


def _inputs(B=2, T=11, H=2, K=6, V=5, seed=0, gate=True):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g,
                                                      dtype=torch.float64), dim=-1)
            for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    gamma = 0.7 + 0.3 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    return (q, k, v, gamma) if gate else (q, k, v)


def test_the_spec_classifies_as_a_chunked_solve():
    (_, (c,)), = pipeline.run(MESANET, "classify")
    ex = c.execution
    assert isinstance(ex, SolveChunk) and ex.cg_steps == 4 and float(ex.reg) == REG
    (_, (c,)), = pipeline.run(MESANET, "classify", {"overrides": {"cg": 0.0}})
    assert c.execution.cg_steps == 0 and "exact solves" in c.execution.to_text()


def _ridge_minimizer(k, v, weights):
    """argmin_S sum_s w_s / 2 ||S k_s - v_s||^2 + REG / 2 ||S||^2, from autograd alone: the
    loss is quadratic, so S* = -Hess^-1 grad(0) over the entries of S."""
    K, V = k.shape[-1], v.shape[-1]

    def loss(flat):
        S = flat.reshape(V, K)
        err = k @ S.T - v
        return 0.5 * (weights * err.square().sum(-1)).sum() + 0.5 * REG * S.square().sum()

    zero = torch.zeros(V * K, dtype=torch.float64)
    grad = torch.autograd.functional.jacobian(loss, zero)
    hess = torch.autograd.functional.hessian(loss, zero)
    return torch.linalg.solve(hess, -grad).reshape(V, K)


@pytest.mark.parametrize("path", [MESA, MESANET])
def test_the_read_is_the_ridge_minimizer_applied_to_the_query(path):
    """o_t = S*_t q_t, S*_t minimizing the history's (decayed) ridge loss: each earlier token
    weighted by the product of the later gates, as H_t = gamma_t H_{t-1} + k_t k_t^T says."""
    module = load_module(path)
    gated = path == MESANET
    inputs = _inputs(B=1, T=7, gate=gated)
    o, _ = module.memory_op(*inputs, mode="recurrent")
    q, k, v = inputs[:3]
    for t in range(7):
        for h in range(2):
            if gated:
                later = inputs[3][0, 1:t + 1, h].flip(0).cumprod(0).flip(0)
                weights = torch.cat([later, torch.ones(1, dtype=torch.float64)])
            else:
                weights = torch.ones(t + 1, dtype=torch.float64)
            S = _ridge_minimizer(k[0, :t + 1, h], v[0, :t + 1, h], weights)
            torch.testing.assert_close(o[0, t, h], S @ q[0, t, h], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", [MESA, MESANET])
@pytest.mark.parametrize("chunk_size", [4, 8])
@pytest.mark.parametrize("read_before", [False, True])
def test_chunked_equals_recurrent_equals_step(path, chunk_size, read_before, tmp_path):
    text = Path(path).read_text()
    if read_before:
        text = text.replace("read S(q)", "read before S(q)")
    spec = tmp_path / "solve.nl"
    spec.write_text(text)
    torch.manual_seed(0)
    exact = {"cg": 0} if path == MESANET else {}  # exact solves in the chunked read
    layer = load_layer(str(spec), **exact)().double()
    layer.chunk_size = chunk_size
    x = torch.randn(2, 19, 12, dtype=torch.float64)
    chunked = layer(x)
    layer.mode = "recurrent"
    recurrent = layer(x)
    torch.testing.assert_close(chunked, recurrent, rtol=1e-10, atol=1e-12)
    cache, steps = None, []
    for t in range(x.shape[1]):
        y, cache = layer.step(x[:, t], cache)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), recurrent, rtol=1e-10, atol=1e-12)


def test_chunked_carries_an_initial_state():
    module = load_module(MESANET, {"cg": 0.0})
    q, k, v, gamma = _inputs(T=13)
    first, state = module.memory_op(q[:, :5], k[:, :5], v[:, :5], gamma[:, :5],
                                    output_final_state=True, mode="recurrent")
    for mode in ("recurrent", "chunked"):
        rest, final = module.memory_op(q[:, 5:], k[:, 5:], v[:, 5:], gamma[:, 5:],
                                       initial_state=state, output_final_state=True,
                                       mode=mode, chunk_size=4)
        whole, full = module.memory_op(q, k, v, gamma, output_final_state=True, mode="recurrent")
        torch.testing.assert_close(torch.cat([first, rest], 1), whole, rtol=1e-10, atol=1e-12)
        for name in ("S_G", "S_H"):
            torch.testing.assert_close(final[name], full[name], rtol=1e-10, atol=1e-12)


def _cg_errors(steps_list, K=32, V=32, T=96):
    q, k, v, gamma = _inputs(B=1, T=T, H=2, K=K, V=V, seed=1)
    exact, _ = ridge_chunked(q, k, v, gamma.log(), 1.0, chunk_size=32)
    errors = []
    for steps in steps_list:
        o, _ = ridge_chunked(q, k, v, gamma.log(), 1.0, chunk_size=32, cg_steps=steps)
        errors.append(((o - exact).norm() / exact.norm()).item())
    return errors


def test_cg_converges_to_the_exact_solve():
    """H_t + I is well conditioned here (unit keys, reg 1): the error falls with every
    doubling of the steps and is at rounding level by 32 steps (K = 32: CG's finite
    termination)."""
    errors = _cg_errors([1, 2, 4, 8, 16, 32])
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    assert errors[0] > 1e-2 and errors[3] < 1e-4 and errors[-1] < 1e-6, errors


def test_the_generated_module_runs_cg_with_finite_gradients():
    torch.manual_seed(0)
    layer = load_layer(MESANET, cg=6)().double()  # 6 = d_k steps: CG ends at the exact solve
    layer.chunk_size = 4
    x = torch.randn(2, 15, 12, dtype=torch.float64)
    chunked = layer(x)
    chunked.square().sum().backward()
    grads = [p.grad for p in layer.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    layer.mode = "recurrent"
    with torch.no_grad():
        recurrent = layer(x)
    torch.testing.assert_close(chunked.detach(), recurrent, rtol=1e-8, atol=1e-10)
    layer.mode = "chunked"
    few = load_layer(MESANET, cg=1)().double()
    few.load_state_dict(layer.state_dict())
    few.chunk_size = 4
    with torch.no_grad():
        assert (few(x) - recurrent).abs().max() > 1e-6  # one step is not the solve


@pytest.mark.parametrize("path, claim", [(str(EXAMPLES / "mesanet.nl"), "mesanet"),
                                         (MESA, "mesa"), (MESANET, "mesanet")])
def test_verify_holds_the_claim(path, claim):
    (report,) = verify_module(parse(Path(path).read_text(), path), path)
    assert report.claims == claim and report.verdict == "ok"


def test_verify_refuses_a_read_before_the_write():
    """The published read sees the token's own write; a read before it is another rule."""
    text = Path(MESA).read_text().replace("read S(q)", "read before S(q)")
    (report,) = verify_module(parse(text, "mesa_before.nl"), "mesa_before.nl")
    assert report.verdict == "MISMATCH"


def test_an_unprintable_rule_is_located_at_its_objective(monkeypatch):
    def refuse(self, e):
        raise NlcError("cannot emit PyTorch code for 'Inverse'")
    monkeypatch.setattr(TorchPrinter, "_print__Solved", refuse)
    with pytest.raises(NlcError) as info:
        load_module(MESA)
    err = info.value
    line = Path(MESA).read_text().splitlines()[err.span.line - 1]
    assert "objective ridge" in line and "level 'memory'" in err.message


TRITON_CG = """
import os, torch
os.environ["NLC_TRITON"] = "force"
from nlc.runtime.library import chunk_triton
from nlc.runtime.library.solve import ridge_chunked
g = torch.Generator().manual_seed(0)
B, T, H, K = 1, 64, 2, 16
q, k = (torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g), dim=-1)
        for _ in range(2))
v = torch.randn(B, T, H, K, generator=g)
log_gamma = torch.log(0.8 + 0.2 * torch.rand(B, T, H, generator=g))
assert chunk_triton.chunked_kernel_for(q, "decay", "scalar", False, 32, K, K) is not None
leaves = [x.clone().requires_grad_() for x in (q, k, v, log_gamma)]
o, (h, G) = ridge_chunked(*leaves, 1.0, chunk_size=32, cg_steps=K)
o.square().sum().backward()
os.environ["NLC_TRITON"] = "0"
ref = [x.double().clone().requires_grad_() for x in (q, k, v, log_gamma)]
ro, (rh, rG) = ridge_chunked(*ref, 1.0, chunk_size=32)
ro.square().sum().backward()
rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()
errors = [rel(o, ro), rel(h, rh), rel(G, rG)] + [rel(a.grad, b.grad) for a, b in zip(leaves, ref)]
print(max(errors))
"""


def test_cg_runs_on_the_chunked_triton_kernels():
    """What CUDA tensors run, forced on the CPU under Triton's interpreter: every CG step's
    product with H is the decay family's chunked kernel (float32), and K steps agree with the
    exact float64 solve in the output, the final statistics and every input's gradient."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", TRITON_CG], check=False, capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 1e-5
