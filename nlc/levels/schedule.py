"""The per-token schedule: in which order a layer's levels read and write.

A level's name holds its read output, so levels may use each other's outputs. Each level
is two steps, its *read* (the `read` clause) and its *write* (the update that its objective,
retention and algorithm define). A step must run after the reads whose outputs it uses, and
a level's read runs after its write unless it says ``read before``. Two levels may thus use
each other's outputs, or a level its own (Hope's self-generated keys and values), as long
as the outputs that close the loop are read before the write; any other loop is an error.
"""

from __future__ import annotations

import networkx as nx

from nlc.errors import NlcError
from nlc.levels.graph import find_a_cycle
from nlc.syntax import ast

READ, WRITE = "read", "write"
Step = tuple[str, str]  # (READ | WRITE, level name)


def read_clause(level: ast.Level) -> ast.Clause | None:
    return next((c for c in level.body
                 if isinstance(c, ast.Clause) and c.kind is ast.ClauseKind.READ), None)


def reads_before(level: ast.Level) -> bool:
    clause = read_clause(level)
    return clause is not None and clause.when in ("before", "start")


def nodes_in(node):
    """Every AST node under `node` (itself included), in source order (iterative: trees are
    depth-limited)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, (tuple, list)):
            stack.extend(reversed(n))
        elif hasattr(n, "__dataclass_fields__"):
            yield n
            stack.extend(reversed([getattr(n, f) for f in n.__dataclass_fields__
                                   if f != "span"]))


def names_in(node) -> list[ast.Name]:
    """Every `Name` under `node`, in source order."""
    return [n for n in nodes_in(node) if isinstance(n, ast.Name)]


def level_uses(level: ast.Level, levels: set[str]) -> tuple[list[ast.Name], list[ast.Name]]:
    """The uses of other levels' names (and its own) in `level`'s read, and elsewhere."""
    read = read_clause(level)
    in_read = [n for n in names_in(read) if n.id in levels] if read else []
    rest = tuple(item for item in level.body if item is not read)
    in_rules = [n for n in names_in((level.every, level.chunk, rest)) if n.id in levels]
    # an optimizer level's own name in its `apply` is its read after this step's write,
    # which the apply (after the write) can take: no loop
    own_applied = {id(n) for c in rest if isinstance(c, ast.Clause)
                   and c.kind is ast.ClauseKind.APPLY for n in names_in(c)
                   if n.id == level.name}
    return in_read, [n for n in in_rules if id(n) not in own_applied]


def schedule(levels: list[ast.Level], valued: set[str]) -> tuple[Step, ...]:
    """A valid order of every level's read and write within one token (source order where
    free); raises a located NlcError for a use of a level outside `valued` (those whose name
    holds a value), or for a loop."""
    names = {lv.name for lv in levels}
    position = {lv.name: i for i, lv in enumerate(levels)}
    by_name = {lv.name: lv for lv in levels}
    g = nx.DiGraph()
    for lv in levels:
        g.add_node((READ, lv.name))
        g.add_node((WRITE, lv.name))
        if reads_before(lv):
            g.add_edge((READ, lv.name), (WRITE, lv.name))
        else:
            g.add_edge((WRITE, lv.name), (READ, lv.name))
        in_read, in_rules = level_uses(lv, names)
        for use, step in [(n, READ) for n in in_read] + [(n, WRITE) for n in in_rules]:
            if use.id not in valued:
                raise NlcError(f"level '{use.id}' has no 'read', so its name holds no value",
                               use.span, hint=f"add a read clause to level '{use.id}'")
            if use.id == lv.name and step == READ:
                raise NlcError(f"level '{lv.name}' reads its own output", use.span)
            g.add_edge((READ, use.id), (step, lv.name), span=use.span)
    cycle = find_a_cycle(g)
    if cycle is None:
        return tuple(nx.lexicographical_topological_sort(
            g, key=lambda s: (position[s[1]], s[0] == READ)))
    raise _loop_error(cycle, g, by_name)


def _loop_error(cycle, g: nx.DiGraph, by_name: dict[str, ast.Level]) -> NlcError:
    """Name the levels of the loop; if a read-after-write closes it, suggest 'read before'."""
    involved = sorted({step[1] for edge in cycle for step in edge})
    quoted = " and ".join(f"'{n}'" for n in involved) if len(involved) == 2 else \
        ", ".join(f"'{n}'" for n in involved)
    after = sorted({u[1] for u, v in cycle if u[0] == WRITE})  # reads after writes close it
    if not after:  # reads alone: no ordering of reads and writes can help
        return NlcError(f"levels {quoted} read each other's output (a cycle)",
                        by_name[involved[0]].span)
    span = next((g.edges[u, v]["span"] for u, v in cycle if "span" in g.edges[u, v]),
                by_name[involved[0]].span)
    hint = f"a loop can close only through outputs read before the write: 'read before' in " \
           f"level '{after[0]}'"
    if len(involved) == 1:
        return NlcError(f"level '{involved[0]}' uses its own output in its update, but reads "
                        "after its write", span, hint=hint)
    return NlcError(f"levels {quoted} use each other's outputs in a loop within one token",
                    span, hint=hint)
