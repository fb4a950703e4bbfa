"""Iterating over an AST: every node under a root, and the names an expression uses."""

from __future__ import annotations

from nlc.syntax import ast


def nodes(root) -> list:
    """Every record under `root` (iteratively: trees are depth-limited, but stay safe)."""
    out, stack = [], [root]
    while stack:
        n = stack.pop()
        if isinstance(n, (tuple, list)):
            stack.extend(n)
            continue
        out.append(n)
        if hasattr(n, "__dataclass_fields__"):
            stack.extend(getattr(n, f) for f in n.__dataclass_fields__ if f != "span")
    return out


def names_used(root) -> set[str]:
    """Names read by an expression or statement, including called memories."""
    found = nodes(root)
    return {n.id for n in found if isinstance(n, ast.Name)} | {
        n.func for n in found if isinstance(n, ast.Call)}
