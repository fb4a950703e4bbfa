"""Spec expressions of a layer (context generation, the output) -> PyTorch code.

Values are `[B, T, H, *shape]` tensors: a scalar per head and token is `[B, T, H, 1]`, the
input `x` is `[B, T, 1, d_model]` (shared by the heads), a parameter `[H, *shape]` (a scalar
parameter is used as `[H, 1]`). Every name reaching the code was validated by the checker;
numbers are printed from their parsed values, never copied from the spec text."""

from __future__ import annotations

from dataclasses import dataclass, field

from nlc import functions
from nlc.errors import NlcError
from nlc.syntax import ast

# spec function -> PyTorch (or nl.*) function applied to the last axis / elementwise
CALLS = functions.View(lambda f: f.torch, {"total": "nl.total",
                                           "newton_schulz5": "nl.newton_schulz"})
# on numbers known at compile time (dims, hypers): Python's math
CONSTANT_CALLS = functions.View(lambda f: f.math)
BINARY = {ast.BinOpKind.ADD: "+", ast.BinOpKind.SUB: "-", ast.BinOpKind.MUL: "*",
          ast.BinOpKind.DIV: "/", ast.BinOpKind.POW: "**"}
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "**": 4}


def literal(value: float) -> str:
    """A number as code: whole numbers below 2^53 as ints, others as floats (a larger int
    overflows torch's scalar arguments)."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2 ** 53 else repr(value)


def is_x(e: ast.Expr) -> bool:
    """Whether `e` is the layer's input x itself."""
    return isinstance(e, ast.Name) and e.id == "x"


def x_projections(exprs, params) -> list[str]:
    """The parameters P of the products `x @ P` the expressions hold, in `params`' order (the
    order the spec declares them)."""
    from nlc.syntax.walk import nodes
    used = {n.right.id for n in nodes(tuple(exprs))
            if isinstance(n, ast.BinOp) and n.op is ast.BinOpKind.MATMUL and is_x(n.left)
            and isinstance(n.right, ast.Name)}
    return [p for p in params if p in used]


@dataclass
class ContextPrinter:
    """Prints spec expressions; `names` maps spec names to code; `inner` holds the `a @ b`
    nodes that are inner products of two vectors (the plan types them)."""

    names: dict[str, str]
    inner: frozenset
    params: dict[str, tuple]                     # name -> per-head shape (ints)
    convs: object = None                         # the plan's ConvPlans, in printing order
    owner: str = "context"
    constants: frozenset = frozenset()
    projected: dict = field(default_factory=dict)  # param -> code of x @ param, made beforehand

    def expr(self, e: ast.Expr) -> str:
        return self._print(e)[0]

    def _print(self, e) -> tuple[str, int]:
        """(code, precedence); 9 binds tightest."""
        if isinstance(e, ast.Num):
            return literal(e.value), 9
        if isinstance(e, ast.Name):
            if e.id not in self.names:
                raise NlcError(f"'{e.id}' cannot be used in generated {self.owner} code", e.span)
            return self.names[e.id], 9
        if isinstance(e, ast.Neg):
            code, prec = self._print(e.operand)
            return f"-{code if prec >= 3 else f'({code})'}", 3
        if isinstance(e, ast.BinOp):
            return self._binop(e)
        if isinstance(e, ast.Call):
            return self._call(e), 9
        raise NlcError(f"cannot emit '{type(e).__name__}' here", e.span)

    def _wrap(self, e, at_least: int) -> str:
        code, prec = self._print(e)
        return code if prec >= at_least else f"({code})"

    def _binop(self, e: ast.BinOp) -> tuple[str, int]:
        if e.op is ast.BinOpKind.MATMUL:
            return self._matmul(e), 9
        gated = self._gated_norm(e)
        if gated is not None:
            return gated, 9
        op = BINARY[e.op]
        prec = PRECEDENCE[op]
        if op == "**" and isinstance(e.left, ast.Num) and isinstance(e.right, ast.Num):
            # a power of numbers is a number (Python's int power would overflow torch); the
            # checker refused one that is not finite (nlc.levels.shapes._check_numbers)
            value = float(e.left.value) ** float(e.right.value)
            return literal(value), 9
        if op == "**":
            left = self._wrap(e.left, 5)
            if isinstance(e.left, ast.Num):  # a float base: an int base overflows at 2 ** 64
                left = repr(float(e.left.value))
            return f"{left} ** {self._wrap(e.right, 5)}", prec
        right_min = prec + 1 if op in ("-", "/") else prec
        return f"{self._wrap(e.left, prec)} {op} {self._wrap(e.right, right_min)}", prec

    def _matmul(self, e: ast.BinOp) -> str:
        right = e.right
        if isinstance(right, ast.Name) and right.id in self.params:
            if is_x(e.left) and right.id in self.projected:
                return self.projected[right.id]
            return f"nl.head_matmul({self.expr(e.left)}, {self.names[right.id]})"
        if isinstance(right, ast.Call) and right.func == "detach" and len(right.args) == 1 \
                and isinstance(right.args[0], ast.Name) and right.args[0].id in self.params:
            # x @ detach(P): the parameter without its gradient (a frozen projection)
            weight = f"{self.names[right.args[0].id]}.detach()"
            return f"nl.head_matmul({self.expr(e.left)}, {weight})"
        if e in self.inner:
            return f"nl.inner({self.expr(e.left)}, {self.expr(right)})"
        raise NlcError("'@' in generated code needs a parameter on its right "
                       "(or two vectors)", e.span)

    def constant(self, e: ast.Expr) -> bool:
        """Whether `e` only involves numbers, dims and hypers."""
        from nlc.syntax.walk import nodes
        found = nodes(e)  # a call of a function of numbers is one too: clamp's nested relu
        return all(n.id in self.constants for n in found if isinstance(n, ast.Name)) and all(
            n.func in CALLS or n.func in CONSTANT_CALLS for n in found if isinstance(n, ast.Call))

    def _call(self, e: ast.Call) -> str:
        args = e.positional
        kw = {k.name: k.value for k in e.keywords}
        x = args[0] if args else kw.get("x")
        if e.func in CONSTANT_CALLS and x is not None and self.constant(x):
            return f"{CONSTANT_CALLS[e.func]}({self.expr(x)})"
        if e.func in CALLS and x is not None and self.constant(x):
            # a Python number again, computed in float64 (a float32 tensor here rounded
            # every factor it met)
            return (f"float({CALLS[e.func]}(torch.tensor(float({self.expr(x)}), "
                    "dtype=torch.float64)))")
        if self.owner == "optimizer" and e.func in ("total", "dot", "sqnorm"):
            return self._entries_sum(e, args, kw)
        fused = self._fused(e)
        if fused is not None:
            return fused
        if e.func in CALLS:
            return f"{CALLS[e.func]}({self.expr(args[0] if args else kw['x'])})"
        if e.func == "conv":
            return self._conv(e)
        if e.func in ("dot",):
            a, b = (list(args) + [kw.get("a"), kw.get("b")])[:2]
            return f"nl.inner({self.expr(a)}, {self.expr(b)})"
        if e.func == "sqnorm":
            x = self.expr(args[0] if args else kw["x"])
            return f"nl.inner({x}, {x})"
        if e.func == "detach":
            return f"{self._wrap(args[0] if args else kw['x'], 9)}.detach()"
        raise NlcError(f"{e.func}() cannot be emitted in {self.owner} code", e.span)

    def _entries_sum(self, e: ast.Call, args, kw) -> str:
        """An optimizer's reduction: over all of the parameter's entries, as one vector."""
        if e.func == "total":
            return f"nl.entries_sum({self.expr(args[0] if args else kw['x'])})"
        if e.func == "dot":
            a, b = (list(args) + [kw.get("a"), kw.get("b")])[:2]
        else:
            a = b = args[0] if args else kw["x"]
        return f"nl.entries_sum({self._wrap(a, 2)} * {self._wrap(b, 3)})"

    # ---------------------------------------------------------------- fused compositions
    # Compositions the runtime computes in one pass each way (fused Triton kernels on CUDA,
    # runtime/library/context_triton.py; the PyTorch ops elsewhere), matched on the AST, with
    # ACT one of FUSED_ACTS and NORM one of GATED_NORMS:
    #   [l2norm(] [ACT(] conv(x) [)] [)]  ->  nl.short_conv(x, ..., act="ACT", norm="l2")
    #   l2norm(ACT(x))                    ->  nl.l2norm(x, act="ACT")
    #   NORM(a) * ACT(g)  (either order)  ->  nl.gated_norm(a, g, norm=..., act=...)
    def _fused(self, e: ast.Call) -> str | None:
        inner = _argument(e)
        if e.func in FUSED_ACTS and _is_call(inner, "conv"):
            return self._conv(inner, act=e.func)
        if e.func != "l2norm" or inner is None:
            return None
        if _is_call(inner, "conv"):
            return self._conv(inner, norm="l2")
        act = inner.func if isinstance(inner, ast.Call) and inner.func in FUSED_ACTS else None
        if act is None or _argument(inner) is None:
            return None
        if _is_call(_argument(inner), "conv"):
            return self._conv(_argument(inner), act=act, norm="l2")
        if self.constant(_argument(inner)):
            return None
        return f"nl.l2norm({self.expr(_argument(inner))}, act='{act}')"

    def _conv(self, e: ast.Call, act: str | None = None, norm: str | None = None) -> str:
        conv = next(self.convs)  # planned in the order they are printed
        return f"nl.short_conv({self.expr(_argument(e))}, self.{conv.name}, cu_seqlens, " \
               f"convs, '{conv.name}'{_options(act=act, norm=norm)})"

    def _gated_norm(self, e: ast.BinOp) -> str | None:
        if e.op is not ast.BinOpKind.MUL:
            return None
        for norm, gate in ((e.left, e.right), (e.right, e.left)):
            if isinstance(norm, ast.Call) and norm.func in GATED_NORMS \
                    and isinstance(gate, ast.Call) and gate.func in FUSED_ACTS \
                    and None not in (_argument(norm), _argument(gate)) \
                    and not self.constant(_argument(norm)) \
                    and not self.constant(_argument(gate)):
                options = _options(norm=GATED_NORMS[norm.func] if norm.func != "rmsnorm" else None,
                                   act=gate.func if gate.func != "silu" else None)
                return f"nl.gated_norm({self.expr(_argument(norm))}, " \
                       f"{self.expr(_argument(gate))}{options})"
        return None


FUSED_ACTS = ("silu", "sigmoid")                      # ops.ACTIVATIONS
GATED_NORMS = {"rmsnorm": "rms", "layernorm": "layer"}  # ops.gated_norm's `norm`


def _options(**options) -> str:
    """`, name='value'` for each option given (a fused call's keyword arguments)."""
    return "".join(f", {k}='{v}'" for k, v in options.items() if v is not None)


def _argument(e: ast.Call):
    """A call's first argument (positional, or the keyword `x`), or None."""
    args = e.positional
    return args[0] if args else next((k.value for k in e.keywords if k.name == "x"), None)


def _is_call(e, func: str) -> bool:
    return isinstance(e, ast.Call) and e.func == func and _argument(e) is not None
