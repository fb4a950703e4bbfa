"""Spec names in generated code: a namespace of their own.

A spec may name a value `query`, `state`, `self`, `loss` or `t0`: names the generated
functions use for their own locals. Generated code must never let one capture the other. So
every spec name that becomes a Python identifier goes through `local(name)`, and a compile
runs in a `Namespace`:

1. while the plans are built and rendered, `local(name)` returns a placeholder (`ŋ3ŋ`) that
   no spec name and no name of the compiler's can contain (spec names are ASCII);
2. the rendered files are parsed: every identifier without a placeholder is the compiler's
   own (locals, functions, imports, keywords of calls, builtins); each one with placeholders
   is a pattern over spec names (`ŋ3ŋ_next`);
3. each spec name gets the first of `name`, `name_1`, `name_2`, ... whose every pattern is
   free: no name of the compiler's, and no other spec name's;
4. the placeholders are replaced.

A spec's names therefore read as written unless one would clash, and a clash can only rename
a spec name, never change what the code computes. Attribute names (`self.W_q`) are not
locals: `attribute_clashes` finds the ones a spec would take from nn.Module or from the
generated class, and the emitter refuses them with a located error."""

from __future__ import annotations

import ast
import builtins
import contextvars
import keyword
import re
from collections import defaultdict

MARK = "ŋ"
_PLACEHOLDER = re.compile(f"{MARK}(\\d+){MARK}")
_ACTIVE: contextvars.ContextVar[Namespace | None] = contextvars.ContextVar("nlc_names",
                                                                          default=None)


def local(name: str) -> str:
    """The identifier that holds spec name `name` in generated code (a placeholder while a
    `Namespace` is active; the name itself outside one, as in tests of the printers)."""
    space = _ACTIVE.get()
    return name if space is None else space.placeholder(name)


class Namespace:
    """Spec names -> identifiers for one generated module (with its kernel modules)."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.token = None

    def __enter__(self) -> Namespace:
        self.token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.reset(self.token)

    def placeholder(self, name: str) -> str:
        if not name.isidentifier() or not name.isascii():
            raise ValueError(f"{name!r} is not a spec name")
        return f"{MARK}{self.index.setdefault(name, len(self.index))}{MARK}"

    def resolve(self, sources: dict[str, str]) -> dict[str, str]:
        """Replace the placeholders in every source (module name -> text)."""
        names = {i: n for n, i in self.index.items()}
        avoid, patterns = defaultdict(set), defaultdict(set)
        for text in sources.values():
            for found, owned in _scopes(ast.parse(text)):
                for ident in found:
                    for m in map(int, _PLACEHOLDER.findall(ident)):
                        patterns[m].add(ident)
                        avoid[m] |= owned
        chosen: dict[int, str] = {}
        taken: set[str] = set()
        for i in sorted(names):
            blocked = taken | avoid[i]
            for suffix in range(len(blocked) + 1):
                candidate = names[i] if suffix == 0 else f"{names[i]}_{suffix}"
                made = {self._fill(p, chosen | {i: candidate}) for p in patterns[i]} - {None}
                if not (made | {candidate}) & blocked:
                    break
            chosen[i] = candidate
            taken |= made | {candidate}
        return {module: _PLACEHOLDER.sub(lambda m: chosen[int(m.group(1))], text)
                for module, text in sources.items()}

    @staticmethod
    def _fill(pattern: str, chosen: dict[int, str]) -> str | None:
        """The pattern with its placeholders filled, or None while one is still open."""
        marks = [int(m) for m in _PLACEHOLDER.findall(pattern)]
        if any(m not in chosen for m in marks):
            return None
        return _PLACEHOLDER.sub(lambda m: chosen[int(m.group(1))], pattern)


_BUILTIN = frozenset(keyword.kwlist) | frozenset(dir(builtins))
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _scopes(module: ast.Module):
    """(identifiers used directly in a scope, the compiler's names a spec name used there
    must avoid) for every scope of a module. A spec name must avoid every name of the
    compiler's in its scope and in the scopes nested in it (they see its bindings), every
    name the module binds and every builtin."""
    direct: dict[ast.AST, set[str]] = defaultdict(set)
    children: dict[ast.AST, list] = defaultdict(list)

    def visit(node, scope):
        for child in ast.iter_child_nodes(node):
            enter(child, scope)

    def enter(node, scope):
        if not isinstance(node, _SCOPES):
            _name(node, direct[scope])
            visit(node, scope)
            return
        children[scope].append(node)
        if isinstance(node, ast.ClassDef):
            direct[scope].add(node.name)
            outside = node.bases + node.decorator_list
        else:
            if not isinstance(node, ast.Lambda):
                direct[scope].add(node.name)
            outside = node.args.defaults + [d for d in node.args.kw_defaults if d] + getattr(
                node, "decorator_list", [])
            direct[node] |= {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
        for part in outside:
            enter(part, scope)
        for stmt in node.body if isinstance(node.body, list) else [node.body]:
            enter(stmt, node)

    for stmt in module.body:
        enter(stmt, module)
    top = {n for n in direct[module] if not _PLACEHOLDER.search(n)}

    def owned(scope) -> set[str]:
        mine = {n for n in direct[scope] if not _PLACEHOLDER.search(n)}
        return mine.union(*(owned(c) for c in children[scope]))

    for scope in [module, *(n for n in ast.walk(module) if isinstance(n, _SCOPES))]:
        yield direct[scope], owned(scope) | top | _BUILTIN


def _name(node, into: set[str]) -> None:
    if isinstance(node, ast.Name):
        into.add(node.id)
    elif isinstance(node, ast.keyword) and node.arg and _PLACEHOLDER.search(node.arg):
        into.add(node.arg)  # other keywords name the callee's parameters, bind nothing here
    elif isinstance(node, ast.alias):
        into.add(node.asname or node.name.split(".")[0])


def module_clashes(module: ast.Module) -> list[str]:
    """Names bound twice at the top of a module (a class named like an import or a
    function): the compiler names module-level objects after spec names as written."""
    seen, twice = set(), []
    for node in module.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound = [node.name]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound = [a.asname or a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.Assign):
            bound = [t.id for t in node.targets if isinstance(t, ast.Name)]
        else:
            bound = []
        for name in bound:
            if name in seen:
                twice.append(name)
            seen.add(name)
    return twice


def without_unused_imports(code: str) -> str:
    """`code` without its top-level imports that nothing reads (a layer with no
    convolution needs no `F`, one with no constant math no `math`)."""
    tree = ast.parse(code)
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    drop = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) \
                and getattr(node, "module", None) != "__future__" \
                and not any((a.asname or a.name.split(".")[0]) in read for a in node.names):
            drop.update(range(node.lineno, node.end_lineno + 1))
    lines = code.split("\n")
    for i in sorted(drop):  # an import between blank lines takes one of them along
        if 1 < i < len(lines) and not lines[i - 2].strip() and not lines[i].strip():
            drop.add(i + 1)
    return "\n".join(line for i, line in enumerate(lines, 1) if i not in drop)


def attribute_clashes(module: ast.Module, class_name: str,
                      base_attributes: set[str]) -> set[str]:
    """Attributes of the generated class `class_name` set twice, or also a method of it or
    of its base (`base_attributes`): a spec parameter named `mode` or `forward` would be one."""
    (cls,) = [n for n in module.body if isinstance(n, ast.ClassDef)
              and n.name == class_name]
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    assigned: list[str] = []
    for node in ast.walk(cls):
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) \
                        and t.value.id == "self":
                    assigned.append(t.attr)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "register_buffer" and node.args \
                and isinstance(node.args[0], ast.Constant):
            assigned.append(node.args[0].value)
    twice = {a for a in assigned if assigned.count(a) > 1}
    return twice | (set(assigned) & (methods | base_attributes))
