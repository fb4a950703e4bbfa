"""Functions a paper writes that the language spells with `relu`, rewritten before check
reads a declaration, entry by entry. Every later stage (shapes, derivation, the printers) sees
the relu form, exact everywhere (its derivative at a tie is relu's at 0); `nlc fmt` and
`--stop-after parse` keep the spelling as written.

Each form keeps one argument, the *anchor*, outside the relu, and is exact when the anchor
wins; otherwise its rounding error is about one unit of the larger argument's magnitude. So
the anchor is a value known without the tokens (a number, dim or hyper) where there is one:
max(a, c) = c + relu(a - c), min(a, c) = c - relu(c - a), and
clamp(x, lo, hi) = min(max(x, lo), hi) = hi - relu(hi - lo - relu(x - lo)), which returns
its bounds exactly however large x is (the form lo + relu(x - lo) - relu(x - hi) gave 0 for
clamp(3e7, -1, 1) in float32). Between two token values max(a, b) = b + relu(a - b) and
min(a, b) = a - relu(a - b)."""

from __future__ import annotations

from dataclasses import fields, replace

from nlc.errors import NlcError
from nlc.syntax import ast

ARITY = {"max": ("a", "b"), "min": ("a", "b"), "clamp": ("x", "lo", "hi")}


def _op(op: ast.BinOpKind, left, right, span) -> ast.BinOp:
    return ast.BinOp(op, left, right, span)


def _relu(x, span) -> ast.Call:
    return ast.Call("relu", (x,), span)


def _fixed(e, constants: frozenset) -> bool:
    """Whether `e` is known without the tokens: numbers, dims and hypers (and `t`, the step),
    combined by arithmetic and functions."""
    if isinstance(e, ast.Num):
        return True
    if isinstance(e, ast.Name):
        return e.id in constants
    if isinstance(e, ast.Neg):
        return _fixed(e.operand, constants)
    if isinstance(e, ast.BinOp):
        return _fixed(e.left, constants) and _fixed(e.right, constants)
    if isinstance(e, ast.Call):
        return all(_fixed(a, constants) for a in e.positional) and not e.keywords
    return False


def _spelled(call: ast.Call, constants: frozenset):
    """The relu form of one call of `ARITY`'s functions, anchored on a fixed argument."""
    args, span = call.positional, call.span
    if len(args) != len(ARITY[call.func]) or len(args) != len(call.args):
        raise NlcError(f"{call.func} takes {len(ARITY[call.func])} values, "
                       f"{call.func}({', '.join(ARITY[call.func])}), by position", span)
    add, sub = ast.BinOpKind.ADD, ast.BinOpKind.SUB
    if call.func == "clamp":
        x, lo, hi = args
        low = _op(add, lo, _relu(_op(sub, x, lo, span), span), span)   # max(x, lo)
        return _op(sub, hi, _relu(_op(sub, hi, low, span), span), span)  # min(., hi)
    a, b = args
    if _fixed(a, constants) and not _fixed(b, constants):
        a, b = b, a  # the fixed one as the anchor (both are symmetric)
    if call.func == "max":  # b + relu(a - b)
        return _op(add, b, _relu(_op(sub, a, b, span), span), span)
    if _fixed(b, constants):  # min: b - relu(b - a)
        return _op(sub, b, _relu(_op(sub, b, a, span), span), span)
    return _op(sub, a, _relu(_op(sub, a, b, span), span), span)


def constants_of(decl) -> frozenset:
    """The names a declaration's values know without the tokens: its dims and hypers, and
    an optimizer's step count `t`."""
    names = {"t"} if decl.kind is ast.DeclKind.OPTIMIZER else set()
    for stmt in decl.body:
        if isinstance(stmt, (ast.Dims, ast.Hyper)):
            names.update(d.name for d in stmt.defs)
    return frozenset(names)


def rewrite(node, constants: frozenset | None = None):
    """`node` with every call of max, min and clamp in its relu form (the same node where
    there is none); a declaration's own dims and hypers are the anchors' candidates."""
    if constants is None:
        constants = constants_of(node) if isinstance(node, ast.Decl) else frozenset()
    if isinstance(node, tuple):
        new = tuple(rewrite(n, constants) for n in node)
        return node if all(a is b for a, b in zip(new, node)) else new
    if not hasattr(node, "__dataclass_fields__"):
        return node
    changed = {}
    for f in fields(node):
        if f.name == "span":
            continue
        value = getattr(node, f.name)
        new = rewrite(value, constants)
        if new is not value:
            changed[f.name] = new
    if changed:
        node = replace(node, **changed)
    if isinstance(node, ast.Call) and node.func in ARITY:
        return _spelled(node, constants)
    return node
