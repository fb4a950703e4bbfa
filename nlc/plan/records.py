"""The plan: frozen, fully declared records of what a layer's generated module holds.

Stage `plan` builds them from a checked spec and its classified rules (nlc/plan/layer.py);
stage `emit` only prints them. Sizes are SymPy expressions of the spec's dims (`d_k`,
`4*d_head`): a generated layer takes every dim as a constructor argument, and its ops read
the sizes from their inputs. `to_text()` is what `--stop-after plan --dump` prints."""

from __future__ import annotations

from dataclasses import dataclass, fields

import sympy as sp

from nlc.levels.records import Term
from nlc.syntax import ast


@dataclass(frozen=True)
class SizePlan:
    """A dim of the spec: a constructor argument of the layer, the spec's value its default."""

    name: str
    default: int
    formula: object = None  # a SymPy size of earlier dims when the spec spells it so


@dataclass(frozen=True)
class ParamPlan:
    name: str
    shape: tuple            # per head, sizes
    init: Term | None       # None: normal with std fan-in^-1/2 (zeros for vectors)
    line: int


@dataclass(frozen=True)
class ConvPlan:
    """A short convolution's weights, one per `conv(...)` call: `[H, channels, width]`."""

    name: str
    channels: object        # a size
    width: int
    line: int


@dataclass(frozen=True)
class LearnedState:
    """A meta-learned initial state: a parameter of the layer (the `init` transfer)."""

    name: str
    attr: str
    rows: object
    cols: object
    line: int
    simplex: bool = False   # rows are distributions (a KL retention takes their log)
    draw: tuple[str, float | None] = ("normal", 0.02)  # normal(std), or xavier per matrix


@dataclass(frozen=True)
class TokenInput:
    """A per-token input of a level's op: a vector `[B, T, H, size]` or a scalar `[B, T, H]`."""

    name: str
    kind: str               # vector | scalar
    size: object = None     # a vector's size


@dataclass(frozen=True)
class ParamInput:
    name: str
    rank: int               # per-head axes
    dims: tuple[str, ...] = ()  # per axis, the dim that is its size ("": a spelled size)


@dataclass(frozen=True)
class StatePlan:
    name: str
    rows: object
    cols: object
    init: str               # the op's default: zeros | identity | given (none: the caller's)
    learned: LearnedState | None = None


# "family/decay" -> the chunked Triton kernels' entry point; the rest are chunk_scalar's
CHUNKED_ENTRIES = {"decay/channel": "chunk_decay_triton.chunk_channel",
                   "delta/channel": "chunk_kda_triton.chunk_kda",
                   "decay/row": "chunk_rows_triton.chunk_rows",
                   "delta/row": "chunk_rows_triton.chunk_rows",
                   "joint/none": "chunk_joint_triton.chunk_joint",
                   **{f"dplr/{d}": "chunk_dplr_triton.chunk_dplr"
                      for d in ("none", "scalar", "channel")}}


@dataclass(frozen=True)
class KernelPlan:
    """The fused recurrent Triton kernel of a level (templates/triton_recurrent.py.jinja),
    in a module shared by every level with the same configuration."""

    family: str             # decay | delta | dplr | elementwise
    decay: str              # none | scalar | channel
    read_before: bool
    module: str             # the kernel module, named by its configuration
    error: object = None    # elementwise: e(p, y)
    order: str | None = None
    chunked: str | None = None  # "family/decay" of the chunked kernels that take long inputs
    rate: str = "scalar"    # elementwise: the rate per token, or one per row

    def chunked_entry(self) -> str:
        """`file.function` of the chunked Triton kernels in runtime/library/ that take long
        inputs (the runtime's `chunked_kernel_for` picks the same; tests/test_chunk_kda_triton.py
        checks it)."""
        return CHUNKED_ENTRIES.get(self.chunked, "chunk_delta_triton.chunk_scalar")

    def configuration(self):
        """What the kernel template renders (nlc/emit/triton_render.py)."""
        from nlc.emit.triton_render import RecurrentKernelPlan
        return RecurrentKernelPlan(self.family, self.decay, self.read_before, self.error,
                                   order=self.order or "before", rate=self.rate)


@dataclass(frozen=True)
class LevelPlan:
    name: str
    fn: str                 # the prefix of its functions
    line: int
    family: str
    reason: str
    execution: object       # nlc.derive.execution record
    rule: object            # the derived UpdateRule (its expressions are printed)
    memory: str             # the state's name in the spec (its tensors are named from it)
    tokens: tuple[TokenInput, ...]
    params: tuple[ParamInput, ...]
    numbers: tuple[tuple[str, float], ...]      # hypers the rule uses
    sizes: tuple[str, ...]  # dims the rule's expressions use as numbers
    states: tuple[StatePlan, ...]
    anchors: tuple[tuple[str, str], ...]        # (anchor name, state name)
    anchor_every: int | None
    read_kind: str          # vector | scalar
    read_before: bool
    kernel: KernelPlan | None
    notes: tuple[str, ...]
    group: bool = False     # runs in a coupled group (no op of its own)

    @property
    def input_sizes(self) -> dict[str, str | None]:
        """token -> the dim that is its size (None: a scalar, or a size that is not one dim)."""
        return {t.name: t.size.name if isinstance(t.size, sp.Symbol) else None
                for t in self.tokens}

    @property
    def state_sizes(self) -> tuple[str, ...]:
        """The dims the states' shapes are made of: the initial-state function's arguments."""
        return _dims_of([x for st in self.states for x in (st.rows, st.cols)])

    @property
    def op_sizes(self) -> tuple[str, ...]:
        """Every dim the op needs: its default states' shapes and the numbers its rule
        uses."""
        return _dims_of([x for st in self.states if st.init != "given"
                         for x in (st.rows, st.cols)]
                        + [sp.Symbol(d) for d in self.sizes])

    @property
    def keyword_sizes(self) -> tuple[str, ...]:
        """The dims the op cannot read from its inputs: keyword arguments."""
        read = {v for v in self.input_sizes.values() if v}
        return tuple(d for d in self.op_sizes if d not in read)

    @property
    def parallel(self) -> bool:
        from nlc.derive.execution import TokenLoop
        return not isinstance(self.execution, TokenLoop)


@dataclass(frozen=True)
class GroupPlan:
    """Levels that read each other's outputs: one op runs them token by token together."""

    fn: str
    members: tuple[str, ...]
    tokens: tuple[TokenInput, ...]
    params: tuple[ParamInput, ...]
    chunk: int | None       # the shared period when every member reads its chunk start
    line: int


@dataclass(frozen=True)
class ContextStep:
    """`name = expr` per token (a `context` line)."""

    name: str
    expr: ast.Expr
    line: int


@dataclass(frozen=True)
class ShiftStep:
    """The context value `value` 1..`shifts` tokens back (`k_m1`, `k_m2`, ...: an omega
    window's earlier tokens, nlc/derive/symbols.py `shifted_name`): zeros before a
    sequence's first token, a cache's last tokens before a continuation's first."""

    value: str
    shifts: int
    line: int


@dataclass(frozen=True)
class Segments:
    """A level run in segments that end at multiples of `period` (init / generate transfers);
    a target restarts from its source at multiples of `every` (the source's period, when a
    level both takes its state from one level and hands it to another: it is cut at both)."""

    period: int
    source: str | None = None
    mode: str | None = None                          # init | generate
    pairs: tuple[tuple[str, str], ...] = ()          # init: (source state, own state)
    shapes: tuple[tuple[str, object, object], ...] = ()  # generate: own states
    # generate: (the source's read size, the own states' total size), sizes of the dims that
    # must stay equal in a layer built with other dims
    sizes: tuple[object, object] | None = None
    every: int | None = None                         # restarts (None: at every `period`)


@dataclass(frozen=True)
class LevelCall:
    level: str
    cut: frozenset = frozenset()        # `direct` sources: what it does not learn through
    segments: Segments | None = None


@dataclass(frozen=True)
class GroupCall:
    group: str


@dataclass(frozen=True)
class OutputStep:
    expr: ast.Expr
    projection: str | None      # a matrix param the heads' outputs meet (summed inside)
    line: int


@dataclass(frozen=True)
class LayerPlan:
    name: str
    spec: str                   # the spec file's name (prose)
    sizes: tuple[SizePlan, ...]
    params: tuple[ParamPlan, ...]
    convs: tuple[ConvPlan, ...]
    levels: tuple[LevelPlan, ...]
    groups: tuple[GroupPlan, ...]
    forward: tuple
    position: bool              # the forward counts tokens (init / generate transfers)
    param_groups: tuple[tuple[str, int, tuple[str, ...]], ...]  # (level, every, attributes)
    context_names: frozenset    # context values and params (train's, for `direct` cuts)
    inner: frozenset            # the `a @ b` nodes that are inner products of two vectors
    line: int

    @property
    def learned(self) -> tuple[LearnedState, ...]:
        return tuple(s.learned for lv in self.levels for s in lv.states if s.learned)

    def level(self, name: str) -> LevelPlan:
        return next(lv for lv in self.levels if lv.name == name)

    def group(self, fn: str) -> GroupPlan:
        return next(g for g in self.groups if g.fn == fn)

    def group_sizes(self, group: GroupPlan) -> tuple[dict, tuple[str, ...], tuple[str, ...]]:
        """A group's op's sizes: (token -> the dim read from it, the dims no token shows,
        which are keyword arguments, the dims the members' rules use as numbers)."""
        members = [self.level(n) for n in group.members]
        tokens = {t.name for t in group.tokens}
        read = {t: d for lp in members for t, d in lp.input_sizes.items() if d and t in tokens}
        keyword = tuple(sorted({d for lp in members for d in lp.op_sizes} - set(read.values())))
        numbers = tuple(sorted({d for lp in members for d in lp.sizes}))
        return read, keyword, numbers


@dataclass(frozen=True)
class ModelPlan:
    """A `model`: its layers (classes of the same module) applied in order."""

    name: str
    layers: tuple[str, ...]
    d_model: int
    line: int


def _dims_of(exprs) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for e in exprs:
        for s in sorted(sp.sympify(e).free_symbols, key=lambda s: s.name):
            seen.setdefault(s.name, None)
    return tuple(seen)


# ------------------------------------------------------------------ the text dump
def to_text(record, indent: int = 0) -> str:
    """A plan record as indented `field: value` lines (deterministic)."""
    pad = "  " * indent
    lines = [f"{pad}{type(record).__name__}"]
    for f in fields(record):
        value = getattr(record, f.name)
        if f.name == "span":
            continue
        if f.name == "rule":
            value = f"{value.spec}.{value.level}"
        if _record(value):
            lines.append(f"{pad}  {f.name}:")
            lines.append(to_text(value, indent + 2).rstrip("\n"))
        elif isinstance(value, tuple) and value and all(_record(v) for v in value):
            lines.append(f"{pad}  {f.name}:")
            lines += [to_text(v, indent + 2).rstrip("\n") for v in value]
        else:
            lines.append(f"{pad}  {f.name}: {_value_text(value)}")
    return "\n".join(lines) + "\n"


def _record(value) -> bool:
    """A plan record (dumped field by field), not a leaf printed on one line."""
    return hasattr(value, "__dataclass_fields__") and not hasattr(value, "to_text") \
        and not isinstance(value, (Term, *ast.Expr.__args__))


def _value_text(value) -> str:
    from nlc.derive.printing import sstr
    from nlc.syntax.format import format_expr
    if hasattr(value, "to_text"):
        return value.to_text()
    if isinstance(value, ast.Expr.__args__):
        return format_expr(value)
    if isinstance(value, Term):
        shown = ", ".join(f"{k}={_value_text(v)}" for k, v in value.args)
        return f"{value.kind}({shown})"
    if isinstance(value, sp.Basic):
        return sstr(value)
    if isinstance(value, frozenset):
        return "{" + ", ".join(sorted(map(str, value))) + "}"
    if isinstance(value, tuple):
        if value and all(isinstance(v, sp.Basic) for v in value):
            return "[" + ", ".join(_value_text(v) for v in value) + "]"
        return "(" + ", ".join(_value_text(v) for v in value) + ")"
    return repr(value) if isinstance(value, str) else str(value)
