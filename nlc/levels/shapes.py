"""Shape inference for context, read, objective and output expressions (per head, per token).

Shapes are tuples of `Dim`; a scalar is ``()`` and broadcasts against anything. ``a @ W``
contracts a's last axis with W's first. Calling a state ``S(k)`` applies the memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nlc import functions
from nlc.errors import NlcError, Span, did_you_mean
from nlc.levels import vocab
from nlc.levels.records import Dim, MemoryForm, Shape, shape_text
from nlc.syntax import ast
from nlc.syntax.format import format_expr
from nlc.syntax.walk import names_used, nodes


@dataclass
class Env:
    """What names mean where an expression is checked."""

    values: dict[str, Shape] = field(default_factory=dict)       # name -> shape
    memories: dict[str, MemoryForm] = field(default_factory=dict)  # states that can be applied
    kinds: dict[str, str] = field(default_factory=dict)           # name -> what it is (messages)
    allow_memories: bool = False
    consts: dict[str, float] = field(default_factory=dict)        # dim and hyper -> its value

    def child(self, **changes) -> Env:
        env = Env(dict(self.values), dict(self.memories), dict(self.kinds), self.allow_memories,
                  self.consts)
        for key, value in changes.items():
            setattr(env, key, value)
        return env


def _mismatch(what: str, a: Shape, b: Shape, span: Span) -> NlcError:
    hint = None
    if a and b and len(a) == len(b) and [d.size for d in a] == [d.size for d in b]:
        hint = "the sizes agree here, but the dimensions are declared differently"
    return NlcError(f"shape mismatch in {what}: {shape_text(a)} vs {shape_text(b)}", span, hint=hint)


def broadcast(a: Shape, b: Shape, what: str, span: Span) -> Shape:
    if not a:
        return b
    if not b or a == b:
        return a
    raise _mismatch(what, a, b, span)


def constant_int(expr: ast.Expr) -> int | None:
    """A literal whole number, or None."""
    if isinstance(expr, ast.Num) and float(expr.value).is_integer():
        return int(expr.value)
    return None


def _number_only(expr: ast.Expr) -> bool:
    if isinstance(expr, ast.Num):
        return True
    if isinstance(expr, ast.Neg):
        return _number_only(expr.operand)
    return isinstance(expr, ast.BinOp) and _number_only(expr.left) and _number_only(expr.right)


def _check_numbers(expr: ast.BinOp, env: Env) -> None:
    """Refuse arithmetic on written numbers that has no finite value (`1 / 0`, `(-1) ^ 0.5`)
    and a division by a written zero or by dims and hypers whose values (after -D) make 0:
    generated code would compute inf or nan from them, or raise ZeroDivisionError."""
    from nlc.levels.terms import const_eval  # (terms imports this module)
    if _number_only(expr):
        const_eval(expr, {})
    elif expr.op is ast.BinOpKind.DIV and _number_only(expr.right) \
            and const_eval(expr.right, {}) == 0:
        raise NlcError("division by zero", expr.right.span)
    elif expr.op is ast.BinOpKind.DIV and _constant(expr.right, env) \
            and const_eval(expr.right, env.consts) == 0:
        divisor = format_expr(expr.right)
        names = sorted(names_used(expr.right))
        if isinstance(expr.right, ast.Name):
            what = f"{env.kinds[divisor]} '{divisor}' is 0"
        else:
            values = ", ".join(f"{n} = {env.consts[n]:g}" for n in names)
            what = f"'{divisor}' is 0 (with {values})"
        raise NlcError(f"division by zero in '{format_expr(expr)}': {what}", expr.span,
                       hint="give it a value other than 0 (in the spec or with -D)")


def _constant(expr: ast.Expr, env: Env) -> bool:
    """Made of numbers, dims and hypers only, at least one of them a name."""
    names = names_used(expr)
    return bool(names) and all(env.kinds.get(n) in ("dim", "hyper") and n in env.consts
                               for n in names) \
        and all(isinstance(n, (ast.Num, ast.Name, ast.Neg, ast.BinOp)) for n in nodes(expr)
                if hasattr(n, "__dataclass_fields__"))


def infer(expr: ast.Expr, env: Env) -> Shape:
    """The shape of `expr`; raises a located NlcError on unknown names and mismatches."""
    if isinstance(expr, ast.Num):
        return ()
    if isinstance(expr, ast.Name):
        if expr.id in env.values:
            return env.values[expr.id]
        if expr.id in env.memories:
            raise NlcError(f"memory '{expr.id}' must be applied to an input, e.g. {expr.id}(k)",
                           expr.span)
        if env.kinds.get(expr.id) == "state":  # another level's state
            raise NlcError(f"'{expr.id}' is another level's state, which only its own level "
                           "names", expr.span, hint="outside its level, write the level's "
                                                    "name: it holds the level's read")
        if expr.id == "t":  # an optimizer's step count
            raise NlcError("unknown name 't': the step count t exists in optimizers only",
                           expr.span, hint="a layer has no position index (docs/language.md, "
                                           "section 21); a forget gate, retention decay(f), "
                                           "weighs tokens by distance")
        raise NlcError(f"unknown name '{expr.id}'", expr.span,
                       hint=did_you_mean(expr.id, list(env.values) + list(env.memories)))
    if isinstance(expr, ast.Neg):
        return infer(expr.operand, env)
    if isinstance(expr, ast.BinOp):
        left, right = infer(expr.left, env), infer(expr.right, env)
        _check_numbers(expr, env)
        if expr.op is ast.BinOpKind.MATMUL:
            if not left or not right:
                raise NlcError("'@' needs a vector or matrix on both sides", expr.span,
                               hint="use '*' to scale by a scalar")
            if left[-1] != right[0]:
                raise _mismatch(f"'{format_expr(expr)}'", left, right, expr.span)
            return left[:-1] + right[1:]
        return broadcast(left, right, f"'{format_expr(expr)}'", expr.span)
    if isinstance(expr, ast.Call):
        if expr.func in env.memories:
            return _apply_memory(expr, env)
        return _function(expr, env)
    if isinstance(expr, ast.Index):
        from nlc.levels.vocab import FORMS
        if expr.base in FORMS:  # matrix[d_v, d_k] written where a value goes
            raise NlcError(f"'{expr.base}[...]' is a memory form; it can only follow "
                           "'state NAME :'", expr.span)
        raise NlcError(f"'{expr.base}[...]': values cannot be indexed, sliced or concatenated",
                       expr.span, hint="a value with parts is several values: write one "
                                       "context value or level per part (docs/language.md, "
                                       "section 21)")
    if isinstance(expr, (ast.Keyword, ast.Chain)):
        raise NlcError("a keyword argument or '->' chain can only appear inside a call", expr.span)
    raise AssertionError(type(expr).__name__)


def _apply_memory(expr: ast.Call, env: Env) -> Shape:
    form = env.memories[expr.func]
    if not env.allow_memories:
        raise NlcError(f"memory '{expr.func}' can only be applied inside its level", expr.span)
    if len(expr.args) != 1 or isinstance(expr.args[0], (ast.Keyword, ast.Chain)):
        raise NlcError(f"memory '{expr.func}' takes exactly one input", expr.span)
    got = infer(expr.args[0], env)
    want = form.input_shape
    if got != want:
        raise NlcError(f"memory '{expr.func}' ({form.kind}) takes {shape_text(want)}, "
                       f"got {shape_text(got)}", expr.args[0].span)
    return form.output_shape


# papers' names for functions the language spells otherwise
OTHER_NAMES = {"swish": "silu", "normalize": "l2norm", "rms_norm": "rmsnorm",
               "layer_norm": "layernorm", "sigmoid_linear": "silu", "maximum": "max",
               "minimum": "min", "clip": "clamp", "sum": "total"}


def _function(expr: ast.Call, env: Env) -> Shape:
    entry = vocab.FUNCTIONS.get(expr.func)
    if entry is None and env.kinds.get(expr.func) == "state":  # a memory outside its level
        raise NlcError(f"memory '{expr.func}' can only be applied inside its level", expr.span,
                       hint="outside it, the level's name is the value it reads")
    if entry is None:
        other = OTHER_NAMES.get(expr.func)  # a paper's name for one of the functions
        raise NlcError(f"unknown function '{expr.func}'", expr.span,
                       hint=f"did you mean '{other}'? (the same function)" if other else
                       did_you_mean(expr.func, list(vocab.FUNCTIONS) + list(env.memories)))
    positional, keywords = expr.positional, {k.name: k for k in expr.keywords}
    for name in keywords:
        if entry.arg(name) is None:
            raise entry.unknown_argument(name, keywords[name].span)
    if len(positional) > len(entry.args):
        raise NlcError(f"{expr.func}() takes at most {len(entry.args)} arguments, "
                       f"got {len(positional)}", expr.span)
    given = dict(zip([a.name for a in entry.args], positional)) | {
        k: kw.value for k, kw in keywords.items()}
    for arg in entry.args:
        if arg.name not in given and arg.default is vocab.REQUIRED:
            raise NlcError(f"{expr.func}() is missing its argument '{arg.name}'", expr.span)
        if arg.kind is vocab.ArgKind.INT and arg.name in given:
            value = constant_int(given[arg.name])
            if value is None or not arg.in_range(value):
                raise NlcError(f"{expr.func}(): '{arg.name}' must be a whole number "
                               f"{arg.range_text()}", given[arg.name].span)
    shapes = {a.name: infer(v, env) for a, v in ((entry.arg(n), v) for n, v in given.items())
              if a.kind is vocab.ArgKind.EXPR}
    if expr.func in ("dot",):
        a, b = shapes["a"], shapes["b"]
        if a != b:
            raise _mismatch("dot()", a, b, expr.span)
        return a[:-1]
    if expr.func in ("total",):
        return shapes["x"][:-1]
    if expr.func in ("sqnorm",):
        return ()
    x = shapes["x"]
    if expr.func in functions.of_kind(functions.Kind.VECTORWISE) and not x:
        raise NlcError(f"{expr.func}() needs a vector, got a scalar", expr.span)
    if expr.func == "conv" and len(x) > 1:
        raise NlcError("conv() needs a scalar or a vector per token (a channel each), got a "
                       "matrix", expr.span)
    if expr.func == "newton_schulz5" and len(x) != 2 and x != (Dim("param", -1),):
        raise NlcError("newton_schulz5() needs a matrix", expr.span)
    return x
