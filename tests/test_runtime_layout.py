"""The runtime never imports the compiler: a spec reaches the trainer compiled, as a module
factory or an optimizer class (nlc/factories.py makes them; the CLI hands them over)."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from nlc.errors import NlcError
from nlc.train_cli import main

RUNTIME = ROOT / "runtime"
# the compiler's stages, and the modules of the CLI that call them
COMPILER = ("nlc.emit", "nlc.pipeline", "nlc.derive", "nlc.levels", "nlc.syntax", "nlc.verify",
            "nlc.catalog", "nlc.factories", "nlc.cli", "nlc.train_cli", "nlc.demo")
IMPORTERS = {"import_module", "__import__"}


def package_of(path: Path, root: Path) -> list[str]:
    """`runtime/trainer/optim.py` -> nlc.runtime.trainer (runtime/ installs as nlc.runtime)."""
    return ["nlc", "runtime", *path.relative_to(root).parent.parts]


def imported_names(path: Path, root: Path = RUNTIME) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in a file, at any depth: `import a.b`, `from a
    import b` (as `a` and `a.b`), relative imports resolved, and the string constant given
    to `importlib.import_module` or `__import__` (an f-string by its literal prefix)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # from . import x: the file's package, one more dot per level up
                package = package_of(path, root)
                base = package[:len(package) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            names.append((node.lineno, module))
            names += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in IMPORTERS:
                names.append((node.lineno, literal_prefix(node.args[0])))
    return names


def literal_prefix(node: ast.expr) -> str:
    """A string constant, or the text of an f-string up to its first `{...}`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        prefix = ""
        for part in node.values:
            if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
                return prefix + "{"  # the rest is computed: it must not reach the compiler
            prefix += part.value
        return prefix
    return "{"  # a computed module name: refused, as it cannot be checked


def names_compiler(name: str) -> bool:
    if name.endswith("{"):  # computed after `name[:-1]`: could it spell a compiler package?
        stem = name[:-1]
        return any(c.startswith(stem) or stem.startswith(c + ".") for c in COMPILER)
    return any(name == c or name.startswith(c + ".") for c in COMPILER)


RUNTIME_FILES = sorted(RUNTIME.rglob("*.py"))


def test_the_runtime_has_files_to_check():
    assert RUNTIME / "trainer" / "train.py" in RUNTIME_FILES
    assert RUNTIME / "library" / "ops.py" in RUNTIME_FILES


@pytest.mark.parametrize("path", RUNTIME_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_runtime_module_imports_the_compiler(path):
    found = [f"{path.relative_to(ROOT)}:{line}: {name.rstrip('{')}"
             for line, name in imported_names(path) if names_compiler(name)]
    assert not found, "the runtime imports the compiler:\n" + "\n".join(found)


@pytest.mark.parametrize("source, bad", [
    ("from nlc.emit import load_layer", True),
    ("def f():\n    from nlc import pipeline", True),
    ("import nlc.levels.vocab", True),
    ("import importlib\nimportlib.import_module('nlc.emit').load_optimizer", True),
    ("from importlib import import_module\nimport_module(f'nlc.{name}')", True),
    ("__import__('nlc.syntax')", True),
    ("from ... import emit", True),  # from runtime/trainer/: nlc.emit
    ("from nlc.errors import NlcError\nfrom nlc.fileio import read_spec", False),
    ("import importlib\nimportlib.import_module(f'nlc.runtime.trainer.{name}')", False),
])
def test_the_check_sees_every_form_of_import(tmp_path, source, bad):
    module = tmp_path / "trainer" / "mine.py"
    module.parent.mkdir()
    module.write_text(source + "\n")
    assert any(names_compiler(name) for _, name in imported_names(module, tmp_path)) == bad


PLAIN_FACTORY = """
import json, sys
import torch
from torch import nn
from nlc.runtime.trainer.config import TrainConfig
from nlc.runtime.trainer.model import LanguageModel
from nlc.runtime.trainer.train import train

torch.set_num_threads(1)
config = TrainConfig(task="mqar", steps=2, batch_size=2, seq_len=16, d_model=8, n_layers=1,
                     mqar_vocab_size=32, mqar_num_kv_pairs=2, eval_examples=4, log_interval=1,
                     checkpoint_interval=0, warmup=0, out=sys.argv[1])
mixer = lambda d_model: nn.Linear(d_model, d_model)
model = LanguageModel(TrainConfig(vocab_size=32, d_model=8, n_layers=2), mixer)
logits = model(torch.zeros(2, 5, dtype=torch.long))
summary = train(config, mixer_factory=mixer, mlp_factory=lambda d_model: None, progress=False)
print(json.dumps({"shape": list(logits.shape),
                  "mixers": sorted({type(b.mixer).__name__ for b in model.blocks}),
                  "steps": summary["steps"],
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] == "nlc")}))
"""


def test_the_trainer_builds_and_trains_a_plain_factory_without_the_compiler(tmp_path):
    """A lambda `d_model -> nn.Linear` is a mixer: the model builds and a run trains, and no
    compiler package is ever imported."""
    done = subprocess.run([sys.executable, "-c", PLAIN_FACTORY, str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["shape"] == [2, 5, 32] and result["mixers"] == ["Linear"]
    assert result["steps"] == 2
    assert not [m for m in result["loaded"] if names_compiler(m)], result["loaded"]
    assert "nlc.runtime.trainer.train" in result["loaded"]


def test_train_refuses_a_spec_file_it_is_not_handed_compiled(tmp_path):
    from nlc.runtime.trainer.config import TrainConfig
    from nlc.runtime.trainer.train import train
    spec = tmp_path / "mine.nl"
    spec.write_text("layer Mine {}\n")
    base = TrainConfig(task="mqar", steps=1, batch_size=2, seq_len=16, d_model=8, n_layers=1,
                       mqar_vocab_size=32, mqar_num_kv_pairs=2, eval_examples=4)
    for field, argument in (("spec", "mixer_factory"), ("mlp", "mlp_factory"),
                            ("optimizer", "optimizer_class")):
        config = dataclasses.replace(base, **{field: str(spec)}, out=str(tmp_path / field))
        with pytest.raises(NlcError, match=f"does not compile specs; .*{argument}=") as info:
            train(config, progress=False)
        assert "factories_for(config)" in info.value.hint


BAD_LAYER = "layer Bad {\n  dims d_model = 8\n  output x @@ W\n}\n"


@pytest.mark.parametrize("flag", ["spec", "--mlp", "--optimizer"])
def test_a_spec_error_in_nlc_train_is_located_and_exits_2(flag, tmp_path, capsys):
    bad = tmp_path / "bad.nl"
    bad.write_text(BAD_LAYER)
    given = [str(bad)] if flag == "spec" else ["builtin:attention", flag, str(bad)]
    argv = ["train", *given, "--steps", "1", "--batch-size", "2", "--seq-len", "16",
            "--d-model", "8", "--n-layers", "1", "--mqar-vocab-size", "32",
            "--mqar-num-kv-pairs", "2", "--eval-examples", "4", "--quiet",
            "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3:" in err and "error: " in err and "^" in err
    assert "Traceback" not in err and "internal error" not in err
