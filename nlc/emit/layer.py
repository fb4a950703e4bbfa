"""A checked layer spec and its classified rules -> the plan the layer template renders."""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from nlc.derive import derive
from nlc.derive.classify import classify
from nlc.derive.forms import tensor_names
from nlc.emit.context import ContextPrinter, literal
from nlc.emit.levels import Input, LevelEmitter
from nlc.emit.names import local
from nlc.emit.render import prose
from nlc.errors import NlcError
from nlc.levels import shapes
from nlc.levels.records import Dim
from nlc.syntax import ast

READ_LAYOUT = {"vector": "[B, T, H, D]", "scalar": "[B, T, H]"}


@dataclass
class ParamPlan:
    name: str
    shape: str
    init: str
    line: int


@dataclass
class LearnedState:
    """A meta-learned initial state: a parameter of the layer (the `init` transfer)."""

    name: str
    attr: str
    rows: int
    cols: int
    line: int
    simplex: bool = False   # rows are distributions (a KL retention takes their log)


@dataclass
class ParamArg:
    name: str
    arg: str
    rank: int


@dataclass
class LayerPlan:
    name: str
    spec: str
    d_model: int
    heads: int
    dims_text: str
    params: list[ParamPlan] = field(default_factory=list)
    convs: list = field(default_factory=list)
    learned: list = field(default_factory=list)
    levels: list = field(default_factory=list)
    groups: list = field(default_factory=list)
    forward: list[str] = field(default_factory=list)
    position: bool = False      # the forward counts tokens (init / generate transfers)
    param_groups: list = field(default_factory=list)  # (level, every k steps, [attributes])


def _init_code(attr: str, init, shape: tuple[int, ...]) -> str:
    """The parameter's initialization (vocab.PARAM_INITS); the default scales by fan-in."""
    if init is None:
        if len(shape) <= 1:
            return f"nn.init.zeros_({attr})"
        return f"nn.init.normal_({attr}, std={literal(shape[1] ** -0.5)})"
    args = {k: literal(v) for k, v in init.args}
    kind = init.kind
    if kind == "normal":
        return f"nn.init.normal_({attr}, std={args['std']})"
    if kind == "uniform":
        return f"nn.init.uniform_({attr}, {args['low']}, {args['high']})"
    if kind == "constant":
        return f"nn.init.constant_({attr}, {args['value']})"
    if kind in ("zeros", "ones"):
        return f"nn.init.{kind}_({attr})"
    return f"{attr}.copy_(nl.{kind}({attr}.shape, {args['low']}, {args['high']}))"


def _data_groups(levels, rules, after: dict[str, str] | None = None) -> list[list]:
    """Levels in data order, each after the levels whose outputs it uses. Levels that use
    each other's outputs in a loop (or a level its own) form one group, run together."""
    import networkx as nx

    from nlc.emit.torch_printer import free_names
    index = {lv.name: i for i, lv in enumerate(levels)}
    graph = nx.DiGraph()
    graph.add_nodes_from(index)
    loops = set()
    for lv in levels:
        rule = rules.get(lv.name)
        exprs = [e for _, e in rule.next_state] + [rule.read] if rule else []
        for used in free_names([e for e in exprs if e is not None]) & set(index):
            if used == lv.name:
                loops.add(used)
            else:
                graph.add_edge(used, lv.name)
    for target, source in (after or {}).items():
        graph.add_edge(source, target)
    dag = nx.condensation(graph)
    members = dag.graph["mapping"]
    groups = {c: sorted((n for n in index if members[n] == c), key=index.get) for c in dag}
    order = nx.lexicographical_topological_sort(dag, key=lambda c: index[groups[c][0]])
    return [[levels[index[n]] for n in groups[c]] for c in order], loops


@dataclass
class GroupPlan:
    """Levels that read each other's outputs: one op runs them token by token together."""

    fn: str
    members: list
    tokens: list
    params: list
    chunk: int | None       # the shared period when every member reads its chunk start
    line: int


@dataclass
class Transfers:
    """The explicit transfer edges that change generated code (section 15 of language.md)."""

    direct: dict[str, set[str]] = field(default_factory=dict)  # target -> sources (detached)
    into: dict = field(default_factory=dict)         # target -> its init / generate Edge
    learned: set[str] = field(default_factory=set)   # `transfer train -> L : init`


def _transfers(spec) -> Transfers:
    from nlc.levels.records import TRAIN
    from nlc.levels.vocab import TransferMode
    found = Transfers()
    for e in spec.graph.edges:
        if not e.explicit:
            continue
        if e.mode is TransferMode.DIRECT:
            found.direct.setdefault(e.target, set()).add(e.source)
        elif e.mode in (TransferMode.INIT, TransferMode.GENERATE):
            if e.source == TRAIN:
                if e.mode is TransferMode.GENERATE:
                    raise NlcError("a 'generate' edge from train is not emitted: train's "
                                   "parameters are not a level's output", e.span)
                found.learned.add(e.target)
                continue
            if e.target in found.into:
                raise NlcError(f"level '{e.target}' gets its state from two levels", e.span)
            found.into[e.target] = e
    return found


class LayerEmitter:
    def __init__(self, spec, spec_name: str, prefix: str = "", stem: str = ""):
        self.spec, self.spec_name, self.prefix, self.stem = spec, spec_name, prefix, stem
        dims = dict(spec.dims)
        if "d_model" not in dims:
            raise NlcError(f"layer '{spec.name}' declares no d_model; the generated module's "
                           "input is [B, T, d_model]", spec.span)
        self.heads = dims.get("heads", 1)
        self.emitters = {}
        self.numbers = {n: str(v) for n, v in spec.dims} | {n: literal(v) for n, v in spec.hypers}
        self.plan = LayerPlan(spec.name, prose(spec_name), dims["d_model"], self.heads,
                              ", ".join(f"{n} = {v}" for n, v in spec.dims))

    def emit(self) -> LayerPlan:
        spec, plan = self.spec, self.plan
        param_shapes = {}
        for p in spec.params:
            shape = tuple(d.size for d in p.shape)
            param_shapes[p.name] = shape
            full = ", ".join(str(n) for n in (self.heads, *shape))
            plan.params.append(ParamPlan(p.name, full,
                                         _init_code(f"self.{p.name}", p.init, shape),
                                         p.span.line))
        names = dict(self.numbers)
        names |= {p: f"self.{p}[:, None]" if not s else f"self.{p}" for p, s in param_shapes.items()}
        names |= {"x": "xh", "head": "self.head"}
        env = shapes.Env(values={"x": (Dim("d_model", plan.d_model),), "head": ()})
        env.values |= {p.name: p.shape for p in spec.params}
        env.values |= {n: () for n, _ in spec.dims} | {n: () for n, _ in spec.hypers}
        consts = frozenset(n for n, _ in spec.dims) | frozenset(n for n, _ in spec.hypers)
        printer = ContextPrinter(names, env, param_shapes, constants=consts)
        for var in spec.context:
            code = printer.expr(var.expr)
            plan.forward.append(f"{local(var.name)} = nl.per_token({code}, ref)  "
                                f"# spec:{var.span.line}")
            names[var.name] = local(var.name)
            env.values[var.name] = var.shape
        rules = derive(spec, dims=dict(spec.dims))
        by_level = {r.level: r for r in rules}
        self.transfers = _transfers(spec)
        self.context_names = {c.name for c in spec.context} | set(param_shapes)
        into = {t: e.source for t, e in self.transfers.into.items()}
        groups, loops = _data_groups(spec.levels, by_level, into)
        segmented = set(into) | set(into.values())
        if segmented:
            plan.position = True  # and the template refuses packed batches
        lps_by_name = {}
        for group in groups:
            group = [lv for lv in group if lv.name in by_level]
            if not group:
                continue
            lps = [self.level(lv, by_level[lv.name], set(param_shapes), param_shapes)
                   for lv in group]
            lps_by_name |= {lp.name: lp for lp in lps}
            plan.levels += lps
            if len(group) > 1 or group[0].name in loops:
                if segmented & {lv.name for lv in group}:
                    edge = next(e for t, e in self.transfers.into.items()
                                if {t, e.source} & {lv.name for lv in group})
                    raise NlcError("init / generate edges between levels in a loop of outputs "
                                   "are not emitted", edge.span)
            if len(group) == 1 and group[0].name in segmented:
                plan.forward += self.call_segmented(group[0], lps[0], names, env, lps_by_name)
            elif len(group) == 1 and group[0].name not in loops:
                plan.forward += self.call(lps[0], names)
            else:
                gp = self.group(group, lps)
                plan.groups.append(gp)
                plan.forward += self.call_group(gp, names)
            for level in group:
                names[level.name] = local(level.name)
                env.values[level.name] = level.output_shape
        plan.convs = printer.convs
        plan.param_groups = self.param_groups(plan)
        for conv in plan.convs:
            conv.bound = literal(conv.width ** -0.5)
        if spec.output is None:
            raise NlcError(f"layer '{spec.name}' has no output", spec.span)
        out = ContextPrinter(names, env, param_shapes, printer.convs, owner="output",
                             constants=consts)
        line = f"# spec:{spec.output.span.line if spec.output.span else 0}"
        final = spec.output
        if isinstance(final, ast.BinOp) and final.op is ast.BinOpKind.MATMUL \
                and isinstance(final.right, ast.Name) and final.right.id in param_shapes \
                and len(param_shapes[final.right.id]) == 2:
            # the heads' outputs meet the output projection: summed inside one product
            plan.forward.append(f"out = nl.head_matmul_sum({out.expr(final.left)}, "
                                f"{names[final.right.id]})  {line}")
        else:
            plan.forward.append(f"out = ({out.expr(final)}).sum(2)  {line}")
        for lp in plan.levels:  # docstring text, not code
            lp.reason, lp.notes = prose(lp.reason), [prose(n) for n in lp.notes]
        return plan

    def param_groups(self, plan) -> list:
        """Parameters by the level that learns them. A level of parameters (`every k steps`)
        owns the `param`s declared in it; train owns the rest, the convolutions' weights and
        the learned initial states."""
        from nlc.levels.records import TRAIN
        owned = {}
        for lv in self.spec.levels:
            for name in lv.params:
                owned[name] = lv
        groups = {TRAIN: (1, [])}
        for p in plan.params:
            lv = owned.get(p.name)
            if lv is None:
                groups[TRAIN][1].append(p.name)
            else:
                groups.setdefault(lv.name, (lv.period, []))[1].append(p.name)
        groups[TRAIN][1].extend([c.name for c in plan.convs] + [s.attr for s in plan.learned])
        return [(name, every, attrs) for name, (every, attrs) in groups.items() if attrs]

    def level(self, level, rule, params: set[str], param_shapes):
        state = level.state
        fn = f"{self.prefix}{level.name}"
        init = state.init if state else "zeros"
        if level.name in self.transfers.learned:
            init = "learned"
        emitter = LevelEmitter(rule, classify(rule), self.numbers, params, level.span.line,
                               init, kernels=bool(self.stem), prefix=fn)
        try:
            lp = emitter.plan()
            self.emitters[level.name] = emitter
        except NlcError as err:
            if not err.span.known:
                err.span = level.span
            raise
        lp.fn = f"{self.prefix}{level.name}"
        memory_tensors = set(tensor_names(state.name, state.form)) if state else set()
        lp.learned = []
        for s in lp.states:
            s.op_init = s.init if s.name in memory_tensors and s.init in ("zeros", "identity") \
                else "zeros"
            if s.name in memory_tensors and init == "learned":
                simplex = any(t.kind == "kl" for t in level.retentions)
                learned = LearnedState(s.name, f"{level.name}_{s.name}_init", s.rows, s.cols,
                                       state.span.line, simplex)
                lp.learned.append(learned)
                self.plan.learned.append(learned)
        lp.default_init = ", ".join(sorted({s.op_init for s in lp.states})) or "an empty cache"
        lp.read_before = rule.read_before
        lp.read_layout = READ_LAYOUT[lp.read_kind]
        lp.has_parallel = bool(lp.chunked or lp.frozen or lp.attention)
        if lp.attention:
            roles = {}
            for role in ("query", "key", "value"):
                sym = rule.role(role)
                if not isinstance(sym, (sp.Symbol, sp.MatrixSymbol)):
                    raise NlcError(f"level '{level.name}': the {role} must be a context value "
                                   "to emit attention", level.span)
                roles[role] = sym.name
            lp.attention |= roles
            lp.tokens = [Input(roles[r], "vector", size=int(rule.role(r).shape[0]))
                         for r in ("query", "key", "value")]
            lp.tokens = list({i.name: i for i in lp.tokens}.values())
        for i in lp.tokens:
            i.arg = local(i.name)
        lp.params = [ParamArg(p, local(p), len(param_shapes[p])) for p in lp.params]
        lp.anchors = repr(tuple(lp.anchors))
        shown = [f"{i.arg}: {READ_LAYOUT[i.kind] if i.kind != 'vector' else f'[B, T, H, {i.size}]'}"
                 for i in lp.tokens]
        lp.args_doc = "Inputs: " + ", ".join(shown) + "."
        return lp

    def arguments(self, op, names, part: str = "", cut: frozenset = frozenset()) -> list[str]:
        """The token and parameter arguments of an op (a level's or a group's); `part`
        slices the tokens; `cut` (a level's `direct` sources) detaches what comes from them
        (a level's output, or train's context values and parameters)."""
        from nlc.levels.records import TRAIN
        args = []
        for i in op.tokens:
            code = names.get(i.name, local(i.name)) + part
            if i.name in cut or (TRAIN in cut and i.name in self.context_names):
                code += ".detach()"
            args.append(f"{code}[..., 0]" if i.kind == "scalar" else code)
        for p in op.params:
            args.append(f"{p.arg}=self.{p.name}" + (".detach()" if TRAIN in cut else ""))
        return args

    def direct_sources(self, lp) -> frozenset:
        return frozenset(self.transfers.direct.get(lp.name, ()))

    def call(self, lp, names) -> list[str]:
        args = self.arguments(lp, names, cut=self.direct_sources(lp))
        args += [f'initial_state=states["{lp.name}"]', "output_final_state=cache is not None",
                 "cu_seqlens=cu_seqlens", "mode=mode", "chunk_size=self.chunk_size"]
        lines = [f"{local(lp.name)}, {lp.name}_final = {lp.fn}_op({', '.join(args)})  "
                 f"# spec:{lp.line}"]
        return lines + _scalar_read(lp)

    def group(self, group, lps) -> GroupPlan:
        own = {lv.name for lv in group}
        for name in own & set(self.transfers.direct):
            raise NlcError(f"a 'direct' edge into level '{name}', which is in a loop of levels, "
                           "is not emitted", self.spec.graph.level(name).span,
                           hint="detach() the values it should not learn through")
        tokens, params = {}, {}
        for level, lp in zip(group, lps):
            try:
                lp.read_token = self.emitters[level.name].read_token()
            except NlcError as err:
                raise NlcError(err.message, level.span) from None
            lp.group = True
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
                and all(lp.frozen for lp in lps):
            chunk = periods.pop()
        for lp in lps:
            if chunk is None:
                lp.notes.append("runs token by token with the levels it reads in a loop ("
                                + ", ".join(lv.name for lv in group) + ")")
            else:
                lp.notes.append(f"runs with {', '.join(lv.name for lv in group)} as one group, "
                                f"a chunk of {chunk} tokens at a time")
        fn = self.prefix + "_".join(lv.name for lv in group) + "_group"
        return GroupPlan(fn, lps, list(tokens.values()), list(params.values()), chunk,
                         group[0].span.line)

    def call_segmented(self, level, lp, names, env, lps) -> list[str]:
        """A level that hands its state to another (init) or takes its state or weights from
        another (init / generate) runs in segments that end at the source's period."""
        edge = self.transfers.into.get(level.name)
        source = edge.source if edge else level.name
        period = self.spec.graph.level(source).period
        reset = ""
        if edge is not None:
            src = lps[source]
            if edge.mode.value == "init":
                mine = [(s.name, s.rows, s.cols) for s in lp.states]
                theirs = [(s.name, s.rows, s.cols) for s in src.states]
                if [m[1:] for m in mine] != [t[1:] for t in theirs]:
                    raise NlcError(f"'{source}' cannot initialize '{level.name}': their states "
                                   f"differ ({_shapes_text(theirs)} vs {_shapes_text(mine)})",
                                   edge.span)
                pairs = tuple((t[0], m[0]) for t, m in zip(theirs, mine))
                reset = (f", reset=lambda i, s, state: nl.state_from({source}_starts[i], state, "
                         f"{pairs!r})")
            else:
                shapes = tuple((s.name, s.rows, s.cols) for s in lp.states)
                size = sum(r * c for _, r, c in shapes)
                out = env.values[source]
                if src.read_kind != "vector" or len(out) != 1 or out[0].size != size:
                    raise NlcError(f"'{source}' generates the weights of '{level.name}' "
                                   f"({_shapes_text(shapes)}: {size} numbers), so its read must "
                                   f"be a vector of {size}", edge.span)
                reset = (f", reset=lambda i, s, state: nl.weights_from("
                         f"{names[source]}[:, s], state, {shapes!r})")
        args = self.arguments(lp, names, part="[:, s:e]", cut=self.direct_sources(lp))
        args += ["initial_state=state", "output_final_state=True", "mode=mode",
                 "chunk_size=self.chunk_size"]
        target = local(lp.name)
        lines = [f"{target}, {lp.name}_final, {lp.name}_starts = nl.segments(  # spec:{lp.line}",
                 f"    lambda s, e, state: {lp.fn}_op({', '.join(args)}),",
                 f"    x.shape[1], {period}, states[{lp.name!r}], offset=position{reset},",
                 ")"]
        return lines + _scalar_read(lp)

    def call_group(self, gp: GroupPlan, names) -> list[str]:
        args = self.arguments(gp, names)  # direct edges into a group are refused
        initial = ", ".join(f'"{lp.name}": states["{lp.name}"]' for lp in gp.members)
        args += [f"initial_state={{{initial}}}", "output_final_state=cache is not None",
                 "cu_seqlens=cu_seqlens", "mode=mode"]
        lines = [f"outs, finals = {gp.fn}_op({', '.join(args)})  # spec:{gp.line}"]
        for lp in gp.members:
            target = local(lp.name)
            lines.append(f'{target} = outs["{lp.name}"]')
            lines += _scalar_read(lp)
            lines.append(f'{lp.name}_final = None if finals is None else finals["{lp.name}"]')
        return lines


def _scalar_read(lp) -> list[str]:
    """A scalar read comes back `[B, T, H]`; the layer's code uses it as `[B, T, H, 1]`."""
    target = local(lp.name)
    return [f"{target} = {target}[..., None]"] if lp.read_kind == "scalar" else []


def _shapes_text(shapes) -> str:
    return ", ".join(f"{n}[{r}, {c}]" for n, r, c in shapes)


@dataclass(frozen=True)
class ModelPlan:
    """A `model`: its layers (classes of the same module) applied in order."""

    name: str
    layers: tuple[str, ...]
    d_model: int
    line: int


def model_plan(spec, layers: list[LayerPlan]) -> ModelPlan:
    widths = {plan.name: plan.d_model for plan in layers}
    sizes = {widths[name] for name in spec.blocks}
    if len(sizes) != 1:
        shown = ", ".join(f"{name}: {widths[name]}" for name in spec.blocks)
        raise NlcError(f"the layers of model '{spec.name}' differ in d_model ({shown})",
                       spec.span, hint="a model's layers share one width")
    return ModelPlan(spec.name, tuple(spec.blocks), sizes.pop(), spec.span.line)


def layer_plan(spec, spec_name: str, prefix: str = "", stem: str = "") -> LayerPlan:
    """`prefix` names the level functions when one file holds several layers; `stem` is the
    generated module's name (without one, no Triton kernels are planned; with one, they go to
    the shared modules `RecurrentKernelPlan.module` names, next to it)."""
    return LayerEmitter(spec, spec_name, prefix, stem).emit()


__all__ = ["LayerPlan", "ModelPlan", "layer_plan", "model_plan"]
