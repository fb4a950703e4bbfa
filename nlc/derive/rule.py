"""`UpdateRule`: what derivation produces for one level, with text, LaTeX and JSON forms."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import sympy as sp

from nlc.derive.printing import latex, paper_text, sstr
from nlc.errors import Span
from nlc.levels.records import MemoryForm


@dataclass(frozen=True)
class UpdateRule:
    """A level's derived rule at one choice of dimensions.

    `states` are the tensors carried from token to token (the memory's, then derived ones
    such as a momentum buffer or sufficient statistics); `next_state[name]` gives each one's
    new value from the old states and the token's context; `read` is the level's output.
    `anchors` name the chunk-start copies that gradients are taken at (TTT / Titans
    mini-batches, `every C tokens`). `roles` binds the paper's roles (key, value, query,
    lr, gate, momentum) to this spec's expressions, for verification against the catalog."""

    spec: str
    level: str
    form: MemoryForm
    kind: str                                   # update | nonparametric | solve
    states: tuple[tuple[str, object], ...]
    next_state: tuple[tuple[str, object], ...]
    read: object | None
    read_before: bool
    roles: tuple[tuple[str, object], ...]
    unit: str
    period: int
    grad_chunk: int | None
    anchors: tuple[tuple[str, object], ...] = ()
    notes: tuple[str, ...] = field(default=())
    span: Span = field(default_factory=Span.none, compare=False)  # the level's, for errors
    # `objective a then b`: each step of a token as an expression of the state before it
    # (the first of the state, with the retention; the later ones of `step_state`); the
    # next state is their composition, and classify reads the product family off them
    steps: tuple[object, ...] = ()
    step_state: object = None
    # an omega window: the gradient of the token j back's loss (one per memory tensor), for
    # j = 1 .. window - 1, before the window's decay; plan checks that each vanishes where
    # the generated layer gives that token's context as zeros (before a sequence's start)
    window_terms: tuple[tuple[object, ...], ...] = ()

    def role(self, name: str, default=None):
        return dict(self.roles).get(name, default)

    def next_of(self, name: str):
        return dict(self.next_state)[name]

    def frequency_text(self) -> str:
        text = f"every {self.period} {self.unit}{'' if self.period == 1 else 's'}"
        return text + (f", gradients at chunk({self.grad_chunk})" if self.grad_chunk else "")

    # ------------------------------------------------------------ text forms
    def to_text(self) -> str:
        """The rule as a paper writes it (printing.paper_text): named functions, ⊙, and
        repeated subexpressions named once on `where` lines."""
        lines = [f"{self.spec}.{self.level} ({self.form.kind} memory, {self.frequency_text()}):"]
        exprs = [expr for _, expr in self.next_state]
        exprs += [self.read] if self.read is not None else []
        texts, where = paper_text(exprs)
        for (name, _), text in zip(self.next_state, texts):
            lines.append(f"  {name}' = {text}")
        if self.read is not None:
            starts = {getattr(a, "name", str(a)) for _, a in self.anchors}
            which = "before the write" if self.read_before else "after the write"
            if starts & {getattr(x, "name", None) for x in self.read.free_symbols}:
                which = "of the chunk-start state"
            lines.append(f"  read = {texts[-1]}    ({which})")
        if where:
            lines.append("  where")
            lines += [f"    {line}" for line in where]
        for name, anchor in self.anchors:
            lines.append(f"  gradients at {anchor}: the state at the chunk start")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        lines = [f"% {self.spec}.{self.level}"]
        for name, expr in self.next_state:
            lines.append(f"{latex(sp.Symbol(name))}' = {latex(expr)}")
        if self.read is not None:
            lines.append(f"o = {latex(self.read)}")
        return " \\\\\n".join(lines) + "\n"

    def to_json_data(self) -> dict:
        return {
            "spec": self.spec, "level": self.level, "form": self.form.kind, "kind": self.kind,
            "frequency": {"unit": self.unit, "period": self.period,
                          "gradient_chunk": self.grad_chunk},
            "states": [name for name, _ in self.states],
            "next_state": {name: sstr(expr) for name, expr in self.next_state},
            "read": None if self.read is None else sstr(self.read),
            "read_before_write": self.read_before,
            "roles": {k: sstr(v) for k, v in self.roles if v is not None},
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_data(), indent=2)
