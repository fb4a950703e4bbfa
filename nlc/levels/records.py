"""The checked form of a spec: immutable records that later stages read.

`check` turns each AST declaration into a `Spec`: its dimensions resolved to integers, every
vocabulary call validated into a `Term`, every state's memory form resolved, and its levels
in a `LevelGraph`. Derivation and emission read these records and never the raw AST, except
for context expressions (`ast.Expr`), which the checker has already typed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nlc.errors import Span
from nlc.syntax import ast


@dataclass(frozen=True, slots=True)
class Dim:
    """One axis of a shape: its spelling in the spec (``d_k``, ``4 * d_model``) and its size.
    Shapes compare by spelling, so ``d_k`` and ``d_v`` differ even when both are 64."""

    text: str
    size: int
    expr: ast.Expr | None = field(default=None, compare=False)  # the spelling, parsed

    def __str__(self) -> str:
        return self.text


Shape = tuple[Dim, ...]
PARAM_SHAPE: Shape = (Dim("param", -1),)  # an optimizer state shaped like the parameter
# A level `over gradients u, inputs x` sees the parameter as a matrix [out, in] (sizes vary).
PARAM_OUT, PARAM_IN = Dim("param_out", -1), Dim("param_in", -1)


def shape_text(shape: Shape) -> str:
    return "scalar" if not shape else "[" + ", ".join(d.text for d in shape) + "]"


@dataclass(frozen=True, slots=True)
class MemoryForm:
    """A memory's parametric form (vocab.FORMS): `dims` are (d,) for vector and diagonal,
    (d_out, d_in) for matrix, the layer widths for mlp, (d_key, d_value) for cache; for
    `like` they are () (any parameter, elementwise) or (param_out, param_in) (a matrix
    parameter seen with its inputs: then it applies like a matrix)."""

    kind: str
    dims: tuple[Dim, ...]
    act: str = "identity"
    residual: bool = False
    norm: bool = False

    @property
    def is_matrix(self) -> bool:
        """Applied as a matrix, S(k) = S k: a matrix, or a matrix parameter's like()."""
        return self.kind == "matrix" or (self.kind == "like" and len(self.dims) == 2)

    @property
    def input_shape(self) -> Shape:
        if self.is_matrix:
            return (self.dims[1],)
        if self.kind == "like":
            return PARAM_SHAPE
        return (self.dims[0],)  # vector, diagonal; mlp widths start with the input; cache keys

    @property
    def output_shape(self) -> Shape:
        if self.kind == "like" and not self.dims:
            return PARAM_SHAPE
        if self.kind == "vector":
            return ()
        if self.kind in ("diagonal", "matrix", "like"):
            return (self.dims[0],)
        return (self.dims[-1],)

    @property
    def state_shape(self) -> Shape:
        if self.kind == "like":
            return self.dims or PARAM_SHAPE
        if self.kind in ("vector", "diagonal", "matrix"):
            return self.dims
        return ()  # mlp weights and caches are not a single tensor


Value = object  # ast.Expr | float | int | str | bool | Term | None


@dataclass(frozen=True, slots=True)
class Term:
    """A validated vocabulary call, every argument by name, defaults filled in. Numeric
    constants are floats/ints; expressions stay `ast.Expr`; choices and flags are str/bool."""

    kind: str
    args: tuple[tuple[str, Value], ...]
    span: Span = field(default_factory=Span.none, compare=False)

    def get(self, name: str) -> Value:
        for key, value in self.args:
            if key == name:
                return value
        raise KeyError(f"{self.kind} has no argument {name!r}")


@dataclass(frozen=True, slots=True)
class StateRecord:
    name: str
    form: MemoryForm
    init: str                    # vocab.INITS key
    span: Span = field(default_factory=Span.none, compare=False)
    # a learned state's draw: ("normal", std) or ("xavier", None)
    draw: tuple[str, float | None] = ("normal", 0.02)


@dataclass(frozen=True, slots=True)
class ParamRecord:
    """A parameter learned by a level at that level's frequency (top-level ones: `train`)."""

    name: str
    shape: Shape
    init: Term | None
    level: str
    span: Span = field(default_factory=Span.none, compare=False)


@dataclass(frozen=True, slots=True)
class ContextVar:
    name: str
    expr: ast.Expr
    shape: Shape
    span: Span = field(default_factory=Span.none, compare=False)


class Frequency:
    TOKEN = "token"
    STEP = "step"


@dataclass(frozen=True, slots=True)
class LevelRecord:
    """One level: an associative memory with its objective, retention, algorithm and
    frequency. `period` counts tokens (unit token) or optimizer steps (unit step);
    `grad_chunk` is the mini-batch at whose start gradients are taken (TTT / Titans)."""

    name: str
    unit: str
    period: int
    grad_chunk: int | None
    over: str | None
    states: tuple[StateRecord, ...]
    objective: Term | None
    retentions: tuple[Term, ...]
    algorithm: Term | None
    read: ast.Expr | None
    read_before: bool
    applies: tuple[tuple[str, ast.Expr], ...]
    params: tuple[str, ...]
    output_shape: Shape
    span: Span = field(default_factory=Span.none, compare=False)
    inputs: str | None = None    # `over gradients u, inputs x`: the parameter's input
    read_start: bool = False     # `read start`: the read sees the chunk-start state
    rate_rows: bool = False      # the learning rate has one entry per row (output channel)
    # `objective a then b`, `algorithm f then g`: the (objective, algorithm) of each step of
    # a token after the first (`objective`, `algorithm`), in order (DeltaProduct)
    later_steps: tuple[tuple[Term, Term], ...] = ()
    gate_rows: bool = False      # the decay gate has one entry per row (output channel)
    fixed_dims: tuple[str, ...] = ()  # dims its period or gradient chunk is spelled with

    @property
    def state(self) -> StateRecord | None:
        return self.states[0] if self.states else None

    @property
    def slowness(self) -> tuple[int, int]:
        """Order of update frequencies: every token level is faster than every step level."""
        return (0 if self.unit == Frequency.TOKEN else 1, self.period)

    def frequency_text(self) -> str:
        plural = "" if self.period == 1 else "s"
        text = f"every {self.period} {self.unit}{plural}"
        if self.grad_chunk:
            text += f", gradients at chunk({self.grad_chunk})"
        return text


TRAIN = "train"  # the implicit outermost level: the training loop, every optimizer step
