"""A level's one-token step (SymPy matrix expressions) -> `triton.language` lines for one
program of a fused recurrent kernel (nlc/emit/step_render.py).

The printer knows every value's shape: a scalar is a 0-d value, a column `[n, 1]` and a row
`[1, n]` are 1-D vectors of n entries, a matrix `[r, c]` a 2-D block. Products are printed by
shape instead of as `@`:

    W @ x      (matrix, column)  tl.sum(W * x[None, :], axis=1)   a reduction over the key axis
    y @ W      (row, matrix)     tl.sum(y[:, None] * W, axis=0)
    x @ y      (column, row)     x[:, None] * y[None, :]          an outer product
    y @ x      (row, column)     tl.sum(y * x, axis=0)            a scalar
    W.T        a flag on the value (`Value.flipped`): the next product reduces the other axis

Elementwise maps, sums and products of equal shapes, scalar functions (tl_printer's table),
powers, `mean`, `total`, inner products, the sum of all entries, piecewise choices and a
row-wise softmax are printed too. Anything else (a matrix times a matrix, a column function
such as l2norm, a solve, Newton-Schulz) raises `StepPrintError` naming the node: the caller
keeps the level's PyTorch loop and says why. Shared subtrees are printed once into a
temporary (value numbering, as nlc/emit/torch_printer.py does).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import sympy as sp

from nlc.derive.symbols import internal
from nlc.emit.tl_printer import FUNCTIONS

_RELATIONS = {sp.StrictGreaterThan: ">", sp.GreaterThan: ">=", sp.StrictLessThan: "<",
              sp.LessThan: "<=", sp.Equality: "==", sp.Unequality: "!="}
_ATOMIC = (sp.Symbol, sp.MatrixSymbol, sp.Number, sp.NumberSymbol)


class StepPrintError(ValueError):
    """The step has a node (or a shape) the Triton step printer has no rule for."""


@dataclass(frozen=True, slots=True)
class Value:
    code: str
    kind: str               # scalar | col | row | mat
    flipped: bool = False   # mat: the code holds the transpose of the value


def kind_of(shape) -> str:
    rows, cols = shape
    if rows == 1 and cols == 1:
        return "scalar"
    return "col" if cols == 1 else "row" if rows == 1 else "mat"


def size_code(size, dims: dict[str, str]) -> str:
    """A size (an integer, a dim, or an integer times a dim) as constexpr arithmetic."""
    coeff, rest = sp.sympify(size).as_coeff_Mul()
    if rest == 1 and coeff.is_Integer:
        return str(int(coeff))
    if not (coeff.is_Integer and isinstance(rest, sp.Symbol) and rest.name in dims):
        raise StepPrintError(f"the size {size} is not an integer times one dim")
    return dims[rest.name] if coeff == 1 else f"{int(coeff)} * {dims[rest.name]}"


def _p(code: str) -> str:
    """`code` as an operand: parenthesized unless it is a name, a plain number or one call."""
    bare = code.replace(".", "").replace("_", "")
    if code.isidentifier() or bare.isalnum() and not code.startswith("-"):
        return code
    head, paren, _ = code.partition("(")
    if paren and head.replace(".", "").replace("_", "").isalnum() and code.endswith(")"):
        depth = 0
        for i, c in enumerate(code):
            depth += {"(": 1, ")": -1}.get(c, 0)
            if depth == 0 and c == ")":
                return code if i == len(code) - 1 else f"({code})"
    return f"({code})"


class TritonStepPrinter:
    """Prints (target, expression) pairs as kernel lines. `names` maps each symbol's name to
    the Value holding it; `dims` maps a dim's name to its constexpr."""

    def __init__(self, names: dict[str, Value], dims: dict[str, str]):
        self.names, self.dims = dict(names), dict(dims)
        self.lines: list[str] = []
        self.cache: dict = {}
        self.uses: Counter = Counter()
        self.temps = 0
        self.held: dict[Value, Value] = {}  # printed code -> the temporary holding it

    def assign(self, outputs: list[tuple[str, str, object]]) -> list[str]:
        """Lines computing each (symbol name, target, expression); a target becomes the
        symbol's value for the outputs after it (a read after the write). Matrices are stored
        unflipped."""
        for _, _, expr in outputs:
            for node in sp.preorder_traversal(expr):
                if not isinstance(node, _ATOMIC) and not node.is_number:
                    self.uses[node] += 1
        for name, target, expr in outputs:
            v = self.expr(expr)
            code = f"tl.trans({v.code})" if v.flipped else v.code
            self.lines.append(f"{target} = {code}")
            self.names[name] = Value(target, v.kind)
        return self.lines

    def expr(self, e) -> Value:
        if e in self.cache:
            return self.cache[e]
        v = self._print(e)
        if self.uses[e] > 1 and not isinstance(e, _ATOMIC) and not e.is_number \
                and not v.code.isidentifier():
            v = self.cache[e] = self._hold(v)
        return v

    def bound(self, e) -> Value:
        """`e` held in a name (an operand used more than once in its printed code)."""
        v = self.expr(e)
        if not v.code.isidentifier():
            v = self.cache[e] = self._hold(v)
        return v

    def _hold(self, v: Value) -> Value:
        """`v` in a new temporary, or in the one that already holds the same code: SymPy
        spells one value several ways (`W k` and `(k^T W^T)^T`), which print alike; names are
        assigned once in a step, so equal code is an equal value."""
        if v in self.held:
            return self.held[v]
        name, self.temps = f"t{self.temps}", self.temps + 1
        self.lines.append(f"{name} = {v.code}")
        self.held[v] = Value(name, v.kind, v.flipped)
        return self.held[v]

    # ------------------------------------------------------------ nodes
    def _print(self, e) -> Value:
        if e.is_number and not isinstance(e, sp.MatrixExpr):
            value = complex(e)
            if value.imag or value.real != value.real or abs(value.real) == float("inf"):
                raise StepPrintError(f"cannot print the number {e} (finite reals only)")
            return Value(repr(value.real), "scalar")
        if isinstance(e, (sp.Symbol, sp.MatrixSymbol)):
            if e.name not in self.names:
                raise StepPrintError(f"the step reads '{e.name}', which the kernel does not have")
            return self.names[e.name]
        method = getattr(self, f"_print_{type(e).__name__}", None)
        if method is not None:
            return method(e)
        if isinstance(e, sp.Function) and type(e).__name__ in FUNCTIONS and len(e.args) == 1:
            x = self.bound(e.args[0])
            return Value(FUNCTIONS[type(e).__name__](self, x.code), x.kind, x.flipped)
        raise StepPrintError(f"no Triton rule for {type(e).__name__} ({sp.sstr(e)[:60]})")

    def _entrywise(self, values: list[Value], op: str) -> Value:
        """Values of one shape (scalars broadcast) combined by the infix `op`."""
        if len(values) == 1:
            return values[0]
        shaped = [v for v in values if v.kind != "scalar"]
        kinds = {v.kind for v in shaped}
        if len(kinds) > 1:
            raise StepPrintError(f"entrywise {op.strip()} of a {' and a '.join(sorted(kinds))}")
        kind = kinds.pop() if kinds else "scalar"
        flips = {v.flipped for v in shaped}
        flipped = flips == {True}
        codes = [f"tl.trans({v.code})" if v.flipped and not flipped else _p(v.code)
                 for v in values]
        return Value(op.join(codes), kind, flipped)

    def _print_Add(self, e) -> Value:
        return self._entrywise([self.expr(a) for a in sp.Add.make_args(e)], " + ")

    _print_MatAdd = _print_Add

    def _print_Mul(self, e) -> Value:
        return self._entrywise([self.expr(a) for a in e.args], " * ")

    _print_HadamardProduct = _print_Mul

    def _print_Pow(self, e) -> Value:
        base, exponent = e.args
        if base == sp.E:
            x = self.expr(exponent)
            return Value(f"tl.exp({x.code})", x.kind, x.flipped)
        if not exponent.is_number:
            raise StepPrintError(f"a power with a variable exponent: {sp.sstr(e)[:60]}")
        b = self.bound(base)
        if exponent.is_Integer and 0 < abs(int(exponent)) <= 8:
            product = " * ".join([b.code] * abs(int(exponent)))
            code = f"({product})" if exponent > 0 else f"(1.0 / ({product}))"
        elif exponent == sp.Rational(1, 2):
            code = f"tl.sqrt({b.code})"
        elif exponent == -sp.Rational(1, 2):
            code = f"(1.0 / tl.sqrt({b.code}))"
        else:  # b > 0 (a norm, a sum of even powers): exp(e log b)
            code = f"tl.exp({float(exponent)!r} * tl.log({b.code}))"
        return Value(code, b.kind, b.flipped)

    def _print_HadamardPower(self, e) -> Value:
        return self._print_Pow(sp.Pow(e.args[0], e.args[1], evaluate=False))

    def _print_Transpose(self, e) -> Value:
        v = self.expr(e.arg)
        kind = {"col": "row", "row": "col"}.get(v.kind, v.kind)
        return Value(v.code, kind, v.flipped != (v.kind == "mat"))

    def _print_MatMul(self, e) -> Value:
        scalars = [a for a in e.args if not isinstance(a, sp.MatrixExpr)]
        mats = [a for a in e.args if isinstance(a, sp.MatrixExpr)]
        ones = [m for m in mats if isinstance(m, sp.OneMatrix)]
        if ones and len(mats) == 1:  # c * 1: a scalar spread over a column, row or matrix
            shape = ", ".join(size_code(n, self.dims) for n in ones[0].shape if n != 1)
            scalar = self._entrywise([self.expr(s) for s in scalars] or [Value("1.0", "scalar")],
                                     " * ")
            return Value(f"{_p(scalar.code)} + tl.zeros(({shape},), dtype=tl.float32)",
                         kind_of(ones[0].shape))
        if ones:
            raise StepPrintError(f"a product with a matrix of ones: {sp.sstr(e)[:60]}")
        factors = [self.expr(m) for m in mats]
        while len(factors) > 1:  # mat @ col from the right, row @ mat from the left
            i = len(factors) - 2
            if factors[-1].kind not in ("col", "scalar") and factors[0].kind in ("row", "scalar"):
                i = 0
            factors[i:i + 2] = [self._product(factors[i], factors[i + 1])]
        return self._entrywise([self.expr(s) for s in scalars] + factors, " * ")

    def _product(self, a: Value, b: Value) -> Value:
        if "scalar" in (a.kind, b.kind):
            return self._entrywise([a, b], " * ")
        x, y = _p(a.code), _p(b.code)
        if (a.kind, b.kind) == ("mat", "col"):
            return Value(f"tl.sum({y}[:, None] * {x}, axis=0)" if a.flipped
                         else f"tl.sum({x} * {y}[None, :], axis=1)", "col")
        if (a.kind, b.kind) == ("row", "mat"):
            return Value(f"tl.sum({y} * {x}[None, :], axis=1)" if b.flipped
                         else f"tl.sum({x}[:, None] * {y}, axis=0)", "row")
        if (a.kind, b.kind) == ("col", "row"):
            return Value(f"{x}[:, None] * {y}[None, :]", "mat")
        if (a.kind, b.kind) == ("row", "col"):
            return Value(f"tl.sum({x} * {y}, axis=0)", "scalar")
        raise StepPrintError(f"a product of a {a.kind} and a {b.kind} (only products with a "
                             "column, a row or a scalar are printed)")

    def _sum_all(self, v: Value) -> str:
        if v.kind == "mat":
            return f"tl.sum(tl.sum({_p(v.code)}, axis=1), axis=0)"
        return f"tl.sum({_p(v.code)}, axis=0)" if v.kind != "scalar" else v.code

    def _print_Trace(self, e) -> Value:
        arg = e.arg
        if not (isinstance(arg, sp.MatMul) and isinstance(arg.args[0], sp.OneMatrix)):
            raise StepPrintError(f"a trace that is not a sum of entries: {sp.sstr(e)[:60]}")
        rest = arg.args[1] if len(arg.args) == 2 else sp.MatMul(*arg.args[1:])
        return Value(self._sum_all(self.expr(rest)), "scalar")

    def _print_Total(self, e) -> Value:
        return Value(self._sum_all(self.expr(e.args[0])), "scalar")

    def _print_Mean(self, e) -> Value:
        arg = e.args[0]
        count = size_code(arg.shape[0] * arg.shape[1], self.dims)
        return Value(f"{self._sum_all(self.expr(arg))} / {_p(count)}", "scalar")

    def _print_Dot(self, e) -> Value:
        a, b = (self.expr(x) for x in e.args)
        return Value(self._sum_all(self._entrywise([a, b], " * ")), "scalar")

    def _print_Max(self, e) -> Value:
        return self._fold("tl.maximum", e.args)

    def _print_Min(self, e) -> Value:
        return self._fold("tl.minimum", e.args)

    def _fold(self, fn: str, args) -> Value:
        out = self.expr(args[0])
        for a in args[1:]:
            both = self._entrywise([out, self.expr(a)], ", ")
            out = Value(f"{fn}({both.code})", both.kind, both.flipped)
        return out

    def _print_Piecewise(self, e) -> Value:
        *pieces, (last, cond) = e.args
        if cond != sp.true:
            raise StepPrintError("a piecewise expression without an otherwise branch")
        out = self.expr(last)
        for value, cond in reversed(pieces):
            op = _RELATIONS.get(type(cond))
            if op is None:
                raise StepPrintError(f"cannot print the condition {cond}")
            test = self._entrywise([self.expr(cond.lhs), self.expr(cond.rhs)], f" {op} ")
            parts = self._entrywise([test, self.expr(value), out], ", ")
            out = Value(f"tl.where({parts.code})", parts.kind, parts.flipped)
        return out

    def _print_Heaviside(self, e) -> Value:
        x = self.bound(e.args[0])
        return Value(f"tl.where({x.code} > 0, 1.0, 0.0)", x.kind, x.flipped)

    def _print_ElementwiseApplyFunction(self, e) -> Value:
        (var,), body = e.function.variables, e.function.expr
        arg = self.bound(e.expr)
        holder = sp.Symbol(internal(f"arg{len(self.names)}"))
        self.names[holder.name] = arg
        return self.expr(body.xreplace({var: holder}))

    def _print_RowSoftmax(self, e) -> Value:
        x = self.bound(e.args[0])
        axis, mid = (0, "[None, :]") if x.flipped else (1, "[:, None]")
        shifted = f"tl.exp({x.code} - tl.max({x.code}, axis={axis}){mid})"
        ex = self._hold(Value(shifted, "mat", x.flipped))
        return Value(f"{ex.code} / tl.sum({ex.code}, axis={axis}){mid}", "mat", x.flipped)
