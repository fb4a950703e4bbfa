"""`nlc fmt`: print a `Module` in canonical layout. Re-parsing the output gives an equal AST
(spans aside); comments collected by the parser are re-attached to the statement they precede
or end."""

from __future__ import annotations

from nlc.syntax import ast

_PREC = {ast.BinOpKind.ADD: 1, ast.BinOpKind.SUB: 1, ast.BinOpKind.MUL: 2,
         ast.BinOpKind.DIV: 2, ast.BinOpKind.MATMUL: 2, ast.BinOpKind.POW: 4}
_NEG_PREC, _ATOM_PREC = 3, 5
_STEPS = (ast.ClauseKind.OBJECTIVE, ast.ClauseKind.ALGORITHM)  # `a then b`: steps in order


def _prec(e: ast.Expr) -> int:
    if isinstance(e, ast.BinOp):
        return _PREC[e.op]
    if isinstance(e, ast.Neg):
        return _NEG_PREC
    return _ATOM_PREC


def _number(n: ast.Num) -> str:
    if n.is_int:
        return str(int(n.value))
    text = repr(float(n.value))
    if "e" in text:  # 1e-08 -> 1e-8, 1e+20 -> 1e20
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def _mixes_matmul(op: ast.BinOpKind, child: ast.Expr) -> bool:
    """`(a * b) @ W` keeps its parentheses: '@' binds like '*' and '/', but a reader should
    not have to know that to see what is projected."""
    scaling = (ast.BinOpKind.MUL, ast.BinOpKind.DIV)
    return isinstance(child, ast.BinOp) and (
        (op is ast.BinOpKind.MATMUL and child.op in scaling)
        or (op in scaling and child.op is ast.BinOpKind.MATMUL))


def format_expr(e: ast.Expr) -> str:
    """An expression with the fewest parentheses that keep its tree."""
    if isinstance(e, ast.Num):
        return _number(e)
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Keyword):
        return f"{e.name} = {format_expr(e.value)}"
    if isinstance(e, ast.Chain):
        return " -> ".join(format_expr(i) for i in e.items)
    if isinstance(e, ast.Call):
        return f"{e.func}({', '.join(format_expr(a) for a in e.args)})"
    if isinstance(e, ast.Index):
        return f"{e.base}[{', '.join(format_expr(i) for i in e.items)}]"
    if isinstance(e, ast.Neg):
        inner = format_expr(e.operand)
        return f"-({inner})" if _prec(e.operand) < _NEG_PREC else f"-{inner}"
    assert isinstance(e, ast.BinOp)
    p = _PREC[e.op]
    left, right = format_expr(e.left), format_expr(e.right)
    if e.op is ast.BinOpKind.POW:
        if _prec(e.left) < _ATOM_PREC:  # the base of a power must be an atom
            left = f"({left})"
        if _prec(e.right) < _NEG_PREC:
            right = f"({right})"
    else:
        if _prec(e.left) < p or _mixes_matmul(e.op, e.left):
            left = f"({left})"
        if _prec(e.right) <= p:
            right = f"({right})"
    return f"{left} {e.op.value} {right}"


class _Printer:
    def __init__(self, comments: list[tuple[int, str]], last_starts: dict | None = None):
        self.comments = sorted(comments)  # (line, text)
        self.out: list[str] = []
        # line -> the column where the last printed statement on it starts: a comment ends
        # the last statement of its line, so one that another statement follows leaves it
        self.last_starts = last_starts or {}
        self.seen: dict[int, int] = {}

    def _flush_before(self, line: int, indent: str) -> None:
        while self.comments and self.comments[0][0] < line:
            self.out.append(indent + self.comments.pop(0)[1].rstrip())

    def _line(self, text: str, first: int, last: int, indent: str,
              after: tuple[int, int] = (0, 0)) -> None:
        """`text`, printed as one line from source lines first..last: the last comment on
        those lines ends it, any earlier one (a statement written over several lines) goes
        on its own line above it, so no comment moves to a neighbouring statement. A comment
        on line `last` where a statement starts after `after` is that statement's."""
        self._flush_before(first, indent)
        followed = last in self.last_starts and (last, self.last_starts[last]) > after
        ends = []
        while self.comments and (self.comments[0][0] < last
                                 or self.comments[0][0] == last and not followed):
            ends.append(self.comments.pop(0)[1].rstrip())
        self.out.extend(indent + comment for comment in ends[:-1])
        self.out.append(indent + text + ("  " + ends[-1] if ends else ""))

    def emit(self, text: str, node, indent: str, last: int | None = None) -> None:
        """One statement; a block's header passes `last`, the line its `{` is on."""
        span = getattr(node, "span", None)
        if span is not None and span.known:
            self.seen[span.line] = max(self.seen.get(span.line, 0), span.column)
            after = (span.line, span.column) if last else (span.end_line, span.end_column - 1)
            if last and last != span.line:  # a header over several lines: its `{` on `last`
                after = (last, 0)
            self._line(text, span.line, last or span.end_line, indent, after)
        else:
            self.out.append(indent + text)

    def close(self, node, indent: str) -> None:
        span = node.span
        if span.known:
            self._flush_before(span.end_line, indent + "  ")
            self._line("}", span.end_line, span.end_line, indent,
                       (span.end_line, span.end_column - 1))
        else:
            self.out.append(indent + "}")

    def module(self, m: ast.Module) -> str:
        for i, decl in enumerate(m.decls):
            if i:
                self.out.append("")
            self.decl(decl)
        self._flush_before(10**12, "")
        return "\n".join(self.out).rstrip() + "\n"

    def decl(self, d: ast.Decl) -> None:
        claims = f" claims {d.claims}" if d.claims else ""
        self.emit(f"{d.kind.value} {d.name}{claims} {{", d, "", d.span.line)
        previous = None
        for stmt in d.body:
            block = isinstance(stmt, (ast.Context, ast.Level))
            if previous is not None and (block or previous):
                self.out.append("")
            self.stmt(stmt, "  ")
            previous = block
        self.close(d, "")

    def stmt(self, s, indent: str) -> None:
        if isinstance(s, (ast.Dims, ast.Hyper)):
            word = "dims" if isinstance(s, ast.Dims) else "hyper"
            defs = ", ".join(f"{d.name} = {format_expr(d.value)}" for d in s.defs)
            self.emit(f"{word} {defs}", s, indent)
        elif isinstance(s, ast.Param):
            shape = ", ".join(format_expr(x) for x in s.shape)
            init = f" = {format_expr(s.init)}" if s.init is not None else ""
            self.emit(f"param {', '.join(s.names)} : [{shape}]{init}", s, indent)
        elif isinstance(s, ast.Context):
            self.emit(f"context from {', '.join(s.sources)} {{", s, indent, s.span.line)
            for a in s.body:
                self.emit(f"{a.name} = {format_expr(a.value)}", a, indent + "  ")
            self.close(s, indent)
        elif isinstance(s, ast.Level):
            head = f"level {s.name}"
            if s.over:
                head += f" over gradients {s.over}"
                if s.inputs:
                    head += f", inputs {s.inputs}"
            if s.every:
                count = format_expr(s.every.count)
                plural = "" if count == "1" else "s"
                head += f" every {count} {s.every.unit.value}{plural}"
            if s.chunk is not None:
                head += f", gradients at chunk({format_expr(s.chunk)})"
            parts = [p.span.end_line for p in (s.every, s.chunk) if p is not None]
            self.emit(head + " {", s, indent, max([s.span.line, *parts]))
            for item in s.body:
                self.stmt(item, indent + "  ")
            self.close(s, indent)
        elif isinstance(s, ast.State):
            init = f" = {format_expr(s.init)}" if s.init is not None else ""
            self.emit(f"state {s.name} : {format_expr(s.form)}{init}", s, indent)
        elif isinstance(s, ast.Clause):
            joint = " then " if s.kind in _STEPS else ", "
            values = joint.join(format_expr(v) for v in s.values)
            if s.kind is ast.ClauseKind.APPLY:
                text = f"apply {s.target} = {values}"
            elif s.kind is ast.ClauseKind.READ and s.when:
                text = f"read {s.when} {values}"
            else:
                text = f"{s.kind.value} {values}"
            self.emit(text, s, indent)
        elif isinstance(s, ast.Output):
            self.emit(f"output {format_expr(s.value)}", s, indent)
        elif isinstance(s, ast.Transfer):
            self.emit(f"transfer {s.source} -> {s.target} : {s.mode}", s, indent)
        elif isinstance(s, ast.Block):
            self.emit(f"block {' -> '.join(s.layers)}", s, indent)
        else:  # pragma: no cover - the parser builds no other statement
            raise AssertionError(type(s).__name__)


def format_module(module: ast.Module, comments: list[tuple[int, str]] = ()) -> str:
    """Canonical text of a module; `comments` are ``(line, text)`` pairs from `parse_with_comments`."""
    dry = _Printer([])  # a first pass finds where each printed statement starts
    dry.module(module)
    return _Printer(list(comments), dry.seen).module(module)
