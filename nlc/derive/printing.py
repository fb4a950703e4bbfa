"""Text and LaTeX printers for derived rules.

SymPy's printers decide whether a matrix product needs parentheses by asking whether it
could extract a minus sign, which negates the product and calls `doit()` on the whole
subtree. `doit` does not share work between repeated subexpressions, and an MLP's
gradient repeats its forward pass many times, so printing one rule took minutes. These
printers read the sign from the product's leading coefficient instead."""

from __future__ import annotations

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import PRECEDENCE, precedence, precedence_traditional
from sympy.printing.str import StrPrinter


def _negative_product(expr) -> bool:
    c = expr.args[0]
    return bool(c.is_Number and c.is_extended_negative)


def _negated(expr):
    """-expr for a product with a negative leading coefficient, without doit()."""
    args = list(expr.args)
    args = args[1:] if args[0] == -1 else [-args[0], *args[1:]]
    return args[0] if len(args) == 1 else sp.MatMul(*args, evaluate=False)


def _precedence(item, fallback=precedence) -> int:
    if isinstance(item, sp.MatMul):
        return PRECEDENCE["Add"] if _negative_product(item) else PRECEDENCE["Mul"]
    return fallback(item)


def _display(text: str) -> str:
    """Printed math as the reader sees it: the compiler's own symbols (bound variables,
    nlc.derive.symbols.internal) lose the mark that keeps them apart from spec names."""
    return text.replace("ı", "")


class RuleStrPrinter(StrPrinter):
    def parenthesize(self, item, level, strict=False):
        prec = _precedence(item)
        if prec < level or (not strict and prec <= level):
            return f"({self._print(item)})"
        return self._print(item)

    def _print_MatMul(self, expr):
        args = list(expr.args)
        sign = ""
        if _negative_product(expr):
            sign = "-"
            args = args[1:] if args[0] == -1 else [-args[0], *args[1:]]
        return sign + "*".join(self.parenthesize(a, PRECEDENCE["Mul"]) for a in args)

    def _print_MatAdd(self, expr):
        parts = []
        for term in self._as_ordered_terms(expr):
            t = self._print(term)
            sign = "+"
            if t.startswith("-") and not term.is_Add:
                sign, t = "-", t[1:]
            if _precedence(term) < PRECEDENCE["Add"] or term.is_Add:
                t = f"({t})"
            parts += [sign, t]
        return ("" if parts[0] == "+" else "-") + " ".join(parts[1:])


class RuleLatexPrinter(LatexPrinter):
    def parenthesize(self, item, level, is_neg=False, strict=False) -> str:
        prec = _precedence(item, precedence_traditional)
        if is_neg and strict:
            return self._add_parens(self._print(item))
        if prec < level or (not strict and prec <= level):
            return self._add_parens(self._print(item))
        return self._print(item)

    def _print_MatAdd(self, expr):
        tex = ""
        for i, term in enumerate(self._as_ordered_terms(expr)):
            if i and isinstance(term, sp.MatMul) and _negative_product(term):
                tex += " - "
                term = _negated(term)
            elif i:
                tex += " + "
            text = self._print(term)
            tex += rf"\left({text}\right)" if self._needs_add_brackets(term) else text
        return tex

    def _print_MatMul(self, expr):
        args = list(expr.args)
        sign = ""
        if _negative_product(expr):
            sign = "- "
            args = args[1:] if args[0] == -1 else [-args[0], *args[1:]]

        def part(x):
            if isinstance(x, sp.Mul) and not isinstance(x, sp.MatMul):
                return self._print(x)
            return self.parenthesize(x, PRECEDENCE["Mul"], False)
        return sign + " ".join(part(a) for a in args)


def sstr(expr) -> str:
    return _display(RuleStrPrinter().doprint(expr))


def latex(expr) -> str:
    return _display(RuleLatexPrinter().doprint(expr))
