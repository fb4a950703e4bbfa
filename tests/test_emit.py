"""Generated PyTorch layers: chunked == recurrent == step, packed sequences, gradients, goldens.

Every layer example is compiled at small dims (-D) and run in float64 on the CPU."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nlc import pipeline
from nlc.emit import compile_outputs, compile_spec, load_module
from nlc.errors import NlcError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
OPTIMIZERS = {"adam", "sgd_momentum", "muon", "dgd"}
SMALL = {"d_model": 16, "heads": 2, "d_k": 8, "d_v": 6, "d_head": 8, "d_state": 8,
         "d_hidden": 24, "d_gate": 4}
TOL = 1e-10


def _layers() -> list[tuple[Path, str]]:
    """(example, layer name) for every layer of every example (hope.nl holds two)."""
    found = []
    for path in sorted(EXAMPLES.glob("*.nl")):
        if path.stem not in OPTIMIZERS:
            found += [(path, s.name) for s in pipeline.run(str(path), "check")
                      if s.kind.value == "layer"]
    return found


LAYERS = _layers()


def layer_id(case) -> str:
    path, name = case
    return path.stem if sum(p == path for p, _ in LAYERS) == 1 else f"{path.stem}-{name}"


def small_overrides(path: Path) -> dict:
    dims = {n for s in pipeline.run(str(path), "check") if s.levels for n, _ in s.dims}
    return {n: float(v) for n, v in SMALL.items() if n in dims}


@functools.cache
def small_module(path: Path):
    return load_module(str(path), small_overrides(path))


def layer_of(case, **kwargs):
    path, name = case
    cls = getattr(small_module(path), name)
    torch.manual_seed(0)
    return cls(**kwargs).double()


def rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("case", LAYERS, ids=layer_id)
def test_chunked_equals_recurrent_and_step(case):
    layer = layer_of(case, chunk_size=8)
    x = torch.randn(2, 37, layer.d_model, dtype=torch.float64)
    layer.mode = "recurrent"
    reference = layer(x)
    layer.mode = "chunked"
    assert rel(layer(x), reference) < TOL
    cache, outputs = None, []
    for t in range(x.shape[1]):
        y, cache = layer.step(x[:, t], cache)
        outputs.append(y)
    # one token at a time the projections are other matrix products (other rounding); some
    # rules amplify rounding (Memora's KL retention: 1e-15 on x moves the output by ~1e-7):
    # the step must agree within what a rounding-sized change of the input explains
    layer.mode = "recurrent"
    assert rel(torch.stack(outputs, 1), reference) < rounding_tol(layer, x, reference)


def rounding_tol(layer, x, reference) -> float:
    """TOL, or what a rounding-sized change of the input explains when the rule amplifies
    rounding (docs/results.md measures which do): two computations that differ only in
    rounding must agree within it."""
    return max(TOL, 1e3 * rel(layer(x * (1 + 1e-15)), reference))


@pytest.mark.parametrize("case", LAYERS, ids=layer_id)
def test_initial_state_and_packed_sequences(case):
    """Running two halves with the state carried == one run; packed == separate runs."""
    layer = layer_of(case, chunk_size=8)
    x = torch.randn(1, 40, layer.d_model, dtype=torch.float64)
    whole = layer(x)
    cache: dict = {}
    first = layer(x[:, :16], cache=cache)    # carries states and conv inputs
    second = layer(x[:, 16:], cache=cache)
    assert rel(torch.cat([first, second], 1), whole) < TOL
    a, b = torch.randn(1, 13, layer.d_model, dtype=torch.float64), x[:, :27]
    packed = layer(torch.cat([a, b], 1), cu_seqlens=torch.tensor([0, 13, 40]))
    separate = torch.cat([layer(a), layer(b)], 1)
    # packing changes the shapes of the products (other rounding), not the math
    assert rel(packed, separate) < rounding_tol(layer, b, layer(b))
    # a packed prefill with a cache, continued as a batch of one row per sequence
    cache = {}
    layer(torch.cat([a, b], 1), cu_seqlens=torch.tensor([0, 13, 40]), cache=cache)
    more = torch.randn(2, 3, layer.d_model, dtype=torch.float64)
    continued = layer(more, cache=cache)
    for row, seq in enumerate((a, b)):
        alone = layer(torch.cat([seq, more[row:row + 1]], 1))[:, seq.shape[1]:]
        assert rel(continued[row:row + 1], alone) < rounding_tol(layer, b, layer(b)), row


def written_only_after(case, T: int) -> set[str]:
    """Names that only the objectives of levels with a period over T tokens use."""
    from nlc.levels.schedule import names_in
    path, name = case
    spec = next(s for s in pipeline.run(str(path), "check") if s.name == name)
    slow, rest = set(), set()
    for level in spec.levels:
        late = level.unit == "token" and level.period > T
        (slow if late else rest).update(n.id for n in names_in(level.objective))
        rest.update(n.id for n in names_in(level.read))
    return slow - rest


@pytest.mark.parametrize("case", LAYERS, ids=layer_id)
def test_gradients_flow_to_every_parameter(case):
    layer = layer_of(case, chunk_size=8)
    x = torch.randn(2, 19, layer.d_model, dtype=torch.float64, requires_grad=True)
    layer(x).square().sum().backward()
    unwritten = written_only_after(case, 19)
    for name, p in layer.named_parameters():
        if name in unwritten:
            # levels updating every C > 19 tokens (CMS) never write at T = 19: parameters
            # only their objective uses get no gradient, as the semantics say
            assert p.grad is None or not p.grad.any(), name
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert torch.isfinite(x.grad).all()


def test_generated_folder_is_up_to_date(tmp_path):
    """generated/ holds every compilable example, byte for byte what the compiler writes."""
    expected = set()
    for path in sorted(EXAMPLES.glob("*.nl")):
        for module, source in compile_outputs(str(path)).items():
            golden = ROOT / "generated" / f"{module}.py"
            expected.add(golden.name)
            assert golden.exists(), f"{golden} missing: run `nlc compile examples/*.nl -o generated`"
            assert source == golden.read_text(), f"{golden} is stale"
    extra = {p.name for p in (ROOT / "generated").glob("*.py")} - expected
    assert not extra, f"generated/ holds files no example compiles to: {sorted(extra)}"


def test_generated_code_has_no_dead_code():
    """No unused import, no local assigned and never read, no name bound twice (pyflakes'
    checks, through ruff, which nlc already uses to format its output)."""
    from ruff.__main__ import find_ruff_bin
    done = subprocess.run([find_ruff_bin(), "check", "--isolated", "--select", "F401,F811,F841",
                           "--output-format", "concise", str(ROOT / "generated")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout


def test_generated_code_imports_no_compiler():
    for golden in sorted((ROOT / "generated").glob("*.py")):
        text = golden.read_text()
        assert text.startswith("# Generated by nlc"), golden
        imports = [ln for ln in text.splitlines() if ln.startswith(("import ", "from "))]
        allowed = ("__future__", "math", "torch", "nlc") + (
            ("triton",) if golden.stem.startswith(("nlc_kernel_", "nlc_step_", "nlc_outer_")) else ())
        for line in imports:
            assert line.split()[1].split(".")[0] in allowed, line
            if line.startswith(("from nlc", "import nlc")):
                assert line.startswith("from nlc.runtime"), line


def _kernels(name: str) -> dict[str, str]:
    """The kernel modules (name -> source) an example compiles to."""
    return {m: s for m, s in compile_outputs(str(EXAMPLES / f"{name}.nl")).items() if m != name}


def test_specs_with_one_kernel_configuration_share_one_kernel_module():
    """DeltaNet and Longhorn run the same delta rule (no decay): one module, one text, named
    by the configuration and naming neither spec; Gated DeltaNet (scalar decay) differs."""
    deltanet, longhorn, gated = _kernels("deltanet"), _kernels("longhorn"), \
        _kernels("gated_deltanet")
    assert list(deltanet) == list(longhorn) == ["nlc_kernel_delta_none"]
    assert deltanet == longhorn
    assert list(gated) == ["nlc_kernel_delta_scalar"]
    assert _kernels("retnet") == _kernels("mamba2")
    text = deltanet["nlc_kernel_delta_none"]
    for spec in ("deltanet", "longhorn", ".nl", "sha256"):
        assert spec not in text.lower()
    assert "fused_recurrent = _launcher.fused_recurrent" in text and "def memory_" not in text
    module = compile_outputs(str(EXAMPLES / "deltanet.nl"))["deltanet"]
    assert 'nl.kernels(__file__, "nlc_kernel_delta_none")' in module
    assert "kernels.fused_recurrent(" in module


def test_generated_kernel_modules_are_all_different():
    texts = {p.name: p.read_text() for p in (ROOT / "generated").glob("nlc_kernel_*.py")}
    assert len(texts) >= 2
    assert len(set(texts.values())) == len(texts)
    assert not list((ROOT / "generated").glob("*_triton.py"))


def test_compile_files_writes_a_shared_kernel_module_once(tmp_path):
    from nlc.emit import compile_files
    paths = [str(EXAMPLES / f"{name}.nl") for name in ("deltanet", "longhorn", "gla")]
    written = compile_files(paths, str(tmp_path))
    assert sorted(p.name for p in written) == sorted(p.name for p in tmp_path.iterdir()) == [
        "deltanet.py", "gla.py", "longhorn.py", "nlc_kernel_decay_channel.py",
        "nlc_kernel_delta_none.py"]


def test_one_kernel_module_name_with_two_texts_is_an_internal_error():
    from nlc.emit import merge_outputs
    first = compile_outputs(str(EXAMPLES / "deltanet.nl"))
    second = dict(compile_outputs(str(EXAMPLES / "longhorn.nl")))
    assert merge_outputs([("deltanet.nl", first), ("longhorn.nl", second)]).keys() == \
        {"deltanet", "longhorn", "nlc_kernel_delta_none"}
    second["nlc_kernel_delta_none"] += "# changed\n"
    with pytest.raises(NlcError, match="internal error: .*nlc_kernel_delta_none.py"):
        merge_outputs([("deltanet.nl", first), ("longhorn.nl", second)])


def test_spec_named_like_its_kernel_module_is_refused(tmp_path):
    spec = tmp_path / "nlc_kernel_delta_none.nl"
    spec.write_text((EXAMPLES / "deltanet.nl").read_text())
    with pytest.raises(NlcError, match="name of a shared kernel module"):
        compile_outputs(str(spec))


def test_compile_is_deterministic_and_carries_provenance():
    text = compile_spec(str(EXAMPLES / "gated_deltanet.nl"))
    assert text == compile_spec(str(EXAMPLES / "gated_deltanet.nl"))
    assert "# spec:" in text and "Do not edit by hand" in text


def test_unsupported_combination_is_a_located_error(tmp_path):
    spec = tmp_path / "bad.nl"
    spec.write_text(
        "layer Bad {\n  dims d_model = 8, d_k = 4\n  param W_k : [d_model, d_k]\n"
        "  param W_o : [d_k, d_model]\n"
        "  context from x {\n    k = x @ W_k\n  }\n  level memory every 1 token {\n"
        "    state C : cache[d_k, d_k]\n    objective l2(C(k), k, weight = dot(k, k))\n"
        "    algorithm nonparametric()\n    read C(k)\n  }\n  output memory @ W_o\n}\n")
    with pytest.raises(NlcError) as err:
        compile_spec(str(spec))
    text = err.value.render()
    assert "exponential dot-product" in text and "bad.nl:10:36:" in text  # at the weight


def test_cli_compile_errors(tmp_path, capsys):
    from nlc.cli import main
    assert main(["compile", str(EXAMPLES / "gla.nl"), "-o", "/proc/nope"]) == 2
    assert "cannot create output directory" in capsys.readouterr().err
    assert main(["compile", str(tmp_path / "none.nl"), "-o", str(tmp_path)]) == 2
    assert main(["compile", str(EXAMPLES / "gla.nl"), "-o", str(tmp_path)]) == 0
    assert (tmp_path / "gla.py").read_text() == compile_spec(str(EXAMPLES / "gla.nl"))


DISPATCH = """
import os, sys, torch
from nlc.emit import load_module
from tests.test_emit import small_overrides, EXAMPLES, rel
path = EXAMPLES / (sys.argv[1] + ".nl")
module = load_module(str(path), small_overrides(path))
torch.manual_seed(0)
layer = [v for v in vars(module).values() if isinstance(v, type)
         and issubclass(v, torch.nn.Module) and v.__module__ == module.__name__][0]()
x = torch.randn(2, 11, layer.d_model, requires_grad=True)
os.environ["NLC_TRITON"] = "force"
y = layer(x)
gx, = torch.autograd.grad(y.square().sum(), x)
from nlc.runtime.library import ops
assert len(ops._KERNELS) == 1, "the forced run did not load the generated kernels"
os.environ["NLC_TRITON"] = "0"
z = layer(x)
hx, = torch.autograd.grad(z.square().sum(), x)
print(rel(y, z), rel(gx, hx))
"""


@pytest.mark.parametrize("name", ["gated_deltanet", "gla", "lp_matrix", "huber_matrix", "dplr_matrix",
                                  "delta_product"])
def test_triton_dispatch_matches_pytorch(name):
    """The generated module sends tensors to its Triton kernels (forced on the CPU with the
    interpreter): output and input gradient == the PyTorch form (chunked, or token by token
    for the elementwise family), fp32."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", DISPATCH, name], capture_output=True, check=False,
                          text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out_err, grad_err = map(float, done.stdout.split())
    assert out_err < 1e-5 and grad_err < 1e-5


@pytest.mark.parametrize("mode", ["chunked", "recurrent"])
@pytest.mark.parametrize("window", [None, 5])
def test_attention_continues_a_packed_batch(mode, window):
    """The caches a packed batch leaves are left-padded to the longest sequence; continuing
    them as one batch must mask the padding (each sequence as if run alone)."""
    from nlc.runtime.library.attention import attention
    torch.manual_seed(0)
    lens, more = [7, 3], 4

    def cols(T):
        return torch.randn(1, T, 2, 4, 1, dtype=torch.float64)
    full = [(cols(n + more), cols(n + more), cols(n + more)) for n in lens]
    alone = [attention(*f, scale=0.5, window=window, state={}, mode=mode)[0][:, n:]
             for f, n in zip(full, lens)]
    first = [torch.cat([f[i][:, :n] for f, n in zip(full, lens)], 1) for i in range(3)]
    _, state = attention(*first, scale=0.5, window=window, state={}, mode=mode,
                         cu_seqlens=torch.tensor([0, 7, 10]))
    assert state["#valid"].tolist() == [min(n, window - 1) if window else n for n in lens]
    rest = [torch.cat([f[i][:, n:] for f, n in zip(full, lens)], 0) for i in range(3)]
    o, _ = attention(*rest, scale=0.5, window=window, state=state, mode=mode)
    for b in range(2):
        assert rel(o[b:b + 1], alone[b]) < 1e-12, b


def test_a_loaded_module_leaves_no_folder_behind():
    """load_module writes the generated source to a private temporary folder: it is kept
    while the process runs and removed at exit (every `nlc train` of a spec had left one)."""
    code = ("from nlc.emit import load_module; import os; "
            f"m = load_module({str(EXAMPLES / 'deltanet.nl')!r}); "
            "assert os.path.isfile(m.__file__); print(os.path.dirname(m.__file__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip())
    assert folder.name.startswith("nlc-") and not folder.exists()


LOOPS = """layer Loops {
  dims d_model = 16, heads = 2, d_k = 8
  param W_q, W_k, W_v : [d_model, d_k]
  param w_b : [d_model]
  param W_o : [d_k, d_model]
  context from x {
    q = l2norm(x @ W_q)
    k = l2norm(x @ W_k)
    v = l2norm(x @ W_v)
    beta = sigmoid(x @ w_b - 3)
  }
  level a every 1 token {
    state A : matrix[d_k, d_k] = identity
    objective l2(A(k), b)
    retention decay(0.95)
    algorithm gd(lr = beta)
    read before l2norm(A(q))
  }
  level b every 1 token {
    state Bm : mlp(d_k -> 2 * d_k -> d_k, act = silu, residual) = learned(std = 0.2)
    objective l2(Bm(a), v)
    algorithm momentum(lr = beta, momentum = 0.5)
    read before Bm(q)
  }
  level d every 1 token {
    state D : diagonal[d_k] = zeros
    objective l2(D(k), v - d)
    algorithm gd(lr = beta)
    read before D(q) + q
  }
  level g every 1 token, gradients at chunk(4) {
    state G : mlp(d_k -> d_k -> d_k -> d_k, act = tanh) = learned(std = 0.2)
    objective l2(G(k), v)
    algorithm gd(lr = 0.01)
    read start total(G(q)) / d_k + h
  }
  level h every 1 token, gradients at chunk(4) {
    state H : mlp(d_k -> d_k, act = tanh, residual) = learned(std = 0.2)
    objective l2(H(k), v * g)
    algorithm gd(lr = 0.01)
    read start total(H(q)) / d_k
  }
  output (a + b + d + g * v) @ W_o
}
"""


def test_a_group_prints_only_what_it_calls(tmp_path):
    """Levels in a token-by-token loop printed their own chunked forms (a blocked scan, an
    after-read), and a dual-form member of a chunked group its outer terms: functions
    nothing called, beside a note that said the scan ran. Every top-level function of the
    module is used, and no note claims a form the group does not run."""
    import re
    path = tmp_path / "loops.nl"
    path.write_text(LOOPS)
    source = compile_outputs(str(path))["loops"]
    defined = re.findall(r"^def (\w+)\(", source, flags=re.M)
    unused = [f for f in defined if len(re.findall(rf"\b{f}\b", source)) < 2]
    assert not unused, unused
    assert "blocked scan" not in source and "Triton kernels in nlc_outer" not in source
    assert source.count("runs token by token with the levels it reads in a loop") == 3
    assert "runs with h, g as one group" in source


def test_a_group_members_read_may_use_an_earlier_members_read(tmp_path):
    """In LOOPS, g's read adds h's read (h, g: one chunked group). Both group forms read
    all members at once and g's read found no 'h' (KeyError). The chunked group equals the
    token loop and step, output and every gradient, in float64."""
    from nlc.emit import load_layer
    path = tmp_path / "loops.nl"
    path.write_text(LOOPS)
    cls = load_layer(str(path))
    x = torch.randn(2, 21, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    runs = []
    for mode in ("chunked", "recurrent"):
        torch.manual_seed(0)
        layer = cls(mode=mode).double()
        xi = x.clone().requires_grad_()
        y = layer(xi)
        grads = torch.autograd.grad(y.square().sum(), [xi, *layer.parameters()],
                                    allow_unused=True)
        runs.append([y, *(g for g in grads if g is not None)])
    assert len(runs[0]) == len(runs[1])
    for got, want in zip(*runs):
        assert ((got - want).norm() / want.norm()).item() < 1e-12
    cache: dict = {}
    steps = torch.stack([layer.step(x[:, t], cache)[0] for t in range(21)], 1)
    assert ((steps - runs[1][0]).norm() / runs[1][0].norm()).item() < 1e-12


@pytest.mark.parametrize("example", ["memora.nl", "moneta.nl"])
def test_an_op_whose_retention_needs_a_start_refuses_none(example):
    """kl (Memora) and lq with q = 4 (Moneta) are not finite at a state of zeros: their op
    takes no default start (it output NaN from the first token); given the layer's learned
    start it runs."""
    module = small_module(EXAMPLES / example)
    layer = layer_of((EXAMPLES / example, next(n for n in dir(module) if n[0].isupper()
                                               and hasattr(getattr(module, n), "step"))))
    B, T, H, D = 1, 5, layer.heads, layer.d_head
    q, k, v = (torch.randn(B, T, H, D, dtype=torch.float64) for _ in range(3))
    gates = [torch.rand(B, T, H, dtype=torch.float64) for _ in range(2)]
    names = module.memory_op.__code__.co_varnames[:module.memory_op.__code__.co_argcount]
    inputs = dict(zip(names, [q, k, v, *gates]))
    with pytest.raises(ValueError, match="no default initial_state: level 'memory'"):
        module.memory_op(**inputs)
    start = layer.initial_state(B)["memory"]
    o, _ = module.memory_op(**inputs, initial_state=start)
    assert torch.isfinite(o).all()
