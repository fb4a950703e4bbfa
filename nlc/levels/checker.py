"""Stage `check`: AST -> one `Spec` per declaration, each with its `LevelGraph`.

Rules enforced here (docs/language.md, "Checking"):
- names: defined once per declaration; uses resolve (did-you-mean hints otherwise);
- dims are positive integers, hypers finite reals; `-D name=value` overrides either;
- shapes agree (per head, per token); memories are applied to inputs of their input shape;
- frequencies: a level's period is a positive integer; `gradients at chunk(b)` needs a
  per-token level; for `init` and `generate` edges the source may not update faster than the
  target (a fast level cannot hand an initial state or weights to a slower one);
- levels may use each other's outputs (a level's name holds its read) in any order that
  a token can run: a loop must close through outputs read before the write (schedule.py);
- no cycle among the explicit transfer edges and the edges out of the training level;
- algorithm and memory form fit (no closed-form implicit step for an MLP, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nlc.errors import NlcError, Span, did_you_mean
from nlc.levels import sugar, vocab
from nlc.levels.composed import composed_names
from nlc.levels.graph import Edge, LevelGraph
from nlc.levels.level_checker import LevelChecker
from nlc.levels.limits import check_sizes
from nlc.levels.records import (
    PARAM_SHAPE,
    TRAIN,
    ContextVar,
    Dim,
    Frequency,
    LevelRecord,
    ParamRecord,
    Shape,
    shape_text,
)
from nlc.levels.schedule import nodes_in, reads_before
from nlc.levels.shapes import Env, infer
from nlc.levels.terms import const_eval, make_term
from nlc.syntax import ast
from nlc.syntax.format import format_expr
from nlc.syntax.names import MAX_NUMBER, check_identifier
from nlc.syntax.walk import names_used

TransferMode = vocab.TransferMode


# a generated layer's constructor takes every dim by name, next to its own arguments, and
# its body uses the module's imports
LAYER_ARGUMENTS = frozenset({"self", "mode", "chunk_size", "nl", "torch", "F", "nn", "math"})


# names an optimizer's hypers may not take, and why: its constructor's own arguments
OPTIMIZER_RESERVED = {
    "params": "are keys of torch's parameter groups, where 'params' holds the parameters",
    "self": "are the keyword arguments of its constructor, where 'self' is the optimizer"}


@dataclass(frozen=True)
class Spec:
    """A checked declaration: what derivation and emission consume."""

    kind: ast.DeclKind
    name: str
    claims: str | None
    dims: tuple[tuple[str, int], ...]
    hypers: tuple[tuple[str, float], ...]
    params: tuple[ParamRecord, ...]
    context: tuple[ContextVar, ...]
    output: ast.Expr | None
    blocks: tuple[str, ...]
    graph: LevelGraph = field(compare=False)
    span: Span = field(default_factory=Span.none, compare=False)
    schedule: tuple[tuple[str, str], ...] = ()  # per token: ("read" | "write", level), in order
    loops: frozenset = frozenset()              # levels that use their own output
    dim_formulas: tuple = ()                    # (dim, ast.Expr) for dims spelled from dims
    dim_spans: tuple = field(default=(), compare=False)  # (dim, Span), for later refusals

    @property
    def levels(self) -> tuple[LevelRecord, ...]:
        return tuple(lv for lv in self.graph.levels if lv.name != TRAIN)

    def dim(self, name: str) -> int:
        return dict(self.dims)[name]


def _parse_override(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise NlcError(f"-D expects NAME=VALUE, got '{text}'")
    try:
        number = float(value)
    except ValueError:
        raise NlcError(f"-D {name}: '{value}' is not a number") from None
    if not math.isfinite(number):
        raise NlcError(f"-D {name}: value must be finite")
    if number.is_integer() and abs(number) <= 2 ** 53:  # a run's config.json says d_k: 32
        return name, int(number)
    return name, number


class _DeclChecker(LevelChecker):
    def __init__(self, decl: ast.Decl, overrides: dict[str, float], layers: dict[str, ast.Decl],
                 decls: tuple = ()):
        self.decl = decl
        self.overrides = overrides
        self.layers = layers
        self.kinds = {d.name: d.kind.value for d in decls}  # what a non-layer name is
        self.defined: dict[str, Span] = {}
        self.dims: dict[str, int] = {}
        self.hypers: dict[str, float] = {}
        self.consts: dict[str, float] = {}      # dims and hypers, for constant expressions
        self.dim_consts: dict[str, float] = {}  # dims only, for shapes
        self.env = Env(consts=self.consts)  # the same dict, filled as dims and hypers are read
        self.params: list[ParamRecord] = []
        self.context: list[ContextVar] = []
        self.graph = LevelGraph(decl.name)
        self.is_optimizer = decl.kind is ast.DeclKind.OPTIMIZER
        self.level_names: dict[str, str] = {}   # gradient / input names of optimizer levels
        self.steps: tuple[tuple[str, str], ...] = ()
        self.loops: frozenset = frozenset()
        self.dim_formulas: list = []
        self.dim_spans: list = []

    # ------------------------------------------------------------ names
    def define(self, name: str, span: Span, kind: str, shape: Shape | None = None) -> None:
        if name in self.defined and not self.defined[name].known:
            raise NlcError(f"'{name}' is a builtin name and cannot be redefined", span,
                           hint=f"rename it, e.g. '{name}_'")
        if name in self.defined or name == TRAIN:
            first = self.defined.get(name)
            where = f" (first defined at line {first.line})" if first and first.known else ""
            raise NlcError(f"'{name}' is already defined{where}", span)
        if name in self.level_names:
            raise NlcError(f"'{name}' is already the {self.level_names[name]} of an optimizer "
                           "level", span)
        self.defined[name] = span
        self.env.kinds[name] = kind
        if shape is not None:
            self.env.values[name] = shape

    # ------------------------------------------------------------ statements
    def run(self) -> Spec:
        body = self.decl.body
        if self.decl.kind is ast.DeclKind.MODEL:
            return self.model()
        builtins = vocab.OPTIMIZER_BUILTINS if self.is_optimizer else vocab.LAYER_BUILTINS
        for name in builtins:
            self.defined[name] = Span.none()
            self.env.kinds[name] = "builtin"
            self.env.values[name] = PARAM_SHAPE if name == "param" else ()
        for stmt in body:
            if isinstance(stmt, ast.Dims):
                self.dims_stmt(stmt)
            elif isinstance(stmt, ast.Hyper):
                self.hyper_stmt(stmt)
        for stmt in body:
            if isinstance(stmt, ast.Param):
                self.param_stmt(stmt, TRAIN)
            elif isinstance(stmt, ast.Level):
                for item in stmt.body:
                    if isinstance(item, ast.Param):
                        self.param_stmt(item, stmt.name)
        if not self.is_optimizer:
            if "d_model" not in self.dims:
                raise NlcError(f"layer '{self.decl.name}' must declare the dim 'd_model' "
                               "(the width of its input x)", self.decl.span,
                               hint="add: dims d_model = 256")
            self.define("x", self.decl.span, "input", (Dim("d_model", self.dims["d_model"]),))
        contexts = [s for s in body if isinstance(s, ast.Context)]
        for stmt in contexts:
            self.context_block(stmt)
        levels = [s for s in body if isinstance(s, ast.Level)]
        self.graph.add_level(LevelRecord(TRAIN, Frequency.STEP, 1, None, None, (), None, (), None,
                                         None, False, (), tuple(p.name for p in self.params
                                                                if p.level == TRAIN), (),
                                         self.decl.span))
        for stmt in levels:
            self.define(stmt.name, stmt.span, "level")
        self.level_locals(levels)
        records = self.check_levels(levels)
        check_sizes(self.dims, self.params, records, self.decl.span)
        output = None
        for stmt in body:
            if isinstance(stmt, ast.Output):
                if output is not None:
                    raise NlcError("a declaration has one 'output'", stmt.span)
                output = self.output_stmt(stmt)
            elif isinstance(stmt, ast.Transfer):
                self.transfer_stmt(stmt)
            elif isinstance(stmt, ast.Block):
                raise NlcError("'block' composes layers and belongs in a 'model'", stmt.span)
        if not self.is_optimizer and not records:
            raise NlcError(f"layer '{self.decl.name}' has no level", self.decl.span,
                           hint="add: level memory every 1 token { state ... }")
        if self.is_optimizer and not any(r.applies for r in records):
            raise NlcError(f"optimizer '{self.decl.name}' never writes the parameter",
                           self.decl.span, hint="give a level an 'apply param = ...' clause")
        if not self.is_optimizer and output is None:
            raise NlcError(f"layer '{self.decl.name}' has no 'output'", self.decl.span,
                           hint="e.g. output memory @ W_o")
        self.check_frequencies()
        self.check_seeds()
        self.check_loop_transfers(levels)
        self.check_learns(levels)
        self.check_composed_names(records)
        cycle = self.graph.find_cycle(keep=lambda e: e.explicit or e.source == TRAIN)
        if cycle:
            path = " -> ".join([cycle[0].source] + [e.target for e in cycle])
            span = next((e.span for e in cycle if e.span.known), self.decl.span)
            raise NlcError(f"levels form a cycle: {path}", span,
                           hint="one level of the loop must not feed the next")
        return Spec(self.decl.kind, self.decl.name, self.decl.claims, tuple(self.dims.items()),
                    tuple(self.hypers.items()), tuple(self.params), tuple(self.context), output,
                    (), self.graph, self.decl.span, self.steps, self.loops,
                    tuple(self.dim_formulas), tuple(self.dim_spans))

    def check_composed_names(self, records) -> None:
        """A name of the spec's may not be one the compiler composes from a state's name."""
        for record in records:
            for state in record.states:
                for name, what in composed_names(state.name, state.form).items():
                    span = self.defined.get(name)
                    if span is not None and span.known:
                        raise NlcError(f"'{name}' is the name nlc gives {what} (in derivations "
                                       "and generated code)", span,
                                       hint="rename it")

    def constant(self, d) -> float:
        """A dim's or hyper's value: its -D override, else its expression, which may use only
        the dims and hypers defined before it."""
        value = self.overrides.get(d.name)
        if value is not None:
            return value
        unknown = names_used(d.value) - set(self.consts)
        later = {e.name for stmt in self.decl.body if isinstance(stmt, (ast.Dims, ast.Hyper))
                 for e in stmt.defs} if unknown else set()
        for name in sorted(unknown & later):
            raise NlcError(f"'{name}' is used before it is defined: dims and hypers are "
                           f"defined in order", d.value.span,
                           hint=f"define '{name}' before '{d.name}'")
        return const_eval(d.value, self.consts)

    def dims_stmt(self, stmt: ast.Dims) -> None:
        for d in stmt.defs:
            value = self.constant(d)
            if not float(value).is_integer() or value < 1:
                raise NlcError(f"dim '{d.name}' must be a positive whole number, got {value:g}",
                               d.value.span if d.name not in self.overrides else d.span)
            if value > 1 << 20:
                shown = f"{int(value)}" if value < 1e15 else f"{value:.4g}"  # not 300 digits
                raise NlcError(f"dim '{d.name}' = {shown} is larger than 1048576 (2^20)",
                               d.span)
            if d.name in LAYER_ARGUMENTS and self.decl.kind is ast.DeclKind.LAYER:
                raise NlcError(f"dim '{d.name}' would be an argument of the layer's "
                               f"constructor, where '{d.name}' is the generated code's own "
                               "name", d.span, hint=f"rename it, e.g. '{d.name}_'")
            self.define(d.name, d.span, "dim", ())
            self.dims[d.name] = int(value)
            self.dim_spans.append((d.name, d.span))
            if d.name not in self.overrides and not isinstance(d.value, ast.Num) \
                    and names_used(d.value) <= set(self.dims):
                self.dim_formulas.append((d.name, d.value))
            self.consts[d.name] = self.dim_consts[d.name] = float(value)  # kept, not rebuilt

    def hyper_stmt(self, stmt: ast.Hyper) -> None:
        for d in stmt.defs:
            value = self.constant(d)
            if abs(value) > MAX_NUMBER:  # generated code prints it; see names.check_number
                raise NlcError(f"hyper '{d.name}' = {value:.4g} is beyond 2^53 = "
                               f"{MAX_NUMBER:,} in size, the largest a spec may use",
                               d.value.span if d.name not in self.overrides else d.span)
            if self.is_optimizer and d.name in OPTIMIZER_RESERVED:
                raise NlcError(f"an optimizer's hypers {OPTIMIZER_RESERVED[d.name]}", d.span,
                               hint="rename the hyper")
            self.define(d.name, d.span, "hyper", ())
            self.hypers[d.name] = float(value)
            self.consts[d.name] = float(value)

    def shape_of(self, exprs: tuple[ast.Expr, ...]) -> Shape:
        dims = []
        for e in exprs:
            size = const_eval(e, self.dim_consts)
            if not size.is_integer() or size < 1:
                raise NlcError(f"a dimension must be a positive whole number, got {size:g}",
                               e.span)
            dims.append(Dim(format_expr(e), int(size), e))
        return tuple(dims)

    def param_stmt(self, stmt: ast.Param, level: str) -> None:
        if self.is_optimizer:
            raise NlcError("an optimizer has no parameters of its own: the training loop "
                           "that would learn them runs above it", stmt.span,
                           hint="use a hyper (a constant), e.g. hyper scale = 1")
        shape = self.shape_of(stmt.shape)
        if len(shape) > 2:  # derive's symbols are scalars, vectors and matrices
            raise NlcError(f"a parameter has at most 2 axes (per head); "
                           f"{', '.join(stmt.names)} has {len(shape)}", stmt.shape[2].span,
                           hint="split it into several parameters of 2 axes")
        init = None
        if stmt.init is not None:
            init = make_term(stmt.init, vocab.PARAM_INITS, "initializer", self.env, self.consts)
            bounds = init.kind in ("uniform", "log_uniform", "inv_softplus_uniform")
            low, high = (init.get("low"), init.get("high")) if bounds else (None, None)
            if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low > high:
                raise NlcError(f"{init.kind}(low = {low:g}, high = {high:g}): low is above high",
                               init.span, hint="write the smaller bound first")
        for name in stmt.names:
            self.define(name, stmt.span, "parameter", shape)
            self.params.append(ParamRecord(name, shape, init, level, stmt.span))

    def context_block(self, stmt: ast.Context) -> None:
        for source in stmt.sources:
            if source not in self.env.values:
                raise NlcError(f"context source '{source}' is not defined", stmt.span,
                               hint="a layer's input is 'x'; an optimizer level reads its gradients")
        levels = {lv.name for lv in self.decl.body if isinstance(lv, ast.Level)}
        for a in stmt.body:
            for node in nodes_in(a.value):
                if isinstance(node, ast.Name) and node.id in levels \
                        and node.id not in self.env.values:
                    raise NlcError(f"the context block uses level '{node.id}': context values "
                                   "are computed from the input and parameters before any "
                                   "level runs, so they cannot read a level", node.span,
                                   hint=f"use '{node.id}' inside another level (its name holds "
                                        "its read) or in the output")
            shape = infer(a.value, self.env)
            self.define(a.name, a.span, "context", shape)
            self.context.append(ContextVar(a.name, a.value, shape, a.span))

    def output_stmt(self, stmt: ast.Output) -> ast.Expr:
        if self.is_optimizer:
            raise NlcError("an optimizer has no 'output'; its levels 'apply' updates", stmt.span)
        shape = infer(stmt.value, self.env)
        want = (Dim("d_model", self.dims["d_model"]),)
        if shape != want:
            raise NlcError(f"a layer's output must be {shape_text(want)} (summed over heads), got "
                           f"{shape_text(shape)}", stmt.value.span,
                           hint="project it back, e.g. '@ W_o' with W_o : [d_v, d_model]")
        return stmt.value

    def transfer_stmt(self, stmt: ast.Transfer) -> None:
        if self.is_optimizer:
            raise NlcError("transfer edges are not compiled for optimizers: their levels "
                           "exchange values by name (another level's name in an 'apply')",
                           stmt.span)
        levels = {lv.name for lv in self.graph.levels}
        where = stmt.parts or (stmt.span,) * 3  # the name's own span where the parser gave it
        for name, span in zip((stmt.source, stmt.target), where):
            if name not in levels:
                raise NlcError(f"'{name}' is not a level", span,
                               hint=did_you_mean(name, levels) or f"levels: {', '.join(sorted(levels))}")
        try:
            mode = TransferMode(stmt.mode)
        except ValueError:
            raise NlcError(f"unknown transfer mode '{stmt.mode}'", where[2],
                           hint=did_you_mean(stmt.mode, [m.value for m in TransferMode])
                           or f"known: {', '.join(m.value for m in TransferMode)}") from None
        if stmt.source == stmt.target:
            raise NlcError("a level cannot transfer into itself", stmt.span)
        if self.graph.has_edge(stmt.source, stmt.target, mode) and any(
                e.explicit for e in self.graph.edges
                if (e.source, e.target, e.mode) == (stmt.source, stmt.target, mode)):
            raise NlcError("this transfer is stated twice", stmt.span)
        if mode is TransferMode.INIT and self.graph.level(stmt.target).state is None:
            raise NlcError(f"level '{stmt.target}' has no state to initialize", stmt.span)
        self.graph.add_edge(Edge(stmt.source, stmt.target, mode, True, stmt.span))

    def check_frequencies(self) -> None:
        for e in self.graph.edges:
            if e.mode not in (TransferMode.INIT, TransferMode.GENERATE):
                continue
            src, dst = self.graph.level(e.source), self.graph.level(e.target)
            if src.slowness < dst.slowness:
                raise NlcError(f"level '{e.source}' ({src.frequency_text()}) updates faster than "
                               f"'{e.target}' ({dst.frequency_text()}) and cannot {e.mode.value} it",
                               e.span, hint="an init or generate edge goes from a slower level to "
                               "a faster (or equally fast) one")
            chunk = dst.grad_chunk
            if src.unit == Frequency.TOKEN and chunk and src.period % chunk:
                raise NlcError(f"level '{e.target}' restarts every {src.period} tokens (the "
                               f"{e.mode.value} from '{e.source}'), but takes its gradients at "
                               f"chunks of {chunk}: a chunk would straddle a restart and take "
                               f"its gradients at the state from before it", e.span,
                               hint=f"make {e.source}'s period a multiple of {chunk}")
            if src.unit == dst.unit == Frequency.TOKEN and dst.period > 1 \
                    and src.period % dst.period:
                raise NlcError(f"level '{e.target}' restarts every {src.period} tokens (the "
                               f"{e.mode.value} from '{e.source}'), but updates every "
                               f"{dst.period} tokens: a chunk would straddle a restart, its "
                               "tokens after it reading and stepping from the state before it",
                               e.span, hint=f"make {e.source}'s period a multiple of "
                               f"{dst.period}")

    def check_seeds(self) -> None:
        """A level takes its initial state from one place. An init or generate edge from a
        level replaces the target's state at every restart, the first included, so a learned
        start (train's init edge) beside it would never be read: its parameter would get no
        gradient. Refused, as two levels seeding one are."""
        seeding = (TransferMode.INIT, TransferMode.GENERATE)
        by_target: dict[str, list[Edge]] = {}
        for e in self.graph.edges:
            if e.mode in seeding:
                by_target.setdefault(e.target, []).append(e)
        for e in self.graph.edges:
            if e.explicit and e.source == TRAIN and e.mode is TransferMode.GENERATE:
                raise NlcError(f"a 'generate' edge from train is not emitted: train has no "
                               f"output to cut into '{e.target}''s weights (its parameters "
                               "are not a level's read)", e.span,
                               hint=f"to learn '{e.target}''s start, write 'transfer train -> "
                                    f"{e.target} : init' or start it '= learned'")
        for target, edges in by_target.items():
            levels = [e for e in edges if e.source != TRAIN]
            if len(levels) > 1:
                a, b = levels[0], levels[1]
                what = f"two levels ('{a.source}' and '{b.source}')" if a.source != b.source \
                    else f"two edges of level '{a.source}' ({a.mode.value} and {b.mode.value})"
                raise NlcError(f"level '{target}' gets its state from {what}",
                               b.span, hint="keep one of the transfers")
            trained = [e for e in edges if e.source == TRAIN]
            if levels and trained:
                e = levels[0]
                learned = f"has a learned start ('transfer train -> {target} : init')" \
                    if trained[0].explicit else "starts '= learned' (meta-learned by train)"
                raise NlcError(f"level '{target}' {learned}, but the {e.mode.value} edge "
                               f"'{e.source} -> {target}' replaces its state at every "
                               "restart, the first included: the learned start would never "
                               "be read", e.span,
                               hint=f"start '{target}' '= zeros' (the edge supplies its "
                               "state), or drop one of the two")

    def check_loop_transfers(self, levels: list[ast.Level]) -> None:
        """Levels that use each other's outputs in a loop (or a level its own) run as one
        group over the whole sequence: no level restarts one of them from its state, and
        none of them hands its state on at a period. Such an edge was refused only at compile;
        an init or generate edge that closes a loop counts (the target runs after its source).
        In a group every member reads before any member writes, so a member that reads after
        its write is refused here (compile refused it after check and derive had passed: the
        schedule alone allows a loop that one `before` read closes)."""
        import networkx as nx
        seeding = (TransferMode.INIT, TransferMode.GENERATE)
        data = nx.DiGraph()
        data.add_nodes_from(r.name for r in self.graph.levels if r.name != TRAIN)
        data.add_edges_from((e.source, e.target) for e in self.graph.edges
                            if e.source in data and e.target in data
                            and (e.mode is TransferMode.CONTEXT or e.mode in seeding))
        seeded = {(e.source, e.target) for e in self.graph.edges
                  if e.explicit and e.mode in seeding}
        outputs = nx.DiGraph(data.subgraph(data.nodes))  # the loops of outputs alone
        outputs.remove_edges_from(seeded)
        loops = [part for part in nx.strongly_connected_components(outputs)
                 if len(part) > 1 or part & self.loops]
        grouped = {n for part in loops for n in part}
        for lv in levels:
            record = self.graph.level(lv.name)
            start = record.unit != Frequency.TOKEN or record.period > 1  # every read: its
            if lv.name in grouped and not reads_before(lv) and not start:  # chunk's start
                part = next(p for p in loops if lv.name in p)
                raise NlcError(f"level '{lv.name}' reads after its write, but it is in a loop of "
                               f"levels that use each other's outputs ({', '.join(sorted(part))}),"
                               " which runs as one group in which every level reads before any "
                               "level writes", lv.span,
                               hint=f"make '{lv.name}' read before (or start, with gradients at "
                                    "chunk)")
        for part in nx.strongly_connected_components(data):
            if len(part) == 1 and not part & self.loops:
                continue
            if not part & grouped:  # the seeding edges themselves close the loop
                self._seeding_cycle(data.subgraph(part), seeded)
            for e in self.graph.edges:
                if e.explicit and e.mode in seeding and e.source != TRAIN \
                        and {e.source, e.target} & part:
                    name = e.target if e.target in part else e.source
                    what = "uses its own output" if len(part) == 1 else \
                        f"is in a loop of outputs ({', '.join(sorted(part))})"
                    raise NlcError(f"level '{name}' {what}, which runs as one group over the "
                                   f"whole sequence; the {e.mode.value} edge '{e.source} -> "
                                   f"{e.target}' would hand a state across at a period, "
                                   "which a group does not do",
                                   e.span, hint="start the level '= learned' (meta-learned by "
                                   "train) instead, or break the loop")

    def _seeding_cycle(self, part, seeded: set) -> None:
        """Refuse a loop that init or generate edges (`seeded`: their (source, target)) close:
        each level runs over the whole sequence in turn, and in this loop every level waits
        for another one first."""
        import networkx as nx
        cycle = nx.find_cycle(part)
        path = " -> ".join([cycle[0][0], *(b for _, b in cycle)])
        closing = next(e for e in self.graph.edges if e.explicit and e.mode in
                       (TransferMode.INIT, TransferMode.GENERATE) and (e.source, e.target) in cycle)
        uses = [f"'{b}' uses the output of '{a}'" for a, b in cycle if (a, b) not in seeded]
        why = "; ".join(uses) if uses else "every edge of it is an init or generate edge"
        raise NlcError(f"levels form a cycle: {path}, closed by the {closing.mode.value} edge "
                       f"'{closing.source} -> {closing.target}' ({why}); each level runs over "
                       "the whole sequence in turn, so none of them could run first",
                       closing.span, hint=f"start '{closing.target}' from a level that does "
                       f"not depend on it, or '= learned' (meta-learned by train)")

    # ------------------------------------------------------------ models
    def model(self) -> Spec:
        blocks: list[str] = []
        for stmt in self.decl.body:
            if isinstance(stmt, (ast.Dims, ast.Hyper)):  # they were accepted and ignored
                what = "dims" if isinstance(stmt, ast.Dims) else "hypers"
                raise NlcError(f"a model's {what} do not reach its layers: each layer takes "
                               "its own", stmt.span,
                               hint=f"set the {what} in each layer, or with -D NAME=VALUE, "
                                    "which sets them in every layer of the file")
            if isinstance(stmt, ast.Block):
                for name in stmt.layers:
                    if name not in self.layers:
                        kind = self.kinds.get(name)
                        raise NlcError(f"'{name}' is {'an' if kind == 'optimizer' else 'a'} "
                                       f"{kind}, not a layer: a block composes layers" if kind
                                       else f"'{name}' is not a layer of this file", stmt.span,
                                       hint=did_you_mean(name, self.layers)
                                       or f"the layers here: {', '.join(self.layers) or 'none'}")
                blocks.extend(stmt.layers)
            else:
                what = type(stmt).__name__.lower()
                raise NlcError(f"a model holds blocks, not a {what}", stmt.span)
        if not blocks:
            raise NlcError(f"model '{self.decl.name}' has no block", self.decl.span,
                           hint="e.g. block Mixer -> CMS")
        return Spec(self.decl.kind, self.decl.name, None, tuple(self.dims.items()),
                    tuple(self.hypers.items()), (), (), None, tuple(blocks), self.graph,
                    self.decl.span)


def _same_width(model: Spec, specs: dict) -> None:
    """A model adds its layers' outputs to one residual stream: they share d_model."""
    widths = {name: dict(specs[name].dims).get("d_model") for name in model.blocks}
    if len(set(widths.values())) > 1:
        shown = ", ".join(f"{name}: {w}" for name, w in widths.items())
        raise NlcError(f"the layers of model '{model.name}' differ in d_model ({shown})",
                       model.span, hint="a model's layers share one width")


def check(module: ast.Module, overrides: dict[str, float] | None = None) -> list[Spec]:
    """Check every declaration of a module; the first problem raises a located NlcError."""
    overrides = dict(overrides or {})
    seen: dict[str, ast.Decl] = {}
    for decl in module.decls:
        if decl.name in seen:
            raise NlcError(f"'{decl.name}' is declared twice in this file", decl.span)
        seen[decl.name] = decl
    # a model may come before the layers it stacks: the layers and optimizers first, then
    # the models, the specs in the file's order
    layers = {d.name: d for d in module.decls if d.kind is ast.DeclKind.LAYER}
    checked: dict[int, Spec] = {}
    models_last = sorted(range(len(module.decls)),
                         key=lambda i: module.decls[i].kind is ast.DeclKind.MODEL)
    for i in models_last:
        decl = sugar.rewrite(module.decls[i])  # max, min and clamp in their relu form
        spec = _DeclChecker(decl, overrides, layers, module.decls).run()
        if decl.kind is ast.DeclKind.MODEL:
            _same_width(spec, {s.name: s for s in checked.values()})
        checked[i] = spec
    specs = [checked[i] for i in sorted(checked)]
    if not specs:  # before the overrides: `nlc train` passes -D d_model to every spec
        raise NlcError("the spec declares nothing", Span(1, 1, 1, 2),
                       hint="start with: layer NAME { ... }")
    known = {name for s in specs for name, _ in s.dims + s.hypers}
    for name in overrides:
        if name not in known:
            raise NlcError(f"-D {name}: no dim or hyper of that name in this spec "
                           f"(it has {', '.join(sorted(known)) or 'none'})",
                           hint=did_you_mean(name, known))
    return specs


def parse_overrides(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, value = _parse_override(item)
        check_identifier(name, Span.none(), defining=False)
        if name in out and out[name] != value:  # the last would win without a word
            raise NlcError(f"-D {name} given twice ({out[name]:g} and {value:g})",
                           hint="give each dim or hyper once")
        out[name] = value
    return out
