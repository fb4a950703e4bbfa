"""Matrix functions that SymPy lacks as expressions: Newton-Schulz orthogonalization, a
row-wise softmax, the language's functions of a whole vector (l2norm, rmsnorm, layernorm,
softmax) and scalar reductions (mean, total, inner product). Each knows its explicit form,
so rules containing them can be checked, and prints under its own name."""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from nlc import functions

# Coefficients of the quintic Newton-Schulz iteration used by Muon (Jordan et al., 2024).
NS_COEFFS = (sp.Rational(34445, 10000), sp.Rational(-47750, 10000), sp.Rational(20315, 10000))


class NewtonSchulz(sp.MatrixExpr):
    """NewtonSchulz(X, n): n quintic iterations from X / ||X||_F (approximately U V^T)."""

    def __new__(cls, arg, steps):
        return super().__new__(cls, arg, sp.sympify(steps))

    @property
    def shape(self):
        return self.args[0].shape

    def as_explicit(self):
        x = self.args[0].as_explicit()
        a, b, c = NS_COEFFS
        norm = sp.sqrt(sum(e ** 2 for e in x)) + sp.Rational(1, 10 ** 7)
        x = x / norm
        transpose = x.shape[0] > x.shape[1]
        if transpose:
            x = x.T
        for _ in range(int(self.args[1])):
            g = x * x.T
            x = a * x + (b * g + c * g * g) * x
        return x.T if transpose else x

    def _entry(self, i, j, **kwargs):
        return self.as_explicit()[i, j]

    def _sympystr(self, printer):
        return f"NewtonSchulz{int(self.args[1])}({printer._print(self.args[0])})"


class RowSoftmax(sp.MatrixExpr):
    """Softmax over each row (Memora's KL retention keeps each row a distribution)."""

    def __new__(cls, arg):
        return super().__new__(cls, arg)

    @property
    def shape(self):
        return self.args[0].shape

    def as_explicit(self):
        x = self.args[0].as_explicit()
        rows = []
        for i in range(x.shape[0]):
            ex = [sp.exp(x[i, j]) for j in range(x.shape[1])]
            total = sum(ex)
            rows.append([e / total for e in ex])
        return sp.Matrix(rows)

    def _entry(self, i, j, **kwargs):
        return self.as_explicit()[i, j]

    def _sympystr(self, printer):
        return f"RowSoftmax({printer._print(self.args[0])})"


class _Reduction(sp.Expr):
    """A scalar reduction of a column's entries, kept as one node: SymPy's own form (an
    element of ones^T y) turns into a symbolic Sum that it tries to evaluate, which is slow."""

    is_commutative = True
    is_real = True
    name = ""

    def __new__(cls, arg):
        return super().__new__(cls, arg)

    @staticmethod
    def reduce(entries):
        raise NotImplementedError

    def doit(self, **hints):
        arg = self.args[0].doit(**hints) if hints.get("deep", True) else self.args[0]
        if isinstance(arg, sp.MatrixBase):
            return self.reduce(list(arg))
        return self.func(arg)

    def _sympystr(self, printer):
        return f"{self.name}({printer._print(self.args[0])})"

    def _latex(self, printer):
        return rf"\operatorname{{{self.name}}}\left({printer._print(self.args[0])}\right)"


class Mean(_Reduction):
    """The mean of a column's entries."""

    name = "mean"

    @staticmethod
    def reduce(entries):
        return sum(entries) / len(entries)


class Total(_Reduction):
    """The sum of a column's entries (the language's `total`)."""

    name = "total"

    @staticmethod
    def reduce(entries):
        return sum(entries)


class Dot(sp.Expr):
    """<a, b> for two columns, kept as one node (as `Mean`: SymPy would rewrite the element
    of a^T b into a symbolic Sum)."""

    is_commutative = True
    is_real = True

    def __new__(cls, a, b):
        return super().__new__(cls, a, b)

    def doit(self, **hints):
        a, b = (x.doit(**hints) for x in self.args)
        if isinstance(a, sp.MatrixBase) and isinstance(b, sp.MatrixBase):
            return (a.T * b)[0, 0]
        return self.func(a, b)

    def _sympystr(self, printer):
        a, b = self.args
        if a == b:
            return f"||{printer._print(a)}||^2"
        return f"<{printer._print(a)}, {printer._print(b)}>"

    def _latex(self, printer):
        a, b = (printer._print(x) for x in self.args)
        return rf"\left\langle {a}, {b} \right\rangle"


# Functions of a whole column (the registry's vectorwise functions, nlc/functions.py), as
# their explicit entries: l2norm, rmsnorm and layernorm without a learned gain.
COLUMN_FUNCTIONS = functions.View(lambda f: f.column)


class ColumnMap(sp.MatrixExpr):
    """name(x) for a column x and a function of the whole column (COLUMN_FUNCTIONS); it
    keeps its name for printing and knows its explicit form for checking."""

    def __new__(cls, name, arg):
        name = str(name)  # a str, or the Symbol it is stored as when SymPy rebuilds the node
        if name not in COLUMN_FUNCTIONS:
            raise ValueError(f"no column function {name!r}")
        return super().__new__(cls, sp.Symbol(name), arg)

    @property
    def name(self) -> str:
        return self.args[0].name

    @property
    def shape(self):
        return self.args[1].shape

    def as_explicit(self):
        x = self.args[1].as_explicit()
        return sp.ImmutableMatrix(x.shape[0], x.shape[1],
                                  COLUMN_FUNCTIONS[self.name](list(x)))

    def _entry(self, i, j, **kwargs):
        return self.as_explicit()[i, j]

    def _sympystr(self, printer):
        return f"{self.name}({printer._print(self.args[1])})"

    def _latex(self, printer):
        return rf"\operatorname{{{self.name}}}\left({printer._print(self.args[1])}\right)"


def free_names(exprs) -> set[str]:
    """Names of the symbols an expression reads (elementwise-map variables excluded). A
    matrix symbol's (or an identity's) shape is not read: its sizes are part of the symbol,
    not of the math."""
    found, bound = set(), set()
    for e in exprs:
        nodes = sp.preorder_traversal(e)
        for node in nodes:
            if isinstance(node, (sp.MatrixSymbol, sp.ZeroMatrix, sp.OneMatrix, sp.Identity)):
                if isinstance(node, sp.MatrixSymbol):
                    found.add(node)
                nodes.skip()
            elif isinstance(node, sp.Symbol):
                found.add(node)
            elif isinstance(node, ElementwiseApplyFunction):
                bound |= set(node.function.variables)
            elif isinstance(node, ColumnMap):
                bound.add(node.args[0])  # the function's name, stored as a Symbol
    return {s.name for s in found - bound}
