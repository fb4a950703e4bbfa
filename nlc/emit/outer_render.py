"""Emit the chunk-start terms kernel of a dual-form level (Titans, TTT-MLP, TTT-Linear: the
frozen-gradient family, runtime/library/dual.py).

In the dual form every token of a chunk adds outer products `col @ row` whose factors depend
on the token's inputs and on the chunk-start states (the anchors) only: for an MLP memory,
the MLP's forward pass at the anchors, the error signal of the objective, and the backward
pass through the MLP (`FrozenSplit.outer`). In PyTorch that is a few dozen small operators
per chunk, and about twice as many in the backward pass. `outer_kernel(plan, ex, spec_dims)`
prints those factors with nlc/emit/tl_step_printer.py into templates/outer_kernel.py.jinja:
one program per (sequence, head, block of tokens) holds the anchors and computes every
token's factors; the backward kernel (nlc/emit/step_vjp.py's adjoint of the same lines) gives
the tokens' gradients and each program's sum of the anchors' gradients. Canonical names
(tokens x0.., anchors A0.., factors P0.., dims D0..) make the module's name a digest of the
printed program. A level the printer or the adjoint cannot take raises `StepPrintError` with
the reason; that level keeps its PyTorch terms. The host side is
nlc.runtime.library.outer_launch.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from nlc.emit.render import prose
from nlc.emit.step_render import (
    _shape,
    _Tensor,
    adjoint,
    canonical_dims,
    check_entries,
    dims_text,
    kernel_module,
    printed_lines,
    token_tensors,
    token_text,
)
from nlc.emit.tl_step_printer import StepPrintError, Value, kind_of, size_code

TEMPLATE = "outer_kernel.py.jinja"


@dataclass(frozen=True)
class OuterKernel:
    module: str
    source: str             # unformatted
    tokens: tuple[str, ...]     # the level's inputs the factors read, in the kernel's order
    anchors: tuple[str, ...]
    layout: tuple[tuple[str, int], ...]  # (drive, number of (column, row) pairs) in order


def outer_kernel(plan, ex, spec_dims: dict[str, int]) -> OuterKernel:
    """The kernel module of the dual-form level `plan` (`ex`: its FrozenSplit)."""
    pairs = [pair for _, terms in ex.outer for pair in terms]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise StepPrintError("its chunk-start terms are not all outer products")
    exprs = [e for pair in pairs for e in pair]
    free = set().union(*(e.free_symbols for e in exprs))
    anchor_shapes = {m.name: m.shape for e in exprs for m in e.atoms(sp.MatrixSymbol)}
    anchors = [a for a, _ in plan.anchors if a in anchor_shapes]
    tokens = [t for t in plan.tokens if any(s.name == t.name for s in free)]
    index, dims = canonical_dims([anchor_shapes[a] for a in anchors]
                                 + [t.size for t in tokens if t.size])
    known = set(anchors) | {t.name for t in tokens} | set(dims)
    unknown = sorted(s.name for s in free if s.name not in known)
    if unknown:
        raise StepPrintError(f"its chunk-start terms read {', '.join(unknown)}, which the "
                             "kernel does not take (only the level's inputs and anchors)")
    check_entries([anchor_shapes[a] for a in anchors], spec_dims, "anchors")
    names, held = {}, []
    for i, a in enumerate(anchors):
        rows, cols = (size_code(n, dims) for n in anchor_shapes[a])
        names[a] = Value(f"A{i}", kind_of(anchor_shapes[a]))
        if names[a].kind != "mat":
            raise StepPrintError(f"its anchor {a} is not a matrix")
        held.append(_Tensor(f"A{i}", "mat", f"{rows} * {cols}",
                            ", ".join(_shape(n, index) for n in anchor_shapes[a]), rows, cols))
    inputs = token_tensors(tokens, names, dims, index)
    factors, outputs = [], []
    for j, e in enumerate(exprs):
        kind = kind_of(e.shape) if isinstance(e, sp.MatrixExpr) else "scalar"
        if kind != ("col" if j % 2 == 0 else "row"):
            raise StepPrintError(f"a chunk-start term's {'column' if j % 2 == 0 else 'row'} "
                                 f"is a {kind}")
        size = e.shape[0] if kind == "col" else e.shape[1]
        factors.append(_Tensor(f"P{j}", kind, size_code(size, dims), _shape(size, index)))
        # a row is printed as the column it transposes (the same entries in a 1-D vector), so
        # that `gelu(k^T W^T)` meets the column's `gelu(W k)` as one subexpression
        outputs.append((f"P{j}", f"P{j}", e if kind == "col" else sp.transpose(e)))
    body = printed_lines(names, dims, outputs, "terms")
    backward, note = adjoint(body, held + inputs, {p.name: f"g_{p.name}" for p in factors})
    if backward is None:
        raise StepPrintError(note)
    context = {
        "tokens": inputs, "anchors": held, "factors": factors, "dims": list(dims.values()),
        "backward": backward,
        "anchor_text": prose(", ".join(f"{a.name} [{a.rows}, {a.cols}]" for a in held)),
        "token_text": token_text(inputs),
        "factor_text": prose(", ".join(f"{p.name} [B, T, H, {p.size}]" for p in factors)),
        "dims_text": dims_text(dims, "each axis"),
    }
    module, source = kernel_module("nlc_outer", TEMPLATE, context)
    layout = tuple((name, len(terms)) for name, terms in ex.outer)
    return OuterKernel(module, source, tuple(t.name for t in tokens), tuple(anchors), layout)
