"""Checking one declaration's levels: their heads (frequency, gradient names, state), reads
and rules (objective, retention, algorithm, apply), in the per-token schedule's order
(schedule.py), and the fit between memory form, objective and algorithm.

`LevelChecker` is a part of the declaration checker (checker.py), which provides the names,
constants and environment it reads: `define`, `consts`, `shape_of`, `env`, `params`,
`context`, `graph`, `is_optimizer`, `level_names`.
"""

from __future__ import annotations

from dataclasses import dataclass

from nlc import functions
from nlc.errors import NlcError
from nlc.levels import vocab
from nlc.levels.graph import Edge
from nlc.levels.records import (
    PARAM_IN,
    PARAM_OUT,
    PARAM_SHAPE,
    TRAIN,
    Frequency,
    LevelRecord,
    MemoryForm,
    Shape,
    StateRecord,
    Term,
    shape_text,
)
from nlc.levels.schedule import READ, level_uses, names_in, nodes_in, read_clause, schedule
from nlc.levels.shapes import Env, infer
from nlc.levels.terms import const_eval, make_term
from nlc.syntax import ast
from nlc.syntax.format import format_expr
from nlc.syntax.walk import nodes

TransferMode = vocab.TransferMode


@dataclass
class _Head:
    """A level's frequency, environment, clauses and state: what its read and rules need."""

    unit: str
    period: int
    chunk: int | None
    env: Env
    clauses: dict
    state: StateRecord | None
    param_shape: Shape


def _first(values, test):
    """The first node of a clause's values that passes `test`, or None."""
    return next((n for n in nodes(tuple(values)) if test(n)), None)


class LevelChecker:
    """The level-checking half of `_DeclChecker` (checker.py)."""

    def level_locals(self, levels: list[ast.Level]) -> None:
        """Gradient and input names of optimizer levels: local to their level, so several
        levels may all learn from `g`, but never a name defined elsewhere."""
        for stmt in levels:
            given = [(n, w) for n, w in ((stmt.over, "gradient"), (stmt.inputs, "input")) if n]
            if not self.is_optimizer and given:
                raise NlcError("'over gradients' belongs in an optimizer's level", stmt.span)
            if self.is_optimizer and stmt.over is None:
                raise NlcError("an optimizer's level must say what it learns from: "
                               "'over gradients g'", stmt.span)
            if stmt.over is not None and stmt.over == stmt.inputs:
                raise NlcError(f"'{stmt.over}' names both the gradient and the input", stmt.span)
            for name, what in given:
                if name in self.defined:
                    self.define(name, stmt.span, what)  # raises: already defined
                if self.level_names.get(name, what) != what:
                    raise NlcError(f"'{name}' is a {self.level_names[name]} in another level and "
                                   f"cannot be an {what} here", stmt.span)
                self.level_names[name] = what

    def check_levels(self, levels: list[ast.Level]) -> list[LevelRecord]:
        """Check each level's head, then its read and its rules in schedule order, so that a
        level using another's output sees that output's shape first."""
        spans = {lv.name: lv.span for lv in levels}
        for level in levels:
            _no_conv(level)
        for state in (s for lv in levels for s in lv.body if isinstance(s, ast.State)):
            if state.name in spans:  # before the schedule, which would call it a self-loop
                raise NlcError(f"'{state.name}' is already defined (a level, line "
                               f"{spans[state.name].line})", state.span,
                               hint="a state needs a name of its own: its level's name holds "
                                    "the level's read")
        valued = {lv.name for lv in levels if read_clause(lv) is not None
                  or (self.is_optimizer and any(isinstance(s, ast.State) for s in lv.body))}
        steps = schedule(levels, valued)
        by_name = {lv.name: lv for lv in levels}
        heads: dict[str, _Head] = {}
        reads: dict[str, tuple] = {}
        rules: dict[str, tuple] = {}
        for step, name in steps:
            stmt = by_name[name]
            if name not in heads:
                heads[name] = self.level_head(stmt)
            head = heads[name]
            head.env.values.update({n: self.env.values[n] for n in by_name
                                    if n in self.env.values})
            if step == READ:
                reads[name] = self.level_read(stmt, head)
                self.env.values[name] = reads[name][2]
            else:
                rules[name] = self.level_rules(stmt, head)
        records = [self.level_record(lv, heads[lv.name], reads[lv.name], rules[lv.name])
                   for lv in levels]
        for record, stmt in zip(records, levels):
            self.graph.add_level(record)
        loops = set()
        for stmt in levels:  # data flow between levels: a context edge
            in_read, in_rules = level_uses(stmt, set(by_name))
            used = {n.id for n in in_read + in_rules}
            if stmt.name in used:
                loops.add(stmt.name)
            for name in sorted(used - {stmt.name}):
                self.graph.add_edge(Edge(name, stmt.name, TransferMode.CONTEXT, False, stmt.span))
        self.steps, self.loops = steps, frozenset(loops)
        return records

    def check_learns(self, levels: list[ast.Level]) -> None:
        """An MLP memory of two or more layers that starts at zeros, with an activation that
        is 0 at 0, never moves: the last weight's gradient is e act(0)^T = 0 and every other
        weight's passes back through the last weight, 0. Refused unless an init or generate
        edge gives it another start (run after the transfer lines)."""
        seeded = {e.target for e in self.graph.edges
                  if e.mode in (TransferMode.INIT, TransferMode.GENERATE)}
        for stmt in levels:
            state = self.graph.level(stmt.name).state
            if state is None or state.form.kind != "mlp" or len(state.form.dims) < 3 \
                    or state.init != "zeros" or stmt.name in seeded:
                continue
            if functions.value_at_zero(state.form.act) != 0:
                continue
            written = next(s for s in stmt.body if isinstance(s, ast.State))
            raise NlcError(f"an MLP memory that starts at zeros never learns: every weight's "
                           f"gradient is zero there, since {state.form.act}(0) = 0; start it "
                           "`= learned`", (written.init or written).span,
                           hint=("a state without '= ...' starts at zeros; " if written.init is
                                 None else "") + f"state {state.name} : mlp(...) = learned draws "
                                "it normal(0.02) and meta-learns it")

    def level_head(self, stmt: ast.Level) -> _Head:
        """Frequency, gradient names and state of a level: what its read and rules need."""
        unit = Frequency.STEP if self.is_optimizer else Frequency.TOKEN
        period = 1
        if stmt.every is not None:
            unit = Frequency.TOKEN if stmt.every.unit is ast.Unit.TOKEN else Frequency.STEP
            count = const_eval(stmt.every.count, self.consts)
            if not count.is_integer() or count < 1:
                raise NlcError(f"a level's period must be a positive whole number, got {count:g}",
                               stmt.every.count.span)
            period = int(count)
            hypers = sorted({n.id for n in names_in(stmt.every.count)} & set(self.hypers))
            if self.is_optimizer and hypers:  # a hyper is a constructor argument too
                raise NlcError(f"an optimizer's period is fixed when it is compiled, so it may "
                               f"not use the hyper '{hypers[0]}' (the optimizer's constructor "
                               "would take it and ignore it)", stmt.every.count.span,
                               hint=f"declare it as a dim: dims {hypers[0]} = {count:g}")
        if self.is_optimizer and unit == Frequency.TOKEN:
            raise NlcError("an optimizer's levels update every N steps, not tokens", stmt.span)
        chunk = None
        if stmt.chunk is not None:
            size = const_eval(stmt.chunk, self.consts)
            if not size.is_integer() or size < 1:
                raise NlcError(f"gradient chunk must be a positive whole number, got {size:g}",
                               stmt.chunk.span)
            if size > vocab.MAX_GRAD_CHUNK:
                shown = f"{int(size)}" if size < 1e15 else f"{size:.4g}"
                raise NlcError(f"gradient chunk {shown} is larger than {vocab.MAX_GRAD_CHUNK}: "
                               f"its chunked form holds [chunk, chunk] products per head",
                               stmt.chunk.span, hint="Titans and TTT take mini-batches of 16 "
                               "to 64 tokens")
            if unit != Frequency.TOKEN or period != 1:
                raise NlcError("'gradients at chunk(b)' needs a level that updates every token",
                               stmt.chunk.span,
                               hint="with 'every C tokens' the whole chunk already shares one state")
            chunk = int(size)
        env = self.env.child(allow_memories=True)
        param_shape = PARAM_SHAPE
        if stmt.over is not None and stmt.inputs is not None:
            # the parameter is a matrix [out, in]; the level sees its output gradient and input
            param_shape = (PARAM_OUT, PARAM_IN)
            env.values.update({"param": param_shape, stmt.over: (PARAM_OUT,),
                               stmt.inputs: (PARAM_IN,)})
        elif stmt.over is not None:
            env.values[stmt.over] = PARAM_SHAPE
        states = [s for s in stmt.body if isinstance(s, ast.State)]
        if states and unit == Frequency.STEP and not self.is_optimizer:
            raise NlcError(f"level '{stmt.name}' of a layer has a state and updates every "
                           f"{period} step{'s' if period > 1 else ''}: in a layer, a state "
                           "updates with the tokens", stmt.every.span,
                           hint="write 'every N tokens' for a state; a level 'every N steps' "
                                "holds only `param`s, stepped by the optimizer")
        clauses: dict[ast.ClauseKind, list[ast.Clause]] = {k: [] for k in ast.ClauseKind}
        for item in stmt.body:
            if isinstance(item, ast.Clause):
                clauses[item.kind].append(item)
        for kind, found in clauses.items():
            if len(found) > 1 and kind is not ast.ClauseKind.APPLY:
                raise NlcError(f"a level has at most one '{kind.value}' clause", found[1].span,
                               hint=_ONE_CLAUSE_HINTS.get(kind))
        if len(states) > 1:
            raise NlcError("several states in one level are not supported yet", states[1].span,
                           hint="give each state its own level")
        state = None
        if states:
            state = self.state_stmt(states[0], env)
            env.memories[state.name] = state.form
            if state.form.kind in ("vector", "diagonal", "matrix", "like"):
                env.values[state.name] = state.form.state_shape
        has_rule = any(clauses[k] for k in (ast.ClauseKind.OBJECTIVE, ast.ClauseKind.ALGORITHM,
                                            ast.ClauseKind.RETENTION))
        if state is None:
            if has_rule or clauses[ast.ClauseKind.READ]:
                raise NlcError(f"level '{stmt.name}' has rules but no state", stmt.span,
                               hint="declare what it learns: state S : matrix[d_v, d_k] = zeros")
            if unit == Frequency.TOKEN:
                raise NlcError(f"level '{stmt.name}' has no state; only step-frequency levels "
                               "may hold just parameters", stmt.span)
        elif not clauses[ast.ClauseKind.READ] and not self.is_optimizer:
            raise NlcError(f"level '{stmt.name}' has no 'read' clause", stmt.span,
                           hint=f"e.g. read {state.name}(q)")
        return _Head(unit, period, chunk, env, clauses, state, param_shape)

    def level_read(self, stmt: ast.Level, head: _Head) -> tuple[ast.Expr | None, bool, Shape]:
        """The read and its shape. An optimizer level without one reads its state (after
        the write), so that another level's `apply` can use it by the level's name."""
        clause = read_clause(stmt)
        if clause is not None:
            cache = head.state is not None and head.state.form.kind == "cache"
            if cache and clause.when in ("before", "start"):  # before the chunk-start message
                raise NlcError(f"a cache's read includes the token's own key and value; 'read "
                               f"{clause.when}' would be dropped", clause.span)
            if clause.when == "start" and head.chunk is None and head.period == 1:
                raise NlcError("'read start' reads the state at the chunk start: the level needs "
                               "'gradients at chunk(b)' or 'every C tokens'", clause.span)
            before = clause.when in ("before", "start")
            return clause.values[0], before, infer(clause.values[0], head.env)
        if self.is_optimizer and head.state is not None:
            return ast.Name(head.state.name, head.state.span), False, head.state.form.state_shape
        return None, False, ()

    def level_rules(self, stmt: ast.Level, head: _Head) -> tuple:
        """(objective, retentions, algorithm, applies) of a level with a state."""
        if head.state is None:
            return (), (), (), ()
        clauses, env, state = head.clauses, head.env, head.state
        for clause in (c for found in clauses.values() for c in found):
            named = _first(clause.values, lambda n: isinstance(n, ast.Name) and n.id == "head")
            if named is not None:  # derive has no head index: the context computes with it
                raise NlcError("'head' is known in the context block only", named.span,
                               hint="name a context value made from it (e.g. gamma = 1 - 2 ^ "
                                    "(-5 - head)) and use that name here")
            product = _first(clause.values, lambda n: isinstance(n, ast.BinOp)
                             and n.op is ast.BinOpKind.MATMUL)
            if self.is_optimizer and product is not None:  # `g @ g` computed g^T g
                where = "'apply'" if clause.kind is ast.ClauseKind.APPLY else \
                    "an optimizer's rules"
                raise NlcError(f"'@' has no meaning in {where}: an optimizer's values are "
                               "shaped like the parameter and combine entry by entry",
                               product.span, hint="use '*' for an entrywise product, or "
                                                  "dot(a, b) for the sum over all entries")
        objectives = self.objectives(clauses, env, stmt, state)
        retentions = self.retentions(clauses, env, state)
        algorithms = self.algorithms(clauses, env, stmt, len(objectives))
        if state.form.kind == "cache":
            self.check_cache(stmt, head, objectives[0], retentions)
        for objective, algorithm in zip(objectives, algorithms):
            self.check_fit(state, objective, retentions, algorithm, env)
        if len(objectives) > 1:
            self.check_steps(state, head, retentions, algorithms)
        applies = []
        for clause in clauses[ast.ClauseKind.APPLY]:
            if not self.is_optimizer:
                raise NlcError("'apply' belongs in an optimizer's level", clause.span)
            if clause.target != "param":
                raise NlcError(f"'apply' updates 'param', not '{clause.target}'", clause.span)
            norm = _first(clause.values, lambda n: isinstance(n, ast.Call)
                          and n.func in functions.of_kind(functions.Kind.VECTORWISE))
            if norm is not None:  # compile refused it; check says so first
                raise NlcError(f"{norm.func}() acts on a vector's last axis, which an "
                               "optimizer's values do not have (they are shaped like the "
                               "parameter)", norm.span,
                               hint="normalize by the whole parameter instead, e.g. "
                                    "g / sqrt(sqnorm(g) + eps)")
            apply_env = env
            if stmt.name not in env.values:  # its own name: its read after this step's write
                apply_env = env.child()
                apply_env.values[stmt.name] = self.level_read(stmt, head)[2]
            shape = infer(clause.values[0], apply_env)
            if shape not in ((), head.param_shape):
                raise NlcError(f"'apply' must give a value shaped like the parameter "
                               f"({shape_text(head.param_shape)}), got {shape_text(shape)}",
                               clause.values[0].span)
            applies.append((clause.target, clause.values[0]))
        return objectives, retentions, algorithms, tuple(applies)

    def level_record(self, stmt: ast.Level, head: _Head, read: tuple, rules: tuple) -> LevelRecord:
        objectives, retentions, algorithms, applies = rules
        objective, algorithm = (objectives[0], algorithms[0]) if objectives else (None, None)
        expr, before, out_shape = read
        if head.state is not None and head.state.init == "learned":
            self.graph.add_edge(Edge(TRAIN, stmt.name, TransferMode.INIT, False,
                                     head.state.span))
        used = {n.id for n in names_in(stmt)}
        if used & ({c.name for c in self.context} | {p.name for p in self.params}):
            self.graph.add_edge(Edge(TRAIN, stmt.name, TransferMode.CONTEXT, False, stmt.span))
        states = (head.state,) if head.state is not None else ()
        rows = _rate_rows(head.state, algorithm, head.env)
        shrink = next((t for t in retentions if t.kind == "elastic_net"), None)
        if shrink is not None and _rate_shape(algorithm, head.env) not in (None, ()):
            raise NlcError("elastic_net's threshold is the step's rate times l1, derived for "
                           "one rate: with a rate per channel each channel would need its own",
                           shrink.span, hint="make the learning rate a scalar (a per-channel "
                           "rate works without elastic_net)")
        return LevelRecord(stmt.name, head.unit, head.period, head.chunk, stmt.over, states,
                           objective, retentions, algorithm, expr, before, applies,
                           tuple(p.name for p in self.params if p.level == stmt.name), out_shape,
                           stmt.span, stmt.inputs,
                           getattr(read_clause(stmt), "when", None) == "start",
                           rows,
                           tuple(zip(objectives[1:], algorithms[1:])),
                           _gate_rows(head.state, retentions, head.env),
                           self._fixed_dims(stmt))

    def _fixed_dims(self, stmt: ast.Level) -> tuple[str, ...]:
        """The dims a level's period or gradient chunk is spelled with: compiled in."""
        spelled = [e for e in (getattr(stmt.every, "count", None), stmt.chunk) if e is not None]
        return tuple(sorted({n.id for e in spelled for n in names_in(e)} & set(self.dims)))

    def state_stmt(self, stmt: ast.State, env: Env) -> StateRecord:
        term = make_term(stmt.form, vocab.FORMS, "memory form", env, self.consts)
        form = self.memory_form(term, stmt, env)
        init, draw = "zeros", ("normal", 0.02)
        if stmt.init is not None:
            term = make_term(stmt.init, vocab.INITS, "initial state", env, self.consts)
            init = term.kind
            if init == "learned" and self.is_optimizer:
                raise NlcError("an optimizer's state is not learned: no training level runs "
                               "above an optimizer", stmt.init.span,
                               hint="start it at zeros or at the parameter (= param)")
            if init == "learned":
                scheme = term.get("scheme")
                draw = (scheme, float(term.get("std")) if scheme == "normal" else None)
                given = stmt.init.positional[:1] + tuple(
                    k for k in stmt.init.keywords if k.name == "std") if isinstance(
                    stmt.init, ast.Call) else ()
                if scheme == "xavier" and given:
                    raise NlcError("a xavier draw sets its own scale; drop std or use "
                                   "scheme = normal", stmt.init.span)
        if init == "identity" and not (form.kind == "matrix" and form.dims[0] == form.dims[1]):
            raise NlcError("'identity' needs a square matrix memory", stmt.init.span)
        if init == "param" and form.kind != "like":
            raise NlcError("only an optimizer state shaped like(param) can start as the "
                           "parameter", stmt.init.span)
        if form.kind == "cache" and stmt.init is not None:  # `= zeros` too: it means nothing
            raise NlcError("a cache starts empty; drop its initial state", stmt.init.span)
        self.define(stmt.name, stmt.span, "state")
        return StateRecord(stmt.name, form, init, stmt.span, draw)

    def memory_form(self, term: Term, stmt: ast.State, env: Env) -> MemoryForm:
        kind = term.kind
        if kind == "like":
            of = term.get("of")
            if not (isinstance(of, ast.Name) and of.id == "param"):
                raise NlcError("like(...) takes 'param'", of.span)
            if not self.is_optimizer:
                raise NlcError("like(param) is for optimizer states", stmt.span)
            shape = env.values["param"]
            return MemoryForm("like", () if shape == PARAM_SHAPE else shape)
        if self.is_optimizer:
            raise NlcError("an optimizer's state is shaped like the parameter: like(param)",
                           stmt.form.span)
        if kind == "mlp":
            widths = term.get("widths")
            if not isinstance(widths, ast.Chain):
                raise NlcError("mlp(...) starts with its widths: mlp(d_k -> 4 * d_k -> d_v)",
                               stmt.form.span)
            dims = self.shape_of(widths.items)
            narrow = next((d for d in dims if d.size == 1), None)
            if narrow is not None:  # a [1, 1] weight is a scalar to SymPy: no chain rule
                raise NlcError(f"an MLP memory's widths must be at least 2, got {narrow} = 1",
                               widths.span, hint="use a vector or matrix memory for width 1")
            if term.get("residual") and dims[0].size != dims[-1].size:  # by size: the ends
                raise NlcError(f"a residual MLP adds its input to its output, but its widths go "
                               f"from {dims[0]} = {dims[0].size} to {dims[-1]} = {dims[-1].size}",
                               widths.span, hint="the first and last widths must be equal")
            return MemoryForm("mlp", dims, term.get("act"), term.get("residual"),
                              term.get("norm"))
        spelled = _form_exprs(stmt.form, vocab.FORMS[kind])
        return MemoryForm(kind, self.shape_of(spelled))

    def objectives(self, clauses, env: Env, stmt: ast.Level,
                   state: StateRecord) -> tuple[Term, ...]:
        """The objective of each step of a token: one, or several joined by `then`."""
        found = clauses[ast.ClauseKind.OBJECTIVE]
        if not found:
            raise NlcError(f"level '{stmt.name}' has a state but no objective", stmt.span,
                           hint="e.g. objective l2(S(k), v)")
        values = found[0].values
        return tuple(self.objective(v, env, found[0].span if len(values) == 1 else v.span, state)
                     for v in values)

    def objective(self, value: ast.Expr, env: Env, span, state: StateRecord) -> Term:
        term = make_term(value, vocab.OBJECTIVES, "objective", env, self.consts)
        if term.kind == "omega" and term.get("window") > vocab.MAX_WINDOW:
            raise NlcError(f"omega windows longer than {vocab.MAX_WINDOW} tokens are not derived "
                           "symbolically yet", term.span,
                           hint=f"window = {vocab.MAX_WINDOW} at most: derivation unrolls the "
                                "window, one term per token")
        decay = term.get("decay") if term.kind == "omega" else None
        if isinstance(decay, ast.Expr) and infer(decay, env) != ():  # raised to the j-th power
            raise NlcError(f"an omega window's decay is a scalar, raised to the j-th power for "
                           f"the token j back; '{format_expr(decay)}' is "
                           f"{shape_text(infer(decay, env))}", decay.span,
                           hint="a weight per channel goes into the inner loss: "
                                "l2(S(k), v, weight = ...) weighs each token's loss")
        inner = term.get("loss") if term.kind == "omega" else term
        pred, target = inner.get("prediction"), inner.get("target")
        _check_prediction(pred, state)
        a, b = infer(pred, env), infer(target, env)
        if a != b:
            hint = None
            if a and b and [d.size for d in a] == [d.size for d in b]:
                hint = "the sizes agree here, but the dimensions are declared differently"
            elif a and not b and state.form.kind == "like":  # an optimizer: no context
                hint = ("an objective's target has the prediction's shape (a number does not "
                        "broadcast there): spell a number x as g * 0 + x, with g the name after "
                        "`over gradients`")
            elif a and not b:  # broadcasting stops at an objective's two sides
                hint = ("an objective's target has the prediction's shape (a number does not "
                        "broadcast there): a target of ones is a context value or parameter "
                        "of ones")
            raise NlcError(f"shape mismatch in objective {inner.kind}: prediction "
                           f"'{format_expr(pred)}' is {shape_text(a)} but target "
                           f"'{format_expr(target)}' is {shape_text(b)}", span, hint=hint)
        delta = inner.get("delta") if inner.kind == "huber" else None
        if isinstance(delta, ast.Expr) and infer(delta, env) != ():
            raise NlcError(f"a huber objective's delta is one threshold per token (a scalar); "
                           f"'{format_expr(delta)}' is {shape_text(infer(delta, env))}",
                           delta.span,
                           hint="a threshold per channel is not derived: give a scalar, "
                                "e.g. the channels' mean, total(x) / d for x of size d")
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
            if t.kind == "kl":
                self.check_kl(t, state)
            if t.kind == "lq":
                self.check_lq(t, state)
            if t.kind in ("decay", "weight_decay"):
                self.check_gate(t.get("alpha"), env, state, "decay gate", rows=True)
                if _gate_rows(state, (t,), env) and t.get("order") == "proximal":
                    raise NlcError("a decay per output channel is derived at the orders before "
                                   "and parallel, not proximal", t.span,
                                   hint="order = before (Diag(g) S, then the step)")
            if t.kind == "erase":
                self.check_erase(t, env, state)
        return tuple(t for t in terms if t.kind != "none")

    def check_kl(self, term: Term, state: StateRecord) -> None:
        """kl keeps the state on the simplex through log W: it needs a start with positive
        entries (`learned` is normalized onto the simplex), not zeros."""
        if self.is_optimizer:
            raise NlcError("'kl' keeps a memory on the simplex, and an optimizer's state starts "
                           "at zeros or at the parameter, where log W is not finite", term.span)
        if state.init != "learned":  # zeros, identity's off-diagonal, normal's negatives
            raise NlcError(f"'kl' takes log W of the state, and a start '{state.init}' has "
                           f"entries that are not positive (log 0 = -inf, the log of a "
                           f"negative NaN: every gradient NaN)", term.span,
                           hint=f"start it on the simplex: state {state.name} : ... = learned")

    def check_lq(self, term: Term, state: StateRecord) -> None:
        """lq divides the state by a power of its norm, 0 / 0 at a state of zeros (q > 2);
        below q = 2 its gradient is infinite there."""
        q = term.get("q")
        at_zero = state.form.kind in ("matrix", "mlp") and state.init == "zeros"
        if at_zero and isinstance(q, (int, float)) and q != 2:
            raise NlcError(f"'lq(q = {q:g})' applies A / ||A||_q^{q - 2:g} to the state, which "
                           f"is not finite at the start '= zeros' (every output NaN from the "
                           f"first token)", term.span,
                           hint=f"start it away from zero: state {state.name} : ... = learned "
                                f"(or identity)")

    def check_erase(self, term: Term, env: Env, state: StateRecord) -> None:
        """erase(k, rate): k is an input of the memory's first map; rate a scalar or one per
        channel of k."""
        if state.form.kind not in ("matrix", "mlp"):
            raise NlcError(f"'erase' applies to matrix and mlp memories, not {state.form.kind}",
                           term.span)
        key = term.get("key")
        shape = infer(key, env)
        if shape != state.form.input_shape:
            raise NlcError(f"the erased key '{format_expr(key)}' is {shape_text(shape)}; the "
                           f"memory takes {shape_text(state.form.input_shape)}", key.span)
        rate = term.get("rate")
        if not isinstance(rate, ast.Expr):
            return
        rate_shape = infer(rate, env)
        if rate_shape not in ((), shape):
            raise NlcError(f"the erase rate '{format_expr(rate)}' is {shape_text(rate_shape)}; "
                           f"it must be a scalar or {shape_text(shape)}, one per channel of the "
                           f"erased key '{format_expr(key)}'", rate.span,
                           hint="a per-channel rate a erases W k (a * k)^T (RWKV-7's in-context "
                                "rate)")

    def check_gate(self, expr, env: Env, state: StateRecord, what: str,
                   rows: bool = False) -> None:
        """A gate or rate: a scalar or one per input channel; with `rows`, also one per
        output channel (row) of a matrix memory, a rate that scales the rows of the step."""
        if not isinstance(expr, ast.Expr):  # a numeric default
            return
        shape = infer(expr, env)
        allowed = [()]
        if state.form.kind in ("vector", "diagonal", "matrix") or state.form.is_matrix:
            allowed.append(state.form.input_shape)
        elif state.form.kind == "like":
            allowed.append(PARAM_SHAPE)
        per_row = rows and state.form.kind == "matrix"
        if per_row and state.form.output_shape not in allowed:
            allowed.append(state.form.output_shape)
        if shape not in allowed:
            text = f" or {shape_text(allowed[1])} (per channel)" if len(allowed) > 1 else ""
            if len(allowed) > 2:
                text = (f", {shape_text(allowed[1])} (per input channel) or "
                        f"{shape_text(allowed[2])} (per output channel)")
            hint = None
            if state.form.kind == "matrix" and shape == state.form.output_shape:
                hint = ("a rate per output channel is derived for the gd and implicit "
                        "algorithms (Longhorn's per-channel beta)")
            raise NlcError(f"{what} '{format_expr(expr)}' is {shape_text(shape)}; it must be a "
                           f"scalar{text}", expr.span, hint=hint)

    def algorithms(self, clauses, env: Env, stmt: ast.Level, steps: int) -> tuple[Term, ...]:
        """The algorithm of each of the `steps` steps of a token: one per step, joined by
        `then`, or one for all of them."""
        found = clauses[ast.ClauseKind.ALGORITHM]
        if not found:
            raise NlcError(f"level '{stmt.name}' has no 'algorithm'", stmt.span,
                           hint="e.g. algorithm gd(lr = beta)")
        terms = tuple(make_term(v, vocab.ALGORITHMS, "algorithm", env, self.consts)
                      for v in found[0].values)
        if len(terms) not in (1, steps):
            raise NlcError(f"the objective takes {steps} step{'s' if steps > 1 else ''} per "
                           f"token but the algorithm lists {len(terms)}", found[0].span,
                           hint="give one algorithm for every objective, joined by 'then' "
                                "in the same order, or one algorithm for all of them")
        return terms * steps if len(terms) == 1 else terms

    def check_steps(self, state: StateRecord, head: _Head, retentions, algorithms) -> None:
        """Several (objective, algorithm) steps per token: plain gradient steps on a matrix
        memory, each at the state the step before it left (docs/language.md, section 11)."""
        for term in algorithms:
            if term.kind != "gd":
                raise NlcError(f"several objectives per token are stepped by gd, not "
                               f"{term.kind}", term.span,
                               hint="one objective per level for other algorithms")
            if term.get("steps") > 1:
                raise NlcError("gd(steps = n) repeats one objective; with several objectives "
                               "each takes one step", term.span,
                               hint="list the objective again with 'then' to repeat it")
        if state.form.kind != "matrix":
            raise NlcError(f"several objectives per token are supported for matrix memories, "
                           f"not {state.form.kind}", state.span,
                           hint=f"state {state.name} : matrix[d_v, d_k]")
        if head.chunk is not None or head.period > 1:
            raise NlcError("several objectives per token are derived for gradients at the "
                           "current state", algorithms[0].span,
                           hint="drop `gradients at chunk(...)` / `every C tokens`")
        for term in retentions:
            if term.kind == "kl":
                raise NlcError("several objectives per token are derived for retentions other "
                               "than kl", term.span)

    def check_cache(self, stmt: ast.Level, head: _Head, objective: Term, retentions) -> None:
        """A cache is attention: every token's read weighs all cached tokens up to and
        including its own, every token. `decay(f)` multiplies every cached token's weight by
        the scalar gate f at each later token (the Forgetting Transformer's forget gate: token
        s weighs exp(c q_t . k_s) prod_{s<j<=t} f_j). What would change that is refused, not
        dropped: another retention, a decay per channel or at another order (parallel would
        weigh each token by its own gate too), a period or gradient chunk, a read before the
        write or at the chunk start, and a read with another query than the objective's
        prediction."""
        for term in retentions:
            if term.kind != "decay":
                raise NlcError(f"a cache takes no '{term.kind}' retention: attention keeps "
                               f"every token; its only retention is decay(f)", term.span,
                               hint="decay(f) with a scalar gate f multiplies every cached "
                                    "token's weight by f at each later token (the Forgetting "
                                    "Transformer)")
            if term.get("order") != "before":
                raise NlcError(f"a cache's decay is taken at the default order (before): each "
                               f"token's own entry is not gated; 'order = "
                               f"{term.get('order')}' would gate it too", term.span,
                               hint="drop the order")
        if head.period > 1 or head.chunk is not None:
            raise NlcError("a cache is read and written every token: no 'every C tokens' or "
                           "'gradients at chunk(b)'", stmt.span)
        clause = read_clause(stmt)
        if clause is None:
            return
        name = head.state.name  # a read before or at the start: refused by level_read
        reads = [n for n in nodes((clause.values[0],))
                 if isinstance(n, ast.Call) and n.func == name]
        pred = objective.get("prediction")
        if isinstance(pred, ast.Call) and pred.func == name and reads \
                and any(format_expr(r) != format_expr(pred) for r in reads):
            raise NlcError(f"a cache is read with the query its objective predicts from: "
                           f"{format_expr(pred)}", reads[0].span,
                           hint="the objective's prediction names the query and its weight the "
                                "keys; read with another query means another objective")
        value = clause.values[0]
        if not (isinstance(value, ast.Call) and value.func == name):  # `2 * C(q)` read as C(q)
            raise NlcError(f"a cache's read is the cache applied to the query, "
                           f"{format_expr(pred) if isinstance(pred, ast.Call) else name + '(q)'}"
                           f", alone: '{format_expr(value)}' would be read as that",
                           value.span, hint=f"apply the rest where the level's name is used, "
                                            f"e.g. output (2 * {stmt.name}) @ W_o")

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
        if alg == "exact":
            if state.init != "zeros":  # S = G (H + reg I)^-1 has no state of its own to set
                raise NlcError(f"the exact ridge solve starts from empty statistics; an "
                               f"initial state '{state.init}' has no meaning for it",
                               state.span, hint="drop the initializer (zeros)")
            gates = [t for t in retentions if t.kind in ("decay", "weight_decay")]
            other = next((t for t in retentions
                          if t.kind not in ("none", "decay", "weight_decay")), None)
            if other is not None:
                raise NlcError(f"the exact ridge solve keeps its statistics with a decay; "
                               f"'{other.kind}' has no meaning for it", other.span,
                               hint="use decay(alpha) or none")
            if len(gates) > 1:
                raise NlcError("the exact ridge solve takes one decay", gates[1].span)
            gate = gates[0].get("alpha") if gates else None
            if isinstance(gate, ast.Expr) and infer(gate, env) != ():
                raise NlcError(f"the ridge statistics H and G take a scalar decay; "
                               f"'{format_expr(gate)}' is {shape_text(infer(gate, env))}",
                               gate.span, hint="a scalar gate, e.g. sigmoid(x @ w) with w : "
                               "[d_model]")
        kinds = {t.kind: t for t in retentions}
        if "erase" in kinds and (alg not in ("gd", "implicit") or "kl" in kinds):
            raise NlcError("'erase' is derived with the gd and implicit algorithms, without a "
                           "kl retention", kinds["erase"].span)
        if alg == "implicit":
            if form == "mlp":
                raise NlcError("the implicit (proximal) step has no closed form for an MLP memory",
                               span, hint="use gd or momentum, with 'gradients at chunk(b)'")
            if form == "diagonal":
                raise NlcError("the implicit step is solved for matrix, vector and optimizer "
                               "memories, not diagonal", span,
                               hint="a diagonal memory steps with gd")
            if obj not in ("l2", "dot"):
                raise NlcError(f"the implicit step is solved in closed form for l2 and dot, not "
                               f"{obj}", span, hint="use gd for this objective")
        if alg == "newton_schulz" and form not in ("matrix", "like"):
            raise NlcError("Newton-Schulz orthogonalizes a matrix: it needs a matrix memory or "
                           "an optimizer state", span)
        if alg == "gd" and algorithm.get("steps") > 1 and form != "matrix":
            raise NlcError("several gradient steps per token are supported for matrix memories",
                           span)
        lq = next((t for t in retentions if t.kind == "lq"), None)
        if lq is not None and form != "mlp" and form != "matrix":
            raise NlcError("lq normalization needs a matrix or MLP memory",
                           lq.span if lq.span.known else span)
        for name in ("lr", "momentum"):
            if vocab.ALGORITHMS[alg].arg(name) is not None:
                self.check_gate(algorithm.get(name), env, state, name.replace("lr", "learning rate"),
                                rows=name == "lr" and alg in ("gd", "implicit"))
        rate = algorithm.get("lr") if vocab.ALGORITHMS[alg].arg("lr") is not None else None
        per_row = state.form.output_shape != state.form.input_shape  # [d, d]: per input
        if alg == "implicit" and form == "matrix" and isinstance(rate, ast.Expr) \
                and infer(rate, env) not in ((), state.form.output_shape if per_row else ()):
            raise NlcError("the implicit step is solved with a scalar rate or, on a matrix "
                           "memory, one per output channel; a rate per input channel couples "
                           "the channels of the step", rate.span,
                           hint="use gd for a rate per input channel")


_ONE_CLAUSE_HINTS = {
    ast.ClauseKind.RETENTION: "list several retentions in one clause, separated by commas",
    ast.ClauseKind.OBJECTIVE: "several steps per token go in one clause, in order: "
                              "objective l2(S(k1), v1) then l2(S(k2), v2)",
    ast.ClauseKind.ALGORITHM: "one algorithm for all steps, or one per objective joined by "
                              "'then': algorithm gd(lr = b1) then gd(lr = b2)",
}


def _check_prediction(pred: ast.Expr, state: StateRecord) -> None:
    """The gradient is taken through the prediction, so it must be the memory applied to an
    input, `S(k)`; an optimizer's like(param) state is its own prediction (`dot(m, g)`). A
    cache's prediction is not differentiated (the non-parametric solve reads its target)."""
    name, form = state.name, state.form
    if form.kind == "cache" or (isinstance(pred, ast.Call) and pred.func == name):
        return
    if isinstance(pred, ast.Name) and pred.id == name:
        if form.kind == "like":
            return
        value = {"vector": f"<{name}, k>", "diagonal": f"{name} * k"}.get(form.kind, f"{name} k")
        raise NlcError(f"apply the memory to its input: {name}(k), which is {value} (a layer's "
                       f"{form.kind} memory is not its own prediction)", pred.span,
                       hint="a bare state is the prediction only in an optimizer's level, as "
                            f"in dot(m, g); a running sum of the keys is dot({name}(k), 1)")
    raise NlcError(f"the prediction must be the memory applied to an input, e.g. {name}(k), "
                   f"not '{format_expr(pred)}'", pred.span,
                   hint="the gradient is taken through the prediction alone: an mlp form's "
                        "residual and norm flags add the input and a norm; other terms go in "
                        "the read")


def _form_exprs(form: ast.Expr, entry: vocab.Entry) -> tuple[ast.Expr, ...]:
    """A memory form's dimensions as written, in the entry's argument order (``matrix[d_v,
    d_k]``, ``matrix(d_in = d_k, d_out = d_v)``); make_term has validated them."""
    items = form.items if isinstance(form, ast.Index) else form.args
    given = dict(zip([a.name for a in entry.args],
                     [i for i in items if not isinstance(i, ast.Keyword)]))
    given |= {i.name: i.value for i in items if isinstance(i, ast.Keyword)}
    return tuple(given[a.name] for a in entry.args if a.name in given)


def _gate_rows(state: StateRecord | None, retentions, env: Env) -> bool:
    """Whether a matrix memory's decay gate is one per output channel (its rows), spelled as
    the output dim and not as the input one, as a rate per row is (`_rate_rows`)."""
    if state is None or state.form.kind != "matrix":
        return False
    for t in retentions:
        gate = t.get("alpha") if t.kind in ("decay", "weight_decay") else None
        if isinstance(gate, ast.Expr):
            shape = infer(gate, env)
            if shape == state.form.output_shape and shape != state.form.input_shape:
                return True
    return False


def _rate_shape(algorithm: Term | None, env: Env) -> tuple | None:
    """The shape of a level's learning rate; None where it has none or it is a constant."""
    if algorithm is None or not vocab.ALGORITHMS[algorithm.kind].arg("lr"):
        return None
    rate = algorithm.get("lr")
    return infer(rate, env) if isinstance(rate, ast.Expr) else None


def _rate_rows(state: StateRecord | None, algorithm: Term | None, env: Env) -> bool:
    """Whether a matrix memory's learning rate is one per output channel (its rows): spelled
    as the output dim and not as the input one (`matrix[d, d]` with a rate [d] is per input
    channel)."""
    if state is None or state.form.kind != "matrix":
        return False
    shape = _rate_shape(algorithm, env)
    return shape == state.form.output_shape and shape != state.form.input_shape


def _no_conv(level: ast.Level) -> None:
    """A convolution runs over time, so it belongs in the context block: inside a level's
    clause it reached derive, which refused it after check had said ok."""
    for n in nodes_in(level.body):
        if isinstance(n, ast.Call) and n.func == "conv":  # the first in source order
            raise NlcError("'conv(...)' runs over time, not within one token's rule", n.span,
                           hint="compute it in the context block and use its name here")
