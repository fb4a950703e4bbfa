"""Validate a vocabulary call (an objective, retention, algorithm, memory form or
initializer) against its `vocab.Entry` and turn it into a `Term`."""

from __future__ import annotations

import math

from nlc.errors import NlcError, did_you_mean
from nlc.levels import vocab
from nlc.levels.records import Term
from nlc.levels.shapes import Env, infer
from nlc.syntax import ast
from nlc.syntax.format import format_expr

_CONST_FUNCS = {"sqrt": math.sqrt, "exp": math.exp, "log": math.log}


def const_eval(expr: ast.Expr, consts: dict[str, float]) -> float:
    """Evaluate a constant expression of numbers, dims and hypers (never `eval`)."""
    if isinstance(expr, ast.Num):
        return float(expr.value)
    if isinstance(expr, ast.Name):
        if expr.id in consts:
            return consts[expr.id]
        hint = ("a parameter's sizes are no dims: an optimizer's state is `like(param)`, "
                "and factored statistics (Adafactor's row and column moments) cannot be "
                "written (docs/language.md, section 21)"
                if expr.id in ("param_out", "param_in") else did_you_mean(expr.id, consts))
        raise NlcError(f"'{expr.id}' is not a constant (a number, dim or hyper)", expr.span,
                       hint=hint)
    if isinstance(expr, ast.Neg):
        return -const_eval(expr.operand, consts)
    if isinstance(expr, ast.BinOp) and expr.op is not ast.BinOpKind.MATMUL:
        a, b = const_eval(expr.left, consts), const_eval(expr.right, consts)
        try:
            value = {ast.BinOpKind.ADD: lambda: a + b, ast.BinOpKind.SUB: lambda: a - b,
                     ast.BinOpKind.MUL: lambda: a * b, ast.BinOpKind.DIV: lambda: a / b,
                     ast.BinOpKind.POW: lambda: a ** b}[expr.op]()
        except (ZeroDivisionError, OverflowError, ValueError):
            value = math.inf
        if isinstance(value, complex) or not math.isfinite(value):
            raise NlcError(f"{format_expr(expr)} is not a finite real number", expr.span)
        return float(value)
    if isinstance(expr, ast.Call) and expr.func in _CONST_FUNCS and len(expr.args) == 1:
        x = const_eval(expr.args[0], consts)
        try:
            return _CONST_FUNCS[expr.func](x)
        except (ValueError, OverflowError):
            raise NlcError(f"{expr.func}({x:g}) is not a finite real number", expr.span) from None
    raise NlcError("expected a constant (numbers, dims and hypers with + - * / ^)", expr.span)


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


def make_term(call: ast.Expr, table: dict[str, vocab.Entry], kind: str, env: Env,
              consts: dict[str, float]) -> Term:
    """Check `call` against `table` (the vocabulary of `kind`, e.g. "objective")."""
    if isinstance(call, ast.Name):  # `zeros`, `none`, `exact`: a call with no arguments
        call = ast.Call(call.id, (), call.span)
    if isinstance(call, ast.Index):
        call = ast.Call(call.base, call.items, call.span)
    if not isinstance(call, ast.Call):
        raise NlcError(f"expected {_article(kind)} {kind} such as {next(iter(table))}(...)",
                       call.span, hint=f"known: {', '.join(table)}")
    entry = table.get(call.func)
    if entry is None:
        raise NlcError(f"unknown {kind} '{call.func}'", call.span,
                       hint=did_you_mean(call.func, table) or f"known: {', '.join(table)}")
    given: dict[str, ast.Expr] = {}
    slots = [a for a in entry.args]
    position = 0
    for item in call.args:
        if isinstance(item, ast.Keyword):
            arg = entry.arg(item.name)
            if arg is None:
                raise entry.unknown_argument(item.name, item.span)
            if item.name in given:
                raise NlcError(f"argument '{item.name}' given twice", item.span)
            given[item.name] = item.value
            continue
        flag = next((a for a in entry.args if a.kind is vocab.ArgKind.FLAG
                     and isinstance(item, ast.Name) and item.id == a.name), None)
        if flag is not None:
            given[flag.name] = ast.Num(1, True, item.span)
            continue
        while position < len(slots) and (slots[position].kind is vocab.ArgKind.FLAG
                                         or slots[position].name in given):
            position += 1
        if position >= len(slots):
            raise NlcError(f"{call.func}() takes {len(entry.args)} argument(s); this one is extra",
                           item.span)
        given[slots[position].name] = item
        position += 1
    values: list[tuple[str, object]] = []
    for arg in entry.args:
        if arg.name not in given:
            if arg.default is vocab.REQUIRED:
                raise NlcError(f"{call.func}() is missing its argument '{arg.name}'", call.span,
                               hint=entry.doc)
            values.append((arg.name, arg.default))
            continue
        values.append((arg.name, _value(call, arg, given[arg.name], env, consts)))
    return Term(call.func, tuple(values), call.span)


def _value(call: ast.Call, arg: vocab.Arg, expr: ast.Expr, env: Env, consts) -> object:
    where = f"{call.func}(): '{arg.name}'"
    if arg.kind is vocab.ArgKind.EXPR:
        if isinstance(expr, (ast.Keyword,)):
            raise NlcError(f"{where} cannot be a keyword here", expr.span)
        if isinstance(expr, ast.Chain):
            return expr  # mlp widths; the memory-form checker reads it
        infer(expr, env)
        try:  # a constant rate or gate is range-checked now; a context one at run time
            value = const_eval(expr, consts)
        except NlcError:
            return expr
        if not arg.in_range(value):
            raise NlcError(f"{where} must be {arg.range_text()}, got {value:g}"
                           f"{_named(expr, value)}", expr.span)
        return expr
    if arg.kind is vocab.ArgKind.TERM:
        from nlc.levels.vocab import OBJECTIVES
        return make_term(expr, {k: v for k, v in OBJECTIVES.items() if k != "omega"},
                         "objective", env, consts)
    if arg.kind is vocab.ArgKind.CHOICE:
        if not isinstance(expr, ast.Name) or expr.id not in arg.choices:
            shown = expr.id if isinstance(expr, ast.Name) else "this"
            raise NlcError(f"{where} cannot be '{shown}'", expr.span,
                           hint=f"choose one of: {', '.join(arg.choices)}")
        return expr.id
    value = const_eval(expr, consts)
    if arg.kind is vocab.ArgKind.FLAG:
        return bool(value)
    if arg.kind is vocab.ArgKind.INT:
        if not value.is_integer():
            raise NlcError(f"{where} must be a whole number, got {value:g}", expr.span)
        value = int(value)
    if not arg.in_range(value):
        raise NlcError(f"{where} must be {arg.range_text()}, got {value:g}{_named(expr, value)}",
                       expr.span)
    return value


def _named(expr: ast.Expr, value: float) -> str:
    """' (b1 = 1.5)' where the argument is a name (a hyper, perhaps set by -D), else ''."""
    return f" ({expr.id} = {value:g})" if isinstance(expr, ast.Name) else ""
