"""The spec's abstract syntax: frozen records, one per grammar rule, each with a source span.

Grammar of the records (autodidax style: the shape first, the classes after):

    Module    := Decl*
    Decl      := kind(layer|optimizer|model) name claims? Stmt*
    Stmt      := Dims | Hyper | Param | Context | Level | Output | Transfer | Block
    Level     := name (over inputs?)? Every? chunk? LevelStmt*
    LevelStmt := State | Clause(objective|retention|algorithm|read|apply) | Param
    Expr      := Num | Name | Call | Index | Chain | Keyword | BinOp | Neg

Spans never take part in equality, so a formatted-then-reparsed spec compares equal to
the original (the `nlc fmt` round-trip property).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from nlc.errors import Span

_SPAN = field(default_factory=Span.none, compare=False, repr=False)


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True, slots=True)
class Num:
    value: float
    is_int: bool
    span: Span = _SPAN


@dataclass(frozen=True, slots=True)
class Name:
    id: str
    span: Span = _SPAN


@dataclass(frozen=True, slots=True)
class Keyword:
    """``name = value`` inside a call's argument list."""

    name: str
    value: Expr
    span: Span = _SPAN


@dataclass(frozen=True, slots=True)
class Chain:
    """``a -> b -> c`` inside a call's argument list (an MLP's widths)."""

    items: tuple[Expr, ...]
    span: Span = _SPAN


@dataclass(frozen=True, slots=True)
class Call:
    func: str
    args: tuple[Expr, ...]
    span: Span = _SPAN

    @property
    def positional(self) -> tuple[Expr, ...]:
        return tuple(a for a in self.args if not isinstance(a, Keyword))

    @property
    def keywords(self) -> tuple[Keyword, ...]:
        return tuple(a for a in self.args if isinstance(a, Keyword))


@dataclass(frozen=True, slots=True)
class Index:
    """``matrix[d_v, d_k]``: a memory form with its dimensions."""

    base: str
    items: tuple[Expr, ...]
    span: Span = _SPAN


class BinOpKind(Enum):
    ADD = "+"
    SUB = "-"
    MUL = "*"
    DIV = "/"
    MATMUL = "@"
    POW = "^"


@dataclass(frozen=True, slots=True)
class BinOp:
    op: BinOpKind
    left: Expr
    right: Expr
    span: Span = _SPAN


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Expr
    span: Span = _SPAN


Expr = Num | Name | Call | Index | Chain | Keyword | BinOp | Neg


# ---------------------------------------------------------------- statements


@dataclass(frozen=True, slots=True)
class DimDef:
    name: str
    value: Expr
    span: Span = _SPAN


@dataclass(frozen=True, slots=True)
class Dims:
    defs: tuple[DimDef, ...]
    span: Span = _SPAN


@dataclass(frozen=True, slots=True)
class Hyper:
    """``hyper lr = 1e-3, eps = 1e-8``: real-valued constants (overridable with -D)."""

    defs: tuple[DimDef, ...]
    span: Span = _SPAN


@dataclass(frozen=True, slots=True)
class Param:
    """``param W_q, W_k : [d_model, d_k] = normal(0.02)``: learned by the enclosing level."""

    names: tuple[str, ...]
    shape: tuple[Expr, ...]
    init: Expr | None
    span: Span = _SPAN


@dataclass(frozen=True, slots=True)
class Assign:
    name: str
    value: Expr
    span: Span = _SPAN


@dataclass(frozen=True, slots=True)
class Context:
    """``context from x { q = ... }``: the outer level generates the memory's context."""

    sources: tuple[str, ...]
    body: tuple[Assign, ...]
    span: Span = _SPAN


class Unit(Enum):
    TOKEN = "token"
    STEP = "step"


@dataclass(frozen=True, slots=True)
class Every:
    count: Expr
    unit: Unit
    span: Span = _SPAN


@dataclass(frozen=True, slots=True)
class State:
    """``state S : matrix[d_v, d_k] = zeros``."""

    name: str
    form: Expr
    init: Expr | None
    span: Span = _SPAN


class ClauseKind(Enum):
    OBJECTIVE = "objective"
    RETENTION = "retention"
    ALGORITHM = "algorithm"
    READ = "read"
    APPLY = "apply"


@dataclass(frozen=True, slots=True)
class Clause:
    """One of a level's rule clauses. ``values`` has several entries only for retention (a
    set, comma-separated) and for objective and algorithm (steps in order, ``then``);
    ``target`` is the assigned parameter of ``apply``; ``when`` is ``before``/``after``/``start`` for read."""

    kind: ClauseKind
    values: tuple[Expr, ...]
    target: str | None = None
    when: str | None = None
    span: Span = _SPAN


@dataclass(frozen=True, slots=True)
class Level:
    """``level NAME [over gradients g[, inputs x]] [every N unit] [, gradients at chunk(b)]``.
    `over` names the gradient an optimizer level learns from; with `inputs`, `over` is the
    gradient of the parameter's output and `inputs` the parameter's input (DGD)."""

    name: str
    over: str | None
    every: Every | None
    chunk: Expr | None
    body: tuple[State | Clause | Param, ...]
    span: Span = _SPAN
    inputs: str | None = None


@dataclass(frozen=True, slots=True)
class Output:
    value: Expr
    span: Span = _SPAN


@dataclass(frozen=True, slots=True)
class Transfer:
    """``transfer slow -> fast : init``: a knowledge-transfer edge between two levels."""

    source: str
    target: str
    mode: str
    span: Span = _SPAN
    parts: tuple[Span, ...] = field(default=(), compare=False, repr=False)  # each name's span


@dataclass(frozen=True, slots=True)
class Block:
    """``block Mixer -> CMS``: layers composed in order inside a model."""

    layers: tuple[str, ...]
    span: Span = _SPAN


Stmt = Dims | Hyper | Param | Context | Level | Output | Transfer | Block


class DeclKind(Enum):
    LAYER = "layer"
    OPTIMIZER = "optimizer"
    MODEL = "model"


@dataclass(frozen=True, slots=True)
class Decl:
    kind: DeclKind
    name: str
    claims: str | None
    body: tuple[Stmt, ...]
    span: Span = _SPAN


@dataclass(frozen=True, slots=True)
class Module:
    decls: tuple[Decl, ...]
    span: Span = _SPAN
