"""A checked layer spec and its classified rules -> the plan the layer template renders."""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from nlc.derive import derive
from nlc.derive.classify import classify
from nlc.derive.forms import tensor_names
from nlc.emit.context import ContextPrinter, literal
from nlc.emit.levels import RESERVED, Input, LevelEmitter, local
from nlc.errors import NlcError
from nlc.levels import shapes
from nlc.levels.records import Dim

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


def _data_groups(levels, rules) -> list[list]:
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


class LayerEmitter:
    def __init__(self, spec, spec_name: str, prefix: str = "", stem: str = ""):
        self.spec, self.spec_name, self.prefix, self.stem = spec, spec_name, prefix, stem
        dims = dict(spec.dims)
        if "d_model" not in dims:
            raise NlcError(f"layer '{spec.name}' declares no d_model; the generated module's "
                           "input is [B, T, d_model]", spec.span)
        if spec.name in RESERVED:
            raise NlcError(f"'{spec.name}' is a name the generated module uses itself; "
                           "rename the layer", spec.span)
        self.heads = dims.get("heads", 1)
        self.numbers = {n: str(v) for n, v in spec.dims} | {n: literal(v) for n, v in spec.hypers}
        self.plan = LayerPlan(spec.name, spec_name, dims["d_model"], self.heads,
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
        groups, loops = _data_groups(spec.levels, by_level)
        for group in groups:
            group = [lv for lv in group if lv.name in by_level]
            if not group:
                continue
            lps = [self.level(lv, by_level[lv.name], set(param_shapes), param_shapes)
                   for lv in group]
            plan.levels += lps
            if len(group) == 1 and group[0].name not in loops:
                plan.forward += self.call(lps[0], names)
            else:
                gp = self.group(group, lps)
                plan.groups.append(gp)
                plan.forward += self.call_group(gp, names)
            for level in group:
                names[level.name] = local(level.name)
                env.values[level.name] = level.output_shape
        plan.convs = printer.convs
        for conv in plan.convs:
            conv.bound = literal(conv.width ** -0.5)
        if spec.output is None:
            raise NlcError(f"layer '{spec.name}' has no output", spec.span)
        out = ContextPrinter(names, env, param_shapes, printer.convs, owner="output",
                             constants=consts)
        plan.forward.append(f"out = ({out.expr(spec.output)}).sum(2)  "
                            f"# spec:{spec.output.span.line if spec.output.span else 0}")
        return plan

    def level(self, level, rule, params: set[str], param_shapes):
        state = level.state
        fn = f"{self.prefix}{level.name}"
        emitter = LevelEmitter(rule, classify(rule), self.numbers, params, level.span.line,
                               state.init if state else "zeros",
                               kernels=f"{self.stem}_{fn}_triton" if self.stem else "",
                               prefix=fn)
        try:
            lp = emitter.plan()
            lp.emitter = emitter
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
            if s.name in memory_tensors and s.init == "learned":
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
            lp.tokens = [Input(roles[r], "vector") for r in ("query", "key", "value")]
            lp.tokens = list({i.name: i for i in lp.tokens}.values())
        for i in lp.tokens:
            i.arg = local(i.name)
        lp.params = [ParamArg(p, local(p), len(param_shapes[p])) for p in lp.params]
        lp.anchors = repr(tuple(lp.anchors))
        shown = [f"{i.arg}: {READ_LAYOUT[i.kind] if i.kind != 'vector' else '[B, T, H, D]'}"
                 for i in lp.tokens]
        lp.args_doc = "Inputs: " + ", ".join(shown) + "."
        return lp

    def call(self, lp, names) -> list[str]:
        args = []
        for i in lp.tokens:
            code = names.get(i.name, local(i.name))
            args.append(f"{code}[..., 0]" if i.kind == "scalar" else code)
        for p in lp.params:
            args.append(f"{p.arg}=self.{p.name}")
        args += [f'initial_state=states["{lp.name}"]', "output_final_state=cache is not None",
                 "cu_seqlens=cu_seqlens", "mode=mode", "chunk_size=self.chunk_size"]
        target = local(lp.name)
        lines = [f"{target}, {lp.name}_final = {lp.fn}_op({', '.join(args)})  # spec:{lp.line}"]
        if lp.read_kind == "scalar":
            lines.append(f"{target} = {target}[..., None]")
        return lines


    def group(self, group, lps) -> GroupPlan:
        own = {lv.name for lv in group}
        tokens, params = {}, {}
        for level, lp in zip(group, lps):
            try:
                lp.read_token = LevelEmitter.read_token(lp.emitter)
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

    def call_group(self, gp: GroupPlan, names) -> list[str]:
        args = []
        for i in gp.tokens:
            code = names.get(i.name, local(i.name))
            args.append(f"{code}[..., 0]" if i.kind == "scalar" else code)
        for p in gp.params:
            args.append(f"{p.arg}=self.{p.name}")
        initial = ", ".join(f'"{lp.name}": states["{lp.name}"]' for lp in gp.members)
        args += [f"initial_state={{{initial}}}", "output_final_state=cache is not None",
                 "cu_seqlens=cu_seqlens", "mode=mode"]
        lines = [f"outs, finals = {gp.fn}_op({', '.join(args)})  # spec:{gp.line}"]
        for lp in gp.members:
            target = local(lp.name)
            lines.append(f'{target} = outs["{lp.name}"]')
            if lp.read_kind == "scalar":
                lines.append(f"{target} = {target}[..., None]")
            lines.append(f'{lp.name}_final = None if finals is None else finals["{lp.name}"]')
        return lines


def layer_plan(spec, spec_name: str, prefix: str = "", stem: str = "") -> LayerPlan:
    """`prefix` names the level functions when one file holds several layers; `stem` is the
    generated module's name (its Triton kernels go to `<stem>_<level>_triton.py`)."""
    return LayerEmitter(spec, spec_name, prefix, stem).emit()


__all__ = ["LayerPlan", "layer_plan"]
