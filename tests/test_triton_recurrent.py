"""Generated fused recurrent Triton kernels == a plain PyTorch token loop, on the CPU.

The kernels run under Triton's interpreter (TRITON_INTERPRET=1, set here before triton is
imported). If another module imported triton first, the interpreter cannot be switched on in
this process, and the kernel tests rerun this file in a fresh one instead. On a GPU machine,
NLC_TRITON_TEST_DEVICE=cuda runs the same tests on compiled kernels (no interpreter).

The reference below is written from the update rules (nlc/emit/triton_render.py docstring),
token by token in float64, independent of the kernels; kernels run in float32 and must agree
to a relative error (Frobenius norm) below 1e-5 in the outputs, the final state and every
gradient, the initial state's included.
"""

from __future__ import annotations

import os
import sys

DEVICE = os.environ.get("NLC_TRITON_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import importlib.util
import itertools
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import sympy as sp
import torch

triton = pytest.importorskip("triton")

from nlc.emit.tl_printer import TritonPrintError, tl_code
from nlc.emit.triton_render import RecurrentKernelPlan, render_recurrent

INTERPRETED = type(triton.language.sum).__name__ == "InterpretedFunction"
needs_interpreter = pytest.mark.skipif(
    DEVICE == "cpu" and not INTERPRETED,
    reason="triton was imported before TRITON_INTERPRET=1; see the rerun test")
TOL = 1e-5

P, Y, DELTA = sp.symbols("p y delta")
HUBER_DELTA = 0.3
ERRORS = {
    # lp with p = 3: l = |p - y|^3 / 3, e = sign(p - y) |p - y|^2
    "lp3": (sp.sign(P - Y) * sp.Abs(P - Y) ** 2, (),
            lambda p, y: torch.sign(p - y) * (p - y).abs() ** 2),
    # huber(delta): e = clip(p - y, -delta, delta)
    "huber": (sp.Piecewise((P - Y, sp.Abs(P - Y) <= DELTA), (DELTA * sp.sign(P - Y), True)),
              ("delta",), lambda p, y: (p - y).clamp(-HUBER_DELTA, HUBER_DELTA)),
    # as `nlc compile` derives them for examples/lp_matrix.nl and examples/huber_matrix.nl:
    # lp with p = 3, scale 1 (e = 3 |r| r) and entrywise huber with a fixed delta = 1/2
    "lp3c": ((P - Y) ** 2 * sp.sign(P - Y) + 2 * (P - Y) * sp.Abs(P - Y), (),
             lambda p, y: 3 * (p - y).abs() * (p - y)),
    "huber_half": (sp.Piecewise((P - Y, sp.Abs(P - Y) <= sp.Rational(1, 2)),
                                (sp.sign(P - Y) / 2, True)), (),
                   lambda p, y: (p - y).clamp(-0.5, 0.5)),
    # l2 with a rate per row (examples/longhorn_channel.nl): e = p - y
    "l2": (P - Y, (), lambda p, y: p - y),
}


# -- the reference: one token at a time, float64 ----------------------------------------------

def reference_sequence(case, q, k, v, g, beta, a, b, h0):
    """One sequence [1, T, H, *]: returns (o [1, T, H, V], final state [1, H, V, K])."""
    T, H, K, V = q.shape[1], q.shape[2], q.shape[3], v.shape[3]
    S = h0 if h0 is not None else q.new_zeros(1, H, V, K)
    outputs = []
    for t in range(T):
        qt, kt, vt = q[:, t], k[:, t], v[:, t]  # [1, H, D]
        if case.decay == "scalar":
            d = g[:, t].exp()[..., None, None]
        elif case.decay == "channel":
            d = g[:, t].exp()[:, :, None, :]
        else:
            d = 1.0
        S_prev, P_ = S, S * d
        if case.family == "decay":
            S = P_ + vt[..., :, None] * kt[..., None, :]
        elif case.family == "delta":
            bt = beta[:, t][..., None, None]
            eye = torch.eye(K, dtype=q.dtype)
            S = P_ @ (eye - bt * kt[..., :, None] * kt[..., None, :]) + vt[..., :, None] * kt[..., None, :]
        elif case.family == "dplr":
            S = P_ + (S_prev @ a[:, t][..., None]) * b[:, t][..., None, :] \
                + vt[..., :, None] * kt[..., None, :]
        else:
            pred = ((P_ if case.order == "before" else S_prev) @ kt[..., None])[..., 0]
            e = ERRORS[case.error][2](pred, vt)
            rate = beta[:, t][..., :, None] if case.rate == "row" else beta[:, t][..., None, None]
            S = P_ - rate * e[..., :, None] * kt[..., None, :]
        read = S_prev if case.read_before else S
        outputs.append((read @ qt[..., None])[..., 0])
    if not outputs:  # an empty sequence: no outputs, the state passes through
        return q.new_zeros(1, 0, H, V), S
    return torch.stack(outputs, 1), S


def reference(case, inputs, cu_seqlens):
    q, h0 = inputs[0], inputs[7]
    if cu_seqlens is None:
        outs, states = [], []
        for i in range(q.shape[0]):
            one = [x[i:i + 1] if x is not None else None for x in inputs]
            o, s = reference_sequence(case, *one)
            outs.append(o)
            states.append(s)
        return torch.cat(outs), torch.cat(states)
    outs, states = [], []
    bounds = cu_seqlens.tolist()
    for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        one = [x[:, lo:hi] if x is not None else None for x in inputs[:7]]
        o, s = reference_sequence(case, *one, h0[n:n + 1] if h0 is not None else None)
        outs.append(o)
        states.append(s)
    return torch.cat(outs, 1), torch.cat(states)


# -- cases --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    family: str
    decay: str
    T: int = 7
    K: int = 16
    V: int = 16
    H: int = 2
    h0: bool = True
    read_before: bool = False
    error: str | None = None
    order: str = "before"
    seqlens: tuple[int, ...] | None = None  # packed sequences (cu_seqlens), B = 1
    block_v: int | None = None  # force a split of the V rows over several programs
    rate: str = "scalar"  # elementwise: beta per token, or one per row (value channel)

    @property
    def plan(self) -> RecurrentKernelPlan:
        error, params = (ERRORS[self.error][:2] if self.error else (None, ()))
        return RecurrentKernelPlan(family=self.family, decay=self.decay,
                                   read_before=self.read_before, error=error,
                                   error_params=params, order=self.order, rate=self.rate)

    @property
    def params(self) -> dict:
        return {"delta": HUBER_DELTA} if self.error == "huber" else {}

    def __str__(self):
        parts = [self.family, self.decay, f"T{self.T}", f"K{self.K}V{self.V}", f"H{self.H}",
                 "h0" if self.h0 else "noh0"]
        parts += ["readbefore"] * self.read_before + [self.error or ""] + \
                 ([self.order] if self.error else [])
        if self.seqlens:
            parts.append("cu" + "-".join(map(str, self.seqlens)))
        if self.block_v:
            parts.append(f"bv{self.block_v}")
        if self.rate != "scalar":
            parts.append(f"rate_{self.rate}")
        return "_".join(p for p in parts if p)


def full_grid(family, decay, **kw):
    return [Case(family, decay, T=T, K=D, V=D, H=H, h0=h0, block_v=16 if D == 32 else None, **kw)
            for T in (1, 7, 33) for D in (16, 32) for H in (1, 2) for h0 in (False, True)]


def covering(family, decay, **kw):
    """Every value of each axis of `full_grid` at least once, and every pair of T and D."""
    return [Case(family, decay, T=T, K=D, V=D, H=H, h0=h0, block_v=16 if D == 32 else None, **kw)
            for T, D, H, h0 in ((1, 16, 1, False), (1, 32, 2, True), (7, 16, 2, True),
                                (7, 32, 1, False), (33, 16, 1, True), (33, 32, 2, False))]


def reduced(family, decay, **kw):
    return [Case(family, decay, T=33, K=32, V=32, H=2, h0=True, block_v=16, **kw),
            Case(family, decay, T=7, K=16, V=16, H=1, h0=False, **kw),
            Case(family, decay, T=1, K=32, V=32, H=1, h0=True, **kw),
            Case(family, decay, T=7, K=12, V=20, H=2, h0=True, block_v=8, **kw),
            Case(family, decay, T=33, K=16, V=16, H=2, seqlens=(7, 0, 13, 13), **kw)]


LP3 = {"family": "elementwise", "error": "lp3"}
HUBER = {"family": "elementwise", "error": "huber"}
LP3C = {"family": "elementwise", "error": "lp3c"}
HUBER_HALF = {"family": "elementwise", "error": "huber_half"}
L2_ROWS = {"family": "elementwise", "error": "l2", "rate": "row"}
CASES = [
    *full_grid("delta", "scalar"),
    *full_grid("decay", "scalar"),
    *reduced("delta", "none"),
    *reduced("delta", "channel"),
    *reduced("decay", "none"),
    *reduced("decay", "channel"),
    # the families `nlc compile` wires (examples/dplr_matrix.nl, lp_matrix.nl, huber_matrix.nl)
    *full_grid("dplr", "channel"),
    *reduced("dplr", "channel")[3:],
    *full_grid(decay="scalar", order="parallel", **LP3C),
    *reduced(decay="scalar", order="parallel", **LP3C)[3:],
    *covering(decay="scalar", order="before", **HUBER_HALF),
    *reduced(decay="scalar", order="before", **HUBER_HALF)[3:],
    *reduced("dplr", "none")[:1],
    *reduced(decay="scalar", order="before", **LP3),
    *reduced(decay="channel", order="parallel", **HUBER),
    *reduced(decay="none", order="before", **HUBER)[:2],
    # a rate per row (examples/longhorn_channel.nl; decays as the spec may add them)
    *reduced(decay="none", order="before", **L2_ROWS),
    *reduced(decay="channel", order="parallel", **L2_ROWS)[:2],
    *reduced(decay="scalar", order="before", **L2_ROWS)[3:4],
    Case("decay", "channel", T=33, K=32, V=32, read_before=True, block_v=16),
    Case("decay", "channel", T=7, K=16, V=16, H=1, h0=False, read_before=True),
    Case("decay", "channel", T=33, K=16, V=16, seqlens=(5, 28), read_before=True),
    Case("delta", "scalar", T=7, K=16, V=16, read_before=True),
    Case("dplr", "channel", T=7, K=16, V=16, read_before=True),
    Case("delta", "scalar", T=33, K=16, V=16, H=2, seqlens=(1, 7, 25)),
    Case("delta", "scalar", T=33, K=32, V=32, H=1, seqlens=(33,), block_v=16),
    Case("decay", "scalar", T=33, K=16, V=16, H=2, seqlens=(0, 16, 17)),
]


# -- rendering and inputs -----------------------------------------------------------------------

_MODULES: dict = {}


def load(plan: RecurrentKernelPlan, tmp_dir: Path):
    """Render `plan`, write it to a file (the interpreter reads kernel sources) and import it."""
    if plan not in _MODULES:
        path = tmp_dir / f"{plan.module}.py"
        path.write_text(render_recurrent(plan))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[plan] = module
    return _MODULES[plan]


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("triton_kernels")


def make_inputs(case: Case, seed: int = 0):
    """float32 leaf tensors (q, k, v, g, beta, a, b, h0), None where the rule has no such input."""
    gen = torch.Generator().manual_seed(seed)
    B, N = (1, len(case.seqlens)) if case.seqlens else (2, 2)
    T, H, K, V = case.T, case.H, case.K, case.V

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    q = randn(B, T, H, K, scale=K ** -0.5)
    k = torch.nn.functional.normalize(randn(B, T, H, K), dim=-1)
    v = randn(B, T, H, V)
    g = {"none": None, "scalar": -torch.nn.functional.softplus(randn(B, T, H)) * 0.5,
         "channel": -torch.nn.functional.softplus(randn(B, T, H, K)) * 0.5}[case.decay]
    beta = None
    if case.family in ("delta", "elementwise"):
        beta = torch.rand(B, T, H, *([V] if case.rate == "row" else []), generator=gen)
    if case.error == "lp3c":  # e = 3 |r| r: a third of the rate keeps 33 steps from diverging
        beta = beta / 3
    a = b = None
    if case.family == "dplr":
        a = randn(B, T, H, K, scale=0.2)
        b = randn(B, T, H, K, scale=0.2)
    h0 = randn(N, H, V, K, scale=0.5) if case.h0 else None
    return [x.to(DEVICE).requires_grad_() if x is not None else None
            for x in (q, k, v, g, beta, a, b, h0)]


def rel_err(x, ref):
    x, ref = x.detach().cpu().double(), ref.detach().cpu().double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_close(name, x, ref):
    err = rel_err(x, ref)
    assert err < TOL, f"{name}: relative error {err:.3e} >= {TOL}"


NAMES = ("q", "k", "v", "g", "beta", "a", "b", "initial_state")


@needs_interpreter
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_and_gradients_match_token_loop(case, kernel_dir):
    module = load(case.plan, kernel_dir)
    inputs = make_inputs(case)
    cu = torch.tensor([0, *torch.tensor(case.seqlens).cumsum(0).tolist()]) if case.seqlens else None
    fn = module.fused_recurrent
    module.BLOCK_V = case.block_v
    try:
        o, ht = fn(*inputs[:7], initial_state=inputs[7], output_final_state=True,
                   cu_seqlens=cu, **case.params)
    finally:
        module.BLOCK_V = None
    ref_inputs = [x.detach().cpu().double().requires_grad_() if x is not None else None
                  for x in inputs]
    ref_o, ref_ht = reference(case, ref_inputs, cu)
    assert o.dtype == torch.float32 and ht.dtype == torch.float32
    assert_close("o", o, ref_o)
    assert_close("final state", ht, ref_ht)

    gen = torch.Generator().manual_seed(1)
    w_o, w_h = torch.randn(o.shape, generator=gen), torch.randn(ht.shape, generator=gen)
    present = [(n, x, r) for n, x, r in zip(NAMES, inputs, ref_inputs) if x is not None]
    module.BLOCK_V = case.block_v
    try:
        loss = (o * w_o.to(o.device)).sum() + (ht * w_h.to(o.device)).sum()
        grads = torch.autograd.grad(loss, [x for _, x, _ in present])
    finally:
        module.BLOCK_V = None
    ref_grads = torch.autograd.grad((ref_o * w_o).sum() + (ref_ht * w_h).sum(),
                                    [r for _, _, r in present])
    for (name, x, _), dx, ref in zip(present, grads, ref_grads):
        assert dx.shape == x.shape and dx.dtype == x.dtype
        assert_close(f"d{name}", dx, ref)


STEP_CASES = [Case("delta", "scalar"), Case("delta", "none", read_before=True),
              Case("decay", "channel", block_v=8), Case("dplr", "channel"),
              Case(decay="scalar", **LP3), Case(decay="channel", order="parallel", **HUBER),
              Case(decay="scalar", order="parallel", **LP3C),
              Case(decay="scalar", order="before", **HUBER_HALF, seqlens=None, H=1),
              Case(decay="channel", order="parallel", block_v=8, **L2_ROWS)]


@needs_interpreter
@pytest.mark.parametrize("case", STEP_CASES, ids=str)
def test_step_matches_forward_token_by_token(case, kernel_dir):
    module = load(case.plan, kernel_dir)
    q, k, v, g, beta, a, b, h0 = [x.detach() if x is not None else None
                                  for x in make_inputs(replace(case, T=5))]
    module.BLOCK_V = case.block_v
    try:
        o, ht = module.fused_recurrent(
            q, k, v, g, beta, a, b, initial_state=h0, output_final_state=True, **case.params)
        state = h0.clone()
        for t in range(5):
            token = [x[:, t] if x is not None else None for x in (q, k, v, g, beta, a, b)]
            o_t, state = module.step(*token, state=state, **case.params)
            assert_close(f"o[{t}]", o_t, o[:, t].double())
    finally:
        module.BLOCK_V = None
    assert state.dtype == h0.dtype
    assert_close("state", state, ht.double())


@needs_interpreter
def test_step_with_autograd_is_differentiable(kernel_dir):
    case = Case("delta", "scalar", T=1)
    module = load(case.plan, kernel_dir)
    q, k, v, g, beta, _, _, h0 = make_inputs(case)
    o, state = module.step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], state=h0)
    (dh0,) = torch.autograd.grad(o.sum() + state.sum(), [h0])
    ref_o, ref_s = module.fused_recurrent(q, k, v, g, beta, initial_state=h0,
                                          output_final_state=True)
    (ref_dh0,) = torch.autograd.grad(ref_o.sum() + ref_s.sum(), [h0])
    assert_close("dh0", dh0, ref_dh0.double())


@needs_interpreter
def test_inference_without_final_state(kernel_dir):
    case = Case("delta", "scalar", T=7)
    module = load(case.plan, kernel_dir)
    inputs = [x.detach() if x is not None else None for x in make_inputs(case)]
    with torch.no_grad():
        o, ht = module.fused_recurrent(*inputs[:7], initial_state=inputs[7])
    assert ht is None
    ref_o, _ = reference(case, [x.cpu().double() if x is not None else None for x in inputs], None)
    assert_close("o", o, ref_o)


@needs_interpreter
@pytest.mark.parametrize("call, message", [
    (lambda m, x: m.fused_recurrent(x[0], x[1], x[2], None, x[4]), "g \\(the log"),
    (lambda m, x: m.fused_recurrent(x[0][0], x[1], x[2], x[3], x[4]), "q must be"),
    (lambda m, x: m.fused_recurrent(x[0], x[1], x[2], x[3][..., None], x[4]), "g has shape"),
    (lambda m, x: m.fused_recurrent(x[0], x[1].double(), x[2], x[3], x[4]), "dtype"),
    (lambda m, x: m.fused_recurrent(*x[:5], a=x[0]), "dplr"),
    (lambda m, x: m.fused_recurrent(*x[:5], initial_state=x[7][:1]),
     "initial_state has shape"),
    (lambda m, x: m.fused_recurrent(*x[:5], cu_seqlens=torch.tensor([0, 7])),
     "batch size must be 1"),
    (lambda m, x: m.fused_recurrent(*x[:5], cu_seqlens=torch.tensor([0., 7.])),
     "int32 or int64"),
    (lambda m, x: m.step(x[0][:, 0], x[1][:, 0], x[2][:, 0], x[3][:, 0], x[4][:, 0],
                         state=x[7][..., :3]), "state has shape"),
])
def test_wrapper_rejects_bad_inputs(call, message, kernel_dir):
    module = load(Case("delta", "scalar").plan, kernel_dir)
    inputs = [x.detach() if x is not None else None for x in make_inputs(Case("delta", "scalar"))]
    with pytest.raises(ValueError, match=message):
        call(module, inputs)


@pytest.mark.parametrize("plan", sorted({case.plan for case in CASES}, key=lambda p: p.module),
                         ids=lambda plan: plan.module)
def test_config_names_the_inputs_the_kernels_take(plan, kernel_dir):
    """The launcher passes CONFIG.inputs first, in order, to each kernel: they must be the
    leading arguments of the rendered signatures (the template's and the config's views of
    one rule), followed by what the launcher passes next."""
    module = load(plan, kernel_dir)
    inputs = module.CONFIG.inputs
    n = len(inputs)
    for kernel, after in ((module.fwd_kernel, "h0"), (module.bwd_kernel, "h0"),
                          (module.step_kernel, "state")):
        assert tuple(kernel.arg_names[:n + 1]) == (*inputs, after)
    params = [name for name in module.fwd_kernel.arg_names if name.startswith("c_")]
    assert params == [f"c_{name}" for name in module.CONFIG.error_params]


def test_error_parameters_are_exactly_the_modules_keywords(kernel_dir):
    huber = load(Case(decay="channel", order="parallel", **HUBER).plan, kernel_dir)
    delta = load(Case("delta", "scalar").plan, kernel_dir)
    seq = [x.detach() if x is not None else None
           for x in make_inputs(Case(decay="channel", order="parallel", **HUBER))]
    tok = [x[:, 0] if x is not None else None for x in seq[:7]]
    state = seq[7]
    with pytest.raises(TypeError, match=r"fused_recurrent\(\) .*missing \['delta'\]"):
        huber.fused_recurrent(*seq[:7])
    with pytest.raises(TypeError, match=r"step\(\) .*unexpected \['eps'\]"):
        huber.step(*tok, state=state, delta=0.5, eps=1.0)
    with pytest.raises(TypeError, match="delta must be a Python float, got str"):
        huber.fused_recurrent(*seq[:7], delta="0.5")
    with pytest.raises(TypeError, match="delta must be a Python float, got bool"):
        huber.step(*tok, state=state, delta=True)
    d = [x.detach() if x is not None else None for x in make_inputs(Case("delta", "scalar"))]
    with pytest.raises(TypeError, match=r"\[\] as keywords: unexpected \['delta'\]"):
        delta.fused_recurrent(*d[:7], delta=0.5)


def test_launch_overrides_are_read_from_the_module(kernel_dir):
    module = load(Case("delta", "scalar").plan, kernel_dir)
    cpu = torch.device("cpu")
    assert module._launcher._launch_config(16, 32, 2, cpu, False) == (16, 32, 1, 1)
    module.BLOCK_V, module.NUM_WARPS = 8, 4
    try:
        assert module._launcher._launch_config(16, 32, 2, cpu, False) == (16, 8, 4, 4)
    finally:
        module.BLOCK_V = module.NUM_WARPS = None


@pytest.mark.parametrize("fields, message", [
    ({"decay": "diagonal"}, "decay 'diagonal'"),
    ({"beta": "channel"}, "beta 'channel'"),
    ({"error_params": ("a b",)}, "identifiers"),
])
def test_recurrent_config_refuses_unknown_values(fields, message):
    from nlc.runtime.library.recurrent_launch import RecurrentConfig
    base = {"decay": "none", "beta": None, "rank_one": False, "saves": False, "scratch": False}
    with pytest.raises(ValueError, match=message):
        RecurrentConfig(**{**base, **fields})


def test_kernels_rerun_in_a_fresh_interpreter_process():
    """Only when triton was imported before this module (so the interpreter is off here)."""
    if INTERPRETED or DEVICE != "cpu":
        pytest.skip("the kernels run in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           __file__], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


# -- the renderer and the printer (no kernels run) ------------------------------------------------

def test_render_is_deterministic_and_imports_only_triton_and_the_runtime():
    plan = Case(decay="channel", order="parallel", **HUBER).plan
    first, second = render_recurrent(plan), render_recurrent(plan)
    assert first == second
    imports = sorted(line for line in first.splitlines() if line.startswith(("import", "from")))
    assert imports == ["from nlc.runtime.library import recurrent_launch", "import triton",
                       "import triton.language as tl"]
    assert "\nfused_recurrent = _launcher.fused_recurrent\n" in first
    assert "\nstep = _launcher.step\n" in first
    compile(first, "generated.py", "exec")


@pytest.mark.parametrize("plan, message", [
    (RecurrentKernelPlan("product", "scalar"), "family"),
    (RecurrentKernelPlan("delta", "diagonal"), "decay"),
    (RecurrentKernelPlan("delta", "scalar", order="after"), "order"),
    (RecurrentKernelPlan("delta", "scalar", read_before=1), "read_before"),
    (RecurrentKernelPlan("elementwise", "none"), "error signal"),
    (RecurrentKernelPlan("elementwise", "none", error=P - Y + DELTA), "delta"),
    (RecurrentKernelPlan("elementwise", "none", error=P * DELTA, error_params=("beta",)),
     "beta"),
    (RecurrentKernelPlan("elementwise", "none", error=P * DELTA, error_params=("step",)),
     "step"),
    (RecurrentKernelPlan("delta", "none", error=P - Y), "no error signal"),
    (RecurrentKernelPlan("delta", "scalar", rate="row"), "rate 'row'"),
    (RecurrentKernelPlan("elementwise", "none", error=P - Y, rate="channel"), "rate 'channel'"),
])
def test_render_rejects_bad_plans(plan, message):
    with pytest.raises((ValueError, TypeError), match=message):
        render_recurrent(plan)
    with pytest.raises((ValueError, TypeError), match=message):
        plan.module  # noqa: B018 (the name is made from a validated plan only)


def test_module_name_is_the_configuration():
    """Equal configurations share one module name; any difference in what the kernels compute
    (family, decay, read order, the elementwise order, error or its parameters) changes it."""
    assert RecurrentKernelPlan("delta", "scalar").module == "nlc_kernel_delta_scalar"
    assert RecurrentKernelPlan("decay", "channel", read_before=True).module == \
        "nlc_kernel_decay_channel_read_before"
    # the order only matters to the elementwise family: the kernels of the others ignore it
    assert RecurrentKernelPlan("delta", "none", order="parallel").module == \
        RecurrentKernelPlan("delta", "none").module
    plans = [Case(family, decay).plan for family in ("decay", "delta", "dplr")
             for decay in ("none", "scalar", "channel")]
    plans += [Case(decay="scalar", read_before=True, **HUBER).plan]
    plans += [Case(decay=decay, order=order, **kind).plan for decay in ("none", "channel")
              for order in ("before", "parallel")
              for kind in (LP3, HUBER, LP3C, HUBER_HALF, L2_ROWS, {**L2_ROWS, "rate": "scalar"})]
    names = [plan.module for plan in plans]
    assert len(set(names)) == len(names)
    for name in names:
        assert name.isidentifier() and name.startswith("nlc_kernel_")
    again = Case(decay="channel", order="parallel", **HUBER).plan
    assert replace(again, error=again.error + 0).module == again.module
    assert replace(again, error=2 * again.error).module != again.module


def test_render_rejects_unprintable_error():
    plan = RecurrentKernelPlan("elementwise", "none", error=sp.besselj(0, P - Y))
    with pytest.raises(TritonPrintError, match="besselj"):
        render_recurrent(plan)


p_, y_ = sp.symbols("p y", real=True)
NAMES_TL = {"p": "b_p", "y": "b_y", "c": "c_c"}


@pytest.mark.parametrize("expr, code", [
    (p_ - y_, "b_p - b_y"),
    ((p_ - y_) ** 3, "((b_p - b_y) * (b_p - b_y) * (b_p - b_y))"),
    (y_ / p_ ** 2, "b_y/(b_p * b_p)"),
    (1 / (1 + sp.exp(-p_)), "tl.sigmoid(b_p)"),
    (sp.sqrt(p_), "tl.sqrt(b_p)"),
    (sp.Abs(p_) ** sp.Rational(5, 2), "tl.exp(5.0*tl.log(tl.abs(b_p))/2.0)"),
    (sp.sign(p_), "tl.where(b_p > 0, 1.0, tl.where(b_p < 0, -1.0, 0.0))"),
    (sp.Max(p_, 0), "tl.maximum(0.0, b_p)"),
    (sp.Piecewise((p_, sp.Abs(p_) <= sp.Symbol("c")), (0, True)),
     "tl.where(c_c >= tl.abs(b_p), b_p, 0.0)"),
    (sp.Rational(1, 4) * p_, "b_p/4.0"),
    (sp.pi * p_, "3.141592653589793*b_p"),
])
def test_printer(expr, code):
    assert tl_code(expr, NAMES_TL) == code


@pytest.mark.parametrize("expr, message", [
    (sp.Symbol("z"), "symbol 'z'"),
    (sp.Integral(p_, y_), "Integral"),
    (sp.I * p_, "ImaginaryUnit"),
    (sp.zoo * p_, "ComplexInfinity"),
    (sp.atan2(p_, y_), "atan2"),
])
def test_printer_rejects(expr, message):
    with pytest.raises(TritonPrintError, match=message):
        tl_code(expr, NAMES_TL)
