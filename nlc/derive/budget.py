"""The derivation budget: how large a derived expression and how long one level's
derivation may grow before the compiler stops with a located error (docs/language.md,
"Limits").

Derivation is symbolic, and a short spec can ask for exponential work (an unrolled chain of
steps, an MLP hundreds of layers deep). Where the math allows, the rules stay polynomial
(steps.py, expand.py); everything else runs under two budgets:

- size: a derived expression may hold at most MAX_TERMS nodes as a tree (the count SymPy's
  recursive operations walk), checked as each piece is built; NLC_DERIVE_MAX_TERMS changes it;
- time: one level's derivation or classification may take at most MAX_SECONDS;
  NLC_DERIVE_SECONDS changes it (0 turns the timer off). The timer interrupts SymPy from a
  SIGALRM handler, so it runs only in the main thread and only when no other timer is armed
  (a caller's own alarm stays in charge); elsewhere the size budget alone applies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from nlc.derive.expand import tree_size
from nlc.errors import NlcError, Span

MAX_TERMS = 200_000
MAX_SECONDS = 120.0


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise NlcError(f"{name}={text!r} is not a non-negative number")
    return value


def max_terms() -> int:
    return int(_env_number("NLC_DERIVE_MAX_TERMS", MAX_TERMS))


def max_seconds() -> float:
    return _env_number("NLC_DERIVE_SECONDS", MAX_SECONDS)


def check_size(expr, what: str, span: Span) -> None:
    """Refuse `expr` when its tree is larger than the size budget; `what` names the clause."""
    limit = max_terms()
    size = tree_size(expr, limit)
    if size > limit:
        raise NlcError(f"{what}: the derived rule grows past {limit:,} terms (the derivation "
                       "budget)", span,
                       hint="use fewer steps or layers, or set NLC_DERIVE_MAX_TERMS to raise the "
                       "budget")


class _OutOfTime(BaseException):
    """Raised from the timer's signal handler; a BaseException so that no `except Exception`
    inside SymPy swallows it."""


@contextlib.contextmanager
def time_budget(what: str, span: Span):
    """Run the body under the time budget; past it, a located NlcError naming `what`."""
    seconds = max_seconds()
    armed = False
    if seconds > 0 and threading.current_thread() is threading.main_thread() \
            and hasattr(signal, "setitimer") and signal.getitimer(signal.ITIMER_REAL)[0] == 0:
        def expire(signum, frame):
            raise _OutOfTime
        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        armed = True
    try:
        with clause(what, span):
            yield
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def clause(what: str, span: Span):
    """Blame `what` (a clause of the spec, at `span`) when the time budget runs out inside the
    body; the innermost clause is named."""
    try:
        yield
    except _OutOfTime:
        raise NlcError(f"{what}: derivation ran past its budget of {max_seconds():g} s", span,
                       hint="simplify the spec, or set NLC_DERIVE_SECONDS to raise the "
                       "budget") from None
