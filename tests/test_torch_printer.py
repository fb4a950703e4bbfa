"""The PyTorch printer's sigmoid: `1 / (1 + exp(-x))`, alone or dividing a product, prints
as one `torch.sigmoid` (one kernel where the division written out is four, in Hope's gates
inside every chunk), and the code computes the same values; an elementwise map of a
transposed argument prints as its twin's transpose where both occur."""

from __future__ import annotations

import sympy as sp
import torch
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from nlc.emit.torch_printer import TorchPrinter
from nlc.runtime.library import ops


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


def test_a_negated_reciprocal_keeps_its_one():
    """-1 / x (a rate `1 / beta` in a gd step's -lr) printed as `- / x` once: a syntax error
    in the generated module."""
    x, y = sp.symbols("x y")
    values = {"x": torch.rand(50, dtype=torch.float64) + 0.5,
              "y": torch.randn(50, dtype=torch.float64)}
    for expr in (-1 / x, -1 / (x + y ** 2), -y / x):
        code = _code(expr)
        got = eval(code, {"torch": torch}, dict(values))  # noqa: S307 (our printer's output)
        want = sp.lambdify((x, y), expr, "math")
        assert torch.allclose(got, torch.tensor([want(a, b) for a, b in zip(
            values["x"].tolist(), values["y"].tolist())], dtype=torch.float64)), code


def test_an_elementwise_map_and_its_transposed_twin_print_as_one_value():
    """gelu(W k) as a column and gelu(k^T W^T) as a row (an MLP memory's gradient pairs): the
    row prints as the column's transpose, one gelu and one product for both, same values."""
    r = sp.Symbol("r", real=True)
    gelu = sp.Lambda(r, r * (1 + sp.erf(r / sp.sqrt(2))) / 2)
    W, k = sp.MatrixSymbol("W", 6, 3), sp.MatrixSymbol("k", 3, 1)
    col = ElementwiseApplyFunction(gelu, W * k)
    row = ElementwiseApplyFunction(gelu, k.T * W.T)
    lines = TorchPrinter({"W": "W", "k": "k"}).assign([("col", 2 * col), ("row", row)])
    code = "\n".join(lines)
    assert code.count("nl.gelu(") == 1 and code.count("W @ k") == 1, code
    g = torch.Generator().manual_seed(0)
    values = {"W": torch.randn(4, 6, 3, dtype=torch.float64, generator=g),
              "k": torch.randn(4, 3, 1, dtype=torch.float64, generator=g)}
    scope = dict(values)
    exec(code, {"torch": torch, "nl": ops}, scope)  # noqa: S102 (our printer's output)
    want = torch.nn.functional.gelu(values["W"] @ values["k"])
    assert torch.allclose(scope["col"], 2 * want, rtol=0, atol=1e-15)
    assert torch.allclose(scope["row"], want.mT, rtol=0, atol=1e-15)
    # alone, each orientation prints as written
    alone = "\n".join(TorchPrinter({"W": "W", "k": "k"}).assign([("row", row)]))
    assert alone == "row = nl.gelu((k.mT @ W.mT))", alone
