"""Fused step kernels of per-token MLP memories (Moneta, Yaad, Memora) == their token loop.

The kernels are printed from the derived rule (nlc/emit/step_render.py) and run here under
Triton's interpreter (TRITON_INTERPRET=1, set before triton is imported; if another module
imported triton first, one test reruns this file in a fresh process). The ops are the
generated modules' (generated/*.py, with their nlc_step_* kernel modules next to them); the
reference is the same op's token loop (`mode="recurrent"`) in float64. The kernel runs in
float32: outputs, final states and every gradient (q, k, v, the gates, the initial state)
must agree to a relative error (Frobenius) below 1e-5.

These rules put an RMS norm after the MLP: where its input is small, float32 rounding grows
along the sequence whatever runs the loop (the float32 PyTorch loop itself misses 1e-5 at
the learning rates of 0.1 to 0.2; test_inputs_are_well_conditioned checks it does here).
The inputs below (rates of at most 0.003 to 0.01, initial weights that keep the norm's input
away from 0, Memora's rows peaked but not below e^-12 or so, where the gradient of log W
grows) are chosen so the comparison measures the kernel, not that growth. A rate enters
every gradient of eta, so an error in the printed update cannot hide behind a small rate.
"""

from __future__ import annotations

import os
import subprocess
import sys

os.environ["TRITON_INTERPRET"] = "1"

import importlib.util
import itertools

import pytest
import sympy as sp
import torch
from conftest import EXAMPLES, ROOT

triton = pytest.importorskip("triton")

from nlc.runtime.library import step_launch

from nlc.emit import compile_outputs
from nlc.emit.tl_step_printer import StepPrintError, TritonStepPrinter, Value

INTERPRETED = type(triton.language.sum).__name__ == "InterpretedFunction"
needs_interpreter = pytest.mark.skipif(
    not INTERPRETED, reason="triton was imported before TRITON_INTERPRET=1; see the rerun test")
TOL = 1e-5
D = 8
# per model: the scale of the initial weights (Memora: of its logits) and the largest rate
SETTINGS = {"moneta": (1.0, 0.003), "yaad": (10.0, 0.01), "memora": (3.0, 0.002)}
GATES = {"alpha": (0.9, 1.0), "delta": (0.5, 3.0)}  # eta: (0, the model's rate)


def _generated(name: str):
    path = ROOT / "generated" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"nlc_test_step_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODULES = {}


def module(name: str):
    if name not in MODULES:
        MODULES[name] = _generated(name)
    return MODULES[name]


def inputs(name: str, T: int, dtype, B: int = 2, H: int = 2, seed: int = 0):
    """(tokens, initial state) of `name`'s op, leaves that require grad."""
    scale, rate = SETTINGS[name]
    g = torch.Generator().manual_seed(seed)
    tokens = {}
    for arg in ("q", "k", "v"):
        x = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
        tokens[arg] = x / x.norm(dim=-1, keepdim=True) if arg != "v" else x
    gates = ["alpha", "delta", "eta"] if name == "yaad" else ["alpha", "eta"]
    for arg in gates:
        lo, hi = GATES.get(arg, (0.0, rate))
        tokens[arg] = lo + (hi - lo) * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    state = {}
    for n, shape in (("M_W1", (4 * D, D)), ("M_W2", (D, 4 * D))):
        w = scale * torch.randn(B, H, *shape, generator=g, dtype=torch.float64)
        state[n] = torch.softmax(w, -1) if name == "memora" else w
    leaf = {k: v.to(dtype).requires_grad_() for k, v in {**tokens, **state}.items()}
    return {k: leaf[k] for k in tokens}, {k: leaf[k] for k in state}


def run(name: str, tokens: dict, state: dict, mode: str):
    op = module(name).memory_op
    return op(*tokens.values(), initial_state=state, output_final_state=True, mode=mode)


def outputs_and_grads(name: str, T: int, dtype, mode: str, calls=None):
    """o, the final states and the gradients of a fixed random loss with respect to every
    input; `calls` splits the sequence into consecutive calls that carry the state."""
    tokens, state = inputs(name, T, dtype)
    bounds = [0, *(calls or []), T]
    outs, carried = [], state
    for lo, hi in itertools.pairwise(bounds):
        part = {k: x[:, lo:hi] for k, x in tokens.items()}
        o, carried = run(name, part, carried, mode)
        outs.append(o)
    o = torch.cat(outs, 1)
    g = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(dtype)).sum()
    for n in sorted(carried):
        seed = torch.randn(carried[n].shape, generator=g, dtype=torch.float64).to(dtype)
        loss = loss + (carried[n] * seed).sum()
    leaves = {**tokens, **state}
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {"o": o, **{f"final {n}": carried[n] for n in sorted(carried)},
            **{f"d{n}": gr for n, gr in zip(leaves, grads)}}


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def kernel_run(monkeypatch, name, T, calls=None):
    """The kernel path's outputs and gradients, and the (forward, backward) launches."""
    monkeypatch.setenv("NLC_TRITON", "force")
    before = dict(step_launch.LAUNCHES)
    got = outputs_and_grads(name, T, torch.float32, "chunked", calls)
    launched = tuple(step_launch.LAUNCHES[k] - before[k] for k in ("forward", "backward"))
    return got, launched


@needs_interpreter
@pytest.mark.parametrize("T", [1, 15, 17, 63])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_kernel_matches_the_float64_token_loop(monkeypatch, name, T):
    """Forward and printed backward kernels: T = 15 and 17 end just before and just after
    the first checkpointed segment of 16, 63 inside the fourth."""
    want = outputs_and_grads(name, T, torch.float64, "recurrent")
    got, launched = kernel_run(monkeypatch, name, T)
    assert launched == (1, 1), "the Triton forward and backward did not both run"
    errors = {k: rel(got[k], want[k]) for k in want}
    assert max(errors.values()) < TOL, errors
    assert all(got[k].dtype == torch.float32 for k in got)


@needs_interpreter
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_state_carried_across_calls_that_stop_mid_segment(monkeypatch, name):
    """23 + 17 tokens (the first call stops inside its second segment of 16) == one loop of
    40 tokens; gradients flow back through the carried state into the first call."""
    want = outputs_and_grads(name, 40, torch.float64, "recurrent")
    got, launched = kernel_run(monkeypatch, name, 40, calls=[23])
    assert launched == (2, 2)
    errors = {k: rel(got[k], want[k]) for k in want}
    assert max(errors.values()) < TOL, errors


@needs_interpreter
def test_inputs_are_well_conditioned():
    """The float32 token loop meets the tolerance on these inputs too: the test's margin is
    about the kernel, not rounding that any float32 loop would grow."""
    for name in sorted(SETTINGS):
        want = outputs_and_grads(name, 65, torch.float64, "recurrent")
        loop = outputs_and_grads(name, 65, torch.float32, "recurrent")
        assert max(rel(loop[k], want[k]) for k in want) < TOL, name


@needs_interpreter
def test_learned_initial_state_of_a_layer(monkeypatch):
    """The Moneta layer broadcasts its learned initial state over the batch: the kernel path's
    gradients reach the parameter, and agree with the token loop's."""
    torch.manual_seed(0)
    layer = module("moneta").Moneta(d_model=16, heads=2, d_head=D).double()
    with torch.no_grad():
        layer.memory_M_W1_init.normal_(0, 3.0)
        layer.memory_M_W2_init.normal_(0, 3.0)
        layer.w_eta.fill_(-1.0)   # inputs in [0, 1): eta = sigmoid(-sum x) is small
        layer.w_alpha.fill_(0.5)
    x = torch.rand(2, 20, 16, dtype=torch.float64)
    results = []
    for flag, dtype in (("0", torch.float64), ("force", torch.float32)):
        monkeypatch.setenv("NLC_TRITON", flag)
        model = layer.to(dtype)
        model.zero_grad()
        before = dict(step_launch.LAUNCHES)
        y = model(x.to(dtype))
        (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)).sum().backward()
        results.append((y.detach().clone(), model.memory_M_W1_init.grad.clone(),
                        model.memory_M_W2_init.grad.clone(),
                        [step_launch.LAUNCHES[k] - before[k] for k in before]))
    (y64, a64, b64, none), (y32, a32, b32, once) = results
    assert (none, once) == ([0, 0], [1, 1])
    assert rel(y32, y64) < TOL and rel(a32, a64) < TOL and rel(b32, b64) < TOL


@needs_interpreter
def test_packed_sequences_run_one_kernel_call_each(monkeypatch):
    """With cu_seqlens (B = 1, two sequences of 5 and 16 tokens) each sequence starts from
    its own initial state: the kernel path == the float64 loop, output and final states."""
    tokens, state = inputs("yaad", 21, torch.float64, B=1)
    state = {n: torch.cat([s, 0.5 * s]).detach() for n, s in state.items()}  # two sequences
    cu = torch.tensor([0, 5, 21])
    op = module("yaad").memory_op
    args = [x.detach() for x in tokens.values()]
    want, want_final = op(*args, initial_state=state, output_final_state=True, cu_seqlens=cu,
                          mode="recurrent")
    monkeypatch.setenv("NLC_TRITON", "force")
    before = step_launch.LAUNCHES["forward"]
    got, final = op(*[x.float() for x in args], initial_state={n: s.float() for n, s in
                                                                state.items()},
                    output_final_state=True, cu_seqlens=cu)
    assert step_launch.LAUNCHES["forward"] - before == 2
    assert rel(got, want) < TOL
    assert all(rel(final[n], want_final[n]) < TOL for n in want_final)


@needs_interpreter
def test_only_checkpoints_survive_to_the_backward_pass(monkeypatch):
    """What autograd keeps from the kernel path's forward: the inputs and one state per
    segment of 16 tokens, not a state per token (the token loop keeps several per token)."""
    T, B, H = 65, 2, 2
    tokens, state = inputs("moneta", T, torch.float32)
    saved = []

    def pack(x):
        saved.append(x.numel())
        return x

    entries = B * H * 2 * 4 * D * D  # W1 and W2 of every (sequence, head)
    for flag in ("force", "0"):
        monkeypatch.setenv("NLC_TRITON", flag)
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            run("moneta", tokens, state, "chunked")
        if flag == "force":
            inputs_size = sum(x.numel() for x in {**tokens, **state}.values())
            assert sum(saved) <= inputs_size + 5 * entries  # ceil(65 / 16) = 5 checkpoints
        else:
            assert sum(saved) > T * entries


def test_inputs_the_kernel_cannot_take_run_the_token_loop(monkeypatch):
    """A state axis that is not a power of two (here d_head = 6): the loop, no launch."""
    monkeypatch.setenv("NLC_TRITON", "force")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 3, 1, 6, generator=g) for _ in range(3))
    alpha, eta = torch.full((1, 3, 1), 0.9), torch.full((1, 3, 1), 0.01)
    before = step_launch.LAUNCHES["forward"]
    op = module("moneta").memory_op
    state = {"M_W1": torch.randn(1, 1, 24, 6, generator=g),
             "M_W2": torch.randn(1, 1, 6, 24, generator=g)}
    o, _ = op(q, k, v, alpha, eta, initial_state=state, output_final_state=True)
    want, _ = op(q, k, v, alpha, eta, initial_state=state, mode="recurrent")
    assert step_launch.LAUNCHES["forward"] == before
    torch.testing.assert_close(o, want, rtol=0, atol=0)


def _vector_rule(tmp_path):
    """A rule written here, z' = alpha z + eta tanh(y - <z, k>) k and o = <z', q> (a column
    state `[d, 1]` and a scalar read, paths no example takes): its kernel module, compiled
    from the printed source, and the same step in PyTorch."""
    from types import SimpleNamespace

    from nlc.derive.matfuncs import Dot
    from nlc.emit.step_render import formatted, step_kernel
    d = sp.Symbol("d", positive=True)
    z, z_next = sp.MatrixSymbol("z", d, 1), sp.MatrixSymbol("z_next", d, 1)
    q, k = sp.MatrixSymbol("q", d, 1), sp.MatrixSymbol("k", d, 1)
    alpha, eta, y = sp.symbols("alpha eta y", real=True)
    rule = SimpleNamespace(states=[("z", z)], read=Dot(z_next, q),
                           next_state=[("z", alpha * z + eta * sp.tanh(y - Dot(z, k)) * k)])
    tokens = [SimpleNamespace(name="q", kind="vector", size=d),
              SimpleNamespace(name="k", kind="vector", size=d)] + [
        SimpleNamespace(name=n, kind="scalar", size=None) for n in ("alpha", "eta", "y")]
    plan = SimpleNamespace(rule=rule, tokens=tokens, group=False, anchors=(), params=(),
                           sizes=())
    kernel = step_kernel(plan, {"d": 8})
    path = tmp_path / f"{kernel.module}.py"
    path.write_text(formatted(kernel))
    spec = importlib.util.spec_from_file_location(kernel.module, path)
    compiled = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compiled)

    def step(state, x):
        z = state["z"]
        err = x["y"] - (z * x["k"]).sum(-2, keepdim=True)
        z = x["alpha"] * z + x["eta"] * torch.tanh(err) * x["k"]
        return {"z": z}, (z * x["q"]).sum(-2, keepdim=True)

    return kernel, compiled, step


def _vector_rule_against_float64(compiled, step):
    """Output, final state and every gradient of the kernel path (float32) against the
    PyTorch step (float64), T = 37 (three segments); returns the (forward, backward)
    launches."""
    g = torch.Generator().manual_seed(0)
    B, T, H = 2, 37, 3
    leaves = {"q": torch.randn(B, T, H, 8, 1, generator=g, dtype=torch.float64),
              "k": torch.randn(B, T, H, 8, 1, generator=g, dtype=torch.float64) / 3,
              "alpha": torch.rand(B, T, H, 1, 1, generator=g, dtype=torch.float64),
              "eta": torch.rand(B, T, H, 1, 1, generator=g, dtype=torch.float64),
              "y": torch.randn(B, T, H, 1, 1, generator=g, dtype=torch.float64),
              "z": torch.randn(B, H, 8, 1, generator=g, dtype=torch.float64)}
    seed = torch.randn(B, T, H, 1, 1, generator=g, dtype=torch.float64)
    results = []
    before = dict(step_launch.LAUNCHES)
    for dtype in (torch.float64, torch.float32):
        x = {n: v.to(dtype).requires_grad_() for n, v in leaves.items()}
        tokens = {n: x[n] for n in ("q", "k", "alpha", "eta", "y")}
        if dtype == torch.float64:
            o, final = step_launch.scan.recurrent(step, tokens, {"z": x["z"]})
        else:
            o, final = compiled.fused_recurrent(step, tokens, {"z": x["z"]}, tuple(tokens),
                                                ("z",))
        loss = (o * seed.to(dtype)).sum() + final["z"].square().sum()
        results.append([o, final["z"], *torch.autograd.grad(loss, list(x.values()))])
    for want, got in zip(*results):
        assert got.shape == want.shape and rel(got, want) < TOL
    return tuple(step_launch.LAUNCHES[k] - before[k] for k in ("forward", "backward"))


@needs_interpreter
def test_a_vector_state_and_a_scalar_read(tmp_path):
    """The rule above through the forward and the printed backward kernel."""
    kernel, compiled, step = _vector_rule(tmp_path)
    assert kernel.backward_note == "" and compiled.step_backward is not None
    assert _vector_rule_against_float64(compiled, step) == (1, 1)


@needs_interpreter
def test_an_op_without_an_adjoint_rule_keeps_the_recompute_backward(tmp_path, monkeypatch):
    """With the adjoint rule of tl.sigmoid (tanh is printed through it) taken away, the module
    has no printed backward, says why, and its gradients come from the PyTorch recompute."""
    from nlc.emit import step_vjp
    monkeypatch.setattr(step_vjp, "_ELEMENTWISE", step_vjp._ELEMENTWISE - {"tl.sigmoid"})
    kernel, compiled, step = _vector_rule(tmp_path)
    assert kernel.backward_note.startswith("no adjoint rule for tl.sigmoid")
    assert compiled.step_backward is None
    assert "No printed backward (no adjoint rule for tl.sigmoid" in compiled.__doc__
    assert _vector_rule_against_float64(compiled, step) == (1, 0)


def test_the_adjoint_of_a_printed_step():
    """step_vjp on a three-line program: the flat forward and the adjoint lines, by rule."""
    from nlc.emit.step_vjp import StepVjpError, vjp
    body = ["t0 = tl.sum(S0 * x0[None, :], axis=1)", "S0_next = S0 + t0[:, None] * x0[None, :]",
            "o = tl.exp(t0)"]
    shapes = {"S0": ("4 * D0", "D0"), "x0": ("D0",)}
    seeds = {"S0_next": "g_S0", "o": "g_o"}
    found = vjp(body, shapes, seeds)
    assert found.step == ["f0 = S0 * x0[None, :]", "t0 = tl.sum(f0, axis=1)",
                          "f2 = t0[:, None] * x0[None, :]", "S0_next = S0 + f2",
                          "o = tl.exp(t0)"]
    assert found.kept == ["t0"]                             # what the adjoint reads
    assert found.grads == {"S0": "b_S0", "x0": "b_x0"}
    assert found.adjoint == [
        "b_o = g_o", "b_S0_next = g_S0", "b_f2 = b_S0_next",
        # the outer product's adjoints, summed where they are made (short live ranges)
        "h3 = tl.sum(b_f2 * (x0[None, :]), axis=1)", "h4 = tl.sum(b_f2 * (t0[:, None]), axis=0)",
        "b_t0 = (b_o * o) + h3",                                         # exp
        "b_f0 = (b_t0[:, None])",        # the sum's adjoint, spread along its axis unbuilt
        "h7 = b_S0_next + (b_f0 * (x0[None, :]))",     # a block: into S0's running sum
        "h8 = tl.sum(b_f0 * S0, axis=0)",
        "b_S0 = h7", "b_x0 = h4 + h8"]
    with pytest.raises(StepVjpError, match="no adjoint rule for tl.cumsum"):
        vjp(["o = tl.cumsum(x0, axis=0)"], {"x0": ("D0",)}, {"o": "g_o"})


# -- the printer and the refusal (no kernels run) ------------------------------------------

def _printed(expr, names):
    return TritonStepPrinter(names, {"d": "D0"}).assign([("o", "o", expr)])


def test_products_print_by_shape():
    d = sp.Symbol("d", positive=True)
    W, x = sp.MatrixSymbol("W", 4 * d, d), sp.MatrixSymbol("x", d, 1)
    y = sp.MatrixSymbol("y", 4 * d, 1)
    names = {"W": Value("S0", "mat"), "x": Value("x0", "col"), "y": Value("x1", "col")}
    assert _printed(W * x, names) == ["o = tl.sum(S0 * x0[None, :], axis=1)"]
    assert _printed(W.T * y, names) == ["o = tl.sum(x1[:, None] * S0, axis=0)"]
    assert _printed(y * x.T, names) == ["o = x1[:, None] * x0[None, :]"]
    assert _printed(x.T * W.T * y, names) == \
        ["o = tl.sum(x0 * tl.sum(x1[:, None] * S0, axis=0), axis=0)"]


def test_a_product_of_two_matrices_is_refused():
    d = sp.Symbol("d", positive=True)
    W, V = sp.MatrixSymbol("W", d, d), sp.MatrixSymbol("V", d, d)
    x = sp.MatrixSymbol("x", d, 1)
    names = {"W": Value("S0", "mat"), "V": Value("S1", "mat"), "x": Value("x0", "col")}
    with pytest.raises(StepPrintError, match="a product of a mat and a mat"):
        _printed(W * V + V * W, names)
    _printed(W * (V * x), names)  # the same matrices meeting a column print


def test_an_op_the_printer_lacks_keeps_the_loop_with_a_note():
    """Memora read through l2norm (a column function the step printer has no rule for):
    the layer keeps its token loop, says why, and no kernel module is written."""
    text = (EXAMPLES / "memora.nl").read_text().replace("read M(q)", "read l2norm(M(q))")
    assert "l2norm(M(q))" in text
    outputs = compile_outputs(str(EXAMPLES / "memora.nl"), text=text)
    assert not [m for m in outputs if m.startswith("nlc_step_")]
    source = outputs["memora"]
    assert "Note: no fused step kernel: no Triton rule for ColumnMap" in source
    assert "every device runs the PyTorch token loop" in source
    assert "    chunked = recurrent\n" in source and "nl.kernels(" not in source


def test_states_too_large_for_a_program_keep_the_loop_with_a_note():
    """Memora at d_head = 128: W1 and W2 hold 131072 fp32 entries, past MAX_STATE_ENTRIES."""
    outputs = compile_outputs(str(EXAMPLES / "memora.nl"), {"d_head": 128})
    assert not [m for m in outputs if m.startswith("nlc_step_")]
    assert ("Note: no fused step kernel: its states hold 131072 entries at the spec's dims, "
            "more than the 65536 fp32 entries a kernel program may hold") in outputs["memora"]


def test_kernel_modules_are_written_next_to_the_layers():
    """The committed generated/ modules load their kernels by the name the compiler gave."""
    for name in sorted(SETTINGS):
        source = (ROOT / "generated" / f"{name}.py").read_text()
        kernel = source.split('nl.kernels(__file__, "')[1].split('"')[0]
        assert kernel.startswith("nlc_step_") and (ROOT / "generated" / f"{kernel}.py").exists()


def test_the_step_is_printed_once():
    """Each module prints the step once, as the jit function `step`; the forward kernel, the
    backward's segment rerun and its recompute before the adjoint call it (no step line is
    printed in a kernel)."""
    for path in sorted((ROOT / "generated").glob("nlc_step_*.py")):
        source = path.read_text()
        helper, kernels = source.split("def step_forward(")
        body = helper.split("def step(")[1]
        lines = {line.strip() for line in body.splitlines() if " = " in line}
        assert source.count("def step(") == 1 and lines, path.name
        assert kernels.count(" = step(") == 3, path.name
        assert not [line for line in kernels.splitlines() if line.strip() in lines], path.name


def test_kernels_rerun_in_a_fresh_interpreter_process():
    """Only when triton was imported before this module (so the interpreter is off here)."""
    if INTERPRETED:
        pytest.skip("the kernels run in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           __file__], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


def test_kernels_compile_for_an_h100_class_gpu_without_spills_up_to_d_32():
    """The interpreter runs Python, not Triton's compiler: compile the three generated kernels
    for sm_90 with the wheel's ptxas (no GPU needed, no interpreter in that process), at the
    warps the launcher picks; up to d_head = 32 the states stay in registers (no spills)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    kernels = sorted(str(p) for p in (ROOT / "generated").glob("nlc_step_*.py"))
    assert len(kernels) == 3
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_kernel_resources.py"),
                           "--d", "16,32", *kernels], env=env, capture_output=True, text=True,
                          check=False, cwd=ROOT, timeout=900)
    if "ptxas" in done.stderr and "No such file" in done.stderr:
        pytest.skip("this triton has no bundled ptxas")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 6 and all(line.endswith("STACK:0") for line in lines), lines


def test_backward_kernels_compile_for_an_h100_class_gpu_without_spills_at_d_16():
    """The three printed backward kernels compiled for sm_90 as above, at d_head = 16 with
    the launcher's backward warps (8): no spills."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    kernels = sorted(str(p) for p in (ROOT / "generated").glob("nlc_step_*.py"))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_kernel_resources.py"),
                           "--kernel", "backward", "--d", "16", *kernels], env=env,
                          capture_output=True, text=True, check=False, cwd=ROOT, timeout=900)
    if "ptxas" in done.stderr and "No such file" in done.stderr:
        pytest.skip("this triton has no bundled ptxas")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all("backward d=16" in line and "warps=8" in line
                                   and line.endswith("STACK:0") for line in lines), lines


class _TorchTl:
    """The few `triton.language` calls the step and its adjoint print, on float64 torch
    tensors: the adjoint lines run here, with no Triton, against torch.autograd."""

    float32 = None

    @staticmethod
    def _t(x):
        return torch.as_tensor(x, dtype=torch.float64)

    def sum(self, x, axis):
        return x.sum(axis)

    def max(self, x, axis):
        return x.amax(axis)

    def zeros(self, shape, dtype=None):
        return torch.zeros(shape, dtype=torch.float64)

    def trans(self, x):
        return x.T

    def where(self, c, a, b):
        return torch.where(c, self._t(a), self._t(b))

    def maximum(self, a, b):
        return torch.maximum(self._t(a), self._t(b))

    def minimum(self, a, b):
        return torch.minimum(self._t(a), self._t(b))

    def __getattr__(self, name):   # exp, log, sqrt, erf, abs, sin, cos, sigmoid, floor
        return getattr(torch, {"ceil": "ceil"}.get(name, name))


def test_every_adjoint_rule_against_autograd():
    """A step using every operation step_vjp has a rule for (sums, a row maximum, a
    transpose, broadcasts by `[None, :]` and by scalars, sin, cos, exp, log, sqrt, erf, abs,
    sigmoid, floor, where, maximum, minimum, division): its adjoint lines, run on float64
    tensors, give autograd's gradients of every input."""
    from nlc.emit.step_vjp import vjp
    body = [
        "t0 = tl.sum(S0 * x0[None, :], axis=1)",
        "t1 = tl.sin(t0) + tl.cos(x1) * tl.maximum(t0, 0.5 * x1) - tl.minimum(t0, x1) / "
        "(2.0 + tl.abs(t0))",
        "t2 = tl.where(t1 > 0, tl.sqrt(tl.exp(t1)), tl.log(1.0 + tl.sigmoid(t1)))",
        "t3 = tl.max(S0, axis=1) + tl.floor(x2) * x2",
        "S0_next = x2 * S0 + t2[:, None] * tl.trans(tl.erf(S0)) - (-1.0) * tl.zeros((D0, D0), "
        "dtype=tl.float32)",
        "o = tl.sum(t2 * t3, axis=0) / D0 + tl.sum(tl.sum(S0_next, axis=1), axis=0)",
    ]
    shapes = {"S0": ("D0", "D0"), "x0": ("D0",), "x1": ("D0",), "x2": ()}
    found = vjp(body, shapes, {"S0_next": "g_S0", "o": "g_o"})
    g = torch.Generator().manual_seed(0)
    leaves = {"S0": torch.randn(5, 5, generator=g, dtype=torch.float64),
              "x0": torch.randn(5, generator=g, dtype=torch.float64),
              "x1": torch.randn(5, generator=g, dtype=torch.float64),
              "x2": torch.tensor(1.7, dtype=torch.float64)}
    seeds = {"g_S0": torch.randn(5, 5, generator=g, dtype=torch.float64),
             "g_o": torch.tensor(0.3, dtype=torch.float64)}
    scope = {"tl": _TorchTl(), "D0": 5, **{k: v.requires_grad_() for k, v in leaves.items()}}
    exec("\n".join(body), scope)
    want = torch.autograd.grad([scope["S0_next"], scope["o"]], list(leaves.values()),
                               [seeds["g_S0"], seeds["g_o"]])
    scope = {"tl": _TorchTl(), "D0": 5, **{k: v.detach() for k, v in leaves.items()}, **seeds}
    exec("\n".join(found.step + found.adjoint), scope)
    for name, w in zip(leaves, want):
        got = scope[found.grads[name]]
        assert got.shape == w.shape and rel(got, w) < 1e-12, name


@needs_interpreter
@pytest.mark.parametrize("T", [1, 17, 40])
def test_an_entrywise_scan_level_sends_forced_tensors_to_its_step_kernel(tmp_path,
                                                                         monkeypatch, T):
    """A diagonal memory on an l2 step runs the entrywise scan in the chunked mode, and its
    printed step kernel for CUDA tensors (one kernel beat the PyTorch scan on an H100,
    docs/perf.md): forced here, the kernel path in float32 equals the float64 recurrence,
    output and every parameter gradient, and both kernels ran; unforced, the scan runs."""
    import sys

    from nlc.emit import load_layer
    from test_affine_spellings import DIAG_L2  # the same spec, here with two heads
    text = DIAG_L2.replace("dims d_model = 8, d_h = 4", "dims d_model = 8, heads = 2, d_h = 4")
    assert "heads = 2" in text
    path = tmp_path / "diag_l2.nl"
    path.write_text(text)
    cls = load_layer(str(path))
    doc = sys.modules[cls.__module__].__doc__
    assert "entrywise recurrence" in doc and "fused step kernel" in doc, doc
    assert "other tensors run the scan" in " ".join(doc.split())
    torch.manual_seed(0)
    layer = cls(mode="recurrent").double()
    with torch.no_grad():
        layer.W_k.mul_(3.0)  # gates 1 - b k^2 below zero, as the scan's signed form takes
    x = torch.randn(2, T, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(T))

    def outputs(dtype):
        model = layer.to(dtype)
        y = model(x.to(dtype))
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)).sum()
        return [y, *torch.autograd.grad(loss, list(model.parameters()))]

    want = outputs(torch.float64)
    layer.mode = "chunked"
    for flag, launches in (("0", (0, 0)), ("force", (1, 1))):
        monkeypatch.setenv("NLC_TRITON", flag)
        before = dict(step_launch.LAUNCHES)
        got = outputs(torch.float32)
        ran = tuple(step_launch.LAUNCHES[k] - before.get(k, 0) for k in ("forward", "backward"))
        assert ran == launches, flag
        assert max(rel(g, w) for g, w in zip(got, want)) < TOL, flag
