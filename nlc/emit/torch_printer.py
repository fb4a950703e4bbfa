"""SymPy (matrix) expressions -> batched PyTorch code.

Every value is a tensor whose last two axes are the matrix axes: a matrix is ``[..., r, c]``,
a column vector ``[..., d, 1]`` and a scalar ``[..., 1, 1]`` (or a Python number). The
leading axes are whatever the caller batches over: (batch, head) for one token, (batch,
token, head) for a whole chunk. One printed expression therefore serves the recurrent step
and the chunk-parallel forms alike.

Shared subtrees are printed once into a temporary (value numbering, since SymPy's own `cse`
cannot rebuild elementwise maps); a subtree used once is inlined, so the code stays close to
the rule that `nlc derive` prints.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

import sympy as sp
from sympy.core.function import Application
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.printing.pycode import PythonCodePrinter

from nlc.derive.classify import split_shift
from nlc.derive.matfuncs import Dot, Mean, Total, free_names
from nlc.derive.symbols import internal
from nlc.errors import NlcError

# Scalar functions: SymPy head -> torch call. Elementwise on tensors.
FUNCTIONS = {
    sp.exp: "torch.exp", sp.log: "torch.log", sp.tanh: "torch.tanh", sp.erf: "torch.erf",
    sp.Abs: "torch.abs", sp.sign: "torch.sign", sp.cos: "torch.cos", sp.sin: "torch.sin",
    sp.cosh: "torch.cosh", sp.sinh: "torch.sinh",
}
RELATIONS = {sp.StrictGreaterThan: ">", sp.GreaterThan: ">=", sp.StrictLessThan: "<",
             sp.LessThan: "<=", sp.Equality: "==", sp.Unequality: "!="}
_ATOMIC = (sp.Symbol, sp.MatrixSymbol, sp.Number, sp.NumberSymbol, sp.OneMatrix,
           sp.ZeroMatrix)


def number(value) -> str:
    """A SymPy number as a deterministic Python literal."""
    value = sp.nsimplify(value) if isinstance(value, sp.Float) else value
    if value.is_Integer:
        return str(int(value))
    return repr(float(value))


_R = sp.Symbol(internal("r"))


def library_call(body) -> str | None:
    """The call that computes the elementwise function `r -> body` when it is a registered
    function (nlc/functions.py) or the derivative of one with a `grad` call: `nl.gelu`,
    `nl.gelu_grad`. Matched on the expression's structure, as derivation builds it."""
    from nlc import functions
    return _library_calls(tuple(functions.REGISTRY.values())).get(body)


_U = sp.Wild(internal("u"))


def registered_call(e) -> tuple[str, object] | None:
    """(library call, argument) when the scalar expression `e` is a registered elementwise
    function applied to one argument, as a rule written inline derives it (softplus(z) is
    log(1 + exp(z)), elu1 a Piecewise): the library's call is stable where the formula
    overflows."""
    from nlc import functions
    for f in functions.REGISTRY.values():
        if f.kind is not functions.Kind.ELEMENTWISE:
            continue
        pattern = f.scalar()(_U)
        if type(pattern) is not type(e):
            continue
        try:
            found = e.match(pattern)
            if not found or _U not in found or isinstance(found[_U], sp.MatrixExpr) \
                    or found[_U].has(_U) \
                    or sp.simplify(pattern.xreplace({_U: found[_U]}) - e) != 0:
                continue
        except TypeError:  # a match that mixes a matrix into a scalar's place
            continue
        return f.torch, found[_U]
    return None


@functools.cache
def _library_calls(registered: tuple) -> dict:
    from nlc import functions
    calls = {}
    for f in registered:
        if f.kind is functions.Kind.ELEMENTWISE:
            ref = f.scalar()(_R)
            calls.setdefault(ref, f.torch)
            if f.grad:
                calls.setdefault(sp.diff(ref, _R), f.grad)
    return calls


def _is_literal(code: str) -> bool:
    try:
        float(code)
    except ValueError:
        return False
    return True


class _NumberPrinter(PythonCodePrinter):
    """A function of Python numbers as Python code (`math.sqrt(1 - b2**t)`); a step is
    relu's derivative, 0 at 0, as `_print_Heaviside` prints it for tensors."""

    def __init__(self, names: dict[str, str]):
        super().__init__({"fully_qualified_modules": True, "standard": "python3"})
        self.names = names

    def _print_Symbol(self, e) -> str:
        return self.names[e.name]

    def _print_Heaviside(self, e) -> str:
        return f"(1 if {self._print(e.args[0])} > 0 else 0)"


@dataclass(frozen=True)
class _Solved:
    """A^-1 times the factors after it in a product (`rhs`), printed as one solve."""

    matrix: object
    rhs: tuple
    is_number = False


def _sigmoid_of(e):
    """x when `e` is 1 + exp(-x), else None: 1 / e prints as torch.sigmoid(x), one kernel
    where the division written out is four (a gate's sigmoid in a chunk loop)."""
    if isinstance(e, sp.Add) and len(e.args) == 2:
        one, other = sorted(e.args, key=lambda a: a != 1)
        if one == 1 and isinstance(other, sp.exp):
            return -other.args[0]
    return None


def _transposed_twins(exprs) -> dict:
    """f.(X^T) -> (f.(X))^T where both occur in `exprs`: an elementwise map of a transposed
    argument is the transposed map, so the two print as one value (an MLP memory's gradient
    pairs take `gelu(W k)` as a column and `gelu(k^T W^T)` as a row). The orientation with
    fewer transposes in its argument is the one computed."""
    nodes = {n for e in exprs for n in sp.preorder_traversal(e)
             if isinstance(n, ElementwiseApplyFunction)}
    twins = {}
    for node in nodes:
        twin = ElementwiseApplyFunction(node.function, sp.Transpose(node.expr).doit())
        if twin in nodes and _transposes(twin.expr) < _transposes(node.expr):
            twins[node] = sp.Transpose(twin)
    return twins


def _transposes(e) -> int:
    return sum(isinstance(n, sp.Transpose) for n in sp.preorder_traversal(e))


class Names(dict):
    """A printer's names (symbol -> code) that also says which hold Python numbers (a level's
    dims, passed as ints): a function of those alone is printed with Python's math. Kept
    through `names | {...}`."""

    numbers: frozenset = frozenset()

    def __or__(self, other):
        out = Names(dict.__or__(self, other))
        out.numbers = self.numbers
        return out


class TorchPrinter:
    """Print expressions as assignment lines. `names` maps a symbol's name to the Python
    expression that holds it; `prefix` names the temporaries."""

    def __init__(self, names: dict[str, str] | None = None, prefix: str = "t",
                 chunk: bool = False, numbers: frozenset = frozenset()):
        self.names = dict(names or {})
        self.prefix = prefix
        # names that hold Python numbers, not tensors: an optimizer's hypers and step count
        # `t`, and every name printed as a literal (a layer's compiled-in hypers and dims);
        # a function of these alone is printed with Python's math (torch.sqrt takes no float)
        self.numbers = frozenset(numbers) | {n for n, code in self.names.items()
                                             if _is_literal(code)} \
            | getattr(names, "numbers", frozenset())
        # chunk code: matrices shared by a chunk's tokens meet per-token columns, so products
        # go through nl.mm, which does not copy the shared matrix once per token
        self.chunk = chunk
        self.lines: list[str] = []
        self.cache: dict = {}
        self.uses: Counter = Counter()

    # ------------------------------------------------------------------ driver
    def assign(self, outputs: list[tuple[str, object]]) -> list[str]:
        """Lines that compute each (target, expression); returns all lines so far."""
        twins = _transposed_twins([e for _, e in outputs])
        outputs = [(t, e.xreplace(twins) if twins else e) for t, e in outputs]
        for _, expr in outputs:
            self._count(expr)
        for target, expr in outputs:
            self.lines.append(f"{target} = {self.expr(expr)}")
        return self.lines

    def _count(self, expr) -> None:
        for node in sp.preorder_traversal(expr):
            if not isinstance(node, _ATOMIC) and not node.is_number:
                self.uses[node] += 1

    def expr(self, e) -> str:
        """The code of `e` (a name if it was shared)."""
        if e in self.cache:
            return self.cache[e]
        code = self._print(e)
        if self.uses[e] > 1 and not isinstance(e, _ATOMIC) and not e.is_number:
            name = f"{self.prefix}{len(self.cache)}"
            self.lines.append(f"{name} = {code}")
            self.cache[e] = name
            return name
        return code

    def _paren(self, e) -> str:
        code = self.expr(e)
        if e in self.cache or isinstance(e, (sp.Symbol, sp.MatrixSymbol, sp.Function,
                                             Mean, Total, Dot, sp.Transpose, _Solved)) \
                or code.isidentifier():
            return code
        if e.is_number and not code.startswith("-"):
            return code
        return f"({code})"

    # ------------------------------------------------------------------ nodes
    def _print(self, e) -> str:
        if e.is_number and not isinstance(e, sp.MatrixExpr):
            return number(e)
        if isinstance(e, (sp.Symbol, sp.MatrixSymbol)):
            name = e.name
            if name not in self.names:
                raise NlcError(f"generated code has no value for '{name}'")
            return self.names[name]
        if self._of_numbers(e):
            return _NumberPrinter(self.names).doprint(e)
        if isinstance(e, (sp.log, sp.Piecewise)) and not isinstance(e, sp.MatrixExpr):
            call = registered_call(e)
            if call is not None:  # softplus as log(1 + exp(z)) overflows at z = 100
                return f"{call[0]}({self.expr(call[1])})"
        method = getattr(self, f"_print_{type(e).__name__}", None)
        if method is not None:
            return method(e)
        head = FUNCTIONS.get(type(e))
        if head is not None:
            return f"{head}({', '.join(self.expr(a) for a in e.args)})"
        raise NlcError(f"cannot emit PyTorch code for '{type(e).__name__}' in {sp.sstr(e)[:80]}")

    def _of_numbers(self, e) -> bool:
        """Whether `e` calls a function (exp, a square root, max, a step) of names that all
        hold Python numbers."""
        if not isinstance(e, sp.Basic) or isinstance(e, sp.MatrixExpr) or not e.free_symbols \
                or any(s.name not in self.numbers for s in e.free_symbols):
            return False
        return any(isinstance(n, (Application, sp.Piecewise))  # Max and Min are not Functions
                   or (isinstance(n, sp.Pow) and (n.base == sp.E or not n.exp.is_integer))
                   for n in sp.preorder_traversal(e))

    def _sum(self, args) -> str:
        parts = []
        for a in sorted(args, key=sp.default_sort_key):
            code = self._paren(a) if isinstance(a, (sp.Add, sp.MatAdd)) else self.expr(a)
            if parts and code.startswith("-"):
                parts.append(f"- {code[1:]}")
            else:
                parts.append(("+ " if parts else "") + code)
        return " ".join(parts)

    def _print_Add(self, e) -> str:
        return self._sum(e.args)

    _print_MatAdd = _print_Add

    def _product(self, factors, op: str) -> str:
        sign = ""
        if factors and factors[0].is_number and factors[0] == -1:
            sign, factors = "-", factors[1:] or [sp.Integer(1)]  # -1 alone: -1 / x
        return sign + f" {op} ".join(self._paren(f) for f in factors)

    def _print_Mul(self, e) -> str:
        numer, denom = [], []
        for f in e.as_ordered_factors():
            # a negative power divides, unless it is a shared root: then its temporary
            # multiplies (one rsqrt for every 1 / sqrt(x) of a rule, not a sqrt and a
            # division each; a shared 1 / x would cost a division and a product instead of
            # the one division)
            if isinstance(f, sp.Pow) and f.exp.is_number and f.exp < 0 \
                    and not f.base.is_number and (self.uses[f] <= 1 or f.exp == -1):
                denom.append(sp.Pow(f.base, -f.exp))
            else:
                numer.append(f)
        code = self._product(numer or [sp.Integer(1)], "*")
        for d in denom:
            x = _sigmoid_of(d)  # a division by 1 + exp(-x): a product with sigmoid(x)
            code += f" / {self._paren(d)}" if x is None else f" * torch.sigmoid({self.expr(x)})"
        return code

    def _print_Pow(self, e) -> str:
        base, exp = e.args
        if isinstance(exp, sp.Float):
            exp = sp.nsimplify(exp)
        if exp == sp.Rational(1, 2):
            return f"torch.sqrt({self.expr(base)})"
        if exp == -1 and _sigmoid_of(base) is not None:
            return f"torch.sigmoid({self.expr(_sigmoid_of(base))})"
        if exp == -1:
            return f"1 / {self._paren(base)}"
        if exp == sp.Rational(-1, 2):
            return f"torch.rsqrt({self.expr(base)})"
        if base == sp.E:
            return f"torch.exp({self.expr(exp)})"
        return f"{self._paren(base)} ** {self._paren(exp)}"

    def _print_MatMul(self, e) -> str:
        scalars = [a for a in e.args if not isinstance(a, sp.MatrixExpr)]
        mats = [a for a in e.args if isinstance(a, sp.MatrixExpr)]
        code, pending = None, []
        if mats and all(isinstance(m, sp.OneMatrix) for m in mats) and len(mats) == 1:
            # c * 1: a scalar broadcast over a column (how SymPy writes "subtract the mean")
            return self._product(scalars or [sp.Integer(1)], "*")
        if any(isinstance(m, sp.OneMatrix) for m in mats):
            raise NlcError(f"cannot emit a product with a matrix of ones: {sp.sstr(e)[:80]}")
        inverse = next((i for i, m in enumerate(mats) if isinstance(m, sp.Inverse)), None)
        if inverse is not None:  # X A^-1 Y: a solve, never an explicit inverse
            mats = mats[:inverse] + [_Solved(mats[inverse].arg, tuple(mats[inverse + 1:]))]
        for m in mats:  # a diagonal factor scales rows (on the left) or columns (on the right)
            if isinstance(m, sp.DiagMatrix):
                if code is None:
                    pending.append(self._paren(m.args[0]))
                else:
                    code = f"{code} * {self._paren(m.args[0])}.mT"
                continue
            if code is None:
                code = self._paren(m)
            elif self.chunk:
                code = f"nl.mm({code}, {self._paren(m)})"
            else:
                code = f"{code} @ {self._paren(m)}"
        if code is None:
            raise NlcError(f"cannot emit a product of diagonal matrices: {sp.sstr(e)[:80]}")
        factors = [self._paren(s) if not s.is_number else number(s) for s in scalars] + pending
        if factors == ["-1"]:
            return f"-{code}" if " " not in code else f"-({code})"
        return " * ".join(factors + [code if " " not in code or code.startswith("(")
                                     else f"({code})"])

    def _print__Solved(self, e) -> str:
        """A^-1 Y as `nl.shifted_solve(M, c, Y)` for A = M + c I. An inverse with nothing
        after it has no solve to print (a read meets the solved memory as `S(q)`)."""
        matrix, shift = split_shift(e.matrix)
        if matrix is None:
            raise NlcError(f"cannot emit the inverse of a multiple of the identity: "
                           f"{sp.sstr(e.matrix)[:80]}")
        if not e.rhs:
            raise NlcError(f"cannot emit an inverse that is not applied: {sp.sstr(e.matrix)[:80]}",
                           hint="read the solved memory applied to a query, S(q)")
        rhs = e.rhs[0] if len(e.rhs) == 1 else sp.MatMul(*e.rhs)
        return f"nl.shifted_solve({self.expr(matrix)}, {self.expr(shift)}, {self.expr(rhs)})"

    def _print_HadamardProduct(self, e) -> str:
        return " * ".join(self._paren(a) for a in e.args)

    def _print_HadamardPower(self, e) -> str:
        return f"{self._paren(e.args[0])} ** {self._paren(e.args[1])}"

    def _print_Transpose(self, e) -> str:
        return f"{self._paren(e.arg)}.mT"

    def _print_DiagMatrix(self, e) -> str:
        return f"torch.diag_embed({self.expr(e.args[0])}.squeeze(-1))"

    def _print_OneMatrix(self, e) -> str:
        return "1.0"  # only ever broadcast against a tensor of the same shape

    def _print_ZeroMatrix(self, e) -> str:
        return "0.0"

    def _print_Identity(self, e) -> str:
        raise NlcError("an identity matrix cannot be emitted without its size")

    def _print_Trace(self, e) -> str:
        arg = e.arg
        if isinstance(arg, sp.MatMul) and isinstance(arg.args[0], sp.OneMatrix):
            # tr(1 1^T X) sums every entry of X (how SymPy spells a matrix's total)
            rest = sp.MatMul(*arg.args[1:])
            return f"nl.sum_all({self.expr(rest)})"
        return f"nl.trace({self.expr(arg)})"

    def _print_Mean(self, e) -> str:
        return f"nl.mean({self.expr(e.args[0])})"

    def _print_ColumnMap(self, e) -> str:
        # the runtime's norms work over the last axis; a column's entries are the one before
        return f"nl.{e.name}({self._paren(e.args[1])}.mT).mT"

    def _print_Total(self, e) -> str:
        return f"nl.sum_all({self.expr(e.args[0])})"  # a column's entries

    def _print_Dot(self, e) -> str:
        a, b = e.args
        if a == b:
            return f"nl.sqnorm({self.expr(a)})"
        return f"nl.dot({self.expr(a)}, {self.expr(b)})"

    def _print_NewtonSchulz(self, e) -> str:
        return f"nl.newton_schulz({self.expr(e.args[0])}, steps={int(e.args[1])})"

    def _print_RowSoftmax(self, e) -> str:
        return f"torch.softmax({self.expr(e.args[0])}, dim=-1)"

    def _print_ElementwiseApplyFunction(self, e) -> str:
        lam = e.function
        (var,), body = lam.variables, lam.expr
        arg = e.expr
        call = library_call(body.xreplace({var: _R}))
        if call is not None:  # a registered function or its derivative: the library's
            return f"{call}({self.expr(arg)})"
        holder = sp.Symbol(internal(f"arg{len(self.names)}"))
        code = self.expr(arg)
        if not code.isidentifier():
            name = f"{self.prefix}{len(self.cache)}"
            self.lines.append(f"{name} = {code}")
            self.cache[arg] = name
            code = name
        inner = TorchPrinter({**self.names, holder.name: code}, prefix=f"{self.prefix}_",
                             numbers=self.numbers)
        return inner.expr(body.xreplace({var: holder}))

    def _extremum(self, e, pairwise: str, clamp: str) -> str:
        nums = [a for a in e.args if a.is_number]
        code = None
        for a in (a for a in e.args if not a.is_number):
            code = self.expr(a) if code is None else f"{pairwise}({code}, {self.expr(a)})"
        return f"{clamp}({code}, {number(nums[0])})" if nums else code

    def _print_Max(self, e) -> str:
        return self._extremum(e, "torch.maximum", "torch.clamp_min")

    def _print_Min(self, e) -> str:
        return self._extremum(e, "torch.minimum", "torch.clamp_max")

    def _print_Piecewise(self, e) -> str:
        *pieces, (last, cond) = e.args
        if cond != sp.true:
            raise NlcError("a piecewise expression without an otherwise branch")
        code = self.expr(last)
        for value, cond in reversed(pieces):
            code = f"torch.where({self._condition(cond)}, {self.expr(value)}, {code})"
        return code

    def _condition(self, cond) -> str:
        op = RELATIONS.get(type(cond))
        if op is None:
            raise NlcError(f"cannot emit the condition {cond}")
        return f"{self._paren(cond.lhs)} {op} {self._paren(cond.rhs)}"

    def _print_Heaviside(self, e) -> str:
        return f"({self._paren(e.args[0])} > 0).to({self.expr(e.args[0])}.dtype)"


__all__ = ["TorchPrinter", "free_names", "number"]
