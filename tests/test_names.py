"""Name hygiene: a spec's names never capture the names of the generated code, and text from
outside (a file name, a run folder) never runs as code.

The property: a spec computes the same numbers, bit for bit, when its user names are renamed
to names the generated code, Python or nn.Module use themselves. Names that must be Python
attributes (a layer's params) or module-level names (a layer's class) are refused instead,
with an error at the spec line that declares them."""

from __future__ import annotations

import ast
import inspect
import io
import json
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
import torch

from nlc import pipeline
from nlc.emit import compile_outputs, load_module, load_optimizer
from nlc.emit.names import module_clashes
from nlc.errors import NlcError
from renaming import rename, user_names

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SMALL = {"d_model": 8, "heads": 2, "d_k": 4, "d_v": 3, "d_head": 4, "d_state": 4,
         "d_hidden": 6, "d_gate": 2}

# names the generated code uses for its own locals, functions and imports, Python builtins,
# and names of the compiler's SymPy symbols (p, t, r, y, ...): each must be a free spec name
HOSTILE = ["query", "log_decay", "key0", "value0", "rate", "ref", "memory_final", "state",
           "tokens", "consts", "o", "o_i", "S", "S_next", "t0", "t1", "self", "nl", "torch", "F",
           "math", "nn", "x", "xh", "cache", "mode", "out", "batch", "states", "convs", "inputs",
           "kernels", "final", "run", "recurrent", "chunked", "p", "t", "r", "y", "u", "w", "e",
           "eta", "mu", "kappa", "lr", "memory", "loss", "group", "m_next", "closure", "grad",
           "SPEC", "op", "annotations", "drive0", "chunk_size", "initial_state",
           "output_final_state", "cu_seqlens", "position", "outs", "finals", "members", "mid",
           "outputs", "s", "a", "b", "g", "q", "k", "v", "beta", "alpha", "anchors", "reset",
           "members", "memory_op", "memory_step", "memory_chunked", "memory_initial_state"]
# attributes every generated layer (an nn.Module) has: a param may not take one
MODULE_ATTRIBUTES = ["mode", "training", "forward", "step", "to", "cuda", "apply", "chunk_size",
                     "initial_state", "reset_parameters", "parameter_groups", "_modules",
                     "conv0"]


def _checks(text: str) -> bool:
    try:
        pipeline.run("renamed.nl", "check", text=text)
        return True
    except NlcError:
        return False


def hostile_mapping(path: Path, text: str, shift: int) -> dict[str, str]:
    """Each user name -> a hostile name (rotated by `shift`) that the checker accepts in its
    place; params never take an nn.Module attribute, the class keeps its name."""
    specs = pipeline.run(str(path), "check", text=text)
    params = {p.name for s in specs for p in s.params}
    classes = {s.name for s in specs}
    names = [n for n in user_names(str(path), text) if n not in classes]
    targets = HOSTILE[shift:] + HOSTILE[:shift]
    mapping: dict[str, str] = {}
    for name in names:
        for target in targets:
            if target in mapping.values() or target in classes or (
                    name in params and target in MODULE_ATTRIBUTES + dir(torch.nn.Module())):
                continue
            if _checks(rename(text, mapping | {name: target})):
                mapping[name] = target
                break
    return mapping


def _overrides(path: Path, text: str) -> dict:
    dims = {n for s in pipeline.run(str(path), "check", text=text) for n, _ in s.dims}
    return {n: float(v) for n, v in SMALL.items() if n in dims}


def run_spec(path: Path, text: str, tmp: Path) -> list[torch.Tensor]:
    """Compile `text`, run it (a layer: chunked, recurrent and step forms; an optimizer: three
    steps) in float64 and return what it computed."""
    tmp.mkdir(parents=True, exist_ok=True)
    spec = tmp / path.name
    spec.write_text(text)
    module = load_module(str(spec), _overrides(path, text))
    classes = [v for v in vars(module).values()
               if isinstance(v, type) and v.__module__ == module.__name__]
    torch.manual_seed(0)
    if issubclass(classes[0], torch.optim.Optimizer):
        w = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
        b = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
        opt = classes[0]([w, b])
        for _ in range(3):
            opt.zero_grad()
            ((w @ b).sin().sum() + (w ** 2).sum()).backward()
            opt.step()
        return [w.detach().clone(), b.detach().clone()]
    found = []
    for cls in classes:
        layer = cls().double()
        x = torch.randn(2, 9, layer.d_model, dtype=torch.float64)
        found.append(layer(x))
        layer.mode = "recurrent"
        found.append(layer(x))
        found.append(layer.step(x[:, 0])[0])
    return found


SPECS = ["gated_deltanet", "deltanet", "mamba2", "gla", "dplr_matrix", "huber_matrix",
         "lp_matrix", "delta_product", "longhorn", "softmax_attention", "titans", "cms",
         "adam", "sgd_momentum", "muon"]


@pytest.mark.parametrize("name", SPECS)
def test_renamed_spec_computes_the_same(name, tmp_path):
    path = EXAMPLES / f"{name}.nl"
    text = path.read_text()
    expected = run_spec(path, text, tmp_path / "original")
    for shift in (0, 29):
        mapping = hostile_mapping(path, text, shift)
        assert len(mapping) >= len(user_names(str(path), text)) - 2, mapping
        got = run_spec(path, rename(text, mapping), tmp_path / f"renamed{shift}")
        assert len(got) == len(expected)
        for a, b in zip(expected, got):
            assert torch.equal(a, b), f"renaming {mapping} changed the output"


def test_gated_deltanet_rate_named_like_chunk_locals(tmp_path):
    """The chunked form once read `query = tokens["query"]`, then set `query = q`."""
    path = EXAMPLES / "gated_deltanet.nl"
    text = path.read_text()
    expected = run_spec(path, text, tmp_path / "original")
    for target in ("query", "log_decay", "key0", "value0", "ref", "memory_final"):
        got = run_spec(path, rename(text, {"beta": target}), tmp_path / target)
        assert all(torch.equal(a, b) for a, b in zip(expected, got)), target


# (`state`, `inputs` and `tokens`, names of the generated code too, are keywords of the
# language: the checker refuses them, test_the_keywords_docs_list_are_the_grammars_...)
@pytest.mark.parametrize("hyper", ["loss", "nl", "x", "mode", "cache", "group", "torch",
                                   "closure", "param_matrix"])
def test_optimizer_hypers_named_like_generated_locals(hyper, tmp_path):
    """A hyper keeps its name as the constructor's keyword argument (the docs: "the hypers
    are its keyword arguments"), whatever the step's own locals are called."""
    path = EXAMPLES / "sgd_momentum.nl"
    text = path.read_text()
    (first, _), = [(n, v) for s in pipeline.run(str(path), "check") for n, v in s.hypers[:1]]
    expected = run_spec(path, text, tmp_path / "original")
    got = run_spec(path, rename(text, {first: hyper}), tmp_path / "renamed")
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    renamed = tmp_path / "kwarg.nl"
    renamed.write_text(rename(text, {first: hyper}))
    assert hyper in inspect.signature(load_optimizer(str(renamed)).__init__).parameters


def test_names_the_compiler_composes_are_refused():
    """`m_next` is the next value of the state `m` in derivations and generated code."""
    text = (EXAMPLES / "sgd_momentum.nl").read_text()
    (first, _), = [(n, v) for s in pipeline.run("s.nl", "check", text=text) for n, v in
                   s.hypers[:1]]
    with pytest.raises(NlcError, match="'m_next' is the name nlc gives the next value of 'm'"):
        pipeline.run("s.nl", "check", text=rename(text, {first: "m_next"}))
    text = (EXAMPLES / "titans.nl").read_text()
    with pytest.raises(NlcError, match="a weight of the MLP memory") as err:
        pipeline.run("t.nl", "check", text=rename(text, {"v": "M_W1"}))
    assert err.value.span.known


@pytest.mark.parametrize("name, says", [("params", "'params' holds the parameters"),
                                        ("self", "'self' is the optimizer")])
def test_optimizer_hyper_params_is_refused(name, says):
    text = (EXAMPLES / "sgd_momentum.nl").read_text()
    (first, _), = [(n, v) for s in pipeline.run("s.nl", "check", text=text) for n, v in
                   s.hypers[:1]]
    with pytest.raises(NlcError, match=says) as err:
        pipeline.run("s.nl", "check", text=rename(text, {first: name}))
    assert err.value.span.known


@pytest.mark.parametrize("attr", MODULE_ATTRIBUTES)
def test_layer_param_named_like_a_module_attribute_is_refused(attr):
    path = EXAMPLES / "gated_deltanet.nl"
    text = rename(path.read_text(), {"W_o": attr})
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if f"param {attr}" in ln)
    refused = f"parameter '{attr}' would be the attribute|'{attr}' is a keyword of the language"
    with pytest.raises(NlcError, match=refused) as err:  # (`step`, `apply`: keywords)
        compile_outputs(str(path), _overrides(path, text), text=text)
    assert err.value.span.line == line


def test_layer_named_like_an_import_is_refused():
    path = EXAMPLES / "deltanet.nl"
    text = rename(path.read_text(), {"DeltaNet": "torch"})
    with pytest.raises(NlcError, match="'torch' is a name the generated module defines") as err:
        compile_outputs(str(path), text=text)
    assert err.value.span.line == next(
        i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("layer torch"))


def test_level_named_like_the_shared_functions_computes_the_same(tmp_path):
    """Hope's memories share functions named `<layer>_mlp_memory_<kind>`; a level named
    `mlp_memory` has its own functions `<layer>_mlp_memory_<kind>`. Once the later definition
    silently replaced the earlier; the shared ones now take another name."""
    path = EXAMPLES / "hope.nl"
    text = path.read_text()
    renamed = rename(text, {"memory": "mlp_memory"})
    outputs = compile_outputs(str(path), _overrides(path, renamed), text=renamed)
    tree = ast.parse(outputs[path.stem])
    assert module_clashes(tree) == []
    assert "SelfModifyingTitans_mlp_memory_drive" in {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef)}  # the level's own
    expected = run_spec(path, text, tmp_path / "original")
    got = run_spec(path, renamed, tmp_path / "renamed")
    assert len(got) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_composed_function_names_that_meet_are_refused():
    """Layer `A` with level `b_c` and layer `A_b` with level `c` both name a function
    `A_b_c_step`: refused at the level, not one definition silently replacing the other."""
    level = """layer {layer} {{
  dims d_model = 8, d_k = 4
  param W_q, W_k, W_v : [d_model, d_k]
  param W_o : [d_k, d_model]
  context from x {{
    q = x @ W_q
    k = x @ W_k
    v = x @ W_v
  }}
  level {level} every 1 token {{
    state S : matrix(d_k, d_k) = zeros
    objective dot(S(k), v)
    algorithm gd(lr = 1)
    read S(q)
  }}
  output {level} @ W_o
}}
"""
    text = level.format(layer="A", level="b_c") + level.format(layer="A_b", level="c") \
        + "model M {\n  block A -> A_b\n}\n"
    with pytest.raises(NlcError, match="'A_b_c_step' would be defined twice") as err:
        compile_outputs("m.nl", text=text)
    assert err.value.span.line == next(
        i for i, ln in enumerate(text.splitlines(), 1) if "level b_c" in ln)


@pytest.mark.parametrize("name", ["p", "t", "r", "y", "u", "eta", "lambda_", "kappa"])
def test_value_names_of_the_compilers_symbols(name, tmp_path):
    """p, t, r, ... name SymPy symbols of the derivation (losses, retentions); a spec value
    of that name derives, compiles and computes like any other."""
    for spec in ("huber_matrix", "lp_matrix", "gated_deltanet"):
        path = EXAMPLES / f"{spec}.nl"
        text = path.read_text()
        if name in user_names(str(path), text):
            continue
        expected = run_spec(path, text, tmp_path / spec)
        got = run_spec(path, rename(text, {"v": name}), tmp_path / f"{spec}-{name}")
        assert all(torch.equal(a, b) for a, b in zip(expected, got)), (spec, name)


def test_state_level_every_n_steps_in_a_layer_is_refused():
    text = (EXAMPLES / "deltanet.nl").read_text().replace("level memory every 1 token",
                                                          "level memory every 2 steps")
    with pytest.raises(NlcError, match="updates every 2 steps") as err:
        pipeline.run("d.nl", "check", text=text)
    assert err.value.span.line == next(
        i for i, ln in enumerate(text.splitlines(), 1) if "every 2 steps" in ln)


# ------------------------------------------------------------------ text from outside
HOSTILE_FILES = [
    'a"+str(__import__("os").mkdir("PWNED"))+".nl',
    "b\nimport os; os.mkdir('PWNED')\n.nl",
    "c\\\"\"\"+__import__('os').mkdir('PWNED')#.nl",
    "d'''; __import__(\"os\").mkdir(\"PWNED\"); '''.nl",
    "gl\u00fcck_\u6f22.nl",  # not hostile, but not ASCII: compile failed on it
]


@pytest.mark.parametrize("filename", HOSTILE_FILES)
@pytest.mark.parametrize("example", ["deltanet", "adam"])
def test_hostile_file_names_compile_and_import_without_running(filename, example, tmp_path,
                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / filename
    spec.write_text((EXAMPLES / f"{example}.nl").read_text())
    overrides = _overrides(EXAMPLES / f"{example}.nl", spec.read_text())
    outputs = compile_outputs(str(spec), overrides)
    for module, source in outputs.items():
        compile(source, module, "exec")
        code = {t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type not in (tokenize.STRING, tokenize.COMMENT)}
        assert not code & {"PWNED", "mkdir", "__import__", "os"}, module
    module = load_module(str(spec), overrides)
    assert module.SPEC == filename
    assert not (tmp_path / "PWNED").exists()
    for source in outputs.values():
        assert all(len(ln) < 400 for ln in source.splitlines()[:2])  # the banner: one line each


def test_hostile_spec_names_in_a_run_folder_do_not_run(tmp_path):
    """`nlc eval` of a downloaded run folder compiles the specs its config.json names (the
    mixer, the block's `--mlp`): their file names reach generated code only as literals
    and prose."""
    from nlc.cli import main
    run = tmp_path / "run"
    code = main(["train", str(EXAMPLES / "deltanet.nl"), "--task", "mqar", "--steps", "1",
                 "--d-model", "16", "--n-layers", "1", "--batch-size", "2", "--seq-len", "16",
                 "--mqar-num-kv-pairs", "2", "--out", str(run), "--quiet", "-D", "d_k=4",
                 "-D", "d_v=4", "-D", "heads=2"])
    assert code == 0
    (run / "spec.nl").unlink()
    mixer, mlp = run / HOSTILE_FILES[0], run / HOSTILE_FILES[3].replace("d'", "e'")
    mixer.write_text((EXAMPLES / "deltanet.nl").read_text())
    mlp.write_text((EXAMPLES / "cms.nl").read_text())
    config = json.loads((run / "config.json").read_text())
    config |= {"spec": str(mixer), "mlp": str(mlp)}
    (run / "config.json").write_text(json.dumps(config))
    proc = subprocess.run([sys.executable, "-m", "nlc", "eval", str(run)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert not (tmp_path / "PWNED").exists(), proc.stdout + proc.stderr
    assert not (run / "PWNED").exists()
    assert "Traceback" not in proc.stderr, proc.stderr


def test_the_keywords_docs_list_are_the_grammars_and_none_can_be_defined():
    """docs/language.md lists the keywords; the checker refuses the grammar's own words as
    names (some lex as names where only a name can follow: `param tokens`)."""
    import re

    from nlc.syntax.parser import language_keywords
    text = (ROOT / "docs" / "language.md").read_text()
    listed = re.search(r"- Keywords: `([^`]+)`", text.replace("\n  ", " ")).group(1).split()
    assert set(listed) == language_keywords()
    for word in sorted(language_keywords()):
        spec = EXAMPLES.joinpath("deltanet.nl").read_text().replace("W_o", word)
        refused = rf"'{word}' is a (Python )?keyword|unexpected keyword '{word}'"
        with pytest.raises(NlcError, match=refused):
            pipeline.run("deltanet.nl", "check", {}, text=spec)


def test_a_name_that_begins_with_a_keyword_is_one_name():
    """`read after_gate * S(q)` lexed as `read after _gate * S(q)`, a read after the write of
    another value, in silence; `token_emb` was "unexpected keyword 'token'"."""
    text = EXAMPLES.joinpath("deltanet.nl").read_text()
    gated = text.replace("beta = sigmoid(x @ w_beta)",
                         "beta = sigmoid(x @ w_beta)\n    after_gate = sigmoid(x @ w_beta)\n"
                         "    token_emb = beta")
    gated = gated.replace("read S(q)", "read after_gate * S(q)")
    gated = gated.replace("gd(lr = beta)", "gd(lr = token_emb)")
    assert "read after_gate * S(q)" in gated and "token_emb)" in gated
    level = next(iter(pipeline.run("gated.nl", "check", {}, text=gated))).levels[0]
    assert not level.read_before and not level.read_start  # the default time
    assert "Name(id='after_gate')" in repr(level.read), level.read


@pytest.mark.parametrize("name", ["__m", "__dk", "__W"])
def test_names_python_would_mangle_are_refused(name):
    """`__m` inside a generated class body is renamed `_Class__m` by Python: a level named so
    compiled and failed at import (NameError), a dim so named could not be passed."""
    text = EXAMPLES.joinpath("deltanet.nl").read_text().replace("W_o", name)
    with pytest.raises(NlcError, match="may not start with two underscores"):
        pipeline.run("deltanet.nl", "check", {}, text=text)
