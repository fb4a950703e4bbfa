"""SymPy -> `triton.language` printer: the math inside generated Triton kernels.

Templates lay out kernels; every formula that comes from SymPy (loss derivatives, gates) is
printed here. The printer is strict: an expression node outside its tables raises
`TritonPrintError` instead of printing something Triton cannot compile. Only APIs present in
Triton 3.0 through 3.9 are used (`tl.exp`, `tl.log`, `tl.sqrt`, `tl.abs`, `tl.where`,
`tl.maximum`, `tl.minimum`, `tl.sigmoid`, `tl.sin`, `tl.cos`, `tl.erf`, `tl.floor`, `tl.ceil`).

    >>> p, y = sp.symbols("p y", real=True)
    >>> tl_code((p - y) ** 2 / 2 + sp.Max(p, 0), {"p": "b_p", "y": "b_y"})
    '((b_p - b_y) * (b_p - b_y))/2.0 + tl.maximum(0.0, b_p)'
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy as sp
from sympy.logic.boolalg import BooleanFalse, BooleanTrue
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter

# Integer powers up to this size are printed as products (exact, no log/exp round trip).
MAX_EXPANDED_POWER = 8


class TritonPrintError(ValueError):
    """An expression has a node the Triton printer has no rule for."""


def _sign(pr, x):
    return f"tl.where({x} > 0, 1.0, tl.where({x} < 0, -1.0, 0.0))"


def _heaviside(pr, x, at_zero="0.5"):
    return f"tl.where({x} > 0, 1.0, tl.where({x} < 0, 0.0, {at_zero}))"


# SymPy function name -> how to print it, given the printer and its printed arguments.
FUNCTIONS = {
    "exp": lambda pr, x: f"tl.exp({x})",
    "log": lambda pr, x: f"tl.log({x})",
    "Abs": lambda pr, x: f"tl.abs({x})",
    "sin": lambda pr, x: f"tl.sin({x})",
    "cos": lambda pr, x: f"tl.cos({x})",
    "erf": lambda pr, x: f"tl.erf({x})",
    "floor": lambda pr, x: f"tl.floor({x})",
    "ceiling": lambda pr, x: f"tl.ceil({x})",
    # tanh(x) = 2 sigmoid(2x) - 1: tl.sigmoid exists in every Triton 3.x, tanh does not.
    "tanh": lambda pr, x: f"(2.0 * tl.sigmoid(2.0 * ({x})) - 1.0)",
    "sinh": lambda pr, x: f"(0.5 * (tl.exp({x}) - tl.exp(-({x}))))",
    "cosh": lambda pr, x: f"(0.5 * (tl.exp({x}) + tl.exp(-({x}))))",
    "sign": _sign,
    "Heaviside": _heaviside,
}

_RELATIONS = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


class TritonPrinter(StrPrinter):
    """Prints a scalar SymPy expression as a `triton.language` expression.

    `names` maps each free Symbol's name to the kernel variable that holds it; a Symbol
    without an entry is an error. Infix arithmetic (Add, Mul, division) is StrPrinter's; all
    leaves, powers and functions are printed by the rules below.
    """

    printmethod = "_tritoncode"

    def __init__(self, names: Mapping[str, str]):
        super().__init__({"order": None})
        self.names = dict(names)

    # -- strictness: every node must have a rule here --------------------------------------
    _ALLOWED = (sp.Symbol, sp.Number, sp.NumberSymbol, sp.Add, sp.Mul, sp.Pow,
                sp.Piecewise, sp.Min, sp.Max, sp.core.relational.Relational, sp.And, sp.Or,
                sp.Not, BooleanTrue, BooleanFalse, sp.Function)

    def _print(self, expr, **kwargs):
        if not isinstance(expr, self._ALLOWED):
            raise TritonPrintError(f"cannot print {type(expr).__name__} ({expr}) as Triton")
        # Leaves, functions and relations dispatch here, before StrPrinter's more specific
        # methods (_print_Pi, _print_Zero, _print_Equality, ...) can print them its way.
        if isinstance(expr, (sp.Number, sp.NumberSymbol)):
            return self._print_number(expr)
        if isinstance(expr, sp.core.relational.Relational):
            return self._print_Relational(expr)
        if isinstance(expr, sp.Function) and not isinstance(expr, (sp.Min, sp.Max, sp.Piecewise)):
            return self._print_Function(expr)
        return super()._print(expr, **kwargs)

    # -- leaves ------------------------------------------------------------------------------
    def _print_Symbol(self, expr):
        if expr.name not in self.names:
            raise TritonPrintError(f"symbol '{expr.name}' has no kernel variable "
                                   f"(known: {', '.join(sorted(self.names)) or 'none'})")
        return self.names[expr.name]

    def _print_number(self, expr):
        if not expr.is_finite or not expr.is_real:
            raise TritonPrintError(f"cannot print the number {expr} as Triton (finite reals only)")
        return repr(float(expr))  # always a float literal: Triton never sees an int constant

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"

    # -- powers and functions ----------------------------------------------------------------
    def _print_Pow(self, expr, rational=False):
        base, exponent = expr.args
        if exponent == -1 and isinstance(base, sp.Add) and len(base.args) == 2:
            one, other = sorted(base.args, key=lambda a: a != 1)
            if one == 1 and isinstance(other, sp.exp):  # 1 / (1 + exp(-x)) = sigmoid(x)
                return f"tl.sigmoid({self._print(-other.args[0])})"
        b = self.parenthesize(base, PRECEDENCE["Mul"] + 1)  # strictly tighter than *
        if exponent.is_Integer and abs(int(exponent)) <= MAX_EXPANDED_POWER:
            n = int(exponent)
            if n == 0:
                return "1.0"
            product = " * ".join([b] * abs(n))
            return f"({product})" if n > 0 else f"(1.0 / ({product}))"
        if exponent == sp.Rational(1, 2):
            return f"tl.sqrt({self._print(base)})"
        if exponent == -sp.Rational(1, 2):
            return f"(1.0 / tl.sqrt({self._print(base)}))"
        # general exponent: exp(e log b), defined for b > 0 (b = 0 gives 0 for e > 0)
        return f"tl.exp({self._print(exponent * sp.log(base, evaluate=False))})"

    def _print_Function(self, expr):
        name = type(expr).__name__
        rule = FUNCTIONS.get(name)
        if rule is None:
            raise TritonPrintError(f"no Triton rule for the function {name} (in {expr}); "
                                   f"supported: {', '.join(sorted(FUNCTIONS))}, Min, Max, "
                                   "Piecewise, powers")
        if len(expr.args) != 1 and name != "Heaviside":
            raise TritonPrintError(f"{name} with {len(expr.args)} arguments is not supported: "
                                   f"{expr}")
        return rule(self, *[self._print(a) for a in expr.args])

    def _print_Min(self, expr):
        return self._fold("tl.minimum", expr.args)

    def _print_Max(self, expr):
        return self._fold("tl.maximum", expr.args)

    def _fold(self, fn, args):
        out = self._print(args[0])
        for a in args[1:]:
            out = f"{fn}({out}, {self._print(a)})"
        return out

    # -- conditions ----------------------------------------------------------------------------
    def _print_Piecewise(self, expr):
        *branches, (last_value, last_cond) = expr.args
        if last_cond != sp.true:
            raise TritonPrintError(f"Piecewise without a default (True) branch: {expr}")
        out = self._print(last_value)
        for value, cond in reversed(branches):
            out = f"tl.where({self._print(cond)}, {self._print(value)}, {out})"
        return out

    def _print_Relational(self, expr):
        op = _RELATIONS.get(expr.rel_op)
        if op is None:
            raise TritonPrintError(f"cannot print the relation {expr.rel_op} as Triton")
        return f"{self._print(expr.lhs)} {op} {self._print(expr.rhs)}"

    def _print_And(self, expr):
        return " & ".join(f"({self._print(a)})" for a in expr.args)

    def _print_Or(self, expr):
        return " | ".join(f"({self._print(a)})" for a in expr.args)

    def _print_Not(self, expr):
        return f"~({self._print(expr.args[0])})"


def tl_code(expr: sp.Basic, names: Mapping[str, str]) -> str:
    """`expr` as a `triton.language` expression; `names` maps symbol names to kernel variables."""
    return TritonPrinter(names).doprint(sp.sympify(expr))
