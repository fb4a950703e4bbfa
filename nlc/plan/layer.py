"""Stage `plan` for layers: a checked spec and its classified rules -> a frozen `LayerPlan`.

Everything the generated module is made of is decided here, in records: the sizes, the
parameters and convolutions, each level's inputs, states and kernel, the groups of levels
that read each other's outputs, and the forward's steps. Emit prints what this returns."""

from __future__ import annotations

import math
from dataclasses import replace

import networkx as nx
import sympy as sp

from nlc.derive.engine import MAX_WINDOW
from nlc.derive.execution import (
    AffineChunk,
    Attention,
    DplrChunk,
    EntrywiseScan,
    FrozenSplit,
    FusedRecurrent,
    JointChunk,
    ProductChunk,
    SolveChunk,
    TokenLoop,
)
from nlc.derive.forms import tensor_names
from nlc.derive.matfuncs import Dot, free_names
from nlc.derive.symbols import dim_size, shifted_name, unshifted
from nlc.errors import NlcError
from nlc.levels import shapes
from nlc.levels.records import TRAIN
from nlc.levels.vocab import TransferMode
from nlc.plan.records import (
    ContextStep,
    ConvPlan,
    GroupCall,
    GroupPlan,
    KernelPlan,
    LayerPlan,
    LearnedState,
    LevelCall,
    LevelPlan,
    ModelPlan,
    OutputStep,
    ParamInput,
    ParamPlan,
    Segments,
    ShiftStep,
    SizePlan,
    StatePlan,
    TokenInput,
)
from nlc.syntax import ast
from nlc.syntax.format import format_expr


def context_env(spec) -> shapes.Env:
    """The shapes of the names a layer's context and output expressions use."""
    dims = dict(spec.dims)
    from nlc.levels.records import Dim
    env = shapes.Env(values={"x": (Dim("d_model", dims["d_model"]),), "head": ()})
    env.values |= {p.name: p.shape for p in spec.params}
    env.values |= {n: () for n, _ in spec.dims} | {n: () for n, _ in spec.hypers}
    for var in spec.context:
        env.values[var.name] = var.shape
    for level in spec.levels:
        if level.read is not None:
            env.values[level.name] = level.output_shape
    return env


def inner_products(exprs, env) -> frozenset:
    """The `a @ b` nodes of `exprs` whose sides are both vectors: inner products (a matrix
    parameter on the right is a per-head projection instead)."""
    from nlc.syntax.walk import nodes
    return frozenset(n for n in nodes(tuple(exprs)) if isinstance(n, ast.BinOp)
                     and n.op is ast.BinOpKind.MATMUL and len(shapes.infer(n.left, env)) == 1
                     and len(shapes.infer(n.right, env)) == 1)


def _convs(spec, env) -> tuple[ConvPlan, ...]:
    """One weight per `conv(x, width)` call, numbered in the order the printer meets them
    (context lines, then the output; outer calls before inner ones)."""
    found = []

    def visit(e):
        if isinstance(e, ast.Call):
            if e.func == "conv":
                kw = {k.name: k.value for k in e.keywords}
                x = e.positional[0] if e.positional else kw["x"]
                width = e.positional[1] if len(e.positional) > 1 else kw["width"]
                channels = shapes.infer(x, env)  # check refused a matrix
                # a scalar per token is one channel (Mamba-1's per-channel heads)
                found.append(ConvPlan(f"conv{len(found)}",
                                      dim_size(channels[0]) if channels else 1,
                                      shapes.constant_int(width), e.span.line))
            for a in e.args:
                visit(a.value if isinstance(a, ast.Keyword) else a)
        elif isinstance(e, ast.BinOp):
            visit(e.left)
            visit(e.right)
        elif isinstance(e, ast.Neg):
            visit(e.operand)

    for var in spec.context:
        visit(var.expr)
    visit(spec.output)
    return tuple(found)


def _transfers(spec):
    """The explicit transfer edges that change generated code (section 15 of language.md):
    (target -> `direct` sources, target -> its init / generate edge, targets learned by train)."""
    direct, into, learned = {}, {}, set()
    for e in spec.graph.edges:
        if not e.explicit:
            continue
        if e.mode is TransferMode.DIRECT:
            direct.setdefault(e.target, set()).add(e.source)
        elif e.mode in (TransferMode.INIT, TransferMode.GENERATE):
            if e.source == TRAIN:  # an init (check refuses a generate from train)
                learned.add(e.target)
                continue
            into[e.target] = e  # one per target: check refuses a second (check_seeds)
    return direct, into, learned


def _data_groups(spec, after: dict[str, str]):
    """The levels in groups, in data order: levels that use each other's outputs in a loop
    (or a level its own) form one group, run together; each group runs after the groups
    whose outputs it uses (check's data-flow edges) and after the level it takes its state
    from (`after`, init / generate edges). Ties follow check's per-token schedule."""
    first = {}
    for i, (_, name) in enumerate(spec.schedule):
        first.setdefault(name, i)
    graph = nx.DiGraph()
    graph.add_nodes_from(lv.name for lv in spec.levels)
    graph.add_edges_from((e.source, e.target) for e in spec.graph.edges
                         if e.mode is TransferMode.CONTEXT and e.source in graph
                         and e.target in graph)
    graph.add_edges_from((source, target) for target, source in after.items())
    dag = nx.condensation(graph)
    members = dag.graph["mapping"]
    groups = {c: sorted((n for n in graph if members[n] == c), key=first.get) for c in dag}
    order = nx.lexicographical_topological_sort(dag, key=lambda c: first[groups[c][0]])
    return [groups[c] for c in order]


class _LayerPlanner:
    def __init__(self, spec, classified, spec_name: str, prefix: str, stem: str):
        self.spec, self.spec_name, self.prefix, self.stem = spec, spec_name, prefix, stem
        if "d_model" not in dict(spec.dims):
            raise NlcError(f"layer '{spec.name}' declares no d_model; the generated module's "
                           "input is [B, T, d_model]", spec.span)
        self.rules = {c.rule.level: c for c in classified}
        self.param_shapes = {p.name: p.shape for p in spec.params}
        self.hypers = dict(spec.hypers)
        self.dims = dict(spec.dims)
        self.direct, self.into, self.learned = _transfers(spec)

    def plan(self) -> LayerPlan:
        spec = self.spec
        env = context_env(spec)
        params = tuple(ParamPlan(p.name, tuple(dim_size(d) for d in p.shape), p.init,
                                 p.span.line) for p in spec.params)
        convs = _convs(spec, env)
        forward = [ContextStep(v.name, v.expr, v.span.line) for v in spec.context]
        into = {t: e.source for t, e in self.into.items()}
        groups = [[spec.graph.level(n) for n in g] for g in _data_groups(spec, into)]
        segmented = set(into) | set(into.values())
        levels, group_plans = [], []
        for group in groups:
            group = [lv for lv in group if lv.name in self.rules]
            if not group:
                continue
            # (no init / generate edge touches a coupled group: check_loop_transfers)
            coupled = len(group) > 1 or group[0].name in spec.loops
            lps = [self.level(lv, coupled) for lv in group]
            if coupled:
                gp, lps = self.group(group, lps)
                group_plans.append(gp)
                forward.append(GroupCall(gp.fn))
            elif group[0].name in segmented:
                forward.append(LevelCall(group[0].name, self.cut(group[0].name),
                                         self.segments(group[0], lps[0], levels, env)))
            else:
                forward.append(LevelCall(group[0].name, self.cut(group[0].name)))
            levels += lps
        forward[len(spec.context):len(spec.context)] = self.shift_steps(levels)
        if spec.output is None:
            raise NlcError(f"layer '{spec.name}' has no output", spec.span)
        final = spec.output
        projection = None
        if isinstance(final, ast.BinOp) and final.op is ast.BinOpKind.MATMUL \
                and isinstance(final.right, ast.Name) and final.right.id in self.param_shapes \
                and len(self.param_shapes[final.right.id]) == 2:
            # the heads' outputs meet the output projection: summed inside one product
            projection, final = final.right.id, final.left
        line = spec.output.span.line if spec.output.span else 0
        forward.append(OutputStep(final, projection, line))
        learned = [s.learned for lv in levels for s in lv.states if s.learned]
        return LayerPlan(
            spec.name, self.spec_name, self.sizes(), params,
            convs, tuple(levels), tuple(group_plans), tuple(forward), bool(segmented),
            self.param_groups(params, convs, learned),
            frozenset(c.name for c in spec.context) | frozenset(self.param_shapes),
            inner_products([v.expr for v in spec.context] + [spec.output], env),
            spec.span.line)

    def sizes(self) -> tuple[SizePlan, ...]:
        """The dims; one the spec spells from earlier dims (`d_head = d_model / heads`)
        follows them in a layer built with other sizes."""
        from nlc.derive.symbols import size_expr
        formulas = dict(self.spec.dim_formulas)
        return tuple(SizePlan(n, v, size_expr(formulas[n]) if n in formulas else None)
                     for n, v in self.spec.dims)

    def shift_steps(self, levels) -> list[ShiftStep]:
        """One step per context value the levels read earlier tokens of, after the context
        lines: it gives the value 1..n tokens back, n the farthest any level reads."""
        lines = {v.name: v.span.line for v in self.spec.context}
        farthest: dict[str, int] = {}
        for lp in levels:
            for t in lp.tokens:
                value = unshifted(t.name)
                if value in lines and t.name not in lines:
                    shift = next(j for j in range(1, MAX_WINDOW + 1)
                                 if shifted_name(value, j) == t.name)
                    farthest[value] = max(farthest.get(value, 0), shift)
        return [ShiftStep(v, n, lines[v]) for v, n in sorted(farthest.items())]

    def cut(self, level: str) -> frozenset:
        return frozenset(self.direct.get(level, ()))

    def param_groups(self, params, convs, learned) -> tuple:
        """Parameters by the level that learns them. A level of parameters (`every k steps`)
        owns the `param`s declared in it; train owns the rest, the convolutions' weights and
        the learned initial states."""
        owned = {name: lv for lv in self.spec.levels for name in lv.params}
        groups = {TRAIN: (1, [])}
        for p in params:
            lv = owned.get(p.name)
            if lv is None:
                groups[TRAIN][1].append(p.name)
            else:
                groups.setdefault(lv.name, (lv.period, []))[1].append(p.name)
        groups[TRAIN][1].extend([c.name for c in convs] + [s.attr for s in learned])
        return tuple((name, every, tuple(attrs)) for name, (every, attrs) in groups.items()
                     if attrs)

    # ------------------------------------------------------------ one level
    def check_window(self, level, rule, names) -> None:
        """An omega window's rule reads earlier tokens' context (`k_m1`: k one token back,
        nlc/derive/symbols.py), which the forward provides (ShiftStep) with zeros before a
        sequence's first token. That is exactly Atlas's sum over the available last `window`
        tokens only when a term at zero context is zero: true when the gradient is the key
        times an error (matrix, vector and diagonal memories) and the key vanishes at zero
        context; anything else is refused at the objective."""
        context = {v.name for v in self.spec.context}
        objectives = [level.objective, *(o for o, _ in level.later_steps)]
        windows = [o for o in objectives if o is not None and o.kind == "omega"]
        for obj in windows:
            taken = sorted(shifted_name(c, j) for c in context for j in range(1, obj.get("window"))
                           if shifted_name(c, j) in context)
            if taken:  # the rule's k_m1 would be both k one token back and this value
                raise NlcError(f"level '{level.name}': the omega window names the context of "
                               f"earlier tokens like the context value '{taken[0]}'",
                               obj.span, hint=f"rename '{taken[0]}'")
        shifted = [n for n in names if n not in context and unshifted(n) in context]
        if not shifted:
            return
        obj = windows[0] if windows else level.objective
        why = None
        if level.later_steps:
            why = "with several steps per token (`then`) the terms are not checked to vanish"
        else:
            why = _window_terms_vanish(rule, context, self.dims,
                                       format_expr(obj.get("loss").get("prediction")))
        if why:
            raise NlcError(f"level '{level.name}': the omega window reads earlier tokens "
                           f"({', '.join(shifted[:4])}{', ...' if len(shifted) > 4 else ''}), "
                           f"which generated layers give as zeros before a sequence's first "
                           f"token; {why}", obj.span,
                           hint="compile takes an omega window whose earlier tokens' terms are "
                                "zero at zero context: a key that is zero there (S(k), "
                                "S(tanh(k)), M(k) for an MLP memory), and a weight and target "
                                "that are finite there (no division by a context value)")

    def level(self, level, coupled: bool) -> LevelPlan:
        c = self.rules[level.name]
        rule, fam, ex = c.rule, c.family, c.execution
        fn = f"{self.prefix}{level.name}"
        state_names = [n for n, _ in rule.states]
        anchor_names = [a.name for _, a in rule.anchors]
        exprs = [e for _, e in rule.next_state] + ([rule.read] if rule.read is not None else [])
        # a cache's forget gate: its names are the op's inputs beside the query, key, value
        gates = [sp.sympify(ex.decay)] if isinstance(ex, Attention) and ex.decay is not None \
            else []
        used = free_names(exprs + gates)
        if isinstance(ex, Attention) and ex.scale is not None:
            used |= {s.name for s in ex.scale.free_symbols}
        numbers = tuple((n, self.hypers[n]) for n in sorted(used & set(self.hypers)))
        sizes = tuple(sorted(used & set(self.dims)))
        params = sorted(used & set(self.param_shapes))
        known = set(state_names) | {f"{n}_next" for n in state_names} | set(anchor_names) \
            | set(self.hypers) | set(self.dims) | set(params)
        symbols = {s.name: s for e in exprs + gates
                   for s in e.atoms(sp.Symbol, sp.MatrixSymbol)}
        roles = [rule.role(r) for r in ("query", "key", "value")]
        first = [r.name for r in roles if isinstance(r, (sp.Symbol, sp.MatrixSymbol))]
        order = sorted(used - known, key=lambda n: (first.index(n) if n in first else 3, n))
        self.check_window(level, rule, order)
        tokens = [TokenInput(n, "vector", symbols[n].shape[0])
                  if isinstance(symbols[n], sp.MatrixSymbol) else TokenInput(n, "scalar")
                  for n in order]
        notes = []
        if isinstance(ex, Attention):
            weight = dict(level.objective.args).get("weight") if level.objective else None
            where = getattr(weight, "span", None) or level.span  # the kernel as written
            if ex.scale is None:
                raise NlcError(f"level '{level.name}': only exponential dot-product kernels "
                               f"exp(c <q, k>) are emitted, not {sp.sstr(ex.kernel)}",
                               where, hint=_kernel_hint(ex.kernel))
            for role in ("query", "key", "value"):
                if not getattr(ex, role):
                    raise NlcError(f"level '{level.name}': the {role} must be one name (a "
                                   "context value or another level's read) to emit "
                                   f"attention, not {sp.sstr(rule.role(role))[:60]}",
                                   level.objective.span if level.objective else where,
                                   hint=f"name it in the context block (e.g. {role[0]} = ...) "
                                        "and use that name in the objective and read; an "
                                        "expression of a level's read cannot be cached")
            tokens = list({n: TokenInput(n, "vector", rule.role(r).shape[0]) for n, r in
                           ((ex.query, "query"), (ex.key, "key"), (ex.value, "value"))}.values())
            tokens += [TokenInput(n, "scalar") for n in sorted(free_names(gates) - known)
                       if all(t.name != n for t in tokens)]  # scalars per token and head
            read_kind = "vector"
        elif rule.read is None:
            raise NlcError(f"level '{level.name}' has no read; emission needs one", level.span)
        else:
            read_kind = "vector" if isinstance(rule.read, sp.MatrixExpr) else "scalar"
        kernel = self.kernel(rule, ex)
        if isinstance(ex, FusedRecurrent):
            notes.append("no chunk-parallel PyTorch form: CPU tensors run token by token, CUDA "
                         "tensors go to the fused recurrent Triton kernel")
        elif isinstance(ex, TokenLoop):
            notes.append(f"no chunk-parallel form: {ex.reason}")
        elif isinstance(ex, EntrywiseScan):
            notes.append("an entrywise recurrence h' = a * h + b: the chunked mode computes "
                         "every token's state by a blocked scan (nl.scan_chunked), then the "
                         "reads at once")
        elif isinstance(ex, AffineChunk) and ex.row_decay is not None:
            notes.append("a decay per row (output channel): the chunked form folds it into the "
                         "values and reads (nl.row_decay_chunked); CUDA tensors run its chunked "
                         "Triton kernels, chunk_rows_triton.chunk_rows")
        elif isinstance(ex, JointChunk):
            notes.append("jointly affine states: the joint chunked form (nl.joint_chunked); "
                         "CUDA tensors run its chunked Triton kernels, "
                         "chunk_joint_triton.chunk_joint, for up to 4 states of 512 key "
                         "columns together")
        elif isinstance(ex, SolveChunk) and ex.cg_steps:
            notes.append(f"the chunked read solves by {ex.cg_steps} conjugate-gradient steps "
                         "(MesaNet); the recurrent form and step() solve exactly")
        init = "learned" if level.name in self.learned else (level.state.init if level.state
                                                            else "zeros")
        memory = set(tensor_names(level.state.name, level.state.form)) if level.state else set()
        states = []
        for name, S in rule.states:
            rows, cols = S.shape
            op_init = init if name in memory and init in ("zeros", "identity") else "zeros"
            if name in memory and init == "learned" and _needs_a_start(level):
                op_init = "given"  # the op's caller passes the start (the layer its learned one)
            learned = None
            if name in memory and init == "learned":
                simplex = any(t.kind == "kl" for t in level.retentions)
                learned = LearnedState(name, f"{level.name}_{name}_init", rows, cols,
                                       level.state.span.line, simplex, level.state.draw)
            states.append(StatePlan(name, rows, cols, op_init, learned))
        anchors = tuple(zip(anchor_names, [s for s, _ in rule.anchors]))
        every = rule.grad_chunk or (rule.period if rule.anchors else None)
        return LevelPlan(level.name, fn, level.span.line, fam.family.value, fam.reason, ex,
                         rule, level.state.name if level.state else "", tuple(tokens),
                         tuple(self.param_input(p) for p in params),
                         numbers, sizes, tuple(states), anchors, every, read_kind,
                         rule.read_before, kernel, tuple(notes), coupled)

    def param_input(self, name: str) -> ParamInput:
        """A level parameter as its op takes it: each axis named by its dim, so the op can
        check the size the inputs give that dim."""
        shape = self.param_shapes[name]
        return ParamInput(name, len(shape), tuple(d.text if d.text in self.dims else ""
                                                  for d in shape))

    def kernel(self, rule, ex) -> KernelPlan | None:
        """The fused recurrent Triton kernel, when the family and form have one."""
        if not self.stem or rule.form.kind != "matrix":
            return None
        if isinstance(ex, ProductChunk) or isinstance(ex, AffineChunk) and len(ex.terms) == 1 \
                and ex.row_decay is None:  # no kernel takes a decay per row
            decay = "none" if ex.decay == 1 else ex.decay_kind
            chunked = None if rule.read_before else f"{ex.family}/{decay}"
            return _kernel(ex.family, decay, rule.read_before, chunked=chunked)
        if isinstance(ex, DplrChunk):
            chunked = None if rule.read_before else f"dplr/{ex.decay_kind}"
            return _kernel("dplr", ex.decay_kind, rule.read_before, chunked=chunked)
        if isinstance(ex, FusedRecurrent):
            return _kernel(ex.family, ex.decay_kind, rule.read_before, error=ex.error,
                           order=ex.order, rate=ex.rate)
        return None

    # ------------------------------------------------------------ groups, segments
    def group(self, group, lps):
        own = {lv.name for lv in group}
        for name in own & set(self.direct):
            raise NlcError(f"a 'direct' edge into level '{name}', which is in a loop of levels, "
                           "is not emitted", self.spec.graph.level(name).span,
                           hint="detach() the values it should not learn through")
        tokens, params = {}, {}
        for level, lp in zip(group, lps):
            rule = lp.rule
            if rule.read is None or any(rule.read.has(sp.MatrixSymbol(f"{n}_next", *S.shape))
                                        for n, S in rule.states):
                raise NlcError(f"level '{lp.name}' reads after its write, but it is in a loop "
                               "of levels that use each other's outputs: make it read before",
                               level.span)
            for i in lp.tokens:
                if i.name not in own:
                    tokens.setdefault(i.name, i)
            for p in lp.params:
                params.setdefault(p.name, p)
        # chunk-parallel when every member reads its chunk-start state, all chunks align and
        # each member has the frozen split (its chunk-start terms for a whole chunk at once)
        periods = {lp.anchor_every for lp in lps}
        chunk = None
        if len(periods) == 1 and all(lv.read_start or lv.period > 1 for lv in group) \
                and all(isinstance(lp.execution, FrozenSplit) for lp in lps):
            chunk = periods.pop()
        names = ", ".join(lv.name for lv in group)
        note = (f"runs token by token with the levels it reads in a loop ({names})"
                if chunk is None else
                f"runs with {names} as one group, a chunk of {chunk} tokens at a time")
        if chunk is None:  # the group's token loop runs the members' steps alone: their
            # own chunked forms and kernels would be printed and never called
            lps = [replace(lp, execution=TokenLoop(note), kernel=None, notes=(note,))
                   for lp in lps]
        else:
            lps = [replace(lp, notes=lp.notes + (note,)) for lp in lps]
        fn = self.prefix + "_".join(lv.name for lv in group) + "_group"
        return GroupPlan(fn, tuple(lv.name for lv in group), tuple(tokens.values()),
                         tuple(params.values()), chunk, group[0].span.line), lps

    def segments(self, level, lp, planned, env) -> Segments:
        """A level that hands its state to another (init) or takes its state or weights from
        another (init / generate) runs in segments that end at the source's period."""
        edge = self.into.get(level.name)
        source = edge.source if edge else level.name
        period = self.spec.graph.level(source).period
        if edge is None:
            return Segments(period)
        src = next(p for p in planned if p.name == source)
        cut = period
        if any(e.source == level.name for e in self.into.values()):  # a link of a chain:
            cut = math.gcd(period, level.period)  # its own targets restart at its period
        if edge.mode.value == "init":
            mine = [(s.name, s.rows, s.cols) for s in lp.states]
            theirs = [(s.name, s.rows, s.cols) for s in src.states]
            if [m[1:] for m in mine] != [t[1:] for t in theirs]:
                buffers = [n for n, *_ in mine + theirs if n.endswith("_mom")]
                raise NlcError(f"'{source}' cannot initialize '{level.name}': their states "
                               f"differ ({_shapes_text(theirs)} vs {_shapes_text(mine)})",
                               edge.span, hint=None if not buffers else (
                                   f"{', '.join(buffers)} {'is' if len(buffers) == 1 else 'are'}"
                                   " momentum's buffer: an init edge copies every state one "
                                   "for one, so both levels need momentum or neither"))
            return Segments(cut, source, "init",
                            tuple((t[0], m[0]) for t, m in zip(theirs, mine)), every=period)
        own = tuple((s.name, s.rows, s.cols) for s in lp.states)
        at_spec = {sp.Symbol(n, positive=True): v for n, v in self.dims.items()}
        size = sp.Add(*[r * c for _, r, c in own]).xreplace(at_spec)
        out = env.values[source]
        if src.read_kind != "vector" or len(out) != 1 or out[0].size != size:
            reads = f"a vector of {out[0].size}" if src.read_kind == "vector" \
                and len(out) == 1 else f"{src.read_kind} {[d.size for d in out]}"
            raise NlcError(f"'{source}' generates the weights of '{level.name}' "
                           f"({_shapes_text(own)}: {size} numbers at these dims), so "
                           f"its read must be a vector of {size}; it reads {reads}", edge.span)
        return Segments(cut, source, "generate", shapes=own,
                        sizes=(dim_size(out[0]), sp.Add(*[r * c for _, r, c in own])),
                        every=period)


def _window_terms_vanish(rule, context: set, dims: dict, prediction: str) -> str | None:
    """Why an omega window's earlier tokens' terms do not all vanish where the generated
    layer gives their context as zeros (before a sequence's first token), else None.

    Each term (the gradient of the loss j tokens back, `rule.window_terms`) is evaluated in
    float64 with that token's context at zero and everything else (the state, the current
    token's context, the other tokens') drawn at random, twice: it must be exactly finite
    and zero. A term that reads its zeros through a division (k / a, weight = 1 / a) is
    0/0 there, and one whose memory maps zero to a constant (an MLP with a sigmoid) is not
    zero."""
    import numpy as np

    from nlc.derive.evaluate import Evaluator
    from nlc.derive.symbols import unshifted
    from nlc.verify.equality import _draw, _inputs

    for j, terms in enumerate(rule.window_terms, 1):
        sizes = {x: sp.Integer(dims[x.name]) for t in terms for x in t.atoms(sp.Symbol)
                 if x.name in dims}
        terms = [t.xreplace(sizes) for t in terms]  # concrete shapes, to evaluate
        atoms = _inputs(terms)
        for seed in (0, 1):
            rng = np.random.default_rng(seed)
            env = {a: np.zeros(tuple(int(n) for n in getattr(a, "shape", ())))
                   if unshifted(a.name) in context and a.name.endswith(f"_m{j}")
                   else _draw(a, rng, positive=False) for a in atoms}
            try:
                with np.errstate(all="ignore"):
                    values = [np.asarray(Evaluator(env)(t), float) for t in terms]
            except (KeyError, TypeError, ValueError, NotImplementedError):
                return "its earlier tokens' terms could not be evaluated to check that they vanish"
            if not all(np.isfinite(v).all() for v in values):
                return (f"the term of the token {j} back is not defined at zero context (it "
                        "divides by, or takes a log of, a context value that is zero there)")
            if any(np.abs(v).max(initial=0.0) > 1e-12 for v in values):
                return (f"the term of the token {j} back is not zero at zero context (the "
                        f"memory's prediction {prediction} at a zero input, its target or its "
                        "weight does not vanish there), so the window's terms before a "
                        "sequence's first token would not vanish")
    return None


def _kernel(family, decay, read_before, **more) -> KernelPlan:
    plan = KernelPlan(family, decay, read_before, "", **more)
    return replace(plan, module=plan.configuration().module)


def _shapes_text(shapes) -> str:
    return ", ".join(f"{n}[{r}, {c}]" for n, r, c in shapes)


def layer_plan(spec, classified, spec_name: str, prefix: str = "", stem: str = "") -> LayerPlan:
    """`prefix` names the level functions when one file holds several layers; `stem` is the
    generated module's name (its Triton kernels go to `<stem>_<level>_triton.py`)."""
    return _LayerPlanner(spec, classified, spec_name, prefix, stem).plan()


def _kernel_hint(kernel) -> str:
    """What to write instead of a cache kernel that is not exp(c <q, k>), by its shape."""
    if kernel == 1 or not sp.sympify(kernel).atoms(Dot):
        return "give the objective a weight, e.g. weight = exp(dot(q, k) / sqrt(d_k))"
    if isinstance(kernel, sp.exp):  # exp of more than c <q, k>: a bias or a scale per token
        return ("a bias that decays with distance is a forget gate, `retention decay(f)` on "
                "the cache (section 10 of docs/language.md); the kernel's scale must be a "
                "number or an expression of dims")
    if sp.sympify(kernel).is_polynomial(*sp.sympify(kernel).atoms(Dot)):
        return ("a polynomial of q . k (Based's Taylor kernel) runs as linear attention on a "
                "feature map: docs/language.md, section 21")
    return ("other kernels (a sigmoid of q . k: stick-breaking attention, whose weights are "
            "not normalized) cannot be emitted: docs/language.md, section 21")


def model_plan(spec, layers: list[LayerPlan]) -> ModelPlan:
    """The model of checked layers: check refused layers of two widths."""
    widths = {plan.name: {s.name: s.default for s in plan.sizes}["d_model"] for plan in layers}
    return ModelPlan(spec.name, tuple(spec.blocks), widths[spec.blocks[0]], spec.span.line)


def _needs_a_start(level) -> bool:
    """Whether a learned memory's retention is not finite at a state of zeros (kl takes its
    log, lq with q != 2 divides by a power of its norm), so its op has no default start."""
    return any(t.kind == "kl" or (t.kind == "lq" and t.get("q") != 2)
               for t in level.retentions)
