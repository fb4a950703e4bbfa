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
from nlc.emit.step_render import MAX_STATE_ENTRIES, _shape, _Tensor, kernel_module
from nlc.emit.step_vjp import StepVjpError, vjp
from nlc.emit.tl_step_printer import StepPrintError, TritonStepPrinter, Value, kind_of, size_code

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
    parts = [(f"{name}_{i}", pair) for name, terms in ex.outer for i, pair in enumerate(terms)]
    if not parts or any(len(pair) != 2 for _, pair in parts):
        raise StepPrintError("its chunk-start terms are not all outer products")
    exprs = [e for _, pair in parts for e in pair]
    free = set().union(*(e.free_symbols for e in exprs))
    anchor_shapes = {m.name: m.shape for e in exprs for m in e.atoms(sp.MatrixSymbol)}
    anchors = [a for a, _ in plan.anchors if a in anchor_shapes]
    tokens = [t for t in plan.tokens if any(s.name == t.name for s in free)]
    shapes = [anchor_shapes[a] for a in anchors] + [t.size for t in tokens if t.size]
    dim_names = sorted({s.name for shape in shapes for x in sp.flatten([shape])
                        for s in sp.sympify(x).free_symbols})
    known = set(anchors) | {t.name for t in tokens} | set(dim_names)
    unknown = sorted(s.name for s in free if s.name not in known)
    if unknown:
        raise StepPrintError(f"its chunk-start terms read {', '.join(unknown)}, which the "
                             "kernel does not take (only the level's inputs and anchors)")
    index = {name: i for i, name in enumerate(dim_names)}
    dims = {name: f"D{i}" for name, i in index.items()}
    entries = sp.sympify(sum(r * c for a in anchors for r, c in [anchor_shapes[a]]))
    entries = entries.xreplace({s: spec_dims[s.name] for s in entries.free_symbols
                                if s.name in spec_dims})
    if entries.is_number and entries > MAX_STATE_ENTRIES:
        raise StepPrintError(f"its anchors hold {entries} entries at the spec's dims, more "
                             f"than the {MAX_STATE_ENTRIES} fp32 entries a program may hold")
    names, held, inputs = {}, [], []
    for i, a in enumerate(anchors):
        rows, cols = (size_code(n, dims) for n in anchor_shapes[a])
        names[a] = Value(f"A{i}", kind_of(anchor_shapes[a]))
        if names[a].kind != "mat":
            raise StepPrintError(f"its anchor {a} is not a matrix")
        held.append(_Tensor(f"A{i}", "mat", f"{rows} * {cols}",
                            ", ".join(_shape(n, index) for n in anchor_shapes[a]), rows, cols))
    for i, t in enumerate(tokens):
        vector = t.kind == "vector"
        names[t.name] = Value(f"x{i}", "col" if vector else "scalar")
        inputs.append(_Tensor(f"x{i}", names[t.name].kind,
                              size_code(t.size, dims) if vector else "",
                              _shape(t.size, index) if vector else "None"))
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
    try:
        body = TritonStepPrinter(names, dims).assign(outputs)
    except (AttributeError, TypeError, KeyError, IndexError) as err:
        raise StepPrintError(f"the step printer failed on the terms ({type(err).__name__}: "
                             f"{err})") from None
    shapes = {a.name: (a.rows, a.cols) for a in held}
    shapes |= {x.name: (x.size,) if x.size else () for x in inputs}
    try:
        backward = vjp(body, shapes, {p.name: f"g_{p.name}" for p in factors})
    except StepVjpError:  # names the operation with no adjoint rule
        raise
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as err:
        raise StepPrintError(f"the adjoint printer failed ({type(err).__name__}: "
                             f"{err})") from None
    context = {
        "tokens": inputs, "anchors": held, "factors": factors, "dims": list(dims.values()),
        "body": body, "backward": backward,
        "anchor_text": prose(", ".join(f"{a.name} [{a.rows}, {a.cols}]" for a in held)),
        "token_text": prose(", ".join(f"{x.name} [B, T, H{', ' + x.size if x.size else ''}]"
                                      for x in inputs)),
        "factor_text": prose(", ".join(f"{p.name} [B, T, H, {p.size}]" for p in factors)),
        "dims_text": prose(f"{', '.join(dims.values())}, the level's dims, from the shapes "
                           "(each axis a power of two)"),
    }
    module, source = kernel_module("nlc_outer", TEMPLATE, context)
    layout = tuple((name, len(terms)) for name, terms in ex.outer)
    return OuterKernel(module, source, tuple(t.name for t in tokens), tuple(anchors), layout)
