"""Reverse-mode differentiation of a printed step program: the adjoint (VJP) lines of a
backward step kernel (templates/step_kernel.py.jinja `step_backward`).

Input: the forward step as nlc/emit/tl_step_printer.py printed it (straight-line
`name = <triton.language expression>` lines) and the shapes of its inputs (states S0..,
tokens x0..). The lines are parsed (Python's `ast`) and flattened into three-address form,
one operation a line, every value's shape known: `()` a scalar, `(n,)` a vector, `(r, c)` a
block, `"1"` an axis a `[None, :]` index inserted. The adjoint program walks the flat lines
last to first: each line's adjoint `b_<name>` is the sum of the contributions its readers
made, and each operation hands its operands their contributions by its rule:

    a + b, a - b        g, +-g           (summed over the axes the operand was broadcast on)
    a * b, a / b        g b, g a; g / b, -g out / b
    tl.sum(a, axis=k)   g spread back over axis k (g[None, :], g[:, None], or g everywhere)
    tl.max(a, axis=k)   g to the entries equal to the maximum (shared among ties)
    tl.trans(a)         tl.trans(g)
    exp, log, sqrt, erf, abs, sin, cos, sigmoid    g times the derivative
    tl.where(c, a, b)   g where c to a, where not c to b (c: no adjoint)
    tl.maximum/minimum  g to the larger (smaller) operand
    floor, ceil, comparisons, tl.zeros, constants   no adjoint

Register pressure (a kernel program holds every value): a contribution summed over the axes
an operand was broadcast along, and a block-sized contribution, are computed as they are made
(a block added to the operand's running sum) rather than when the operand's own line is
reached, so the blocks they read do not live on through the rest of the adjoint.

No rule is written per model: whatever the forward printer prints out of these operations has
a backward. An operation outside the list raises `StepVjpError` naming it; the caller keeps the
PyTorch recompute backward and says why.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from nlc.emit.tl_step_printer import StepPrintError, _p

Shape = tuple[str, ...]
ONE = "1"


class StepVjpError(StepPrintError):
    """The step has an operation the reverse-mode rules do not cover."""


_ELEMENTWISE = {"tl.exp", "tl.log", "tl.sqrt", "tl.erf", "tl.abs", "tl.sin", "tl.cos",
                "tl.sigmoid", "tl.floor", "tl.ceil"}
_BROADCASTING = {"tl.where", "tl.maximum", "tl.minimum"}
_REDUCTIONS = {"tl.sum", "tl.max", "tl.min"}
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)


def broadcast(shapes: list[Shape]) -> Shape:
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(rank):
        sizes = {s[axis - rank + len(s)] for s in shapes if axis >= rank - len(s)} - {ONE}
        if len(sizes) > 1:
            raise StepVjpError(f"entries of sizes {' and '.join(sorted(sizes))} meet")
        out.append(sizes.pop() if sizes else ONE)
    return tuple(out)


def _zeros(shape: Shape) -> str:
    return f"tl.zeros(({', '.join(shape)},), dtype=tl.float32)"


class _Flat:
    """The forward lines in three-address form, with each value's shape."""

    def __init__(self, shapes: dict[str, Shape]):
        self.shapes = dict(shapes)
        self.lines: list[tuple[str, ast.expr]] = []
        self.temps = 0

    def line(self, target: str, expr: ast.expr) -> None:
        atom, shape, dep = self.visit(expr)
        last = self.lines[-1][0] if self.lines else None
        if dep and isinstance(atom, ast.Name) and atom.id == last and last.startswith("f"):
            self.lines[-1] = (target, self.lines[-1][1])   # the last temporary is the target
            self.shapes[target] = self.shapes.pop(last)
        else:
            self.lines.append((target, atom))
            self.shapes[target] = shape

    def visit(self, node) -> tuple[ast.expr, Shape, bool]:
        """(the node with its operands flattened, its shape, whether it reads a variable);
        a node that reads a variable becomes a temporary, except `name[None, :]`."""
        if isinstance(node, ast.Name):
            return node, self.shapes.get(node.id, ()), node.id in self.shapes
        if isinstance(node, ast.Constant):
            return node, (), False
        if isinstance(node, ast.Subscript):
            return self._subscript(node)
        if isinstance(node, ast.BinOp) and isinstance(node.op, _BINOPS):
            parts = [self.visit(node.left), self.visit(node.right)]
            new = ast.BinOp(parts[0][0], node.op, parts[1][0])
            return self._hold(new, broadcast([p[1] for p in parts]), parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            a = self.visit(node.operand)
            return self._hold(ast.UnaryOp(node.op, a[0]), a[1], [a])
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            parts = [self.visit(node.left), self.visit(node.comparators[0])]
            new = ast.Compare(parts[0][0], node.ops, [parts[1][0]])
            return self._hold(new, broadcast([p[1] for p in parts]), parts)
        if isinstance(node, ast.Call):
            return self._call(node)
        raise StepVjpError(f"no adjoint rule for `{ast.unparse(node)[:60]}`")

    def _hold(self, node, shape: Shape, parts):
        if not any(p[2] for p in parts):
            return node, shape, False                       # a constant: stays inline
        name, self.temps = f"f{self.temps}", self.temps + 1
        self.lines.append((name, node))
        self.shapes[name] = shape
        return ast.Name(name, ast.Load()), shape, True

    def _subscript(self, node):
        base, shape, dep = self.visit(node.value)
        if dep and not isinstance(base, ast.Name):
            raise StepVjpError(f"an index into `{ast.unparse(node.value)[:40]}`")
        axes = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        out, dims = [], iter(shape)
        for axis in axes:
            if isinstance(axis, ast.Constant) and axis.value is None:
                out.append(ONE)
            elif isinstance(axis, ast.Slice) and not (axis.lower or axis.upper or axis.step):
                out.append(next(dims))
            else:
                raise StepVjpError(f"an index other than None and `:`: `{ast.unparse(node)}`")
        return ast.Subscript(base, node.slice, ast.Load()), tuple(out), dep

    def _call(self, node):
        fn = ast.unparse(node.func)
        if fn == "tl.zeros":
            shape = tuple(ast.unparse(e) for e in node.args[0].elts)
            return node, shape, False
        parts = [self.visit(a) for a in node.args]
        new = ast.Call(node.func, [p[0] for p in parts], node.keywords)
        if fn in _ELEMENTWISE and len(parts) == 1:
            return self._hold(new, parts[0][1], parts)
        if fn in _BROADCASTING:
            return self._hold(new, broadcast([p[1] for p in parts]), parts)
        if fn == "tl.trans" and len(parts) == 1:
            return self._hold(new, parts[0][1][::-1], parts)
        if fn in _REDUCTIONS and len(parts) == 1:
            axis = _axis(node)
            shape = parts[0][1]
            return self._hold(new, shape[:axis] + shape[axis + 1:], parts)
        raise StepVjpError(f"no adjoint rule for {fn} (in `{ast.unparse(node)[:60]}`)")


def _axis(call: ast.Call) -> int:
    for k in call.keywords:
        if k.arg == "axis" and isinstance(k.value, ast.Constant):
            return int(k.value.value)
    raise StepVjpError(f"a reduction without a constant axis: `{ast.unparse(call)[:60]}`")


def _base(atom) -> str | None:
    """The value an operand reads (`x` of `x` and `x[None, :]`), None for a constant."""
    if isinstance(atom, ast.Subscript):
        atom = atom.value
    return atom.id if isinstance(atom, ast.Name) else None


def _smooth_operands(node) -> list:
    """The operands of a flat line through which its value has a derivative."""
    if isinstance(node, (ast.Name, ast.Subscript)):
        return [node]
    if isinstance(node, ast.UnaryOp):
        return [node.operand]
    if isinstance(node, ast.BinOp):
        return [node.left, node.right]
    if isinstance(node, ast.Call):
        fn = ast.unparse(node.func)
        if fn in ("tl.floor", "tl.ceil", "tl.zeros"):
            return []
        return node.args[1:] if fn == "tl.where" else node.args
    return []                                   # comparisons


def _reads(code: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Name)}


class _Adjoint:
    """The reverse walk over a _Flat program."""

    def __init__(self, flat: _Flat, inputs):
        self.flat = flat
        self.shapes = flat.shapes
        self.smooth = set(inputs)   # the values with a derivative: read through an input
        for target, node in flat.lines:
            if any(_base(a) in self.smooth for a in _smooth_operands(node)):
                self.smooth.add(target)
        self.parts: dict[str, list[tuple[str, Shape]]] = {}
        self.lines: list[str] = []

    def run(self, seeds: dict[str, str], inputs: list[str]) -> dict[str, str]:
        for name, code in seeds.items():
            self.parts[name] = [(code, self.shapes[name])]
        for target, node in reversed(self.flat.lines):
            if self.parts.get(target) and target in self.smooth:
                g, shape = self.total(target)
                self.back(node, g, shape, target)
        return {name: self.total(name, full=True)[0] for name in inputs}

    def total(self, name: str, full: bool = False) -> tuple[str, Shape]:
        """`b_<name>`, the sum of the contributions to `name` (zeros if there are none), and
        its shape: the value's, or with size-1 axes where every contribution was spread
        along the axis (`g[:, None]`), unless `full` (what the kernel stores or carries)."""
        parts = self.parts.pop(name, [])
        shape = self.shapes[name]
        codes = [_p(code) for code, _ in parts]
        summed = broadcast([s for _, s in parts] + [()])
        if summed != shape and (full or len(summed) != len(shape)):
            codes.append(_zeros(shape) if shape else
                         "tl.sum(tl.zeros((1,), dtype=tl.float32), axis=0)")
            summed = shape
        self.lines.append(f"b_{name} = {' + '.join(codes)}")
        return f"b_{name}", summed

    def shape(self, atom) -> Shape:
        """The shape of an operand: a value, `name[None, :]`, or a constant."""
        if isinstance(atom, ast.Name):
            return self.shapes.get(atom.id, ())
        return _Flat(self.shapes).visit(atom)[1]

    def give(self, atom, code: str, shape: Shape) -> None:
        """Hand the operand `atom` the contribution `code` (of shape `shape`), summed over the
        axes the operand was broadcast or indexed along."""
        if isinstance(atom, ast.Subscript):
            base = atom.value.id
            axes = atom.slice.elts if isinstance(atom.slice, ast.Tuple) else [atom.slice]
            inserted = [i for i, a in enumerate(axes) if isinstance(a, ast.Constant)]
            pad = len(shape) - len(axes)
            drop = list(range(pad)) + [pad + i for i in inserted]
        elif isinstance(atom, ast.Name) and atom.id in self.shapes:
            base = atom.id
            drop = list(range(len(shape) - len(self.shapes[base])))
        else:
            return                                              # a constant
        if base not in self.smooth:
            return
        for axis in sorted(drop, reverse=True):
            code = f"tl.sum({code}, axis={axis})"
            shape = shape[:axis] + shape[axis + 1:]
        if drop:    # computed where it is made, so the blocks it reads need not live on
            code = self._hold(code)
        want = self.shapes[base]
        if len(shape) > len(want) or any(s != t and s != ONE
                                         for s, t in zip(shape[::-1], want[::-1])):
            raise StepVjpError(f"an adjoint of shape {shape} for '{base}' of {want}")
        parts = self.parts.setdefault(base, [])
        if len(shape) == 2 and ONE not in shape:    # a block: added to the base's sum now
            block = [i for i, (_, s) in enumerate(parts) if s == shape]
            if block:
                code = self._hold(f"{parts.pop(block[0])[0]} + {_p(code)}")
            elif not code.isidentifier():
                code = self._hold(code)
        parts.append((code, shape))

    def back(self, node, g: str, shape: Shape, out: str) -> None:
        """Contributions of the line `out = node` to its operands; `g` (of `shape`) is the
        adjoint of `out`."""
        code, sh = ast.unparse, self.shape
        if isinstance(node, (ast.Name, ast.Subscript)):
            self.give(node, g, shape)
        elif isinstance(node, ast.UnaryOp):
            self.give(node.operand, g if isinstance(node.op, ast.UAdd) else f"-{g}", shape)
        elif isinstance(node, ast.BinOp):
            a, b = node.left, node.right
            if isinstance(node.op, ast.Add):
                self.give(a, g, shape), self.give(b, g, shape)
            elif isinstance(node.op, ast.Sub):
                self.give(a, g, shape), self.give(b, f"-{g}", shape)
            elif isinstance(node.op, ast.Mult):
                self.give(a, f"{g} * {_p(code(b))}", broadcast([shape, sh(b)]))
                self.give(b, f"{g} * {_p(code(a))}", broadcast([shape, sh(a)]))
            else:
                self.give(a, f"{g} / {_p(code(b))}", broadcast([shape, sh(b)]))
                self.give(b, f"-{g} * {out} / {_p(code(b))}",
                          broadcast([shape, sh(b), self.shapes[out]]))
        elif isinstance(node, ast.Call):
            self._call(node, g, shape, out)
        # comparisons: no adjoint

    def _call(self, node: ast.Call, g: str, shape: Shape, out: str) -> None:
        fn = ast.unparse(node.func)
        args = node.args
        x = _p(ast.unparse(args[0])) if args else ""
        rules = {
            "tl.exp": f"{g} * {out}",
            "tl.log": f"{g} / {x}",
            "tl.sqrt": f"0.5 * {g} / {out}",
            "tl.erf": f"{g} * 1.1283791670955126 * tl.exp(-({x} * {x}))",
            "tl.abs": f"{g} * tl.where({x} > 0, 1.0, tl.where({x} < 0, -1.0, 0.0))",
            "tl.sin": f"{g} * tl.cos({x})",
            "tl.cos": f"-{g} * tl.sin({x})",
            "tl.sigmoid": f"{g} * {out} * (1.0 - {out})",
        }
        full = broadcast([shape, self.shapes[out]])
        if fn in rules:
            self.give(args[0], rules[fn], full)
        elif fn == "tl.trans":
            self.give(args[0], f"tl.trans({g})", shape[::-1])
        elif fn == "tl.where":
            c = ast.unparse(args[0])
            where = broadcast([shape, self.shape(args[0])])
            self.give(args[1], f"tl.where({c}, {g}, 0.0)", where)
            self.give(args[2], f"tl.where({c}, 0.0, {g})", where)
        elif fn in ("tl.maximum", "tl.minimum"):
            a, b = (_p(ast.unparse(v)) for v in args)
            c = f"{a} {'>=' if fn == 'tl.maximum' else '<='} {b}"
            self.give(args[0], f"tl.where({c}, {g}, 0.0)", full)
            self.give(args[1], f"tl.where({c}, 0.0, {g})", full)
        elif fn in _REDUCTIONS:
            self._reduction(fn, args[0], _axis(node), g, shape, out)
        # floor, ceil: zero almost everywhere

    def _reduction(self, fn: str, arg, axis: int, g: str, shape: Shape, out: str) -> None:
        if not isinstance(arg, ast.Name):
            raise StepVjpError(f"a reduction of `{ast.unparse(arg)[:40]}`")
        full = self.shapes[arg.id]
        spread = {(2, 0): "[None, :]", (2, 1): "[:, None]"}.get((len(full), axis), "")
        if fn == "tl.sum":
            self.give(arg, f"{g}{spread}" if spread else g,
                      shape[:axis] + (ONE,) + shape[axis:] if spread else ())
            return
        hit = self._hold(f"{arg.id} == {out}{spread}")       # the extreme entries
        count = self._hold(f"tl.sum(tl.where({hit}, 1.0, 0.0), axis={axis})")
        share = f"({g} / {count}){spread}" if spread else f"{g} / {count}"
        self.give(arg, f"tl.where({hit}, {share}, 0.0)", full)

    def _hold(self, code: str) -> str:
        name = f"h{len(self.lines)}"
        self.lines.append(f"{name} = {code}")
        return name


@dataclass(frozen=True)
class Vjp:
    step: list[str]         # the step in flat form: every line, the kernel's `step` helper
    kept: list[str]         # the step's intermediates the adjoint reads (the helper returns them)
    adjoint: list[str]      # the adjoint lines
    grads: dict[str, str]   # input -> the name of its adjoint


def vjp(body: list[str], inputs: dict[str, Shape], seeds: dict[str, str]) -> Vjp:
    """The reverse mode of the printed step `body`. `inputs` are the names the body reads,
    with shapes; `seeds` maps each output (the next states, the read) to the kernel value
    holding its adjoint."""
    flat = _Flat(inputs)
    for text in body:
        try:
            (stmt,) = ast.parse(text).body
        except SyntaxError as err:
            raise StepVjpError(f"unparsable step line: {text[:60]}") from err
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)):
            raise StepVjpError(f"not an assignment: {text[:60]}")
        flat.line(stmt.targets[0].id, stmt.value)
    missing = [n for n in seeds if n not in flat.shapes]
    if missing:
        raise StepVjpError(f"the step does not compute {', '.join(missing)}")
    adjoint = _Adjoint(flat, inputs)
    grads = adjoint.run(seeds, list(inputs))
    reads = set().union(*(_reads(line.split(" = ", 1)[1]) for line in adjoint.lines))
    kept = [t for t, _ in flat.lines if t in reads and t not in seeds]
    return Vjp([f"{t} = {ast.unparse(e)}" for t, e in flat.lines], kept, adjoint.lines, grads)
