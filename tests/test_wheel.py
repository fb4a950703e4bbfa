"""The wheel: built from a copy of the source tree, it ships the grammar, the templates and the
runtime inside the `nlc` package and nothing at top level; installed into a fresh virtual
environment, its `nlc check` works from the installed files alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, example_paths

# What a source checkout has that a wheel build does not need.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".hypothesis", ".pytest_cache", "__pycache__",
                                     "*.egg-info", "build", "dist", "tests", "generated", ".venv",
                                     "runs", ".carry")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCE)
    out = tmp / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "--no-index", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out.glob("nlc-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "nlc/grammar/nl.lark" in names
    assert "nlc/grammar/__init__.py" in names
    assert any(n.startswith("nlc/templates/") for n in names)
    assert "nlc/runtime/__init__.py" in names
    assert "nlc/runtime/library/ops.py" in names and "nlc/runtime/trainer/train.py" in names
    assert "nlc/syntax/parser.py" in names and "nlc/levels/checker.py" in names
    tops = {n.split("/", 1)[0] for n in names}
    assert not tops & {"runtime", "grammar", "templates", "tests", "examples"}, sorted(tops)
    assert {t for t in tops if not t.endswith(".dist-info")} == {"nlc"}, sorted(tops)
    # every subpackage of the source tree made it in
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "nlc").rglob("__init__.py")}
    for package in packages:
        assert f"{package}/__init__.py" in names, f"{package} is missing from the wheel"
    for template in (ROOT / "templates").glob("*.jinja"):
        assert f"nlc/templates/{template.name}" in names
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "nlc = nlc.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def _venv_seeing_this_environment(venv: Path) -> Path:
    """A fresh venv whose sys.path ends with the running interpreter's site-packages, so the
    wheel installed with --no-deps finds lark, networkx, ... wherever this test runs. (A
    `venv --system-site-packages` made from inside a venv exposes the *base* interpreter's
    packages, not this venv's.) A .pth line only appends a directory; it does not run that
    directory's own .pth files, so an editable install of nlc here stays invisible there."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    proc = subprocess.run([str(python), "-c", where], capture_output=True, text=True, check=True,
                          timeout=120)
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    Path(proc.stdout.strip(), "this_environment.pth").write_text("".join(f"{d}\n" for d in ours))
    return python


def test_wheel_installs_and_runs(wheel, tmp_path):
    """Install without dependencies into a venv that sees this interpreter's packages (lark,
    networkx); the venv's own `nlc` must come from the wheel, not from the source tree."""
    venv = tmp_path / "venv"
    python = _venv_seeing_this_environment(venv)
    proc = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    paths = example_paths()
    assert paths
    probe = ("import nlc, sys; from importlib import resources; "
             "print(nlc.__file__); "
             "print(resources.files('nlc.grammar').joinpath('nl.lark').is_file())")
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    where, has_grammar = proc.stdout.split()
    assert where.startswith(str(venv)), where
    assert has_grammar == "True"
    proc = subprocess.run([str(venv / "bin" / "nlc"), "check", str(paths[0])], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ": ok: " in proc.stdout
