"""Functions a paper writes that the language spells with `relu`, rewritten before check
reads a declaration: max(a, b) = b + relu(a - b), min(a, b) = a - relu(a - b) and
clamp(x, lo, hi) = lo + relu(x - lo) - relu(x - hi), entry by entry. Every later stage (shapes,
derivation, the printers) sees the relu form, exact everywhere (its derivative at a tie is
relu's at 0); `nlc fmt` and `--stop-after parse` keep the spelling as written."""

from __future__ import annotations

from dataclasses import fields, replace

from nlc.errors import NlcError
from nlc.syntax import ast

ARITY = {"max": ("a", "b"), "min": ("a", "b"), "clamp": ("x", "lo", "hi")}


def _op(op: ast.BinOpKind, left, right, span) -> ast.BinOp:
    return ast.BinOp(op, left, right, span)


def _relu(x, span) -> ast.Call:
    return ast.Call("relu", (x,), span)


def _spelled(call: ast.Call):
    """The relu form of one call of `ARITY`'s functions."""
    args, span = call.positional, call.span
    if len(args) != len(ARITY[call.func]) or len(args) != len(call.args):
        raise NlcError(f"{call.func} takes {len(ARITY[call.func])} values, "
                       f"{call.func}({', '.join(ARITY[call.func])}), by position", span)
    add, sub = ast.BinOpKind.ADD, ast.BinOpKind.SUB
    if call.func == "max":
        a, b = args
        return _op(add, b, _relu(_op(sub, a, b, span), span), span)
    if call.func == "min":
        a, b = args
        return _op(sub, a, _relu(_op(sub, a, b, span), span), span)
    x, lo, hi = args
    return _op(sub, _op(add, lo, _relu(_op(sub, x, lo, span), span), span),
               _relu(_op(sub, x, hi, span), span), span)


def rewrite(node):
    """`node` with every call of max, min and clamp in its relu form (the same node where
    there is none)."""
    if isinstance(node, tuple):
        new = tuple(rewrite(n) for n in node)
        return node if all(a is b for a, b in zip(new, node)) else new
    if not hasattr(node, "__dataclass_fields__"):
        return node
    changed = {}
    for f in fields(node):
        if f.name == "span":
            continue
        value = getattr(node, f.name)
        new = rewrite(value)
        if new is not value:
            changed[f.name] = new
    if changed:
        node = replace(node, **changed)
    if isinstance(node, ast.Call) and node.func in ARITY:
        return _spelled(node)
    return node
