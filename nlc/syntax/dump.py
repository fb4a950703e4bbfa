"""The AST's text form (`--stop-after parse --dump`, golden tests): one node per line,
indented, with its line:column."""

from __future__ import annotations

from dataclasses import fields
from enum import Enum

from nlc.syntax import ast


def _scalar(value) -> str:
    if isinstance(value, Enum):
        return value.value
    return repr(value)


def dump_ast(node, indent: int = 0) -> str:
    lines: list[str] = []
    stack = [(node, indent, "")]
    while stack:
        n, depth, label = stack.pop()
        pad = "  " * depth + (f"{label}: " if label else "")
        if isinstance(n, tuple):
            lines.append(f"{pad}[{len(n)}]")
            stack.extend((c, depth + 1, "") for c in reversed(n))
            continue
        if not hasattr(n, "__dataclass_fields__"):
            lines.append(f"{pad}{_scalar(n)}")
            continue
        attrs, children = [], []
        for f in fields(n):
            if f.name == "span":
                continue
            value = getattr(n, f.name)
            if value is None or isinstance(value, (str, int, float, bool, Enum)):
                attrs.append(f"{f.name}={_scalar(value)}")
            else:
                children.append((f.name, value))
        where = f" @{n.span.line}:{n.span.column}" if n.span.known else ""
        lines.append(f"{pad}{type(n).__name__} {' '.join(attrs)}{where}".rstrip())
        stack.extend((c, depth + 1, name) for name, c in reversed(children))
    return "\n".join(lines) + "\n"


__all__ = ["ast", "dump_ast"]
