"""SymPy symbols for one spec at given dimensions, and the lowering of spec expressions to
SymPy (matrix) expressions.

Per-token vectors are column matrices ``MatrixSymbol(name, d, 1)``; per-head scalars are
``Symbol``s; a matrix state is ``MatrixSymbol(S, d_out, d_in)``. Dimensions are SymPy
symbols for display (``d_k``) or integers for checking (``2``, ``3``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from nlc import functions
from nlc.derive.matfuncs import COLUMN_FUNCTIONS
from nlc.errors import NlcError
from nlc.levels.records import PARAM_IN, PARAM_OUT, PARAM_SHAPE, Dim, Shape
from nlc.syntax import ast
from nlc.syntax.format import format_expr


def internal(name: str) -> str:
    """The name of one of the compiler's own SymPy symbols (a bound variable, a placeholder):
    not ASCII, so never equal to a spec's name, which the grammar keeps ASCII."""
    return f"ı{name}"


_R = sp.Symbol(internal("r"), real=True)


def shifted_name(name: str, shift: int) -> str:
    """The context value `name` `shift` tokens back, as omega windows read it: k -> k_m1."""
    return f"{name}_m{shift}"


def unshifted(name: str) -> str | None:
    """The context value a `shifted_name` is `name` of, else None."""
    base, sep, shift = name.rpartition("_m")
    return base if sep and base and shift.isdigit() and shift[0] != "0" else None


# An undefined activation: verification proves the chain rule for every activation.
SIGMA = sp.Function("sigma")
SIGMA_PRIME = sp.Function("sigma_prime")

# Scalar functions as SymPy: the registry's elementwise functions (nlc/functions.py), and the
# MLP memory's `identity` and verification's `abstract` activations.
SCALAR_FUNCTIONS: Mapping[str, Callable] = functions.View(
    lambda f: f.scalar() if f.kind is functions.Kind.ELEMENTWISE else None,
    {"identity": lambda x: x, "abstract": SIGMA})


def name_derivatives(expr):
    """Subs(Derivative(sigma(x), x), x, e) -> sigma_prime(e), which lambdify can print."""
    def is_sigma_prime(e):
        return (isinstance(e, sp.Subs) and isinstance(e.expr, sp.Derivative)
                and e.expr.expr.func == SIGMA)
    expr = expr.replace(is_sigma_prime, lambda e: SIGMA_PRIME(e.point[0]))
    return expr.replace(lambda e: isinstance(e, sp.Derivative) and e.expr.func == SIGMA,
                        lambda e: SIGMA_PRIME(e.expr.args[0]))


def elementwise(func: Callable, x):
    """Apply a scalar function to a scalar or, entry by entry, to a matrix expression."""
    if isinstance(x, sp.MatrixBase):
        return x.applyfunc(func)
    if isinstance(x, sp.MatrixExpr):
        return ElementwiseApplyFunction(sp.Lambda(_R, func(_R)), x)
    return func(x)


def scaled(c, m):
    """c * m for a scalar c and a matrix m, built unevaluated: SymPy's canonicalization
    calls doit() on the whole of m, which does not share work between repeated
    subexpressions and is exponential on an MLP's gradient."""
    if c == 1:
        return m
    return sp.MatMul(c, m, evaluate=False)


def add(*terms):
    """The sum of matrix terms, built unevaluated (see `scaled`)."""
    terms = [t for t in terms if not isinstance(t, sp.ZeroMatrix)]
    return terms[0] if len(terms) == 1 else sp.MatAdd(*terms, evaluate=False)


def matmul(*factors):
    """The product of matrices (and scalars), flattened and built unevaluated (see `scaled`
    and `per_channel`)."""
    flat = []
    for f in factors:
        flat.extend(f.args if isinstance(f, sp.MatMul) else (f,))
    return sp.MatMul(*flat, evaluate=False)


def per_channel(factor, tensor, form_kind: str):
    """A per-channel gate or rate times a memory's tensor: the input side of a matrix,
    S Diag(factor), else entry by entry (built unevaluated: evaluating a product with a
    DiagMatrix asks SymPy's assumption system, whose first use imports 0.1 s of modules)."""
    if form_kind == "matrix":
        return matmul(tensor, sp.DiagMatrix(factor))
    return sp.HadamardProduct(factor, tensor)


def is_matrix(x) -> bool:
    return isinstance(x, (sp.MatrixExpr, sp.MatrixBase))


def ones(n) -> sp.MatrixExpr:
    return sp.OneMatrix(n, 1)


_SIZE_OPS = {ast.BinOpKind.ADD: lambda a, b: a + b, ast.BinOpKind.SUB: lambda a, b: a - b,
             ast.BinOpKind.MUL: lambda a, b: a * b, ast.BinOpKind.DIV: lambda a, b: a / b,
             ast.BinOpKind.POW: lambda a, b: a ** b}


def size_expr(e: ast.Expr):
    """A checked dimension's spelling (`4 * d_head`) as a SymPy expression of the dims it
    names, so that a layer built with other sizes computes its own; None for a spelling
    with a call (`sqrt(d)`), which keeps the spec's size."""
    if isinstance(e, ast.Num):
        return sp.Integer(int(e.value)) if e.is_int else sp.nsimplify(e.value)
    if isinstance(e, ast.Name):
        return sp.Symbol(e.id, positive=True)
    if isinstance(e, ast.Neg):
        inner = size_expr(e.operand)
        return None if inner is None else -inner
    if isinstance(e, ast.BinOp) and e.op in _SIZE_OPS:
        left, right = size_expr(e.left), size_expr(e.right)
        return None if left is None or right is None else _SIZE_OPS[e.op](left, right)
    return None


def dim_size(d: Dim):
    """A dim as a SymPy size: its symbol, an expression of dims, or (for a spelling with a
    call) the spec's number."""
    if d.text.isidentifier():
        return sp.Symbol(d.text, positive=True)
    found = size_expr(d.expr) if d.expr is not None else None
    return sp.Integer(d.size) if found is None else found


class SymbolTable:
    """Names of one spec -> SymPy objects, at one choice of dimensions.

    `dims` maps dim names to integers (for checking) or is None (symbols, for display);
    `param_shape` is the (rows, cols) used for optimizer tensors shaped like the parameter."""

    def __init__(self, spec, dims: Mapping[str, int] | None = None, param_shape=(2, 3)):
        self.spec = spec
        self.concrete = dims is not None
        self.dim_values = dict(spec.dims) | dict(dims or {})
        self.param_shape = param_shape if self.concrete else (sp.Symbol("m"), sp.Symbol("n"))
        self.values: dict[str, object] = {}
        for name, _ in spec.dims:
            self.values[name] = sp.Integer(self.dim_values[name]) if self.concrete else sp.Symbol(name, positive=True)
        for name, value in spec.hypers:
            self.values[name] = sp.Symbol(name, real=True)
        self.hyper_values = dict(spec.hypers)
        for var in spec.context:
            self.values[var.name] = self.symbol(var.name, var.shape)
        for p in spec.params:
            self.values[p.name] = self.symbol(p.name, p.shape)
        if "d_model" in self.dim_values:
            self.values.setdefault("x", self.symbol("x", (Dim("d_model", self.dim_values["d_model"]),)))
        for level in spec.levels:
            if level.over and level.inputs:  # the parameter's output gradient and input
                self.values[level.over] = self.symbol(level.over, (PARAM_OUT,))
                self.values[level.inputs] = self.symbol(level.inputs, (PARAM_IN,))
            elif level.over:
                self.values[level.over] = self.symbol(level.over, PARAM_SHAPE)
        for level in spec.levels:  # a level's name holds its read output
            if level.read is not None:
                self.values.setdefault(level.name, self.symbol(level.name, level.output_shape))
        self.values.setdefault("t", sp.Symbol("t", positive=True))
        self.values.setdefault("param", self.symbol("param", PARAM_SHAPE))

    def dim(self, d: Dim):
        if d.text in ("param_out", "param_in"):  # a matrix parameter seen with its inputs
            return self.param_shape[0 if d.text == "param_out" else 1]
        if d.text == "param":
            raise AssertionError("the parameter shape is not one dim")
        if self.concrete:
            size = self.dim_values.get(d.text, d.size)
            return sp.Integer(size)
        return dim_size(d)

    def shape(self, shape: Shape) -> tuple:
        if shape == PARAM_SHAPE:
            return self.param_shape
        return tuple(self.dim(d) for d in shape)

    def symbol(self, name: str, shape: Shape):
        dims = self.shape(shape)
        if not dims:
            return sp.Symbol(name, real=True)
        if len(dims) == 1:
            return sp.MatrixSymbol(name, dims[0], 1)
        if len(dims) == 2:
            return sp.MatrixSymbol(name, dims[0], dims[1])
        raise NlcError(f"'{name}' has {len(dims)} axes; derivation handles at most 2")


class Lowering:
    """Spec expression -> SymPy, with memory applications delegated to `apply_memory`."""

    def __init__(self, table: SymbolTable, names: Mapping[str, object],
                 apply_memory: Callable | None = None):
        self.table = table
        self.names = names
        self.apply_memory = apply_memory

    def __call__(self, e: ast.Expr):
        if isinstance(e, ast.Num):
            if e.is_int or float(e.value).is_integer():
                return sp.Integer(int(e.value))
            return sp.Rational(repr(float(e.value)))  # exact: 0.1 is 1/10
        if isinstance(e, ast.Name):
            if e.id in self.names:
                return self.names[e.id]
            if e.id in self.table.values:
                return self.table.values[e.id]
            raise NlcError(f"'{e.id}' cannot be used in a derivation here", e.span)
        if isinstance(e, ast.Neg):
            return -self(e.operand)
        if isinstance(e, ast.BinOp):
            return self.binop(e)
        if isinstance(e, ast.Call):
            return self.call(e)
        raise NlcError(f"'{format_expr(e)}' cannot be derived", e.span)

    def binop(self, e: ast.BinOp):
        out = self._binop(e)
        if isinstance(out, sp.Basic) and out.has(sp.zoo, sp.nan, sp.oo):
            raise NlcError(f"'{format_expr(e)}' has no finite value for any input: it divides "
                           f"by zero or takes a power of zero that is not finite", e.span,
                           hint="a factor that is 0 for every input (such as '* 0') makes it so")
        return out

    def _binop(self, e: ast.BinOp):
        a, b = self(e.left), self(e.right)
        op = e.op
        if op is ast.BinOpKind.ADD:
            return _broadcast_add(a, b)
        if op is ast.BinOpKind.SUB:
            return _broadcast_add(a, -b)
        if op is ast.BinOpKind.MUL:
            if is_matrix(a) and is_matrix(b):
                return sp.HadamardProduct(a, b)
            return a * b
        if op is ast.BinOpKind.DIV:
            if is_matrix(b):
                inv = elementwise(lambda r: 1 / r, b)
                return sp.HadamardProduct(a, inv) if is_matrix(a) else a * inv
            return a * (1 / b) if is_matrix(a) else a / b
        if op is ast.BinOpKind.POW:
            if is_matrix(b):
                raise NlcError("a power's exponent must be a scalar here", e.right.span)
            return elementwise(lambda r: r ** b, a)
        # a @ W with a a column vector: contract a's axis with W's first axis
        if not is_matrix(a) or not is_matrix(b):
            raise NlcError("'@' needs vectors or matrices", e.span)
        if a.shape[1] == 1 and b.shape[1] == 1:
            from nlc.derive.matfuncs import Dot
            return Dot(a, b)
        return b.T * a

    def call(self, e: ast.Call):
        if self.apply_memory is not None and e.func in self.table_memories():
            return self.apply_memory(e)
        args = [self(a) for a in e.positional]
        if e.func in SCALAR_FUNCTIONS:
            return elementwise(SCALAR_FUNCTIONS[e.func], args[0])
        if e.func == "dot":
            from nlc.derive.matfuncs import Dot
            a, b = args
            return Dot(a, b) if is_matrix(a) else a * b
        if e.func == "total":
            from nlc.derive.matfuncs import Total
            a = args[0]
            return Total(a) if is_matrix(a) else a
        if e.func in COLUMN_FUNCTIONS:
            return _column_function(e, args[0])
        if e.func == "sqnorm":
            a = args[0]
            return sp.Trace(a.T * a) if is_matrix(a) else a ** 2
        if e.func == "detach":
            return args[0]
        if e.func == "newton_schulz5":
            from nlc.derive.matfuncs import NewtonSchulz
            return NewtonSchulz(args[0], sp.Integer(5))
        if e.func == "conv":
            raise NlcError("'conv(...)' runs over time, not within one token's rule", e.span,
                           hint="compute it in the context block and use its name here")
        raise NlcError(f"'{e.func}(...)' is not supported inside a level's rule yet", e.span)

    def table_memories(self):
        return getattr(self, "memories", ())


def _column_function(e: ast.Call, x):
    from nlc.derive.matfuncs import ColumnMap
    if not is_matrix(x):
        raise NlcError(f"'{e.func}' needs a vector, not a scalar", e.span)
    if x.shape[1] != 1:
        raise NlcError(f"'{e.func}' of a matrix is not derived; apply it to a vector", e.span)
    return ColumnMap(e.func, x)


def _broadcast_add(a, b):
    if is_matrix(a) and not is_matrix(b):
        return a + b * sp.OneMatrix(*a.shape) if b != 0 else a
    if is_matrix(b) and not is_matrix(a):
        return b + a * sp.OneMatrix(*b.shape) if a != 0 else b
    return a + b
