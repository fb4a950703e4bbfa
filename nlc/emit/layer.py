"""A layer's plan -> what the layer template prints: code and prose, nothing decided here.

Sizes are printed from the plan's SymPy sizes: `self.d_k` in the class, the op's own local
(read from its inputs, or a keyword argument) in the functions."""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from nlc.derive.execution import Attention, FrozenSplit
from nlc.derive.symbols import shifted_name
from nlc.emit.context import ContextPrinter, literal, x_projections
from nlc.emit.fused_group import fused_group
from nlc.emit.group_reads import shared_reads
from nlc.emit.levels import (
    READ_LAYOUT,
    TERMS_FLAG,
    LevelPrinter,
    PrintedLevel,
    outer_arguments,
)
from nlc.emit.names import local
from nlc.emit.render import prose
from nlc.errors import NlcError
from nlc.plan.records import ContextStep, GroupCall, LevelCall, OutputStep, ShiftStep
from nlc.syntax.walk import names_used


def size_code(expr, name) -> str:
    """A size (an integer expression of dims) as code; `name(dim)` prints a dim. A size
    with a fraction divides exactly or raises (`nl.whole_div(d_model, heads)`)."""
    expr = sp.sympify(expr)
    if expr.is_Integer:
        return str(int(expr))
    if expr.is_Symbol:
        return name(expr.name)
    num, den = sp.fraction(sp.together(expr))
    text = _product_code(num, name)
    return text if den == 1 else f"nl.whole_div({text}, {_product_code(den, name)})"


def _product_code(expr, name) -> str:
    if expr.is_Integer:
        return str(int(expr))
    if expr.is_Symbol:
        return name(expr.name)
    if expr.is_Add:
        return " + ".join(_product_code(a, name) for a in expr.args)
    if expr.is_Mul:
        return " * ".join(f"({_product_code(a, name)})" if a.is_Add else _product_code(a, name)
                          for a in expr.args)
    if expr.is_Pow and expr.exp.is_Integer and expr.exp > 0:
        return f"{_product_code(expr.base, name)} ** {int(expr.exp)}"
    return f"int({sp.sstr(expr)})"  # not reached by checked dims


def _attr(dim: str) -> str:
    return f"self.{dim}"


@dataclass
class PrintedInput:
    name: str
    arg: str
    kind: str
    size: str               # a vector's size as the op's code, '' for a scalar


@dataclass
class PrintedParam:
    name: str
    arg: str
    rank: int
    dims: tuple[str, ...] = ()


@dataclass
class PrintedState:
    name: str
    rows: str
    cols: str
    op_init: str
    attr: str = ""
    line: int = 0
    simplex: bool = False
    std: str = ""           # a learned state's draw: normal(std), as code


@dataclass
class PrintedShared:
    """A function several levels' drives (or combines) call."""

    name: str
    params: str
    body: list[str]
    doc: object             # Prose
    # shared pairs with terms kernels (nlc/emit/outer_render.py): the wrapper the levels
    # call, the kernels' module and source, and the wrapper's arguments after the module
    terms: str = ""
    kernel: str | None = None
    kernel_source: str = field(default="", metadata={"template": 0})
    kernel_args: str = ""


@dataclass
class PrintedGroup:
    fn: str
    members: list
    tokens: list
    params: list
    consts: list
    read_sizes: dict
    unpacked_sizes: list
    keyword_sizes: list
    size_defaults: list
    chunk: int | None
    line: int
    fused: str | None = None  # nl.FusedGroup(...): the fused group kernels' proposal


@dataclass
class PrintedLayer:
    name: str
    spec: object
    sizes: list             # (argument, default, formula code or '')
    d_model: int
    params: list            # (name, shape code, init code, line)
    convs: list             # (name, channels code, width, line, bound code)
    learned: list
    levels: list
    groups: list
    forward: list[str]
    position: bool
    param_groups: list
    init_calls: dict        # level -> its initial-state size arguments, in the class
    uses_ref: bool          # the forward has context lines (they broadcast over `ref`)
    heads_dim: bool         # the spec declares `heads` (else one head)
    shared: list            # PrintedShared
    history: bool = False   # the forward reads earlier tokens' context (a cache keeps them)
    fixed: list = field(default_factory=list)  # (size, compiled value): in periods, chunks
    relations: list = field(default_factory=list)  # (why, size, size): sizes kept equal


class LayerPrinter:
    def __init__(self, plan, spec):
        self.plan, self.spec = plan, spec
        self.printers: dict[str, LevelPrinter] = {}
        self.defaults = {s.name: s.default for s in plan.sizes}

    def shared_base(self, first) -> str:
        """`<layer>_<form>_memory`, the start of the names of functions that levels share
        (level plan `first` the first of them); numbered (`mlp_memory2`) where a level's or
        a group's own functions could take the same names (a level named `mlp_memory`)."""
        prefix = first.fn[:len(first.fn) - len(first.name)]
        owners = [lv.fn for lv in self.plan.levels] + [g.fn for g in self.plan.groups]
        for i in range(len(owners) + 1):
            base = f"{prefix}{first.rule.form.kind}_memory{i + 1 if i else ''}"
            if not any(_overlap(base, fn) for fn in owners):
                return base
        raise AssertionError("unreachable: each owner blocks at most one number")

    def printed(self) -> PrintedLayer:
        plan = self.plan
        levels = [self.level(lp) for lp in plan.levels]
        shared = self.shared(levels)
        params = [(p.name, ", ".join(["self.heads"] + [size_code(d, _attr) for d in p.shape]),
                   _init_code(f"self.{p.name}", p.init, p.shape), p.line) for p in plan.params]
        convs = [(c.name, size_code(c.channels, _attr), c.width, c.line,
                  literal(c.width ** -0.5)) for c in plan.convs]
        learned = [PrintedState(s.name, size_code(s.rows, _attr), size_code(s.cols, _attr),
                                "", s.attr, s.line, s.simplex, _draw_std(s)) for s in plan.learned]
        init_calls = {lp.name: ", ".join(_attr(d) for d in lp.state_sizes)
                      for lp in plan.levels}
        return PrintedLayer(
            plan.name, plan.spec,
            [(s.name, s.default, size_code(s.formula, str) if s.formula is not None else "")
             for s in plan.sizes],
            self.defaults["d_model"], params, convs, learned, levels,
            [self.group(g, {pl.name: pl for pl in levels}) for g in plan.groups],
            self.forward(), plan.position,
            [(n, every, list(attrs)) for n, every, attrs in plan.param_groups], init_calls,
            any(isinstance(step, ContextStep) for step in plan.forward),
            "heads" in self.defaults, shared,
            any(isinstance(step, ShiftStep) for step in plan.forward),
            self.fixed_sizes(), self.relations())

    def relations(self) -> list[tuple[str, str, str]]:
        """(why, size, size) that a layer built with other dims must keep equal: a generate
        transfer's source reads as many numbers as its target's weights hold."""
        out = []
        for step in self.plan.forward:
            seg = getattr(step, "segments", None)
            if seg is None or seg.sizes is None:
                continue
            read, weights = (size_code(s, lambda n: n) for s in seg.sizes)
            out.append((f"level {seg.source} generates the weights of level {step.level}, so "
                        f"the size of its read, {read}, must equal theirs, {weights}", read,
                        weights))
        return out

    def fixed_sizes(self) -> list[tuple[str, int]]:
        """The sizes a level's period or gradient chunk is spelled with, and their compiled
        values: the generated code has them as numbers, so the constructor refuses others."""
        fixed = {d for lv in self.spec.levels for d in lv.fixed_dims}
        return [(s.name, s.default) for s in self.plan.sizes if s.name in fixed]

    # ------------------------------------------------------------ levels and groups
    def level(self, lp) -> PrintedLevel:
        tokens = [PrintedInput(t.name, local(t.name), t.kind,
                               size_code(t.size, local) if t.kind == "vector" else "")
                  for t in lp.tokens]
        states = [PrintedState(s.name, size_code(s.rows, local), size_code(s.cols, local),
                               s.init) for s in lp.states]
        learned = [PrintedState(s.name, "", "", "", s.learned.attr, simplex=s.learned.simplex)
                   for s in lp.states if s.learned]
        shown = [f"{t.name}: " + (READ_LAYOUT[t.kind] if t.kind != "vector"
                                  else f"[B, T, H, {size_code(t.size, str)}]")
                 for t in lp.tokens]
        view = dict(
            name=lp.name, fn=lp.fn, line=lp.line, family=lp.family, reason=prose(lp.reason),
            notes=[prose(n) for n in lp.notes], tokens=tokens,
            params=[PrintedParam(p.name, local(p.name), p.rank, p.dims) for p in lp.params],
            states=states, learned=learned, init_sizes=[local(d) for d in lp.state_sizes],
            keyword_sizes=[local(d) for d in lp.keyword_sizes],
            size_defaults=[str(self.defaults[d]) for d in lp.keyword_sizes],
            read_sizes={t: local(d) for t, d in lp.input_sizes.items() if d},
            unpacked_sizes=[local(d) for d in dict.fromkeys(lp.input_sizes.values())
                            if d and d in lp.op_sizes],
            consts=[(p.name, f"nl.param({local(p.name)}, {p.rank})") for p in lp.params]
            + [(d, local(d)) for d in lp.sizes if not isinstance(lp.execution, Attention)],
            anchors=repr(tuple(lp.anchors)), anchor_every=lp.anchor_every,
            read_kind=lp.read_kind, read_layout=READ_LAYOUT[lp.read_kind],
            read_before=lp.read_before, group=lp.group, parallel=lp.parallel,
            default_init=(", ".join(sorted({"zeros, a placeholder the op refuses"
                                            if s.init == "given" else s.init
                                            for s in lp.states})) or "an empty cache")
            + ("; the layer passes its learned "
               + ", ".join(s.learned.attr for s in lp.states if s.learned)
               if any(s.learned for s in lp.states) else ""),
            args_doc=prose("Inputs: " + ", ".join(shown) + "."))
        printer = self.printers[lp.name] = LevelPrinter(lp, self.defaults)
        try:
            return printer.printed(view)
        except NlcError as err:  # a rule the printers cannot write: point at its objective
            if err.span.known:
                raise
            record = self.spec.graph.level(lp.name)
            where = record.objective.span if record.objective is not None else record.span
            raise NlcError(f"level '{lp.name}': {err.message}", where,
                           hint=err.hint or "the derived rule (nlc derive) has a term the "
                           "PyTorch printer does not know") from None

    def shared(self, levels: list[PrintedLevel]) -> list[PrintedShared]:
        """Levels whose drive (or combine) prints the same under canonical names (Hope's
        five MLP memories, which differ only in their reads) share one function; each
        level's own is a call of it with its tensors."""
        out = []
        for kind in ("drive", "combine", "transition", "pairs"):
            found: dict = {}
            for pl in levels:
                core = self.printers[pl.name].core(kind)
                if core is not None and kind in pl.frozen:
                    params, body, call = core
                    found.setdefault((tuple(params), tuple(body)), []).append((pl, call))
            for (params, body), users in found.items():
                if len(users) < 2:
                    continue
                name = f"{self.shared_base(self.plan.level(users[0][0].name))}_{kind}"
                taken = {s.name for s in out}
                name = next(f"{name}_{i}" if i else name for i in range(len(out) + 1)
                            if (f"{name}_{i}" if i else name) not in taken)
                levels_text = ", ".join(pl.name for pl, _ in users)
                out.append(PrintedShared(
                    name, ", ".join(["inputs", *params]), list(body),
                    prose(f"The {kind} of levels {levels_text}: their rules are the same "
                          "but for the names of their states.")))
                called = self.shared_terms(out[-1], users) if kind == "pairs" else name
                for pl, call in users:
                    pl.frozen[kind] = call(called)
                    if kind in ("pairs", "transition"):
                        canon = {c: n for n, c in self.printers[pl.name].canonical().items()}
                        pl.cores[kind] = (called, tuple(canon[c] for c in params))
        for pl in levels:  # a group runs members that share both as one batch
            if pl.group and {"pairs", "transition"} <= set(pl.cores):
                (pairs, anchors), (transition, _) = pl.cores["pairs"], pl.cores["transition"]
                states = tuple(self.printers[pl.name].state_names)
                pl.batched = f"({pairs}, {anchors!r}, {transition}, {states!r})"
        taken = {s.name for s in out}
        out += shared_reads(self, levels, taken)
        return out + self.shared_by_role(levels, taken)

    def shared_terms(self, shared: PrintedShared, users: list) -> str:
        """The name the users of the shared pairs `shared` call: a wrapper with the terms
        kernels behind it (`nl.shared_outer_terms`), or the function itself where the
        first user's terms do not print. The users' own wrappers of their pairs go: the
        shared one holds the kernels for all of them."""
        from nlc.emit.outer_render import outer_kernel
        from nlc.emit.tl_step_printer import StepPrintError
        lp = self.plan.level(users[0][0].name)
        printer = self.printers[lp.name]
        try:
            kernel = outer_kernel(lp, lp.execution, printer.spec_dims)
        except StepPrintError:
            return shared.name
        if list(kernel.anchors) != [a for a in printer.anchor_names if a in kernel.anchors]:
            return shared.name  # the kernel takes the anchors in another order than the function
        shared.terms, shared.kernel, shared.kernel_source = (f"{shared.name}_terms",
                                                             kernel.module, kernel.source)
        shared.kernel_args = outer_arguments(kernel, anchors=False)
        for pl, _ in users:
            if pl.outer_kernel is None:
                pl.notes.append(prose(f"its chunk-start terms, through {shared.terms}, have "
                                      f"Triton kernels in {kernel.module}.py, forward and "
                                      f"backward, which run on CUDA when {TERMS_FLAG}=1 "
                                      "asks"))
            pl.outer_kernel, pl.outer_source = None, ""
        return shared.terms

    def shared_by_role(self, levels: list[PrintedLevel], taken: set) -> list[PrintedShared]:
        """Levels whose steps (or `every C tokens` drives, combines, reads) print the same
        with their tensors named by role (CMS's blocks: one rule on another input, other
        parameters and state) share one function, written in the first level's names; each
        level's own calls it with its tensors (LevelPrinter.role_core)."""
        out = []
        for kind in ("step", "drive", "combine", "read"):
            found: dict = {}
            for pl in levels:
                if pl.group or not (pl.step if kind == "step" else
                                    pl.additive and kind in pl.frozen):
                    continue
                printer = self.printers[pl.name]
                counts = (len(printer.plan.tokens), len(printer.plan.params),
                          len(printer.state_names), len(printer.anchor_names))
                body = printer.role_core(kind, placeholders=True)[1]
                found.setdefault((counts, tuple(body)), []).append(pl)
            for users in found.values():
                if len(users) < 2:
                    continue
                first = self.printers[users[0].name]
                name = f"{self.shared_base(first.plan)}_{kind}"
                name = next(f"{name}_{i}" if i else name for i in range(len(taken) + 1)
                            if (f"{name}_{i}" if i else name) not in taken)
                taken.add(name)
                used, body = first.role_core(kind)
                params = [local(n) if n in first.roles("step") else n for n in used]
                out.append(PrintedShared(
                    name, ", ".join(params), body,
                    prose(f"The {kind} of levels {', '.join(pl.name for pl in users)}, in the "
                          f"names of {users[0].name}: their rules are the same but for the "
                          "names of their tensors.")))
                for pl in users:
                    call = self.printers[pl.name].role_call(kind, name)
                    if kind == "step":
                        pl.step = call
                    else:
                        pl.frozen[kind] = call
        return out

    def group(self, gp, printed: dict[str, PrintedLevel]) -> PrintedGroup:
        members = [self.plan.level(n) for n in gp.members]
        read, keyword, numbers = self.plan.group_sizes(gp)
        return PrintedGroup(
            gp.fn, [printed[n] for n in gp.members],
            [PrintedInput(t.name, local(t.name), t.kind,
                          size_code(t.size, local) if t.kind == "vector" else "")
             for t in gp.tokens],
            [PrintedParam(p.name, local(p.name), p.rank, p.dims) for p in gp.params],
            [(p.name, f"nl.param({local(p.name)}, {p.rank})") for p in gp.params]
            + [(d, local(d)) for d in numbers],
            {t: local(d) for t, d in read.items()},
            [local(d) for d in dict.fromkeys(read.values())
             if any(d in lp.op_sizes for lp in members)],
            [local(d) for d in keyword],
            [str(self.defaults[d]) for d in keyword], gp.chunk, gp.line,
            fused_group(gp, {lp.name: lp for lp in members}))

    # ------------------------------------------------------------ the forward
    def forward(self) -> list[str]:
        plan, spec = self.plan, self.spec
        params = {p.name: p.shape for p in plan.params}
        names = {n: _attr(n) for n in self.defaults} | {n: literal(v) for n, v in spec.hypers}
        names |= {p: f"self.{p}[:, None]" if not s else f"self.{p}" for p, s in params.items()}
        names |= {"x": "xh", "head": "self.head"}
        consts = frozenset(self.defaults) | frozenset(n for n, _ in spec.hypers)
        convs = iter(plan.convs)
        lines = []
        # x's projections as one matrix product, made before the values that use them
        printed = [s.expr for s in plan.forward if isinstance(s, (ContextStep, OutputStep))]
        fused = x_projections(printed, params)
        projected = {}
        if len(fused) > 1:
            projected = {p: f"xp[{i}]" for i, p in enumerate(fused)}
            weights = ", ".join(names[p] for p in fused)
            lines.append(f"xp = nl.head_projections(xh, {weights})  # x @ each, at once")
        cast_in_chunks = _dual_only(plan)
        for step in plan.forward:
            if isinstance(step, ContextStep):
                printer = ContextPrinter(names, plan.inner, params, convs, constants=consts,
                                         projected=projected)
                keep = ", keep_precision=True" if step.name in cast_in_chunks else ""
                lines.append(f"{local(step.name)} = nl.per_token({printer.expr(step.expr)}, "
                             f"ref{keep})  # spec:{step.line}")
                names[step.name] = local(step.name)
            elif isinstance(step, ShiftStep):
                lines.append(_shift_line(step))
                names |= {n: local(n) for n in _shifted_names(step)}
            elif isinstance(step, LevelCall):
                lines += self.call(step, names)
                names[step.level] = local(step.level)
            elif isinstance(step, GroupCall):
                gp = plan.group(step.group)
                lines += self.call_group(gp, names)
                names |= {n: local(n) for n in gp.members}
            elif isinstance(step, OutputStep):
                out = ContextPrinter(names, plan.inner, params, convs, owner="output",
                                     constants=consts, projected=projected)
                if step.projection:
                    lines.append(f"out = nl.head_matmul_sum({out.expr(step.expr)}, "
                                 f"{names[step.projection]})  # spec:{step.line}")
                else:
                    lines.append(f"out = ({out.expr(step.expr)}).sum(2)  # spec:{step.line}")
        return lines

    def arguments(self, tokens, params, names, part: str = "",
                  cut: frozenset = frozenset()) -> list[str]:
        """The token and parameter arguments of an op (a level's or a group's); `part`
        slices the tokens; `cut` (a level's `direct` sources) detaches what comes from them
        (a level's output, or train's context values and parameters)."""
        from nlc.levels.records import TRAIN
        args = []
        for i in tokens:
            code = names.get(i.name, local(i.name))
            if code == "xh" and params:  # x with the heads of the op's per-head parameters
                code = "xh.expand(-1, -1, self.heads, -1)"
            code += part
            if i.name in cut or (TRAIN in cut and i.name in self.plan.context_names):
                code += ".detach()"
            args.append(f"{code}[..., 0]" if i.kind == "scalar" else code)
        for p in params:
            args.append(f"{local(p.name)}=self.{p.name}" + (".detach()" if TRAIN in cut else ""))
        return args

    def call(self, step: LevelCall, names) -> list[str]:
        lp = self.plan.level(step.level)
        args = self.arguments(lp.tokens, lp.params, names,
                              part="[:, s:e]" if step.segments else "", cut=step.cut)
        args += [f"{local(d)}={_attr(d)}" for d in lp.keyword_sizes]
        target = local(lp.name)
        if step.segments is None:
            args += [f'initial_state=states["{lp.name}"]', "output_final_state=cache is not None",
                     "cu_seqlens=cu_seqlens", "mode=mode", "chunk_size=self.chunk_size"]
            lines = [f"{target}, {lp.name}_final = {lp.fn}_op({', '.join(args)})  "
                     f"# spec:{lp.line}"]
        else:
            seg = step.segments
            reset = ""
            if seg.mode == "init":
                reset = (f", reset=lambda s, state: nl.state_from({seg.source}_starts[s], "
                         f"state, {seg.pairs!r})")
            elif seg.mode == "generate":
                shapes = ", ".join(f"({n!r}, {size_code(r, _attr)}, {size_code(c, _attr)})"
                                   for n, r, c in seg.shapes)
                reset = (f", reset=lambda s, state: nl.weights_from("
                         f"{names[seg.source]}[:, s], state, ({shapes},))")
            if seg.every not in (None, seg.period):  # cut finer than its restarts
                reset += f", every={seg.every}"
            args += ["initial_state=state", "output_final_state=True",
                     "mode=nl.segment_mode(mode, e - s)", "chunk_size=self.chunk_size"]
            lines = [f"{target}, {lp.name}_final, {lp.name}_starts = nl.segments(  "
                     f"# spec:{lp.line}",
                     f"    lambda s, e, state: {lp.fn}_op({', '.join(args)}),",
                     f"    x.shape[1], {seg.period}, states[{lp.name!r}], "
                     f"offset=position{reset},",
                     ")"]
        return lines + _scalar_read(lp)

    def call_group(self, gp, names) -> list[str]:
        members = [self.plan.level(n) for n in gp.members]
        args = self.arguments(gp.tokens, gp.params, names)  # direct edges into a group: refused
        _, keyword, _ = self.plan.group_sizes(gp)
        args += [f"{local(d)}={_attr(d)}" for d in keyword]
        initial = ", ".join(f'"{n}": states["{n}"]' for n in gp.members)
        args += [f"initial_state={{{initial}}}", "output_final_state=cache is not None",
                 "cu_seqlens=cu_seqlens", "mode=mode"]
        lines = [f"outs, finals = {gp.fn}_op({', '.join(args)})  # spec:{gp.line}"]
        for lp in members:
            lines.append(f'{local(lp.name)} = outs["{lp.name}"]')
            lines += _scalar_read(lp)
            lines.append(f'{lp.name}_final = None if finals is None else finals["{lp.name}"]')
        return lines


def _shifted_names(step: ShiftStep) -> list[str]:
    return [shifted_name(step.value, j) for j in range(1, step.shifts + 1)]


def _dual_only(plan) -> set[str]:
    """The context values read only by levels in the dual chunk form: those cast each chunk
    of their tokens to float32 themselves (nl.dual_chunked), so under autocast the values stay
    in half precision until then, and a chunk recomputed in the backward pass keeps their
    half-precision values, not a float32 copy of the whole sequence."""
    users: dict[str, list[bool]] = {}
    for step in plan.forward:
        if isinstance(step, (ContextStep, OutputStep)):
            read, dual = names_used(step.expr), False
        elif isinstance(step, ShiftStep):
            read, dual = {step.value}, False
        elif isinstance(step, LevelCall):
            lp = plan.level(step.level)
            dual = (isinstance(lp.execution, FrozenSplit) and lp.execution.dual
                    and step.segments is None)
            read = {t.name for t in lp.tokens}
        else:  # a group's members run other chunk forms
            read, dual = {t.name for t in plan.group(step.group).tokens}, False
        for name in read:
            users.setdefault(name, []).append(dual)
    return {name for name, dual in users.items() if all(dual)}


def _shift_line(step: ShiftStep) -> str:
    """`k_m1, k_m2 = nl.earlier(k, 2, ...)`: the context value 1..n tokens back."""
    call = f"nl.earlier({local(step.value)}, {step.shifts}, cu_seqlens, history, " \
           f"{step.value!r})"
    names = [local(n) for n in _shifted_names(step)]
    target = ", ".join(names) if len(names) > 1 else names[0]
    return f"{target} = {call}{'' if len(names) > 1 else '[0]'}  # spec:{step.line}"


def _scalar_read(lp) -> list[str]:
    """A scalar read comes back `[B, T, H]`; the layer's code uses it as `[B, T, H, 1]`."""
    target = local(lp.name)
    return [f"{target} = {target}[..., None]"] if lp.read_kind == "scalar" else []


def _draw_std(s) -> str:
    """A learned initial state's standard deviation, as code: the spec's number, or
    sqrt(2 / (rows + cols)) for a xavier draw (Glorot & Bengio 2010), per weight matrix."""
    scheme, std = s.draw
    if scheme == "xavier":
        return f"(2 / ({size_code(s.rows, _attr)} + {size_code(s.cols, _attr)})) ** 0.5"
    return literal(std)


def _init_code(attr: str, init, shape) -> str:
    """The parameter's initialization (vocab.PARAM_INITS); by default zeros for up to one
    axis, else normal with std (second axis)^-0.5 (docs/language.md, Initializers)."""
    if init is None:
        if len(shape) <= 1:
            return f"nn.init.zeros_({attr})"
        return f"nn.init.normal_({attr}, std={size_code(shape[1], _attr)} ** -0.5)"
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


def _overlap(a: str, b: str) -> bool:
    """Whether functions named `a_<suffix>` and `b_<suffix>` can meet: the compiler's
    suffixes hold underscores (`read_tail`), so one start must not begin the other."""
    return a == b or a.startswith(b + "_") or b.startswith(a + "_")
