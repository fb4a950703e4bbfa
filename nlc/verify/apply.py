"""An optimizer's `apply` lines against the catalog's updates (nlc/catalog/applies.py).

Once the levels are compared one by one (verify.py), each update entry whose `levels` the
spec's levels equal (each entry by its own level) is bound to them, and its own hypers (`lr`,
`eps`) to the hypers that only the apply lines read: a hyper named as the paper names it to
its namesake, the others in every order. The apply lines are lowered by the engine
(`Lowering`) as the emitted step runs them (nlc/emit/optimizer.py): a level's name is its
read, a state's name its value after this step's write, and each line sees the parameter
the line before left. The result is compared with the entry's update symbolically at two
assignments of the dims and numerically in float64 at three, as a level's rule is.

The levels' writes are checked on their own, so both sides are functions of the values after
the write (`m_next`), not of the old states. Newton-Schulz is, symbolically, an undefined
function of its argument on both sides (as an MLP's gradient is in mlp.py), and numerically
the engine's iteration meets the catalog's own. A difference with a root in it is not decided
symbolically (sqrt(a / b) is sqrt(a) / sqrt(b), which SymPy does not know of real symbols):
the numbers decide, with the tensors the update takes a root of drawn positive (Adam's v)."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import sympy as sp

from nlc.catalog.applies import APPLIES, ApplyEntry, ApplyRoles, Orthogonalized
from nlc.derive.engine import derive_level
from nlc.derive.evaluate import Evaluator
from nlc.derive.matfuncs import NewtonSchulz, free_names
from nlc.derive.symbols import Lowering, SymbolTable
from nlc.errors import NlcError
from nlc.syntax.format import format_expr
from nlc.syntax import ast
from nlc.syntax.walk import names_used, nodes
from nlc.verify.equality import Explicit, _draw, _inputs, explicit, symbolic_equal
from nlc.verify.verify import (
    NUMERIC_DIMS,
    SYMBOLIC_DIMS,
    TOLERANCE,
    ApplyReport,
    Comparison,
    LevelReport,
    _claimed,
    instantiate,
    roles_of,
)


def _after_write(name: str, tensor) -> sp.MatrixSymbol:
    return sp.MatrixSymbol(f"{name}_next", *tensor.shape)


class OptimizerStep:
    """One step of an optimizer spec at one choice of dims: its levels' rules, and the
    parameter after its apply lines."""

    def __init__(self, module, decl_name: str, pair):
        self.spec = spec = instantiate(module, decl_name, pair)
        self.table = table = SymbolTable(spec, {}, pair)
        levels = [lv for lv in spec.levels if lv.state is not None]
        self.rules = {lv.name: derive_level(spec, lv, table) for lv in levels}
        names = {n: _after_write(n, s) for r in self.rules.values() for n, s in r.states}
        reads = {table.values[n]: r.read for n, r in self.rules.items()
                 if r.read is not None and n in table.values}
        for _ in levels:  # a read may name another level
            reads = {k: v.xreplace(reads) for k, v in reads.items()}
        names |= {k.name: v for k, v in reads.items()}
        self.param = table.values["param"]
        for lv in levels:
            for _, expr in lv.applies:
                self.param = Lowering(table, names | {"param": self.param})(expr)

    def roles(self, levels: tuple[str, ...], hypers: dict[str, str]) -> ApplyRoles:
        """An update's roles bound to these levels (in its entry's order) and hypers."""
        def level(rule):
            roles = roles_of(rule)
            after = tuple(_after_write(n, s) for n, s in rule.states)
            return replace(roles, S=after[:len(roles.S)], U=after[len(roles.S):])
        return ApplyRoles(self.table.values["param"], self.table.values["t"],
                          tuple(level(self.rules[n]) for n in levels),
                          {mine: self.table.values[theirs] for mine, theirs in hypers.items()})


def level_bindings(entry: ApplyEntry, levels: list[LevelReport]) -> list[tuple[str, ...]]:
    """Each way to give every level entry the update reads its own level that equals it."""
    matched = {lv.level: {c.entry.id for c in lv.matches} for lv in levels}
    return [names for names in itertools.permutations(matched, len(entry.levels))
            if all(e in matched[n] for e, n in zip(entry.levels, names))]


def own_hypers(step: OptimizerStep) -> list[str]:
    """The hypers that the apply lines read and no level's rule does."""
    hypers = {n for n, _ in step.spec.hypers}
    read = set().union(*(names_used(e) for lv in step.spec.levels for _, e in lv.applies))
    rules = free_names([e for r in step.rules.values()
                        for e in [v for _, v in r.next_state] + [r.read] if e is not None])
    return sorted((read & hypers) - rules)


def hyper_bindings(entry: ApplyEntry, own: list[str]) -> list[dict[str, str]]:
    """entry's hyper -> the spec's, each way: a namesake binds to its namesake."""
    if len(own) != len(entry.hypers):
        return []
    fixed = {h: h for h in entry.hypers if h in own}
    free = [h for h in entry.hypers if h not in fixed]
    return [fixed | dict(zip(free, order))
            for order in itertools.permutations([h for h in own if h not in fixed])]


def _has_root(m) -> bool:
    return any(p.exp.is_number and not p.exp.is_integer
               for e in m for p in sp.sympify(e).atoms(sp.Pow))


def symbolic(ours, theirs) -> bool | None:
    """Whether the lowered apply equals the update, with Newton-Schulz undefined on both."""
    ours = ours.replace(lambda e: isinstance(e, NewtonSchulz) and e.args[1] == 5,
                        lambda e: Orthogonalized(e.args[0]))
    if ours.has(NewtonSchulz):  # another number of iterations: not expanded
        return None
    builder = Explicit()
    verdict = symbolic_equal(ours, theirs, builder)
    if verdict is False and any(_has_root(explicit(x, builder)) for x in (ours, theirs)):
        return None
    return verdict


def numeric(ours, theirs, rng: np.random.Generator) -> float:
    """Relative error at one random draw; Orthogonalized by the catalog's iteration."""
    roots = {s for node in sp.preorder_traversal(theirs) if isinstance(node, sp.HadamardPower)
             and not node.exp.is_integer for s in node.base.atoms(sp.MatrixSymbol)}
    ev = Evaluator({x: _draw(x, rng, x in roots) for x in _inputs([ours, theirs])})
    with np.errstate(all="ignore"):  # a root of a negative entry is NaN: a difference
        for node in sp.postorder_traversal(theirs):
            if isinstance(node, Orthogonalized):
                ev.env[node] = node.evaluate(np.asarray(ev(node.args[0]), dtype=np.float64))
        a, b = np.broadcast_arrays(np.asarray(ev(ours), dtype=np.float64),
                                   np.asarray(ev(theirs), dtype=np.float64))
        error = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))
    return error if np.isfinite(error) else float("inf")


def compare(entry: ApplyEntry, bindings: list[tuple[str, ...]], steps: dict,
            rng: np.random.Generator) -> Comparison:
    """The entry against the apply lines, under each binding; the first that holds, else
    the closest."""
    own = own_hypers(steps[SYMBOLIC_DIMS[0]])
    tried = []
    for levels in bindings:
        for hypers in hyper_bindings(entry, own):
            verdict: bool | None = True
            for pair in SYMBOLIC_DIMS:
                step = steps[pair]
                found = symbolic(step.param, entry.apply(step.roles(levels, hypers)))
                verdict = False if found is False else None if found is None else verdict
                if verdict is False:
                    break
            worst = max(numeric(steps[p].param, entry.apply(steps[p].roles(levels, hypers)),
                                rng) for p in NUMERIC_DIMS)
            tried.append(Comparison(entry, verdict, worst,
                                    verdict is not False and worst < TOLERANCE))
            if tried[-1].ok:
                return tried[-1]
    if not tried:
        note = (f"it takes {len(entry.hypers)} hyper(s) of its own ({_listed(entry.hypers)}), "
                f"the apply lines read {len(own)} that no level reads ({_listed(own)})")
        extra = [h for h in own if h not in entry.hypers]
        if len(own) < len(entry.hypers) and _numbers(steps[SYMBOLIC_DIMS[0]]):
            note += ": a number in a hyper's place is not the paper's hyper: name it"
        elif len(own) > len(entry.hypers) and extra:
            note += f": the update has no hyper for {_listed(extra)}"
        return Comparison(entry, False, float("inf"), False, note)
    return min(tried, key=_closeness)


def _numbers(step: OptimizerStep) -> bool:
    """Whether the apply lines hold a number other than a small whole one (1 - b, 2 g)."""
    return any(isinstance(n, ast.Num) and not (n.is_int and abs(n.value) <= 2)
               for lv in step.spec.levels for _, e in lv.applies for n in nodes(e))


def _listed(names) -> str:
    return ", ".join(names) or "none"


def verify_apply(module, spec, levels: list[LevelReport], path: str,
                 rng: np.random.Generator) -> ApplyReport:
    report = ApplyReport([(expr.span, f"apply {target} = {format_expr(expr)}")
                          for lv in spec.levels for target, expr in lv.applies])
    bound = [(e, b) for e in APPLIES if (b := level_bindings(e, levels))]
    compared = []
    if bound:
        try:
            steps = {pair: OptimizerStep(module, spec.name, pair)
                     for pair in SYMBOLIC_DIMS + NUMERIC_DIMS}
        except NlcError as err:  # an apply the engine does not lower is not verified
            report.differs = f"{_quoted(report, path)} is not compared: {err.message}"
            return report
        compared = [compare(e, b, steps, rng) for e, b in bound]
    report.matches = [c for c in compared if c.ok]
    report.differs = _differs(report, spec, compared, path, levels)
    return report


def _quoted(report: ApplyReport, path: str) -> str:
    """`path:line:col: 'apply param = ...'` at the first apply line, naming the others."""
    span, text = report.lines[0]
    quoted = f"{path}:{span.line}:{span.column}: '{text}'"
    if len(report.lines) > 1:  # the lines are compared together
        later = [str(s.line) for s, _ in report.lines[1:]]
        quoted += f" (with the apply at line{'s' if len(later) > 1 else ''} {', '.join(later)})"
    return quoted


def _differs(report: ApplyReport, spec, compared: list[Comparison], path: str,
             levels: list[LevelReport]) -> str:
    """Where the apply differs from the update it claims (else from the closest one it
    was compared with), and how; empty if it does not."""
    claim = spec.claims
    if report.matches and (not claim or report.answers(claim)) or not report.lines:
        return ""
    if not claim:
        if not compared:
            return ""
        return _how(_quoted(report, path), min(compared, key=_closeness))
    entries = [e for e in APPLIES if _claimed(e.id, claim)]
    if not entries:
        return (f"{_quoted(report, path)} is not compared: the catalog states no update for "
                f"'{claim}'")
    tried = [c for c in compared if _claimed(c.entry.id, claim)]
    if not tried:
        wanted = entries[0].levels
        found = {e: [lv.level for lv in levels if e in {c.entry.id for c in lv.matches}]
                 for e in wanted}
        missing = [e for e in wanted if not found[e]]
        have = "; ".join(f"{', '.join(found[e])} equals {e}" for e in wanted if found[e])
        return (f"{_quoted(report, path)} is not compared with {entries[0].title}: no level "
                f"of {spec.name} equals {' or '.join(missing) or 'its levels'}"
                + (f" ({have})" if have and missing else ""))
    return _how(_quoted(report, path), tried[0])


def _closeness(c: Comparison):
    return c.symbolic is False, c.numeric


def _how(quoted: str, c: Comparison) -> str:
    if c.note:
        return f"{quoted} is not {c.entry.title}: {c.note}"
    if c.symbolic is False or not math.isfinite(c.numeric):  # no error to report
        how = "symbolically different"
    else:
        how = f"numerically different, max rel err {c.numeric:.1e}"
    return f"{quoted} differs from {c.entry.title} ({c.entry.citation}): {how}"
