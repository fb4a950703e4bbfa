"""A checked optimizer spec -> the plan of a `torch.optim.Optimizer` subclass.

Each level's state is a tensor shaped like the parameter, updated once per optimizer step by
its derived rule (`like(param)` states are matrices in the printer's sense: entrywise
operations, and reductions such as `sqnorm` over the whole matrix); then the `apply` clauses
give the new parameter. The step sees every parameter-shaped tensor as a matrix
(`nl.as_matrix`: a vector as a column, more than two axes flattened after the first) and
stores states and the parameter in the parameter's own shape (`nl.like_param`). A level
`over gradients u, inputs x` (DGD) sees each `nn.Linear` weight with the inputs and output
gradients recorded for it, one sample at a time.

The constructor's keyword arguments are the hypers' spec names as written (docs/emit.md),
not placeholders: `__init__` binds no other name but `self` and `params`, which the checker
refuses as an optimizer's hypers."""

from __future__ import annotations

from dataclasses import dataclass, field

from nlc.derive.matfuncs import NewtonSchulz, free_names
from nlc.emit.context import ContextPrinter, literal
from nlc.emit.names import local
from nlc.emit.torch_printer import TorchPrinter
from nlc.errors import NlcError
from nlc.levels import shapes
from nlc.plan.layer import inner_products
from nlc.syntax.walk import names_used


@dataclass
class OptimizerPlan:
    name: str
    hypers: list[tuple[str, str, str]]            # (spec name, identifier, default)
    states: list[tuple[str, str]]                  # (name, init: zeros | param)
    update: list[str] = field(default_factory=list)
    per_sample: list[str] = field(default_factory=list)
    gradient: str = "g"
    inputs: str | None = None
    lines: list[int] = field(default_factory=list)
    hypers_used: list = field(default_factory=list)   # the hypers the step reads
    uses_t: bool = False
    matrices_only: bool = False   # Newton-Schulz: a vector or scalar parameter is refused
    uses_param: bool = False      # whether the step reads the parameter (as `param_matrix`)

    @property
    def uses_math(self) -> bool:
        """Whether the step calls Python's math (a function of hypers and `t` alone)."""
        return any("math." in line for line in self.update + self.per_sample)


def _anchors(rule, level, plan, printer) -> list[str]:
    """A level `every C steps` takes its gradients at the state of the chunk's first step:
    that copy (the anchor, `M_0`) is optimizer state too, refreshed every C steps (t counts
    from 1)."""
    lines = []
    every = rule.grad_chunk or rule.period
    for state_name, anchor in rule.anchors:
        plan.states.append((anchor.name, level.state.init))
        lines += [f"if (t - 1) % {every} == 0:  # level {level.name}'s chunk starts",
                  f"    state[{anchor.name!r}] = state[{state_name!r}].clone()",
                  f"{local(anchor.name)} = nl.as_matrix(state[{anchor.name!r}])"]
        printer.names[anchor.name] = local(anchor.name)
    return lines


def optimizer_plan(spec, rules) -> OptimizerPlan:
    """`rules`: the spec's levels as stage derive gave them (the parameter's shape symbolic:
    every operation on a `like(param)` state is printed entrywise)."""
    rules = {r.level: r for r in rules}
    levels = [lv for lv in spec.levels if lv.state is not None]
    hypers = [(n, local(n), literal(v)) for n, v in spec.hypers]
    # a dim is a constant of the spec: compiled in as its number (`decay(1 - 1 / k)`)
    dims = {n: literal(v) for n, v in spec.dims}
    names = dims | {n: local(n) for n, _ in spec.hypers} | {"param": "param_matrix", "t": "t"}
    overs = {lv.over for lv in levels if lv.over}
    inputs = {lv.inputs for lv in levels if lv.inputs}
    if len(overs) > 1 or len(inputs) > 1:
        raise NlcError("all levels of an optimizer must name the gradient (and input) alike",
                       spec.span)
    grad = overs.pop() if overs else "g"
    inp = inputs.pop() if inputs else None
    names[grad] = local(grad)
    if inp:
        names[inp] = local(inp)
    plan = OptimizerPlan(spec.name, hypers, [], gradient=local(grad), inputs=inp and local(inp))
    body = plan.per_sample if inp else plan.update
    numbers = frozenset(n for n, _ in spec.hypers) | {"t"} | set(dims)  # Python numbers
    printer = TorchPrinter(dict(names), prefix="tmp", numbers=numbers)
    applies = [(target, expr, lv) for lv in levels for target, expr in lv.applies]
    # a level's read is printed when the apply clauses or another level's rule use it
    needed = set().union(*(names_used(e) for _, e, _ in applies)) | free_names(
        [e for lv in levels for _, e in rules[lv.name].next_state])
    reads = [lv for lv in levels if rules[lv.name].read is not None and lv.name in needed]
    needed |= free_names([rules[lv.name].read for lv in reads])
    anchored = any(rules[lv.name].anchors for lv in levels)
    plan.hypers_used = [h for h in hypers if h[0] in needed]
    plan.uses_t = "t" in needed or anchored
    writes, values = {}, {}
    for lv in levels:
        rule = rules[lv.name]
        for n, _ in rule.states:  # the algorithm's own states (a momentum) start at zero
            plan.states.append((n, lv.state.init if n == lv.state.name else "zeros"))
            body.append(f"{local(n)} = nl.as_matrix(state[{n!r}])")
            printer.names[n] = local(n)
            printer.names[f"{n}_next"] = f"{local(n)}_next"
        body += _anchors(rule, lv, plan, printer)
        writes[lv.name] = [(f"{local(n)}_next", expr) for n, expr in rule.next_state]
        if lv in reads:  # another level's rule or an apply uses this level's value by name
            values[lv.name] = [(local(lv.name), rule.read)]
            printer.names[lv.name] = local(lv.name)
    # in the schedule's order, so that a level's rule sees the values it names computed
    outputs = [line for step, name in spec.schedule
               for line in (writes if step == "write" else values).get(name, [])]
    body += printer.assign(outputs)
    for lv in levels:
        for n, _ in rules[lv.name].states:
            body.append(f"state[{n!r}] = nl.like_param({local(n)}_next, param)")
    env = shapes.Env(values=dict.fromkeys([*numbers, "param", grad], ()))
    apply_names = dict(names)
    for lv in levels:
        apply_names[lv.name] = local(lv.name)
        for n, _ in rules[lv.name].states:
            apply_names[n] = f"nl.as_matrix(state[{n!r}])"
    applied = ContextPrinter(apply_names, inner_products([e for _, e, _ in applies], env), {},
                             owner="optimizer", constants=numbers)
    if not applies:
        raise NlcError(f"optimizer '{spec.name}' has no `apply param = ...` clause", spec.span)
    for i, (target, expr, lv) in enumerate(applies):
        if target != "param":
            raise NlcError(f"only `apply param = ...` is emitted, not '{target}'", lv.span)
        code = applied.expr(expr)
        body.append(f"param.copy_(nl.like_param({code}, param))  # spec:{expr.span.line}")
        if i + 1 < len(applies) and "param" in needed:  # the next line sees this one's write:
            body.append("param_matrix = nl.as_matrix(param)")  # a copy where no view exists
    derived = [e for lv in levels for _, e in rules[lv.name].next_state]
    derived += [rules[lv.name].read for lv in reads]
    plan.matrices_only = any(e.has(NewtonSchulz) for e in derived) or any(
        "newton_schulz5" in names_used(e) for _, e, _ in applies)
    plan.uses_param = "param" in needed
    return plan
