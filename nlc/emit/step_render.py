"""Emit the fused recurrent Triton kernel of a level that runs token by token (Moneta, Yaad,
Memora: per-token MLP memories, whose gradient is taken at each token's own state).

`step_kernel(plan, spec_dims)` prints the level's step (the same derived expressions its
PyTorch `step` is printed from) with `nlc.emit.tl_step_printer` into
`templates/step_kernel.py.jinja`, under canonical names (tokens x0.., states S0.., dims D0..),
and names the module after a digest of the printed program: `nlc_step_<8 hex digits>`.
Nothing of the spec reaches the module but the printed math. A level the kernel cannot take
raises `StepPrintError` with the reason, which the layer's docstring shows; such a level keeps
its PyTorch token loop. The host side is nlc.runtime.library.step_launch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import sympy as sp

from nlc import __version__
from nlc.emit.render import prose, render, ruff_format
from nlc.emit.step_vjp import StepVjpError, vjp
from nlc.emit.tl_step_printer import StepPrintError, TritonStepPrinter, Value, kind_of, size_code

TEMPLATE = "step_kernel.py.jinja"
# fp32 state entries one program may hold: W1 [4d, d] and W2 [d, 4d] at d = 64 are 32768
MAX_STATE_ENTRIES = 65536
EVERY = 16  # tokens per checkpointed segment (the backward recomputes one segment at a time)


@dataclass(frozen=True)
class StepKernel:
    module: str
    source: str             # unformatted
    backward_note: str = ""  # why the module has no printed backward ("" when it has one)


@dataclass(frozen=True)
class _Tensor:
    name: str
    kind: str
    size: str               # constexpr arithmetic ("" for a scalar token)
    shape: str              # its CONFIG entry
    rows: str = ""
    cols: str = ""


def _shape(size, dims: dict[str, int]) -> str:
    """A size as CONFIG's (coefficient, dim index or None)."""
    coeff, rest = sp.sympify(size).as_coeff_Mul()
    return f"({int(coeff)}, {dims[rest.name] if rest != 1 else None})"


def step_kernel(plan, spec_dims: dict[str, int]) -> StepKernel:
    """The kernel module of `plan` (a level's plan); StepPrintError says why there is none."""
    rule = plan.rule
    if plan.group:
        raise StepPrintError("it runs in a group of levels that read each other")
    if plan.anchors:
        raise StepPrintError("it keeps chunk-start copies of its state")
    if plan.params or plan.sizes:
        raise StepPrintError("its rule reads parameters or dims, which the kernel does not take")
    index, dims = canonical_dims([S.shape for _, S in rule.states]
                                 + [t.size for t in plan.tokens if t.size])
    check_entries([S.shape for _, S in rule.states], spec_dims, "states")
    names, states = {}, []
    for i, (name, S) in enumerate(rule.states):
        kind, rows, cols = kind_of(S.shape), *(size_code(n, dims) for n in S.shape)
        names[name] = Value(f"S{i}", kind)
        states.append(_Tensor(f"S{i}", kind, f"{rows} * {cols}" if kind == "mat" else
                              rows if cols == "1" else cols,
                              f"{_shape(S.shape[0], index)}, {_shape(S.shape[1], index)}",
                              rows, cols))
    tokens = token_tensors(plan.tokens, names, dims, index)
    read = rule.read
    read_kind = kind_of(read.shape) if isinstance(read, sp.MatrixExpr) else "scalar"
    if read_kind not in ("col", "scalar"):
        raise StepPrintError(f"its read is a {read_kind}, not a column or a scalar")
    outputs = [(f"{n}_next", f"S{i}_next", e) for i, (n, e) in enumerate(rule.next_state)]
    body = printed_lines(names, dims, outputs + [("o", "o", read)], "rule")
    seeds = {f"{s.name}_next": f"g_{s.name}" for s in states} | {"o": "g_o"}
    backward, note = adjoint(body, states + tokens, seeds)
    context = {
        "backward": backward,
        "tokens": tokens, "states": states, "dims": list(dims.values()), "body": body,
        "read_size": size_code(read.shape[0], dims) if read_kind == "col" else "",
        "read_shape": _shape(read.shape[0], index) if read_kind == "col" else "None",
        "state_text": prose(", ".join(f"{s.name} [{s.rows}, {s.cols}]" for s in states)),
        "token_text": token_text(tokens),
        "backward_text": prose(note),
        "dims_text": dims_text(dims, "each state axis"),
    }
    module, source = kernel_module("nlc_step", TEMPLATE, context)
    return StepKernel(module, source, note)


def kernel_module(prefix: str, template: str, context: dict) -> tuple[str, str]:
    """A printed kernel module's name (`prefix` and a digest of what it prints, the
    `*_text` prose left out) and its source rendered from `template`."""
    digest = hashlib.sha256(repr(sorted((k, repr(v)) for k, v in context.items()
                                        if not k.endswith("_text"))).encode()).hexdigest()[:8]
    module = f"{prefix}_{digest}"
    text = render(template, version=prose(__version__), summary=prose(module), **context)
    return module, "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def canonical_dims(shapes: list) -> tuple[dict[str, int], dict[str, str]]:
    """The dims the sizes in `shapes` use, sorted by name: each one's index, and its
    canonical name D0, D1, ... (what a printed kernel takes as constexprs)."""
    names = sorted({s.name for shape in shapes for x in sp.flatten([shape])
                    for s in sp.sympify(x).free_symbols})
    return {n: i for i, n in enumerate(names)}, {n: f"D{i}" for i, n in enumerate(names)}


def check_entries(shapes: list, spec_dims: dict[str, int], what: str) -> None:
    """StepPrintError when matrices of `shapes` hold more fp32 entries at the spec's dims
    than one program may (the launcher checks again at run time)."""
    entries = sp.sympify(sum(r * c for r, c in shapes))
    entries = sp.sympify(entries.xreplace({s: spec_dims[s.name] for s in entries.free_symbols
                                           if s.name in spec_dims}))
    if entries.is_number and entries > MAX_STATE_ENTRIES:
        raise StepPrintError(f"its {what} hold {entries} entries at the spec's dims, more than "
                             f"the {MAX_STATE_ENTRIES} fp32 entries a kernel program may hold")


def token_tensors(tokens, names: dict, dims: dict, index: dict) -> list[_Tensor]:
    """The level's inputs `tokens` as kernel tensors x0, x1, ...; each one's printer value
    goes into `names`."""
    out = []
    for i, t in enumerate(tokens):
        vector = t.kind == "vector"
        names[t.name] = Value(f"x{i}", "col" if vector else "scalar")
        out.append(_Tensor(f"x{i}", names[t.name].kind,
                           size_code(t.size, dims) if vector else "",
                           _shape(t.size, index) if vector else "None"))
    return out


def printed_lines(names: dict, dims: dict, outputs: list, what: str) -> list[str]:
    """TritonStepPrinter's lines for `outputs`; StepPrintError (naming `what`) on a node of
    a form it does not expect."""
    try:
        return TritonStepPrinter(names, dims).assign(outputs)
    except (AttributeError, TypeError, KeyError, IndexError) as err:
        raise StepPrintError(f"the step printer failed on the {what} ({type(err).__name__}: "
                             f"{err})") from None


def adjoint(body: list[str], tensors: list[_Tensor], seeds: dict[str, str]):
    """The printed lines `body` in flat form and their adjoint (nlc/emit/step_vjp.py), for
    inputs `tensors` and the outputs' adjoints `seeds`; or None and the reason there is
    none."""
    shapes = {t.name: (t.rows, t.cols) if t.kind == "mat" else (t.size,) if t.size else ()
              for t in tensors}
    try:
        return vjp(body, shapes, seeds), ""
    except StepVjpError as err:
        return None, str(err)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as err:
        return None, f"the adjoint printer failed ({type(err).__name__}: {err})"


def token_text(tokens: list[_Tensor]):
    return prose(", ".join(f"{x.name} [B, T, H{', ' + x.size if x.size else ''}]"
                           for x in tokens))


def dims_text(dims: dict, axes: str):
    return prose(f"{', '.join(dims.values())}, the level's dims, from the shapes ({axes} a "
                 "power of two)")


def formatted(kernel: StepKernel) -> str:
    return ruff_format(kernel.source, f"{kernel.module}.py")
