"""The chunked Triton kernels for jointly affine states (runtime/library/chunk_joint_triton.py):
float32 kernels against float64 token loops written here from the update rule (the momentum
delta rule's (S, M) as tests/test_joint_chunked.py writes it, and n states with random
mixings), gates at their limits, and the dispatch of the generated momentum delta layer
(tests/specs/momentum_delta.nl) to them.

Kernels run under Triton's interpreter, as in tests/test_chunk_triton.py (whose helpers this
file imports, and whose import sets TRITON_INTERPRET=1 before triton is imported)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from test_chunk_triton import (
    DEVICE,
    INTERPRETED,
    ROOT,
    TOL,
    close,
    needs_kernels,
    rel,
    rerun_under_interpreter,
    spec_dispatched,
)
from test_joint_chunked import _momentum_loop


def joint_loop(bounds, read=0, read_before=False):
    """X_i' = sum_j X_j (P[j, i] I + Q[j, i] k k^T) + v_i k^T token by token, o_t = X_read q_t
    (before or after the write), each packed sequence from its own initial states."""
    def fn(q, k, values, P, Q, h0):
        B, T, H, K = q.shape
        n, V = values.shape[-2:]

        def packed(x):
            return x.reshape(B * T, *x.shape[2:])
        q, k, values, P, Q = map(packed, (q, k, values, P, Q))
        outs, finals = [], []
        for s, (bos, eos) in enumerate(itertools.pairwise(bounds)):
            X = [h0[s, :, i] if h0 is not None else q.new_zeros(H, V, K) for i in range(n)]
            for t in range(bos, eos):
                kt = k[t]                                           # [H, K]
                Xk = [torch.einsum("hvk,hk->hv", x, kt) for x in X]
                if read_before:
                    outs.append(torch.einsum("hvk,hk->hv", X[read], q[t]))
                X = [sum(X[j] * P[t, :, j, i, None, None]
                         + (Q[t, :, j, i, None] * Xk[j])[..., None] * kt[:, None, :]
                         for j in range(n)) + values[t, :, i, :, None] * kt[:, None, :]
                     for i in range(n)]
                if not read_before:
                    outs.append(torch.einsum("hvk,hk->hv", X[read], q[t]))
            finals.append(torch.stack(X, 1))
        return torch.stack(outs).reshape(B, T, H, V), torch.stack(finals)
    return fn


def momentum_mixings(eta, theta, alpha):
    """The momentum delta rule as X = [S, M] (tests/test_joint_chunked.py's
    `_momentum_chunked`): P = [[alpha, 0], [theta, theta]], Q = [[-eta, -eta], [0, 0]]."""
    zero = torch.zeros_like(eta)
    P = torch.stack([torch.stack([alpha, zero], -1), torch.stack([theta, theta], -1)], -2)
    Q = torch.stack([torch.stack([-eta, -eta], -1), torch.stack([zero, zero], -1)], -2)
    return P, Q


def joint_inputs(B, T, H, K, V, n, h0, seed=0, dtype=torch.float32):
    """n = 2: the momentum delta rule (values eta v for both states); else random mixings."""
    g = torch.Generator().manual_seed(seed)
    x = {"q": torch.randn(B, T, H, K, generator=g) * K ** -0.5,
         "k": F.normalize(torch.randn(B, T, H, K, generator=g), dim=-1)}
    if n == 2:
        v = torch.randn(B, T, H, V, generator=g)
        eta, theta, alpha = (torch.rand(B, T, H, generator=g) for _ in range(3))
        x["values"] = (eta[..., None] * v).unsqueeze(-2).expand(-1, -1, -1, 2, -1).contiguous()
        x["P"], x["Q"] = momentum_mixings(eta, theta, alpha)
    else:
        x["values"] = torch.randn(B, T, H, n, V, generator=g)
        x["P"] = torch.rand(B, T, H, n, n, generator=g) / n
        x["Q"] = -torch.rand(B, T, H, n, n, generator=g) / n
    x["h0"] = torch.randn(h0, H, n, V, K, generator=g) * 0.5 if h0 else None
    return {m: None if t is None else t.to(dtype).to(DEVICE) for m, t in x.items()}


def triton_joint(cu_seqlens, chunk, read=0, read_before=False):
    from nlc.runtime.library.chunk_joint_triton import chunk_joint

    def fn(q, k, values, P, Q, h0):
        return chunk_joint(q, k, values, P, Q, read=read, initial_state=h0,
                           read_before=read_before, cu_seqlens=cu_seqlens, chunk_size=chunk)
    return fn


def run_and_grad(fn, x, weights):
    leaves = {m: t.clone().requires_grad_() for m, t in x.items() if t is not None}
    o, ht = fn(**{m: leaves.get(m) for m in x})
    wo, wh = weights
    loss = (o * wo.to(o.dtype)).sum() + (ht * wh.to(ht.dtype)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return o, ht, dict(zip(leaves, grads))


def errors_against_loop(fn, x, weights, reference):
    o, ht, grads = run_and_grad(fn, x, weights)
    x64 = {m: None if t is None else t.double() for m, t in x.items()}
    ro, rht, rgrads = run_and_grad(reference, x64, tuple(w.double() for w in weights))
    errors = {"o": rel(o, ro), "final states": rel(ht, rht)}
    errors.update({f"d{m}": rel(grads[m], rgrads[m]) for m in rgrads})
    return errors


def _layout(T, chunk, packed):
    if packed:
        bounds = [0, min(5, T), min(5 + chunk + 3, T), T]
        return 1, bounds, torch.tensor(bounds, dtype=torch.int32, device=DEVICE)
    return 2, [0, T, 2 * T], None


# every value of every axis appears: T in {1, 15, 63, 65, 200}, chunk 16 and 64 (and 32),
# K and V in {16, 32, 48}, with and without initial states, packed sequences (at T = 15 the
# third is empty); n = 2 (momentum delta) throughout, n = 3 with random mixings, a read of
# the second state and a read before the write.
# (T, chunk, K, V, n, initial state, packed, read, read before)
CASES = [
    (200, 16, 32, 16, 2, True, False, 0, False),
    (65, 64, 48, 32, 2, False, True, 0, False),
    (63, 16, 16, 48, 2, True, True, 0, False),
    (15, 64, 32, 32, 2, False, False, 0, False),
    (1, 16, 48, 16, 2, True, False, 0, False),
    (65, 32, 16, 16, 2, True, False, 0, True),
    (63, 64, 16, 32, 3, True, True, 1, False),
    (200, 64, 16, 16, 3, False, False, 2, True),
]


@needs_kernels
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_joint_triton_matches_token_loop(case):
    T, chunk, K, V, n, with_h0, packed, read, read_before = case
    B, bounds, cu = _layout(T, chunk, packed)
    S = len(bounds) - 1
    x = joint_inputs(B, T, 2, K, V, n, S if with_h0 else 0, seed=T * K + V)
    g = torch.Generator().manual_seed(T + K)
    weights = (torch.randn(B, T, 2, V, generator=g).to(DEVICE),
               torch.randn(S, 2, n, V, K, generator=g).to(DEVICE))
    errors = errors_against_loop(triton_joint(cu, chunk, read, read_before), x, weights,
                                 joint_loop(bounds, read, read_before))
    assert max(errors.values()) < TOL, errors


def test_the_generic_loop_is_the_momentum_delta_rule():
    """The reference above, with the momentum mixings, is tests/test_joint_chunked.py's own
    loop of M_t = theta M - eta (S k - v) k^T, S_t = alpha S + M_t (float64)."""
    x = {m: None if t is None else t.double().cpu()
         for m, t in joint_inputs(2, 30, 2, 8, 4, 2, 2, seed=1).items()}
    o, X = joint_loop([0, 30, 60])(**x)
    eta = -x["Q"][..., 0, 0]
    theta, alpha = x["P"][..., 1, 1], x["P"][..., 0, 0]
    v = x["values"][..., 0, :] / eta[..., None]
    want, S, M = _momentum_loop(x["q"], x["k"], v, eta, theta, alpha, x["h0"][:, :, 0],
                                x["h0"][:, :, 1])
    torch.testing.assert_close(o, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(X[:, :, 0], S, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(X[:, :, 1], M, rtol=1e-12, atol=1e-12)


# (eta, theta, alpha): rates 0 and 1, momenta 0 and 1, decays 0, 1e-30 and 1; keys of norm
# 1000 with eta = 1 / |k|^2
LIMITS = [(0.0, 0.0, 0.0), (1.0, 0.0, 1.0), (1.0, 1.0, 1.0), (0.0, 1.0, 1e-30),
          (1.0, 1.0, 0.0), "bigkeys"]


@needs_kernels
@pytest.mark.parametrize("limit", LIMITS, ids=str)
def test_joint_triton_at_gate_limits(limit):
    """Finite output and gradients (of the inputs, the mixings and the initial states),
    equal to the float64 loop."""
    T = 40
    x = joint_inputs(1, T, 2, 16, 16, 2, 1, seed=7)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(1, T, 2, 16, generator=g).to(DEVICE)
    eta, theta, alpha = (torch.rand(1, T, 2, generator=g).to(DEVICE) for _ in range(3))
    if limit == "bigkeys":
        x["k"], x["q"] = x["k"] * 1e3, x["q"] * 1e3
        eta = eta * 1e-6
    else:
        for gate, value in zip((eta, theta, alpha), limit):
            gate[:, ::3] = value  # every third token at the limit, the rest ordinary
    x["P"], x["Q"] = momentum_mixings(eta, theta, alpha)
    x["values"] = (eta[..., None] * v).unsqueeze(-2).expand(-1, -1, -1, 2, -1).contiguous()
    weights = (torch.randn(1, T, 2, 16, generator=g).to(DEVICE),
               torch.randn(1, 2, 2, 16, 16, generator=g).to(DEVICE))
    o, ht, grads = run_and_grad(triton_joint(None, 16), x, weights)
    for name, t in [("o", o), ("states", ht), *grads.items()]:
        assert torch.isfinite(t).all(), name
    x64 = {m: t.double() for m, t in x.items()}
    ro, rht, rgrads = run_and_grad(joint_loop([0, T]), x64, tuple(w.double() for w in weights))
    assert close(o, ro, TOL) and close(ht, rht, TOL)
    for m in grads:
        assert close(grads[m], rgrads[m], TOL), m


@needs_kernels
def test_joint_triton_half_precision():
    """bf16 inputs: the pieces in float32, products in tf32 where a GPU has it; within bf16
    rounding of the loop."""
    x = joint_inputs(1, 70, 2, 32, 32, 2, 1, seed=5, dtype=torch.bfloat16)
    weights = (torch.randn(1, 70, 2, 32, device=DEVICE),
               torch.randn(1, 2, 2, 32, 32, device=DEVICE))
    errors = errors_against_loop(triton_joint(None, 64), x, weights, joint_loop([0, 70]))
    assert max(errors.values()) < 2e-2, errors


@needs_kernels
@pytest.mark.parametrize("R", [32, 48, 96, 128, 192])
def test_unit_lower_inverse_matches_float64(R):
    """(I + A)^-1 of the chunk's C n columns (diagonal blocks by the Triton block inverse, the
    rest by block substitution) and its gradient, against float64."""
    from nlc.runtime.library.chunk_joint_triton import UnitLowerInverse
    from nlc.runtime.library.joint import unit_lower_inverse
    g = torch.Generator().manual_seed(R)
    A = (torch.randn(3, R, R, generator=g) * R ** -0.5).tril(-1).to(DEVICE)
    dT = torch.randn(3, R, R, generator=g).to(DEVICE)
    leaves = [A.clone().requires_grad_(), A.double().requires_grad_()]
    T, T64 = UnitLowerInverse.apply(leaves[0]), unit_lower_inverse(leaves[1])
    (dA,), (dA64,) = (torch.autograd.grad((t * dT.to(t.dtype)).sum(), [x])
                      for t, x in zip((T, T64), leaves))
    assert rel(T, T64) < TOL and rel(dA, dA64) < TOL


@needs_kernels
@pytest.mark.parametrize(("n", "C"), [(2, 64), (3, 16), (4, 32)])
def test_transfers_kernel_matches_float64(n, C):
    """The mixings' products T[s, t] = P_s ... P_{t-1} (joint_transfers_triton.py) and their
    gradient, against joint.py's column loop in float64, with short chunks' identity
    padding (P = I) and zero mixings among the P's."""
    from nlc.runtime.library.joint import transfers
    from nlc.runtime.library.joint_transfers_triton import Transfers
    g = torch.Generator().manual_seed(n * C)
    P = torch.rand(3, 2, C, n, n, generator=g) * 1.5 / n
    P[0, 0, C // 2:] = torch.eye(n)
    P[1, 1, 3] = 0.0
    P = P.to(DEVICE)
    leaves = [P.clone().requires_grad_(), P.double().requires_grad_()]
    T, T64 = Transfers.apply(leaves[0]), transfers(leaves[1])
    dT = torch.randn(T64.shape, generator=g, dtype=torch.float64).to(DEVICE)
    (dP,), (dP64,) = (torch.autograd.grad((t * dT.to(t.dtype)).sum(), [x])
                      for t, x in zip((T, T64), leaves))
    assert rel(T, T64) < TOL and rel(dP, dP64) < TOL


def test_joint_kernel_rejects_bad_inputs():
    """Checked before any kernel runs (no interpreter needed), with the tensor's name."""
    from nlc.runtime.library.chunk_joint_triton import chunk_joint
    x = {m: t.cpu() for m, t in joint_inputs(2, 8, 2, 16, 8, 2, 0).items() if t is not None}
    args = [x[m] for m in ("q", "k", "values", "P", "Q")]
    with pytest.raises(ValueError, match=r"P must be \[2, 8, 2, 2, 2\]"):
        chunk_joint(*args[:3], x["P"][..., :1], x["Q"])
    with pytest.raises(ValueError, match="read must name one of the 2 states"):
        chunk_joint(*args, read=2)
    with pytest.raises(ValueError, match=r"initial_state must be \[2, 2, 2, 8, 16\]"):
        chunk_joint(*args, initial_state=torch.zeros(2, 2, 2, 16, 8))
    with pytest.raises(ValueError, match="2 to 4 states"):
        chunk_joint(x["q"], x["k"], torch.zeros(2, 8, 2, 5, 8), torch.zeros(2, 8, 2, 5, 5),
                    torch.zeros(2, 8, 2, 5, 5))
    wide = torch.zeros(2, 8, 2, 256)  # 4 states of 256 keys: 1024 columns
    with pytest.raises(ValueError, match="at most 512 columns"):
        chunk_joint(wide, wide, torch.zeros(2, 8, 2, 4, 8), torch.zeros(2, 8, 2, 4, 4),
                    torch.zeros(2, 8, 2, 4, 4))


def test_joint_dispatch_picks_chunk_joint(monkeypatch):
    pytest.importorskip("triton")
    from nlc.runtime.library.chunk_joint_triton import chunk_joint
    from nlc.runtime.library.chunk_triton import chunked_kernel_for
    q = torch.zeros(1, 64, 2, 16)
    monkeypatch.setenv("NLC_TRITON", "0")
    assert chunked_kernel_for(q, "joint", "none", False, 64, 16, 16) is None
    monkeypatch.setenv("NLC_TRITON", "force")
    assert chunked_kernel_for(q, "joint", "none", False, 64, 16, 16) is chunk_joint


@needs_kernels
@pytest.mark.skipif(DEVICE != "cpu", reason="forces the dispatch on CPU tensors")
def test_generated_momentum_delta_layer_dispatches_to_chunk_joint():
    """The generated momentum delta layer with Triton forced, on the CPU under the
    interpreter: its docstring names chunk_joint, the forward runs the joint kernels'
    autograd function once, and output and input gradient equal the PyTorch form's."""
    doc, calls, out_err, grad_err = spec_dispatched(
        ROOT / "tests" / "specs" / "momentum_delta.nl", 70, "chunk_joint_triton",
        "JointStatePass")
    assert "chunk_joint_triton.chunk_joint" in doc
    assert calls == 1
    assert out_err < 1e-5 and grad_err < 1e-5


def test_joint_kernels_rerun_in_a_fresh_interpreter_process():
    """Only when triton was imported before this module (so the interpreter is off here)."""
    if INTERPRETED or DEVICE != "cpu":
        pytest.skip("the kernels run in this process")
    rerun_under_interpreter(__file__)
