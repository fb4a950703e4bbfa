"""The functions a spec may call on values, in one table: name -> what each stage needs.

| stage | reads |
|---|---|
| check (nlc/levels/vocab.py, shapes.py, level_checker.py) | the name, the kind (elementwise or over the last axis), the doc; an MLP memory's activation at 0 (`value_at_zero`) |
| derive (nlc/derive/symbols.py, matfuncs.py) | `sympy`: the scalar function as SymPy text in `x`; `column`: a function of a whole column's entries |
| verify (nlc/derive/evaluate.py) | `numpy`: a column function on a NumPy vector (elementwise ones go through SymPy) |
| emit (nlc/emit/context.py, torch_printer.py) | `torch`: the call generated code makes on a tensor; `math`: the call on a number known at compile time; `grad`: the call for the derivative, which a derived backward (an MLP memory's) makes instead of printing the derivative's formula |

Adding an activation or a norm is one `register(...)` here (and a test); the Triton and
PyTorch printers print the derived SymPy expressions, so they need nothing new. The SymPy
text is the compiler's own (never a spec's) and is parsed once, lazily, so that `nlc check`
loads no SymPy (except to refuse an MLP memory that starts at zeros)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    ELEMENTWISE = "elementwise"
    VECTORWISE = "vectorwise"          # a function of the whole last axis (a column)


@dataclass(frozen=True)
class Function:
    name: str
    kind: Kind
    doc: str
    torch: str                          # generated code's call on a tensor: "F.silu"
    sympy: str = ""                     # elementwise: the scalar function of x, as SymPy text
    math: str | None = None             # elementwise: the call on a Python number
    column: Callable | None = None      # vectorwise: list of SymPy entries -> list
    numpy: Callable | None = None       # vectorwise: NumPy vector -> vector
    grad: str | None = None             # elementwise: the call for its derivative (an MLP
    #                                     memory's backward); None prints the formula

    def scalar(self):
        """The elementwise function as a SymPy Lambda (derivation)."""
        return _lambda(self.sympy)


REGISTRY: dict[str, Function] = {}


def register(function: Function) -> Function:
    if function.name in REGISTRY or not function.name.isidentifier():
        raise ValueError(f"cannot register a function named {function.name!r}")
    if function.kind is Kind.ELEMENTWISE and not function.sympy:
        raise ValueError(f"elementwise {function.name} needs its SymPy form")
    if function.kind is Kind.VECTORWISE and (function.column is None or function.numpy is None):
        raise ValueError(f"vectorwise {function.name} needs its column and NumPy forms")
    REGISTRY[function.name] = function
    return function


def unregister(name: str) -> None:
    """Remove a function (tests that register one of their own)."""
    REGISTRY.pop(name)


def value_at_zero(name: str) -> float:
    """f(0) of an elementwise function, or of an MLP memory's `identity` activation, from its
    SymPy form: whether an MLP memory that starts at zeros can move (nlc/levels)."""
    if name == "identity":
        return 0.0
    return float(REGISTRY[name].scalar()(0))


def of_kind(kind: Kind) -> tuple[str, ...]:
    return tuple(n for n, f in REGISTRY.items() if f.kind is kind)


class View(Mapping):
    """A live table over the registry: name -> `pick(function)`, for the functions `pick`
    gives a value for (plus `extra` entries); what the stages read as their own tables."""

    def __init__(self, pick: Callable, extra: dict | None = None):
        self.pick, self.extra = pick, dict(extra or {})

    def _items(self) -> dict:
        found = {n: self.pick(f) for n, f in REGISTRY.items()}
        return {n: v for n, v in found.items() if v is not None} | self.extra

    def __getitem__(self, name):
        return self._items()[name]

    def __iter__(self):
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())


@functools.cache
def _lambda(text: str):
    import sympy as sp
    x = sp.Symbol("ıx", real=True)  # the compiler's own symbol (nlc.derive.symbols.internal)
    return sp.Lambda(x, sp.sympify(text, locals={"x": x}))


def _elementwise(name: str, sympy: str, torch: str, math: str | None = None,
                 grad: str | None = None) -> None:
    register(Function(name, Kind.ELEMENTWISE, f"elementwise {name}", torch, sympy, math,
                      grad=grad))


_elementwise("silu", "x / (1 + exp(-x))", "F.silu", grad="nl.silu_grad")
_elementwise("sigmoid", "1 / (1 + exp(-x))", "torch.sigmoid", grad="nl.sigmoid_grad")
_elementwise("softplus", "log(1 + exp(x))", "F.softplus", grad="torch.sigmoid")
_elementwise("exp", "exp(x)", "torch.exp", "math.exp")
_elementwise("log", "log(x)", "torch.log", "math.log")
_elementwise("tanh", "tanh(x)", "torch.tanh", "math.tanh", grad="nl.tanh_grad")
_elementwise("relu", "Max(x, 0)", "torch.relu")
_elementwise("gelu", "x * (1 + erf(x / sqrt(2))) / 2", "nl.gelu", grad="nl.gelu_grad")
_elementwise("elu1", "Piecewise((x + 1, x > 0), (exp(x), True))", "nl.elu1")
_elementwise("sqrt", "sqrt(x)", "torch.sqrt", "math.sqrt")
_elementwise("abs", "Abs(x)", "torch.abs", "abs")
_elementwise("sign", "sign(x)", "torch.sign")
_elementwise("logsigmoid", "-log(1 + exp(-x))", "F.logsigmoid")


# Functions of a whole column: explicit entries (no learned gain), with NORM_EPS inside the
# square root as in the runtime's nl.l2norm / rmsnorm / layernorm.
NORM_EPS = 1e-6


def _sqrt(value):
    import sympy as sp
    return sp.sqrt(value)


def _eps():
    """NORM_EPS, exactly."""
    import sympy as sp
    return sp.Rational(1, round(1 / NORM_EPS))


def _l2norm(x):
    scale = 1 / _sqrt(sum(e ** 2 for e in x) + _eps())
    return [e * scale for e in x]


def _rmsnorm(x):
    scale = 1 / _sqrt(sum(e ** 2 for e in x) / len(x) + _eps())
    return [e * scale for e in x]


def _layernorm(x):
    mu = sum(x) / len(x)
    centred = [e - mu for e in x]
    scale = 1 / _sqrt(sum(c ** 2 for c in centred) / len(x) + _eps())
    return [c * scale for c in centred]


def _softmax(x):
    import sympy as sp
    ex = [sp.exp(e) for e in x]
    total = sum(ex)
    return [e / total for e in ex]


def _np_layernorm(x):
    import numpy as np
    c = x - x.mean()
    return c / np.sqrt(np.mean(c * c) + NORM_EPS)


def _np_l2norm(x):
    import numpy as np
    return x / np.sqrt(np.sum(x * x) + NORM_EPS)


def _np_rmsnorm(x):
    import numpy as np
    return x / np.sqrt(np.mean(x * x) + NORM_EPS)


def _np_softmax(x):
    import numpy as np
    e = np.exp(x - x.max())
    return e / np.sum(e)


for _name, _column, _numpy in (("l2norm", _l2norm, _np_l2norm),
                               ("rmsnorm", _rmsnorm, _np_rmsnorm),
                               ("layernorm", _layernorm, _np_layernorm),
                               ("softmax", _softmax, _np_softmax)):
    register(Function(_name, Kind.VECTORWISE, f"{_name} over the last axis", f"nl.{_name}",
                      column=_column, numpy=_numpy))
