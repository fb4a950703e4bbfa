"""`nlc verify` and `nlc identify`: derived rules against the catalog.

A spec is re-checked at small concrete dimensions (every literal dim set to 2 or 3, in
alternation, so a transposed index cannot pass), derived, and each level compared with
catalog entries bound to its roles: symbolically at two assignments, numerically in float64
at three larger ones. MLP memories are compared by parts (nlc/verify/mlp.py): numerically
end to end first, then the chain rule, the loss and the rule around the gradient, each
symbolically. An optimizer's `apply` lines are compared with the catalog's update of the
optimizer its levels are (nlc/verify/apply.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from nlc.catalog.applies import ApplyEntry
from nlc.catalog.models import ENTRIES, CatalogEntry, Roles
from nlc.derive import derive
from nlc.derive.engine import LevelDerivation, derive_level
from nlc.derive.execution import softmax_scale
from nlc.derive.matfuncs import free_names
from nlc.derive.printing import sstr
from nlc.derive.rule import UpdateRule
from nlc.derive.symbols import SymbolTable
from nlc.errors import NlcError, Span
from nlc.levels import check
from nlc.syntax import ast
from nlc.syntax.format import format_expr
from nlc.syntax.walk import names_used
from nlc.verify import mlp
from nlc.verify.equality import TOLERANCE, numeric_error, opaque_gradient, symbolic_equal
from nlc.verify.read import read_difference

SYMBOLIC_DIMS = ((2, 3), (3, 2))
NUMERIC_DIMS = ((4, 7), (7, 4), (16, 16))
SCALAR_RANGES = ((0.05, 0.95), (2.0, 20.0))  # gates and rates; then large, past thresholds


@dataclass
class Comparison:
    entry: CatalogEntry | ApplyEntry
    symbolic: bool | None
    numeric: float
    ok: bool
    note: str = ""    # why an update was not compared (its hypers do not bind)
    read: str = ""    # how the level's read differs from the entry's (nlc/verify/read.py)


@dataclass
class LevelReport:
    level: str
    matches: list[Comparison] = field(default_factory=list)
    nearest: list[str] = field(default_factory=list)
    differs: str = ""


@dataclass
class ApplyReport:
    """An optimizer's `apply` lines against the catalog's updates (nlc/verify/apply.py)."""
    lines: list[tuple[Span, str]]   # each line, where and as written
    matches: list[Comparison] = field(default_factory=list)
    differs: str = ""               # located: which line differs from which update, and how

    def answers(self, claim: str) -> bool:
        return any(_claimed(c.entry.id, claim) for c in self.matches)


@dataclass
class SpecReport:
    path: str
    spec: str
    claims: str | None
    levels: list[LevelReport]
    seconds: float
    apply: ApplyReport | None = None  # an optimizer's

    @property
    def verdict(self) -> str:
        if not self.claims:
            return "no claim"
        return "ok" if self.claim_holds else "MISMATCH"

    @property
    def claim_holds(self) -> bool:
        if not self.claims:
            return True
        claimed = [lv for lv in self.levels if any(_claimed(c.entry.id, self.claims)
                                                   for c in lv.matches)]
        applied = self.apply is None or self.apply.answers(self.claims)
        return bool(claimed) and len(claimed) == len(self.levels) and applied


def _claimed(entry_id: str, claim: str) -> bool:
    return entry_id == claim or entry_id.startswith(claim + "_")


def literal_dims(decl: ast.Decl) -> list[str]:
    return [d.name for s in decl.body if isinstance(s, ast.Dims) for d in s.defs
            if isinstance(d.value, ast.Num)]


def instantiate(module: ast.Module, decl_name: str, pair: tuple[int, int]):
    """Re-check a module with every literal dim of `decl_name` set to pair[0], pair[1], ...
    in alternation (d_model keeps its own value: it never enters a level's rule). A spec
    whose dims must agree (a residual MLP maps d_k to d_k) gets pair[0] everywhere."""
    decl = next(d for d in module.decls if d.name == decl_name)
    names = [n for n in literal_dims(decl) if n != "d_model"]
    try:
        specs = check(module, {n: float(pair[i % 2]) for i, n in enumerate(names)})
    except NlcError:
        specs = check(module, {n: float(pair[0]) for n in names})
    return next(s for s in specs if s.name == decl_name)


def data_dependent(spec) -> set[str]:
    """Context names whose value depends on the token (through the input x, gradients or a
    level's read: Hope's gates are the reads of its levels eta and alpha)."""
    token = {"x"} | {lv.over for lv in spec.levels if lv.over} | {lv.name for lv in spec.levels}
    out: set[str] = set()
    for var in spec.context:  # in order: a context var uses only earlier ones
        if names_used(var.expr) & (token | out):
            out.add(var.name)
    return out | token


def untied(rule: UpdateRule, spec, entry: CatalogEntry) -> str:
    """Empty if the entry states no tie between its gate and rate, or the level's gate and
    rate share an input (a context value or parameter, followed through the context: Mamba2's
    alpha = exp(-dt exp(A_log)) uses its rate dt); else why the level is not the entry."""
    if entry.tie is None:
        return ""
    roles = roles_of(rule)
    gate, rate = roles.alpha, roles.beta
    if not isinstance(gate, sp.Basic) or not isinstance(rate, sp.Basic):
        return ""
    defined = {var.name: names_used(var.expr) for var in spec.context}

    def inputs(names: set[str]) -> set[str]:  # the names and every name they are made of
        out, todo = set(), list(names)
        while todo:
            name = todo.pop()
            if name not in out:
                out.add(name)
                todo.extend(defined.get(name, ()))
        return out - {"x"} - {n for n, _ in (*spec.dims, *spec.hypers)}

    if inputs(free_names([gate])) & inputs(free_names([rate])):
        return ""
    how = "a gate and a rate that share no input" if inputs(free_names([rate])) else \
        f"a constant rate {rate}"
    return f"{entry.title}'s recurrence with {how} ({entry.id}: {entry.tie})"


def _read_transposed(rule: UpdateRule) -> bool:
    """Whether the level reads its matrix as `q @ W`: then it is compared as S = W^T
    (`as_read`), whose input channels are W's rows."""
    from nlc.derive.execution import transposed_rule
    return transposed_rule(rule) is not None


def _side(rows: bool, rule: UpdateRule) -> str:
    """channel (one per input channel of the state as compared) or row (per output channel)."""
    return "row" if rows != _read_transposed(rule) else "channel"


def gate_kind(rule: UpdateRule, spec) -> str:
    """none, constant, scalar, channel (one per input channel) or row (one per output
    channel: no catalog model has one), of the state as `as_read` compares it."""
    gate = rule.role("gate")
    if gate is None:
        return "none"
    names = {getattr(s, "name", None) for s in sp.sympify(gate).free_symbols}
    fixed = not names & data_dependent(spec)  # the same at every token, learned or not
    if isinstance(gate, sp.MatrixExpr):  # per channel: GLA's depends on the input
        side = _side(spec.graph.level(rule.level).gate_rows, rule)
        return f"constant per-{side}" if fixed else side
    return "constant" if fixed else "scalar"


def rate_kind(rule: UpdateRule, spec) -> str:
    """scalar, channel (one per input channel) or row (one per output channel), of the state
    as `as_read` compares it."""
    if not isinstance(rule.role("lr"), sp.MatrixExpr):
        return "scalar"
    return _side(spec.graph.level(rule.level).rate_rows, rule)


def form_matches(entry: CatalogEntry, rule: UpdateRule) -> bool:
    form = rule.form
    if entry.form in ("like", "like_matrix"):  # elementwise, or a matrix seen with its inputs
        return form.kind == "like" and form.is_matrix == (entry.form == "like_matrix")
    if entry.form in ("mlp1", "mlp2"):
        depth = 1 if entry.form == "mlp1" else 2
        return (form.kind == "mlp" and len(form.dims) - 1 == depth and form.norm
                and form.residual)
    return entry.form == form.kind


def roles_of(rule: UpdateRule) -> Roles:
    n = len([s for s in rule.states if not s[0].endswith("_mom")])
    tensors = tuple(s for _, s in rule.states[:n])
    return Roles(S=tensors, k=rule.role("key"), v=rule.role("value"), q=rule.role("query"),
                 beta=rule.role("lr"), alpha=rule.role("gate"), eta=rule.role("momentum"),
                 U=tuple(s for _, s in rule.states[n:]), S0=tuple(a for _, a in rule.anchors),
                 form=rule.form, g=rule.role("grad"), delta=rule.role("delta"),
                 reg=rule.role("reg"), kappa=rule.role("erase_key"),
                 a=rule.role("erase_rate"), pairs=rule.role("steps"))


def _learns_from_gradients(rule: UpdateRule, spec, roles: Roles) -> bool:
    """Whether an optimizer level's data (the target or gradient term its entry binds) comes
    from its gradients and not from the parameter: an average of `param` is not Adam's
    moment, though the recurrence has the same form."""
    names = free_names([r for r in (roles.v, roles.g) if r is not None])
    return spec.graph.level(rule.level).over in names and "param" not in names


def reads_own_state(rule: UpdateRule, roles: Roles) -> list[str]:
    """The roles (key, value, rate, ...) that the level computes from its own state, as a
    self-generated target `l2(S(k), S(q))` does: a catalog model takes them from the tokens,
    so a level whose value is S q is not DeltaNet though its rule is DeltaNet's at v = S q."""
    own = {n for n, _ in rule.states} | {a.name for _, a in rule.anchors}
    data = {"key": roles.k, "value": roles.v, "query": roles.q, "rate": roles.beta,
            "gate": roles.alpha, "momentum": roles.eta, "erase key": roles.kappa,
            "erase rate": roles.a}
    return [name for name, r in data.items()
            if r is not None and isinstance(r, sp.Basic) and free_names([r]) & own]


def follows_the_step(rule: UpdateRule, roles: Roles) -> list[str]:
    """An optimizer level's gate, rate or momentum that changes with the step count `t`: the
    catalog's optimizers hold them constant (Adam's b2), so `decay(1 - t ^ c)` is another
    optimizer (Adafactor's schedule), though each step has Adam's form."""
    data = {"gate": roles.alpha, "rate": roles.beta, "momentum": roles.eta}
    return [name for name, r in data.items()
            if r is not None and isinstance(r, sp.Basic) and "t" in free_names([r])]


def _role_differences(rule: UpdateRule, spec, level, entry: CatalogEntry):
    """What the level's roles hold otherwise than `entry`'s, in words: (the lines that lead
    the nearest-model line, the lines that end it)."""
    roles, optimizer = roles_of(rule), spec.kind.value == "optimizer"
    front, back = [], []
    if rule.grad_chunk and entry.family != "frozen-gradient":  # steps at each token's state
        front.append(f"its gradients at the start of chunks of {rule.grad_chunk} tokens "
                     f"({entry.id}: at each token's state)")
    stepped = follows_the_step(rule, roles) if optimizer else []
    if stepped:
        front.append(f"its {' and '.join(stepped)} changing with the step t "
                     f"({entry.id}: constant)")
    if roles.alpha == 0 and entry.gate != "none":
        front.append(f"a gate of 0, which keeps nothing of the state ({entry.id}: an average)")
    own = reads_own_state(rule, roles)
    if own:  # a self-generated target: the rule is the entry's at a value of the state
        source = "the gradients" if optimizer else "the tokens"
        front.append(f"its {' and '.join(own)} computed from its own state "
                     f"({entry.id}: from {source})")
    if optimizer and level.read_before:
        back.append(f"it reads before the write ({entry.id}: its state after)")
    learned = _learns_from(roles, level) if optimizer else None
    if learned:  # Adam's moment of g / (sqrt(v) + eps): the data is not the gradient
        theirs = f"{level.over} ⊙ {level.over}" if entry.squares else f"the gradient {level.over}"
        back.append(f"it learns from {learned} ({entry.id}: from {theirs})")
    return front, back


def _learns_squares(rule: UpdateRule) -> bool:
    """Whether an optimizer level learns from an entrywise square (g ⊙ g, (g - m)^2)."""
    roles = roles_of(rule)
    data = roles.v if roles.v is not None else roles.g
    if not isinstance(data, sp.Basic):
        return False
    if isinstance(data, sp.HadamardPower):
        return data.exp == 2
    return isinstance(data, sp.HadamardProduct) and len(data.args) == 2 \
        and data.args[0] == data.args[1]


def _learns_from(roles: Roles, level) -> str | None:
    """What an optimizer level learns from, in words, when it is more than its gradient
    (or its square): None for the gradient itself."""
    from nlc.derive.printing import term_text
    data = roles.v if roles.v is not None else roles.g  # the objective's target first
    if data is None or not isinstance(data, sp.Basic):
        return None
    grads = [x for x in data.free_symbols if getattr(x, "name", None) == level.over]
    if free_names([data]) <= {level.over} and grads:  # g, -g, g * g: an entry's own data
        g = grads[0]
        plain = {g, -g, sp.HadamardProduct(g, g), sp.HadamardPower(g, 2)}
        if data in plain or data.doit() in plain:
            return None
    return term_text(data)


def candidates(rule: UpdateRule, spec) -> list[CatalogEntry]:
    roles, gk, rk = roles_of(rule), gate_kind(rule, spec), rate_kind(rule, spec)
    if reads_own_state(rule, roles) or (spec.kind.value == "optimizer"
                                        and follows_the_step(rule, roles)):
        return []
    out = []
    for e in ENTRIES:
        if not form_matches(e, rule):
            continue
        if e.gate not in ("any", gk) or e.kind != spec.kind.value:
            continue
        if e.gate != "none" and roles.alpha is not None and roles.alpha == 0:
            continue  # decay(0) keeps nothing: an average with b1 = 0 is no average
        if "beta" in e.needs and e.rate != rk:
            continue
        if any(getattr(roles, r) is None for r in e.needs):
            continue
        if e.every != "any" and (e.every == "chunk") != (rule.period > 1):
            continue
        if e.objective is not None and e.objective != rule.role("objective"):
            continue
        if e.kind == "optimizer" and not _learns_from_gradients(rule, spec, roles):
            continue
        if (e.family == "nonparametric"  # a window is sliding-window attention's alone
                and (e.id == "sliding_window") != bool(rule.role("window"))):
            continue
        out.append(e)
    return out


def _derived_values(rule: UpdateRule):
    if rule.kind == "nonparametric":
        return (rule.role("kernel"),)
    values = tuple(v for _, v in rule.next_state)
    if rule.kind == "solve":  # the read too, with the new statistics written out
        new = {sp.MatrixSymbol(f"{n}_next", *s.shape): v
               for (n, s), (_, v) in zip(rule.states, rule.next_state)}
        values += (rule.read.xreplace(new),)
    return values


def compare_all(entries: list[CatalogEntry], module, decl_name: str, level: str,
                rng: np.random.Generator, form=None) -> list[Comparison]:
    """Compare one level (its memory `form`) with several entries, deriving once per
    choice of dimensions."""
    if not entries:
        return []
    if form is not None and form.kind == "mlp":
        return _compare_mlp(entries, module, decl_name, level, rng, form)
    symbolic: dict[str, bool | None] = {e.id: True for e in entries}
    worst: dict[str, float] = {e.id: 0.0 for e in entries}
    live = list(entries)
    for pair in SYMBOLIC_DIMS:
        rule, _ = _rule_at(module, decl_name, level, pair)
        rule = as_read(rule)
        ours = _derived_values(rule)
        for entry in list(live):
            theirs = entry.update(roles_of(rule))
            if len(ours) != len(theirs):
                symbolic[entry.id] = False
            else:
                for a, b in zip(ours, theirs):
                    verdict = symbolic_equal(a, b)
                    if verdict is False:
                        symbolic[entry.id] = False
                        break
                    if verdict is None:
                        symbolic[entry.id] = None
            if symbolic[entry.id] is False:
                live.remove(entry)
    reads: dict[str, str] = {}
    for pair in NUMERIC_DIMS:
        if not live:
            break
        rule, positive = _rule_at(module, decl_name, level, pair)
        rule = as_read(rule)
        ours, roles = _derived_values(rule), roles_of(rule)
        for entry in live:
            error = max(numeric_error(a, b, rng, positive)
                        for a, b in zip(ours, entry.update(roles)))
            worst[entry.id] = max(worst[entry.id], error)
            reads[entry.id] = reads.get(entry.id) or read_difference(rule, roles, entry, rng,
                                                                     positive)
    return [_comparison(e, symbolic[e.id], worst[e.id], reads.get(e.id, "")) for e in entries]


def as_read(rule: UpdateRule) -> UpdateRule:
    """The rule as the catalog writes its models: a matrix state read on the key's side,
    `o = S q`. A state W read as `q @ W` (W^T q) meets the query on its output side, so it is
    compared as S = W^T, whose input side is the one the query meets; the vector W was
    applied to (its "key") is then S's output side: its value. Linear attention written as
    W' = a W + k v^T read W^T q is linear attention; a delta rule whose W predicts k from v
    and reads W^T q is not DeltaNet, though its write is DeltaNet's with k and v renamed."""
    from dataclasses import replace

    from nlc.derive.execution import transposed_rule
    turned = transposed_rule(rule)
    if turned is None:
        return rule
    swap = {"key": "value", "value": "key"}
    return replace(turned, roles=tuple((swap.get(n, n), r) for n, r in turned.roles))


def _comparison(entry: CatalogEntry, symbolic: bool | None, error: float,
                read: str = "") -> Comparison:
    """The verdict on one entry: its update equal (symbolically where decided, and within
    TOLERANCE numerically) and its read the same (`read` says how it differs)."""
    error = error if symbolic is not False else float("inf")
    return Comparison(entry, symbolic, error,
                      symbolic is not False and error < TOLERANCE and not read, read=read)


def _rule_at(module, decl_name: str, level: str, pair, gradient=None):
    """The level's rule with its dims at `pair` (and whether its state must stay positive:
    a softmax retention takes logarithms of it)."""
    spec = instantiate(module, decl_name, pair)
    record = spec.graph.level(level)
    rule = derive_level(spec, record, SymbolTable(spec, {}, pair), gradient)
    positive = any(t.kind == "kl" for t in record.retentions)
    return rule, positive


def _compare_mlp(entries: list[CatalogEntry], module, decl_name: str, level: str,
                 rng: np.random.Generator, form) -> list[Comparison]:
    """MLP memories by parts (nlc/verify/mlp.py): numeric first, end to end, at the numeric
    dims and at two ranges of the scalar inputs (so that a threshold on the error, as in
    Yaad's Huber switch, is seen on both sides); then, for the entries that survive, the
    chain rule, the loss and the rule around the gradient, symbolically."""
    worst: dict[str, float] = {e.id: 0.0 for e in entries}
    symbolic: dict[str, bool | None] = {e.id: None for e in entries}
    reads: dict[str, str] = {}
    live = list(entries)
    for pair in NUMERIC_DIMS:
        if not live:
            break
        rule, positive = _rule_at(module, decl_name, level, pair)
        values, roles = _derived_values(rule), roles_of(rule)
        for entry in list(live):
            reads[entry.id] = reads.get(entry.id) or read_difference(rule, roles, entry, rng,
                                                                     positive)
            for scalars in SCALAR_RANGES:
                error = mlp.numeric_error(rule, values, entry, roles, rng, positive, scalars)
                worst[entry.id] = max(worst[entry.id], error)
                if not worst[entry.id] < TOLERANCE:
                    live.remove(entry)
                    break
    if not live:
        return [_comparison(e, symbolic[e.id], worst[e.id], reads.get(e.id, ""))
                for e in entries]
    chain = mlp.chain_rule_equal(len(form.dims) - 1, form.residual, form.norm)
    parts: dict[str, list] = {e.id: [chain] for e in live}
    for i, pair in enumerate(SYMBOLIC_DIMS):
        rule, _ = _rule_at(module, decl_name, level, pair, gradient=opaque_gradient)
        values, roles = _derived_values(rule), roles_of(rule)
        for entry in live:
            if i == 0:
                spec = instantiate(module, decl_name, pair)
                derivation = LevelDerivation(spec, spec.graph.level(level),
                                             SymbolTable(spec, {}, pair))
                parts[entry.id].append(mlp.loss_equal(derivation, entry, roles.delta))
            parts[entry.id].append(mlp.algebra_equal(rule, values, entry, roles))
    for entry in live:
        symbolic[entry.id] = mlp._verdict(parts[entry.id])
    return [_comparison(e, symbolic[e.id], worst[e.id], reads.get(e.id, ""))
            for e in entries]


def verify_module(module: ast.Module, path: str, seed: int = 0) -> list[SpecReport]:
    rng = np.random.default_rng(seed)
    reports = []
    for spec in check(module):
        if spec.blocks:
            continue
        start = time.perf_counter()
        levels = []
        for rule in derive(spec, {d: v for d, v in spec.dims}):
            report = LevelReport(rule.level)
            found = compare_all(candidates(rule, spec), module, spec.name, rule.level, rng,
                                rule.form)
            report.matches = [c for c in found if c.ok]
            loose = [(c, untied(rule, spec, c.entry)) for c in report.matches]
            loose = [(c, why) for c, why in loose if why]
            if loose:  # the form is the entry's, the parameterization another model's
                dropped = {id(c) for c, _ in loose}
                report.matches = [c for c in report.matches if id(c) not in dropped]
            read_only = sorted((c for c in found if not c.ok and c.read
                                and c.numeric < TOLERANCE and c.symbolic is not False),
                               key=lambda c: not _claimed(c.entry.id, spec.claims or ""))
            if not report.matches and loose:
                report.nearest = [c.entry.id for c, _ in loose]
                report.differs = loose[0][1]
            elif not report.matches and read_only:  # the update is the entry's, the read not
                report.nearest = [c.entry.id for c in read_only]
                report.differs = f"{read_only[0].entry.title}'s update; {read_only[0].read}"
            elif not report.matches:
                report.nearest, report.differs = nearest(rule, spec, spec.claims)
            elif spec.claims and not any(_claimed(c.entry.id, spec.claims)
                                         for c in report.matches):
                _, report.differs = nearest(rule, spec, spec.claims)  # why not the claim
            levels.append(report)
        applied = None
        if spec.kind.value == "optimizer":
            from nlc.verify.apply import verify_apply
            applied = verify_apply(module, spec, levels, path, rng)
        reports.append(SpecReport(path, spec.name, spec.claims, levels,
                                  time.perf_counter() - start, applied))
    return reports


# the objective a published affine recurrence is the one gradient step of
OBJECTIVE_OF_FAMILY = {"decay": "dot", "delta": "l2", "dplr": "l2", "product": "l2",
                       "elementwise": "l2"}
# how far apart two points of the design space are, per axis that differs; objectives that
# regress the memory's output on a target are closer to each other than to `dot`
AXIS_WEIGHTS = {"form": 4, "objective": 2, "gate": 1, "erase": 1, "momentum": 1, "rate": 0.5}
REGRESSION = frozenset({"l2", "lp", "huber", "lq", "kl"})


def _objective_kind(level) -> str | None:
    """The loss a level regresses with (an omega window's inner loss: the window is told
    apart by `_written_differences`)."""
    term = level.objective
    if term is not None and term.kind == "omega":
        term = term.get("loss")
    return term.kind if term is not None else None


def _axes_of_level(rule: UpdateRule, spec) -> dict:
    level = spec.graph.level(rule.level)
    return {"form": rule.form.kind, "objective": _objective_kind(level),
            "gate": gate_kind(rule, spec),
            "erase": any(r.kind == "erase" for r in level.retentions),
            "momentum": any(n.endswith("_mom") for n, _ in rule.states)
            and rule.role("momentum") != 0,  # newton_schulz's default momentum is 0
            "rate": rule.role("lr") is not None and rule.role("lr") != 1,
            "rate_kind": rate_kind(rule, spec)}


def _axes_of_entry(entry: CatalogEntry) -> dict:
    return {"objective": entry.objective or OBJECTIVE_OF_FAMILY.get(entry.family),
            "gate": entry.gate, "erase": "kappa" in entry.needs,
            "momentum": "eta" in entry.needs, "rate": "beta" in entry.needs or entry.ema}


def _differences(mine: dict, entry: CatalogEntry, rule: UpdateRule) -> dict[str, str]:
    """axis -> what differs from `entry`, in words (empty: the same point on every axis)."""
    theirs, out = _axes_of_entry(entry), {}
    if not form_matches(entry, rule):
        out["form"] = _form_words(entry, rule) if _mlp_apart(entry, rule) else \
            f"a {mine['form']} memory ({entry.id}: {entry.form})"
    if _erase_for_l2(mine, theirs):  # S k k^T from the erase, not from the loss
        key, along = rule.role("key"), rule.role("erase_key")
        out["objective"] = f"a dot objective with an erase ({entry.id}: l2, whose gradient " \
            f"is the erase)" + ("" if along is None or key is None or along == key else
                                f", the erase along {sstr(along)}, not the key {sstr(key)}")
    elif theirs["objective"] and mine["objective"] != theirs["objective"]:
        out["objective"] = f"objective {mine['objective']} ({entry.id}: {theirs['objective']})"
    if entry.gate != "any" and mine["gate"] != entry.gate:
        out["gate"] = f"a {mine['gate']} retention gate ({entry.id}: " \
            f"{'no gate' if entry.gate == 'none' else entry.gate})"
    if mine["erase"] != theirs["erase"] and not _erase_for_l2(mine, theirs):
        out["erase"] = "+ an erase" if mine["erase"] else "without an erase"
    if mine["momentum"] != theirs["momentum"]:
        out["momentum"] = "+ momentum" if mine["momentum"] else "without momentum"
    if mine["rate"] != theirs["rate"]:
        out["rate"] = "a learning rate" if mine["rate"] else \
            "a learning rate of 1" if rule.role("lr") == 1 else "no learning rate"
    elif mine["rate"] and "beta" in entry.needs and mine["rate_kind"] != entry.rate:
        out["rate"] = f"{RATE_WORDS[mine['rate_kind']]} ({entry.id}: {RATE_WORDS[entry.rate]})"
    return out


def _erase_for_l2(mine: dict, theirs: dict) -> bool:
    """A dot objective with an erase against an l2 entry without one: the same delta step
    written two ways (docs/language.md: `erase(k, beta)` beside `dot` is DeltaNet)."""
    return mine["objective"] == "dot" and mine["erase"] and theirs["objective"] == "l2" \
        and not theirs["erase"]


def _mlp_apart(entry: CatalogEntry, rule: UpdateRule) -> bool:
    """Whether the level's memory and the entry's are both MLPs that differ only in the norm,
    the residual or the depth: a smaller step in the design space than another form."""
    return rule.form.kind == "mlp" and entry.form in ("mlp", "mlp1", "mlp2")


def _form_words(entry: CatalogEntry, rule: UpdateRule) -> str:
    """How an MLP memory differs from an entry's MLP of a fixed shape, in words."""
    return "an MLP with " + ", ".join(_mlp_parts(entry, rule))


def _mlp_parts(entry: CatalogEntry, rule: UpdateRule) -> list[str]:
    """Each way an MLP memory differs from an entry's MLP (`_mlp_apart`), in words."""
    if entry.form == "mlp":
        return []
    form, depth = rule.form, len(rule.form.dims) - 1
    want = 1 if entry.form == "mlp1" else 2
    parts = []
    if depth != want:
        parts.append(f"{depth} layers ({entry.id}: {want})")
    if not form.norm:
        parts.append(f"no norm on the output ({entry.id}: a layer norm)")
    if not form.residual:
        parts.append(f"no residual ({entry.id}: x + ...)")
    return parts


RATE_WORDS = {"scalar": "one rate per token", "row": "a rate per output channel",
              "channel": "a rate per input channel"}


def _objective_arguments(objective, entry: CatalogEntry) -> str:
    """Where a level that matches `entry` on every compared axis still differs from it: the
    objective's numeric arguments against the paper's loss, if they differ, else the rest."""
    loss, differ = entry.loss, []
    if objective is not None and loss is not None:
        written = dict(objective.args)
        if loss.p is not None and written.get("p") not in (None, float(loss.p)):
            differ.append(f"p = {written['p']:g} ({entry.id}: p = {loss.p})")
        scale = written.get("scale")
        if isinstance(scale, float) and scale != float(loss.scale):
            differ.append(f"scale = {scale:g} ({entry.id}: scale = {loss.scale})")
        if loss.kind == "huber_norm" and written.get("switch") not in (None, "norm"):
            differ.append(f"switch = {written['switch']} ({entry.id}: switch = norm)")
    if differ:
        return "the objective's " + " and ".join(differ)
    return "the difference is in the algorithm, the read or an argument nlc does not compare"


# the order of a gate against the step that a family's update has by construction: a delta
# rule decays first (S D (I - b k k^T)); a dplr rule and the frozen-gradient MLP memories
# take decay and step at the old state
ENTRY_ORDER = {"delta": "before", "product": "before", "dplr": "parallel",
               "frozen-gradient": "parallel"}


# retentions the gate and erase axes compare; any other is named where it differs
GATED = frozenset({"decay", "weight_decay", "erase", "none"})


STEP_WORDS = {"gd": "a gradient step", "implicit": "an implicit step"}


def _other_step(level, entry: CatalogEntry) -> str | None:
    """The level's step ("gd", "implicit") where it is not the layer entry's; else None."""
    kind = level.algorithm.kind if level.algorithm is not None else None
    return kind if kind in STEP_WORDS and entry.kind == "layer" and kind != entry.step else None


def _written_differences(level, entry: CatalogEntry, rule: UpdateRule) -> list[str]:
    """What the spec writes that the entry's update has otherwise and the compared axes do
    not see: the gate's order against the step (with a regression objective, where the
    orders differ), a retention the entry names (Memora's kl), the level's frequency, the
    steps per token."""
    differ = []
    orders = {r.get("order") for r in level.retentions if r.kind in ("decay", "weight_decay")}
    theirs = ENTRY_ORDER.get(entry.family)
    loss = level.objective
    if loss is not None and loss.kind == "omega":  # a window of the inner loss
        loss = loss.get("loss")
    if theirs and entry.gate != "none" and loss is not None \
            and loss.kind in REGRESSION and orders and orders != {theirs}:
        mine = "/".join(sorted(orders))
        differ.append(f"the gate's order = {mine} ({entry.id}: order = {theirs})")
    kinds = {r.kind for r in level.retentions}
    shown = kinds - GATED  # what no gate axis shows: kl, lq, elastic_net, ...
    if entry.retention and entry.retention not in kinds or shown - {entry.retention}:
        mine = ", ".join(sorted(kinds)) or "none"
        differ.append(f"retention {mine} ({entry.id}: {entry.retention or 'none beyond its gate'})")
    if level.objective is not None and level.objective.kind == "omega":
        window = int(level.objective.get("window"))
        differ.append(f"the losses of a window of {window} tokens ({entry.id}: the token's "
                      f"own)")
    weight = dict(level.objective.args).get("weight") if level.objective is not None else None
    if entry.family == "nonparametric" and isinstance(weight, ast.Expr) \
            and softmax_scale(rule.role("kernel")) is None:  # not exp(c q.k)
        differ.append(f"the weight {format_expr(weight)} ({entry.id}: exp of the scaled "
                      "dot product of query and key)")
    window = level.algorithm.get("window") if level.algorithm is not None \
        and level.algorithm.kind == "nonparametric" else 0
    if entry.family == "nonparametric" and bool(window) != (entry.id == "sliding_window"):
        differ.append(f"a window of {window} tokens ({entry.id}: every token)" if window else
                      f"every token ({entry.id}: a window)")
    step = _other_step(level, entry)
    if step is not None:
        differ.append(f"{STEP_WORDS[step]} ({entry.id}: {STEP_WORDS[entry.step]})")
    if level.algorithm is not None and level.algorithm.kind == "newton_schulz":
        differ.append(f"its step orthogonalized by Newton-Schulz ({entry.id}: a gradient "
                      "step)")
    if level.period > 1 and entry.every != "chunk":
        differ.append(f"an update every {level.period} {level.unit}s ({entry.id}: every "
                      f"token)")
    steps = 1 + len(level.later_steps)
    if level.algorithm is not None and level.algorithm.kind != "newton_schulz" \
            and "steps" in dict(level.algorithm.args):  # Newton-Schulz's are its iterations
        steps *= int(level.algorithm.get("steps"))
    if steps > 1 and entry.family != "product":
        differ.append(f"{steps} steps per token ({entry.id}: one)")
    return differ


def nearest(rule: UpdateRule, spec, claim: str | None = None) -> tuple[list[str], str]:
    """The three catalog entries of the spec's kind closest to the level on the axes of the
    design space (memory form, objective, retention gate, erase, momentum, rate), and one
    line saying how the level differs from the closest: "Gated DeltaNet + momentum". The
    entries a failed `claim` names come first: the line then says how the level differs
    from what the spec claims."""
    mine = _axes_of_level(rule, spec)
    level = spec.graph.level(rule.level)
    retentions = {r.kind for r in level.retentions}
    squared = _learns_squares(rule) if spec.kind.value == "optimizer" else None
    pool = [e for e in ENTRIES if e.kind == spec.kind.value]
    scored = []
    for i, e in enumerate(pool):
        diffs, theirs = _differences(mine, e, rule), _axes_of_entry(e)
        distance = sum(AXIS_WEIGHTS[a] for a in diffs)
        if _erase_for_l2(mine, theirs):
            distance -= AXIS_WEIGHTS["objective"] - 0.5
        if "form" in diffs and _mlp_apart(e, rule):  # MLPs apart by a norm or a layer
            distance += len(_mlp_parts(e, rule)) - AXIS_WEIGHTS["form"]
        if e.retention and e.retention not in retentions:  # Memora's kl: a whole geometry
            distance += 1.5
        if _other_step(level, e) is not None:
            distance += 1  # a gradient step and an implicit one: another update
        if squared is not None and squared != e.squares:
            distance += 0.5  # a moment of squares (AdaBelief's (g - m)^2) is a second moment
        if "objective" in diffs and {mine["objective"], theirs["objective"]} <= REGRESSION:
            distance -= AXIS_WEIGHTS["objective"] / 2
        scored.append((distance, i, e, diffs))
    scored.sort(key=lambda t: (not (claim and _claimed(t[2].id, claim)), *t[:2]))
    best = scored[:3]
    if not best:
        return [], ""
    _, _, first, diffs = best[0]
    front, back = _role_differences(rule, spec, level, first)
    written = front + _written_differences(level, first, rule) + back
    if not diffs:
        line = (f"{first.title} but for " + "; ".join(written) if written else
                f"{first.title} on every axis nlc compares, but "
                + _objective_arguments(level.objective, first))
    else:  # the axes that differ, then what the spec writes otherwise beyond them
        added = [p for p in diffs.values() if p.startswith(("+", "without "))]
        other = [p for p in diffs.values() if p not in added]
        line = " ".join([first.title, *added] + (["with " + ", ".join(other)] if other else []))
        line += "".join(f"; {w}" for w in written)
    return [e.id for _, _, e, _ in best], line
