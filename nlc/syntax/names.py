"""What a spec may use as a name. Specs are untrusted: every identifier that can reach
generated code passes through here (issue: untrusted input)."""

from __future__ import annotations

import builtins
import keyword
import math

from nlc.errors import NlcError, Span

MAX_NAME_LENGTH = 64
MAX_DEPTH = 64
MAX_NUMBER = 1 << 53  # exact in float64, and fits torch's int64 when printed as an integer

_BUILTINS = frozenset(dir(builtins))


def check_identifier(name: str, span: Span, *, defining: bool) -> None:
    """Reject names that are not plain ASCII identifiers, are too long, start with two
    underscores (dunders, and names Python mangles in a class body) or are Python keywords, and (for names the spec defines) shadow a Python builtin."""
    if not (name.isascii() and name.isidentifier()):
        raise NlcError(f"'{name}' is not an ASCII identifier", span)
    if len(name) > MAX_NAME_LENGTH:
        raise NlcError(f"name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}", span)
    if name.startswith("__") and name.endswith("__"):
        raise NlcError(f"'{name}': names of the form __x__ are reserved", span)
    if name.startswith("__"):  # Python renames `__x` inside a class body to `_Class__x`
        raise NlcError(f"'{name}': a name may not start with two underscores (Python mangles "
                       f"such names inside the generated classes)", span,
                       hint=f"rename it, e.g. '{name.lstrip('_') or 'x'}'")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise NlcError(f"'{name}' is a Python keyword and cannot be used as a name", span,
                       hint=f"rename it, e.g. '{name}_'")
    if defining:
        from nlc.syntax.parser import language_keywords  # (the parser imports this module)
        if name in language_keywords():
            raise NlcError(f"'{name}' is a keyword of the language and cannot be used as a "
                           "name", span, hint=f"rename it, e.g. '{name}_'")
    if defining and name in _BUILTINS:
        raise NlcError(f"'{name}' is a Python builtin and cannot be defined by a spec", span,
                       hint=f"rename it, e.g. '{name}_'")


def check_number(text: str, span: Span) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NlcError(f"number '{text[:40]}' is not finite", span)
    exact = int(text.lstrip("0") or "0") if text.isdigit() else value  # finite: <= 309 digits
    if exact > MAX_NUMBER:  # generated code prints it as a Python int, which torch refuses
        raise NlcError(f"number '{text[:40]}' is larger than 2^53 = {MAX_NUMBER:,}, the largest "
                       "number a spec may write", span,
                       hint="write a smaller number (a dim is at most 2^20; scale a hyper or an "
                            "init down and multiply where it is used)")
    return value
