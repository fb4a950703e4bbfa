"""The PyTorch printer's sigmoid: `1 / (1 + exp(-x))`, alone or dividing a product, prints
as one `torch.sigmoid` (one kernel where the division written out is four, in Hope's gates
inside every chunk), and the code computes the same values."""

from __future__ import annotations

import sympy as sp
import torch

from nlc.emit.torch_printer import TorchPrinter


def _code(expr) -> str:
    printer = TorchPrinter({"x": "x", "y": "y"})
    return printer.assign([("o", expr)])[-1].removeprefix("o = ")


def test_sigmoid_prints_as_one_call_and_equals_the_division():
    x, y = sp.symbols("x y")
    cases = {
        1 / (1 + sp.exp(-x - 2 * y)): lambda x, y: 1 / (1 + torch.exp(-x - 2 * y)),
        y / (1 + sp.exp(-x)): lambda x, y: y / (1 + torch.exp(-x)),
        1 / (1 + sp.exp(x)): lambda x, y: 1 / (1 + torch.exp(x)),
    }
    values = {"x": torch.randn(50, dtype=torch.float64), "y": torch.randn(50, dtype=torch.float64)}
    for expr, want in cases.items():
        code = _code(expr)
        assert code.count("torch.sigmoid(") == 1 and "torch.exp" not in code, code
        got = eval(code, {"torch": torch}, dict(values))  # noqa: S307 (our printer's output)
        assert torch.allclose(got, want(**values), rtol=1e-14, atol=1e-15)


def test_other_reciprocals_print_as_divisions():
    x, y = sp.symbols("x y")
    for expr in (1 / (2 + sp.exp(-x)), y / (1 + x), 1 / (1 + sp.exp(-x) + y)):
        code = _code(expr)
        assert "sigmoid" not in code and "/" in code, code
