"""A coupled group's reads as one batched application of its members' memories.

A group member reads `f(M(x))`: its memory M applied to an input x, then a tail f (Hope's
k and v: an l2norm; eta and alpha: `sigmoid(total / d_head + b)`). Members whose memories
have one form print the same application under canonical names (`K_W1_0` -> `W1_0`,
LevelPrinter.canonical); they share it as one function of `inputs` and the memory's
chunk-start tensors, and the runtime applies all their memories at once, stacked along the
batch axis (runtime/library/member_batch.py). Each member keeps its own tail; tails that
print the same are one function too, run once on their members' rows.

The application is found where the memory's form (nlc/derive/forms.py) applied to a
subexpression of the read gives a subexpression of the read; a read that applies its memory
more than once, or uses the memory's tensors outside the application, keeps its own
function."""

from __future__ import annotations

import sympy as sp

from nlc.derive.forms import FORM_RULES
from nlc.derive.matfuncs import free_names
from nlc.derive.symbols import internal
from nlc.emit.render import prose
from nlc.emit.torch_printer import TorchPrinter

APPLIED = internal("applied")  # a tail's stand-in for the memory's output
TAIL_ARG = "applied"           # ... and its parameter in the printed tail


def application(printer) -> tuple | None:
    """(the memory's application in the level's read, the read with it as APPLIED), or None."""
    plan, rule = printer.plan, printer.rule
    if not plan.group or rule.form.kind not in FORM_RULES:
        return None
    read = rule.read
    symbols = {m.name: m for m in read.atoms(sp.MatrixSymbol)}
    tensors = tuple(symbols.get(a) for a, _ in plan.anchors)
    if not tensors or None in tensors:
        return None
    nodes = set(sp.preorder_traversal(read))
    found = set()
    for x in sorted(nodes, key=sp.default_sort_key):
        if not isinstance(x, sp.MatrixExpr) or x.shape[1] != 1:
            continue
        try:
            applied = FORM_RULES[rule.form.kind].apply(rule.form, tensors, x)
        except ValueError:  # shapes that do not fit the memory's input
            continue
        if not isinstance(applied, sp.MatrixExpr):  # a vector memory's <G, x>: a scalar,
            continue                                 # which no batched application shares
        if applied in nodes and applied.free_symbols - set(tensors):  # it reads an input
            found.add(applied)
    if len(found) != 1:
        return None
    applied, = found
    tail = read.xreplace({applied: sp.MatrixSymbol(APPLIED, *applied.shape)})
    own = set(printer.state_names) | set(printer.anchor_names)
    if any(m.name in own for m in tail.atoms(sp.MatrixSymbol)):
        return None
    return applied, tail


def read_parts(printer) -> tuple | None:
    """The level's read as (the application's parameters under canonical names, its body,
    the level's own tensors for them, the tail's body), or None."""
    canon = printer.canonical()
    found = application(printer)
    if canon is None or found is None:
        return None
    applied, tail = found
    names = printer.names() | canon
    used = free_names([applied])
    mine = [a for a in printer.anchor_names if a in used]
    body = printer._inputs(used, anchors=False) + TorchPrinter(names, chunk=True).assign(
        [("o", applied)])
    used = free_names([tail])
    tail_body = printer._inputs(used, anchors=False) + TorchPrinter(
        printer.names({APPLIED: TAIL_ARG}), chunk=True).assign([("o", tail)])
    return ([canon[a] for a in mine], [*body, "return o"], mine, [*tail_body, "return o"])


def shared_reads(layer, levels: list, taken: set) -> list:
    """The shared applications and tails of the groups' members (PrintedShared, named apart
    from the names in `taken`); each member's `read_token` becomes a call of them, its
    `read_tail` its own tail where no other member shares it, and its `reads` the runtime's
    `Member.reads`."""
    from nlc.emit.layer import PrintedShared as shared  # layer.py imports this module
    found: dict = {}
    for pl in levels:
        parts = read_parts(layer.printers[pl.name])
        if parts is not None:
            params, body, mine, tail = parts
            found.setdefault((tuple(params), tuple(body)), []).append((pl, mine, tail))
    out = []

    def unique(name: str) -> str:
        name = next(f"{name}_{i}" if i else name for i in range(len(taken) + 1)
                    if (f"{name}_{i}" if i else name) not in taken)
        taken.add(name)
        return name

    for (params, body), users in found.items():
        if len(users) < 2:
            continue
        base = layer.shared_base(layer.plan.level(users[0][0].name))
        apply = unique(f"{base}_read")
        names = ", ".join(pl.name for pl, _, _ in users)
        out.append(shared(apply, ", ".join(["inputs", *params]), list(body), prose(
            f"The memories of levels {names} applied to their input: the same but for the "
            "names of their states (the members' reads run it once, stacked).")))
        tails: dict = {}
        for pl, mine, tail in users:
            tails.setdefault(tuple(tail), []).append((pl, mine))
        for tail, readers in tails.items():
            if len(readers) > 1:
                tail_fn = unique(f"{base}_read_tail")
                out.append(shared(tail_fn, f"inputs, {TAIL_ARG}", list(tail), prose(
                    f"The reads of levels {', '.join(pl.name for pl, _ in readers)} given "
                    "their memories' outputs.")))
            for pl, mine in readers:
                if len(readers) == 1:
                    tail_fn, pl.read_tail = f"{pl.fn}_read_tail", list(tail)
                args = ", ".join(f"inputs[{a!r}]" for a in mine)
                pl.read_token = [f"return {tail_fn}(inputs, {apply}(inputs, {args}))"]
                pl.reads = f"({apply}, {tuple(mine)!r}, {tail_fn})"
    return out
