"""Shared test fixtures: the example specs, and golden files that `--update-goldens` rewrites.

Goldens are compared byte for byte. After an intended change to a message or to the AST,
regenerate them with ``python -m pytest --update-goldens`` and review the diff.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TESTS = ROOT / "tests"
GOLDENS = TESTS / "goldens"


def pytest_addoption(parser):
    parser.addoption("--update-goldens", action="store_true", default=False,
                     help="rewrite golden files from the current output instead of comparing")


def scratch_dir(prefix: str = "nlc-test-") -> Path:
    """A fresh temporary folder, removed when the test process exits (for files that must
    outlive one test: a compiled module imported later, a spec cached for the session)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def example_paths() -> list[Path]:
    """Every `examples/*.nl`, sorted; collection fails loudly when there are none."""
    return sorted(EXAMPLES.glob("*.nl"))


def example_ids() -> list[str]:
    return [p.stem for p in example_paths()]


@pytest.fixture
def update_goldens(request) -> bool:
    return bool(request.config.getoption("--update-goldens"))


@pytest.fixture
def golden(update_goldens):
    """``golden(path, text)``: compare `text` with the file at `path`, or rewrite it."""

    def compare(path: Path, text: str) -> None:
        if update_goldens:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_bytes() != text.encode("utf-8"):
                path.write_bytes(text.encode("utf-8"))
            return
        where = path.relative_to(ROOT)
        assert path.exists(), f"missing golden {where}; run pytest --update-goldens"
        expected = path.read_bytes().decode("utf-8")
        assert text == expected, f"output differs from {path.relative_to(ROOT)}"

    return compare


@pytest.fixture
def one_thread():
    """One torch thread for the test (the runtime's tests: a run's speed on a busy machine
    does not change its numbers, and two cores shared with CI are not fought over)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_chunked_gradients_equal_recurrent(layer, x, tol: float = 1e-10) -> None:
    """Training runs `mode="chunked"`: its parameter gradients must be the recurrent form's
    (float64 inputs; the loss is the sum of squared outputs)."""
    import torch
    grads = []
    for mode in ("chunked", "recurrent"):
        layer.mode = mode
        layer.zero_grad()
        (layer(x) ** 2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in layer.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=tol, atol=tol, msg=name)
