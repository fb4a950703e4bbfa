"""The compiler as a flat list of named stages (DESIGN.md, "Architecture").

Each stage is a pure function from the previous stage's output; `STAGES` orders them and
names their text forms, which `--stop-after STAGE --dump` prints. Later stages import their
packages lazily so that `nlc check` never loads torch.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from nlc.errors import NlcError


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable            # (previous output, options) -> output
    dump: Callable           # output -> text


def _parse(source: tuple[str, str], options: dict):
    from nlc.syntax import parse
    text, path = source
    return parse(text, path)


def _dump_parse(module) -> str:
    from nlc.syntax.dump import dump_ast
    return dump_ast(module)


def _check(module, options: dict):
    from nlc.catalog.ids import check_claims
    from nlc.levels import check
    specs = check(module, options.get("overrides"))
    check_claims(specs, options.get("source"))
    return specs


def _dump_check(specs) -> str:
    from nlc.levels.draw import draw
    return draw(specs, "text")


def _derive(specs, options: dict):
    """Every level, derived once with the dims as symbols (a generated layer takes its sizes
    as arguments); models have no levels of their own."""
    from nlc.derive import derive
    return [(spec, () if spec.blocks else tuple(derive(spec))) for spec in specs]


def _dump_derive(pairs) -> str:
    return "".join(rule.to_text() for _, rules in pairs for rule in rules)


def _classify(pairs, options: dict):
    from nlc.derive.classify import classify
    from nlc.derive.execution import Classified, execution
    out = []
    for spec, rules in pairs:
        constants = frozenset(n for n, _ in spec.dims) | frozenset(n for n, _ in spec.hypers) \
            | frozenset(p.name for p in spec.params)
        items = []
        for rule in rules:
            family = classify(rule)
            items.append(Classified(rule, family, execution(rule, family, constants)))
        out.append((spec, tuple(items)))
    return out


def _dump_classify(items) -> str:
    return "".join(c.to_text() for _, classified in items for c in classified)


def _plan(items, options: dict):
    from nlc.plan import plan
    return plan(items, options.get("path", ""))


def _dump_plan(plans) -> str:
    from nlc.plan.records import to_text
    return "".join(to_text(p) for p in plans.records)


def _emit(plans, options: dict):
    from nlc.emit import emit
    return emit(plans, options.get("source"), options.get("path", ""))


def _dump_emit(outputs) -> str:
    return "".join(f"# ---- {module}.py\n{code}" for module, code in outputs.items())


STAGES: dict[str, Stage] = {
    "parse": Stage("parse", _parse, _dump_parse),
    "check": Stage("check", _check, _dump_check),
    "derive": Stage("derive", _derive, _dump_derive),
    "classify": Stage("classify", _classify, _dump_classify),
    "plan": Stage("plan", _plan, _dump_plan),
    "emit": Stage("emit", _emit, _dump_emit),
}


def read_spec(path: str) -> str:
    """A spec file's text, or a located error saying why it cannot be read.

    Only regular files are read, and at most MAX_SPEC_BYTES + 1 bytes of them, so that
    `/dev/zero` or a FIFO gets an error instead of exhausting memory or blocking forever.
    """
    from nlc.syntax.names import MAX_SPEC_BYTES
    try:
        data = read_bounded(path, MAX_SPEC_BYTES)
    except FileNotFoundError:
        raise NlcError("no such file", path=path) from None
    except IsADirectoryError:
        raise NlcError("is a directory, not a spec file", path=path) from None
    except OSError as err:
        raise NlcError(f"cannot read: {err.strerror}", path=path) from None
    if data is None:
        raise NlcError("not a regular file (a device, FIFO or socket cannot be a spec)", path=path)
    if len(data) > MAX_SPEC_BYTES:
        raise NlcError(f"spec is larger than {MAX_SPEC_BYTES // 1024} KiB", path=path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise NlcError(f"not UTF-8 text (byte {err.start})", path=path) from None


def read_bounded(path: str, limit: int) -> bytes | None:
    """At most `limit + 1` bytes of a regular file; None when `path` is not a regular file.

    O_NONBLOCK keeps opening a FIFO with no writer from blocking; fstat on the open
    descriptor (not the path) means a file swapped in after the check is still refused.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(info.st_mode):
            return None
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def run(path: str, stop_after: str = "check", options: dict | None = None, text: str | None = None):
    """Run the stages up to and including `stop_after`; return that stage's output."""
    if stop_after not in STAGES:
        raise NlcError(f"unknown stage '{stop_after}' (stages: {', '.join(STAGES)})")
    value = (read_spec(path) if text is None else text, path)
    source_text = value[0]
    options = {**(options or {}), "source": source_text, "path": path}  # to locate errors
    for stage in STAGES.values():
        try:
            value = stage.run(value, options)
        except NlcError as err:
            raise err.located(path, source_text) from None
        if stage.name == stop_after:
            return value
    return value
