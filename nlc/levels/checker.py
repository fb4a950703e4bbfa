"""Stage `check`: AST -> one `Spec` per declaration, each with its `LevelGraph`.

Rules enforced here (docs/language.md, "Checking"):
- names: defined once per declaration; uses resolve (did-you-mean hints otherwise);
- dims are positive integers, hypers finite reals; `-D name=value` overrides either;
- shapes agree (per head, per token); memories are applied to inputs of their input shape;
- frequencies: a level's period is a positive integer; `gradients at chunk(b)` needs a
  per-token level; for `init` and `generate` edges the source may not update faster than the
  target (a fast level cannot hand an initial state or weights to a slower one);
- no cycle among the transfer edges;
- algorithm and memory form fit (no closed-form implicit step for an MLP, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nlc.errors import NlcError, Span, did_you_mean
from nlc.levels import vocab
from nlc.levels.graph import Edge, LevelGraph
from nlc.levels.records import (PARAM_SHAPE, TRAIN, ContextVar, Dim, Frequency, LevelRecord,
                                MemoryForm, ParamRecord, Shape, StateRecord, Term, shape_text)
from nlc.levels.shapes import Env, infer
from nlc.levels.terms import const_eval, make_term
from nlc.syntax import ast
from nlc.syntax.format import format_expr
from nlc.syntax.names import check_identifier

TransferMode = vocab.TransferMode


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
    return name, number


class _DeclChecker:
    def __init__(self, decl: ast.Decl, overrides: dict[str, float], layers: dict[str, ast.Decl]):
        self.decl = decl
        self.overrides = overrides
        self.layers = layers
        self.defined: dict[str, Span] = {}
        self.dims: dict[str, int] = {}
        self.hypers: dict[str, float] = {}
        self.env = Env()
        self.params: list[ParamRecord] = []
        self.context: list[ContextVar] = []
        self.graph = LevelGraph(decl.name)
        self.is_optimizer = decl.kind is ast.DeclKind.OPTIMIZER

    # ------------------------------------------------------------ names
    def define(self, name: str, span: Span, kind: str, shape: Shape | None = None) -> None:
        if name in self.defined or name == TRAIN:
            first = self.defined.get(name)
            where = f" (first defined at line {first.line})" if first and first.known else ""
            raise NlcError(f"'{name}' is already defined{where}", span)
        self.defined[name] = span
        self.env.kinds[name] = kind
        if shape is not None:
            self.env.values[name] = shape

    @property
    def consts(self) -> dict[str, float]:
        return {**{k: float(v) for k, v in self.dims.items()}, **self.hypers}

    # ------------------------------------------------------------ statements
    def run(self) -> Spec:
        body = self.decl.body
        if self.decl.kind is ast.DeclKind.MODEL:
            return self.model()
        if self.is_optimizer:
            for name in vocab.OPTIMIZER_BUILTINS:
                shape = PARAM_SHAPE if name == "param" else ()
                self.defined[name] = Span.none()
                self.env.values[name] = shape
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
        records = self._levels_in_dataflow_order(levels)
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
        if not self.is_optimizer and output is None:
            raise NlcError(f"layer '{self.decl.name}' has no 'output'", self.decl.span,
                           hint="e.g. output memory @ W_o")
        self.check_frequencies()
        cycle = self.graph.find_cycle()
        if cycle:
            path = " -> ".join([cycle[0].source] + [e.target for e in cycle])
            span = next((e.span for e in cycle if e.span.known), self.decl.span)
            raise NlcError(f"levels form a cycle: {path}", span,
                           hint="one level of the loop must not feed the next")
        return Spec(self.decl.kind, self.decl.name, self.decl.claims, tuple(self.dims.items()),
                    tuple(self.hypers.items()), tuple(self.params), tuple(self.context), output,
                    (), self.graph, self.decl.span)

    def dims_stmt(self, stmt: ast.Dims) -> None:
        for d in stmt.defs:
            value = self.overrides.get(d.name)
            if value is None:
                value = const_eval(d.value, self.consts)
            if not float(value).is_integer() or value < 1:
                raise NlcError(f"dim '{d.name}' must be a positive whole number, got {value:g}",
                               d.value.span if d.name not in self.overrides else d.span)
            if value > 1 << 20:
                raise NlcError(f"dim '{d.name}' = {value:g} is larger than 1048576", d.span)
            self.define(d.name, d.span, "dim", ())
            self.dims[d.name] = int(value)

    def hyper_stmt(self, stmt: ast.Hyper) -> None:
        for d in stmt.defs:
            value = self.overrides.get(d.name)
            if value is None:
                value = const_eval(d.value, self.consts)
            self.define(d.name, d.span, "hyper", ())
            self.hypers[d.name] = float(value)

    def shape_of(self, exprs: tuple[ast.Expr, ...]) -> Shape:
        dims = []
        for e in exprs:
            size = const_eval(e, {k: float(v) for k, v in self.dims.items()})
            if not size.is_integer() or size < 1:
                raise NlcError(f"a dimension must be a positive whole number, got {size:g}",
                               e.span)
            dims.append(Dim(format_expr(e), int(size)))
        return tuple(dims)

    def param_stmt(self, stmt: ast.Param, level: str) -> None:
        shape = self.shape_of(stmt.shape)
        init = None
        if stmt.init is not None:
            init = make_term(stmt.init, vocab.PARAM_INITS, "initializer", self.env, self.consts)
        for name in stmt.names:
            self.define(name, stmt.span, "parameter", shape)
            self.params.append(ParamRecord(name, shape, init, level, stmt.span))

    def context_block(self, stmt: ast.Context) -> None:
        for source in stmt.sources:
            if source not in self.env.values:
                raise NlcError(f"context source '{source}' is not defined", stmt.span,
                               hint="a layer's input is 'x'; an optimizer level reads its gradients")
        for a in stmt.body:
            shape = infer(a.value, self.env)
            self.define(a.name, a.span, "context", shape)
            self.context.append(ContextVar(a.name, a.value, shape, a.span))

    # ------------------------------------------------------------ levels
    def _levels_in_dataflow_order(self, levels: list[ast.Level]) -> list[LevelRecord]:
        """Check levels so that a level reading another's output sees its shape first."""
        pending = {lv.name: lv for lv in levels}
        done: list[LevelRecord] = []
        while pending:
            progressed = False
            for name in list(pending):
                uses = _names_used(pending[name]) & set(pending)
                uses.discard(name)
                if uses:
                    continue
                record = self.level(pending.pop(name))
                self.graph.add_level(record)
                self.env.values[name] = record.output_shape
                done.append(record)
                progressed = True
            if not progressed:
                name = sorted(pending)[0]
                other = sorted((_names_used(pending[name]) & set(pending)) - {name})[0]
                raise NlcError(f"levels '{name}' and '{other}' read each other's output "
                               "(a cycle)", pending[name].span)
        for record in done:  # data flow between levels: a context edge
            for used in sorted(_names_used_record(record) & {r.name for r in done}):
                if used != record.name:
                    self.graph.add_edge(Edge(used, record.name, TransferMode.CONTEXT, False,
                                             record.span))
        return done

    def level(self, stmt: ast.Level) -> LevelRecord:
        unit = Frequency.STEP if self.is_optimizer else Frequency.TOKEN
        period = 1
        if stmt.every is not None:
            unit = Frequency.TOKEN if stmt.every.unit is ast.Unit.TOKEN else Frequency.STEP
            count = const_eval(stmt.every.count, self.consts)
            if not count.is_integer() or count < 1:
                raise NlcError(f"a level's period must be a positive whole number, got {count:g}",
                               stmt.every.count.span)
            period = int(count)
        if self.is_optimizer and unit == Frequency.TOKEN:
            raise NlcError("an optimizer's levels update every N steps, not tokens", stmt.span)
        chunk = None
        if stmt.chunk is not None:
            size = const_eval(stmt.chunk, self.consts)
            if not size.is_integer() or size < 1:
                raise NlcError(f"gradient chunk must be a positive whole number, got {size:g}",
                               stmt.chunk.span)
            if unit != Frequency.TOKEN or period != 1:
                raise NlcError("'gradients at chunk(b)' needs a level that updates every token",
                               stmt.chunk.span,
                               hint="with 'every C tokens' the whole chunk already shares one state")
            chunk = int(size)
        env = self.env.child(allow_memories=True)
        if stmt.over is not None:
            if not self.is_optimizer:
                raise NlcError("'over gradients' belongs in an optimizer's level", stmt.span)
            self.define(stmt.over, stmt.span, "gradient", PARAM_SHAPE)
            env.values[stmt.over] = PARAM_SHAPE
        elif self.is_optimizer:
            raise NlcError("an optimizer's level must say what it learns from: "
                           "'over gradients g'", stmt.span)
        states = [s for s in stmt.body if isinstance(s, ast.State)]
        clauses: dict[ast.ClauseKind, list[ast.Clause]] = {k: [] for k in ast.ClauseKind}
        for item in stmt.body:
            if isinstance(item, ast.Clause):
                clauses[item.kind].append(item)
        for kind, found in clauses.items():
            if len(found) > 1 and kind is not ast.ClauseKind.APPLY:
                raise NlcError(f"a level has at most one '{kind.value}' clause "
                               "(list several retentions in one, separated by commas)",
                               found[1].span)
        if len(states) > 1:
            raise NlcError("several states in one level are not supported yet", states[1].span,
                           hint="give each state its own level")
        record_states: tuple[StateRecord, ...] = ()
        if states:
            state = self.state_stmt(states[0], env)
            env.memories[state.name] = state.form
            if state.form.kind in ("vector", "diagonal", "matrix", "like"):
                env.values[state.name] = state.form.state_shape
            record_states = (state,)
        has_rule = any(clauses[k] for k in (ast.ClauseKind.OBJECTIVE, ast.ClauseKind.ALGORITHM,
                                            ast.ClauseKind.RETENTION))
        if not states:
            if has_rule or clauses[ast.ClauseKind.READ]:
                raise NlcError(f"level '{stmt.name}' has rules but no state", stmt.span,
                               hint="declare what it learns: state S : matrix[d_v, d_k] = zeros")
            if unit == Frequency.TOKEN:
                raise NlcError(f"level '{stmt.name}' has no state; only step-frequency levels "
                               "may hold just parameters", stmt.span)
            return LevelRecord(stmt.name, unit, period, chunk, stmt.over, (), None, (), None, None,
                               False, (), tuple(p.name for p in self.params
                                                if p.level == stmt.name), (), stmt.span)
        objective = self.objective(clauses, env, stmt)
        retentions = self.retentions(clauses, env, record_states[0])
        algorithm = self.algorithm(clauses, env, stmt)
        self.check_fit(record_states[0], objective, retentions, algorithm, env)
        read, read_before, out_shape = None, False, ()
        if clauses[ast.ClauseKind.READ]:
            clause = clauses[ast.ClauseKind.READ][0]
            read, read_before = clause.values[0], clause.when == "before"
            out_shape = infer(read, env)
        elif not self.is_optimizer:
            raise NlcError(f"level '{stmt.name}' has no 'read' clause", stmt.span,
                           hint=f"e.g. read {record_states[0].name}(q)")
        applies = []
        for clause in clauses[ast.ClauseKind.APPLY]:
            if not self.is_optimizer:
                raise NlcError("'apply' belongs in an optimizer's level", clause.span)
            if clause.target != "param":
                raise NlcError(f"'apply' updates 'param', not '{clause.target}'", clause.span)
            shape = infer(clause.values[0], env)
            if shape not in ((), PARAM_SHAPE):
                raise NlcError(f"'apply' must give a parameter-shaped value, got "
                               f"{shape_text(shape)}", clause.values[0].span)
            applies.append((clause.target, clause.values[0]))
        if state.init == "learned":
            self.graph.add_edge(Edge(TRAIN, stmt.name, TransferMode.INIT, False, states[0].span))
        if _names_used(stmt) & ({c.name for c in self.context} | {p.name for p in self.params}):
            self.graph.add_edge(Edge(TRAIN, stmt.name, TransferMode.CONTEXT, False, stmt.span))
        return LevelRecord(stmt.name, unit, period, chunk, stmt.over, record_states, objective,
                           retentions, algorithm, read, read_before, tuple(applies),
                           tuple(p.name for p in self.params if p.level == stmt.name), out_shape,
                           stmt.span)

    def state_stmt(self, stmt: ast.State, env: Env) -> StateRecord:
        term = make_term(stmt.form, vocab.FORMS, "memory form", env, self.consts)
        form = self.memory_form(term, stmt)
        init = "zeros"
        if stmt.init is not None:
            init = make_term(stmt.init, vocab.INITS, "initial state", env, self.consts).kind
        if init == "identity" and not (form.kind == "matrix" and form.dims[0] == form.dims[1]):
            raise NlcError("'identity' needs a square matrix memory", stmt.init.span)
        if form.kind == "cache" and init != "zeros":
            raise NlcError("a cache starts empty; drop its initial state", stmt.init.span)
        self.define(stmt.name, stmt.span, "state")
        return StateRecord(stmt.name, form, init, stmt.span)

    def memory_form(self, term: Term, stmt: ast.State) -> MemoryForm:
        kind = term.kind
        if kind == "like":
            of = term.get("of")
            if not (isinstance(of, ast.Name) and of.id == "param"):
                raise NlcError("like(...) takes 'param'", of.span)
            if not self.is_optimizer:
                raise NlcError("like(param) is for optimizer states", stmt.span)
            return MemoryForm("like", ())
        if self.is_optimizer:
            raise NlcError("an optimizer's state is shaped like the parameter: like(param)",
                           stmt.form.span)
        if kind == "mlp":
            widths = term.get("widths")
            if not isinstance(widths, ast.Chain):
                raise NlcError("mlp(...) starts with its widths: mlp(d_k -> 4 * d_k -> d_v)",
                               stmt.form.span)
            dims = self.shape_of(widths.items)
            return MemoryForm("mlp", dims, term.get("act"), term.get("residual"),
                              term.get("norm"))
        names = [a.name for a in vocab.FORMS[kind].args]
        spelled = _form_exprs(stmt.form)
        dims = self.shape_of(tuple(spelled[:len(names)]))
        return MemoryForm(kind, dims)

    def objective(self, clauses, env: Env, stmt: ast.Level) -> Term | None:
        found = clauses[ast.ClauseKind.OBJECTIVE]
        if not found:
            raise NlcError(f"level '{stmt.name}' has a state but no objective", stmt.span,
                           hint="e.g. objective l2(S(k), v)")
        term = make_term(found[0].values[0], vocab.OBJECTIVES, "objective", env, self.consts)
        inner = term.get("loss") if term.kind == "omega" else term
        pred, target = inner.get("prediction"), inner.get("target")
        a, b = infer(pred, env), infer(target, env)
        if a != b:
            hint = None
            if a and b and [d.size for d in a] == [d.size for d in b]:
                hint = "the sizes agree here, but the dimensions are declared differently"
            raise NlcError(f"shape mismatch in objective {inner.kind}: prediction "
                           f"'{format_expr(pred)}' is {shape_text(a)} but target "
                           f"'{format_expr(target)}' is {shape_text(b)}", found[0].span, hint=hint)
        return term

    def retentions(self, clauses, env: Env, state: StateRecord) -> tuple[Term, ...]:
        found = clauses[ast.ClauseKind.RETENTION]
        if not found:
            return ()
        terms = tuple(make_term(v, vocab.RETENTIONS, "retention", env, self.consts)
                      for v in found[0].values)
        kinds = [t.kind for t in terms]
        if "none" in kinds and len(kinds) > 1:
            raise NlcError("'none' cannot be combined with another retention", found[0].span)
        if len(set(kinds)) != len(kinds):
            raise NlcError("the same retention is listed twice", found[0].span)
        for t in terms:
            if t.kind in ("decay", "weight_decay"):
                self.check_gate(t.get("alpha"), env, state, "decay gate")
        return tuple(t for t in terms if t.kind != "none")

    def check_gate(self, expr, env: Env, state: StateRecord, what: str) -> None:
        if not isinstance(expr, ast.Expr):  # a numeric default
            return
        shape = infer(expr, env)
        allowed = [()]
        if state.form.kind in ("vector", "diagonal", "matrix"):
            allowed.append(state.form.input_shape)
        if state.form.kind == "like":
            allowed.append(PARAM_SHAPE)
        if shape not in allowed:
            raise NlcError(f"{what} '{format_expr(expr)}' is {shape_text(shape)}; it must be a "
                           f"scalar" + (f" or {shape_text(allowed[1])} (per channel)"
                                        if len(allowed) > 1 else ""), expr.span)

    def algorithm(self, clauses, env: Env, stmt: ast.Level) -> Term:
        found = clauses[ast.ClauseKind.ALGORITHM]
        if not found:
            raise NlcError(f"level '{stmt.name}' has no 'algorithm'", stmt.span,
                           hint="e.g. algorithm gd(lr = beta)")
        return make_term(found[0].values[0], vocab.ALGORITHMS, "algorithm", env, self.consts)

    def check_fit(self, state: StateRecord, objective: Term, retentions, algorithm: Term,
                  env: Env) -> None:
        form, alg, obj = state.form.kind, algorithm.kind, objective.kind
        span = algorithm.span
        if (form == "cache") != (alg == "nonparametric"):
            raise NlcError("a 'cache' memory is solved by 'nonparametric', and only it",
                           span, hint="use state C : cache[d_k, d_v] with algorithm nonparametric")
        if alg == "nonparametric" and obj != "l2":
            raise NlcError("the non-parametric solution is derived for the l2 objective",
                           objective.span)
        if (obj == "ridge") != (alg == "exact"):
            raise NlcError("the ridge objective is solved by 'exact', and 'exact' solves only "
                           "ridge", span)
        if alg == "exact" and form != "matrix":
            raise NlcError("the exact ridge solve needs a matrix memory", span)
        if alg == "implicit":
            if form == "mlp":
                raise NlcError("the implicit (proximal) step has no closed form for an MLP memory",
                               span, hint="use gd or momentum, with 'gradients at chunk(b)'")
            if obj not in ("l2", "dot"):
                raise NlcError(f"the implicit step is solved in closed form for l2 and dot, not "
                               f"{obj}", span, hint="use gd for this objective")
        if alg == "newton_schulz" and form not in ("matrix", "like"):
            raise NlcError("Newton-Schulz orthogonalizes a matrix: it needs a matrix memory or "
                           "an optimizer state", span)
        if alg == "gd" and algorithm.get("steps") > 1 and form != "matrix":
            raise NlcError("several gradient steps per token are supported for matrix memories",
                           span)
        if any(t.kind == "lq" for t in retentions) and form != "mlp" and form != "matrix":
            raise NlcError("lq normalization needs a matrix or MLP memory", span)
        for name in ("lr", "momentum"):
            if vocab.ALGORITHMS[alg].arg(name) is not None:
                self.check_gate(algorithm.get(name), env, state, name.replace("lr", "learning rate"))

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
        levels = {lv.name for lv in self.graph.levels}
        for name in (stmt.source, stmt.target):
            if name not in levels:
                raise NlcError(f"'{name}' is not a level", stmt.span,
                               hint=did_you_mean(name, levels) or f"levels: {', '.join(sorted(levels))}")
        try:
            mode = TransferMode(stmt.mode)
        except ValueError:
            raise NlcError(f"unknown transfer mode '{stmt.mode}'", stmt.span,
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

    # ------------------------------------------------------------ models
    def model(self) -> Spec:
        blocks: list[str] = []
        for stmt in self.decl.body:
            if isinstance(stmt, ast.Dims):
                self.dims_stmt(stmt)
            elif isinstance(stmt, ast.Hyper):
                self.hyper_stmt(stmt)
            elif isinstance(stmt, ast.Block):
                for name in stmt.layers:
                    if name not in self.layers:
                        raise NlcError(f"'{name}' is not a layer of this file", stmt.span,
                                       hint=did_you_mean(name, self.layers))
                blocks.extend(stmt.layers)
            else:
                what = type(stmt).__name__.lower()
                raise NlcError(f"a model holds dims, hypers and blocks, not a {what}", stmt.span)
        if not blocks:
            raise NlcError(f"model '{self.decl.name}' has no block", self.decl.span,
                           hint="e.g. block Mixer -> CMS")
        return Spec(self.decl.kind, self.decl.name, None, tuple(self.dims.items()),
                    tuple(self.hypers.items()), (), (), None, tuple(blocks), self.graph,
                    self.decl.span)


def _form_exprs(form: ast.Expr) -> tuple[ast.Expr, ...]:
    if isinstance(form, ast.Index):
        return form.items
    if isinstance(form, ast.Call):
        return tuple(a.value if isinstance(a, ast.Keyword) else a for a in form.args)
    return ()


def _walk(node) -> list:
    """Every expression node under `node` (iterative: trees are depth-limited anyway)."""
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        out.append(n)
        if isinstance(n, (tuple, list)):
            stack.extend(n)
        elif hasattr(n, "__dataclass_fields__"):
            stack.extend(getattr(n, f) for f in n.__dataclass_fields__ if f != "span")
    return out


def _names_used(node) -> set[str]:
    return {n.id for n in _walk(node) if isinstance(n, ast.Name)} | {
        n.func for n in _walk(node) if isinstance(n, ast.Call)}


def _names_used_record(record: LevelRecord) -> set[str]:
    return _names_used((record.objective, record.retentions, record.algorithm, record.read))


def check(module: ast.Module, overrides: dict[str, float] | None = None) -> list[Spec]:
    """Check every declaration of a module; the first problem raises a located NlcError."""
    overrides = dict(overrides or {})
    seen: dict[str, ast.Decl] = {}
    layers: dict[str, ast.Decl] = {}
    specs = []
    for decl in module.decls:
        if decl.name in seen:
            raise NlcError(f"'{decl.name}' is declared twice in this file", decl.span)
        seen[decl.name] = decl
        spec = _DeclChecker(decl, overrides, layers).run()
        if decl.kind is ast.DeclKind.LAYER:
            layers[decl.name] = decl
        specs.append(spec)
    known = {name for s in specs for name, _ in s.dims + s.hypers}
    for name in overrides:
        if name not in known:
            raise NlcError(f"-D {name}: no dim or hyper of that name in this spec",
                           hint=did_you_mean(name, known))
    if not specs:
        raise NlcError("the spec declares nothing", Span(1, 1, 1, 2),
                       hint="start with: layer NAME { ... }")
    return specs


def parse_overrides(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, value = _parse_override(item)
        check_identifier(name, Span.none(), defining=False)
        out[name] = value
    return out
