"""One error type for every stage: a message, a source span, an optional hint.

The CLI prints it as ``file:line:col: error: message``, then the source line and a caret
(docs/language.md, section 19, "Checking rules"). Nothing else escapes the compiler for bad input.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Span:
    """A 1-based source region; ``end_*`` is exclusive. ``Span.none()`` marks generated nodes."""

    line: int
    column: int
    end_line: int
    end_column: int

    @staticmethod
    def none() -> Span:
        return Span(0, 0, 0, 0)

    @property
    def known(self) -> bool:
        return self.line > 0


class NlcError(Exception):
    """A user-facing error located in a spec."""

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None,
                 path: str | None = None, source: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span or Span.none()
        self.hint = hint
        self.path = path
        self.source = source

    def located(self, path: str, source: str) -> NlcError:
        """The same error, told which file it came from (kept if already set)."""
        if self.path is None:
            self.path, self.source = path, source
        return self

    def render(self) -> str:
        """``file:line:col: error: message``, the source line, a caret, and the hint."""
        path = self.path or "<spec>"
        span = self.span
        if not span.known:
            head = f"{path}: error: {self.message}"
            return head + (f"\n  hint: {self.hint}" if self.hint else "")
        lines = [f"{path}:{span.line}:{span.column}: error: {self.message}"]
        if self.source is not None:
            text_lines = self.source.split("\n")  # the parser counts lines by '\n' only
            if 0 < span.line <= len(text_lines):
                text = text_lines[span.line - 1].rstrip("\r").expandtabs(1)
                width = 1
                if span.end_line == span.line and span.end_column > span.column:
                    width = span.end_column - span.column
                width = max(1, min(width, len(text) - span.column + 1))
                if len(text) > 200:  # keep one-line renders readable for huge lines
                    start = max(0, span.column - 80)
                    text, col = text[start:start + 160], span.column - start
                else:
                    col = span.column
                width = max(1, min(width, len(text) - col + 1))  # the caret stays under the text
                lines.append(f"  {text}")
                lines.append("  " + " " * (col - 1) + "^" * width)
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def did_you_mean(name: str, candidates) -> str | None:
    """A hint naming the closest candidate, or None."""
    import difflib

    pool = sorted(set(candidates))
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return None


def report_unexpected(err: Exception) -> int:
    """The command line's answer to an exception that is no NlcError: a machine's failure as
    an error (exit 2), anything else as a bug in nlc (exit 3); NLC_DEBUG=1 raises it."""
    import os
    import sys
    if os.environ.get("NLC_DEBUG") == "1":
        raise err
    said = machine_error(err)
    if said is not None:
        print(f"nlc: error: {said}", file=sys.stderr)
        return 2
    print(f"nlc: internal error: {type(err).__name__}: {err}\n"
          "  this is a bug in nlc; rerun with NLC_DEBUG=1 for the traceback", file=sys.stderr)
    return 3


def machine_error(err: BaseException) -> str | None:
    """The message for a failure of the machine rather than of nlc (a full disk, a folder that
    cannot be written, memory that cannot be allocated), or None for any other exception: the
    command line prints it as an error, not as a bug."""
    text = str(err)
    if "No space left on device" in text or getattr(err, "errno", None) == 28:
        return (f"no space left on the device{_at(err)}: free some, or write the run "
                "elsewhere (--out); the checkpoints already written are kept")
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and (
            "out of memory" in text or "can't allocate memory" in text)):
        first = text.strip().splitlines()[0][:200] if text.strip() else type(err).__name__
        return (f"out of memory: {first}; a smaller --batch-size, --seq-len or --d-model, or "
                "smaller dims (-D), needs less")
    if isinstance(err, OSError) and not isinstance(err, BrokenPipeError):
        return f"{err.strerror or text}{_at(err)}"
    return None


def _at(err) -> str:
    name = getattr(err, "filename", None)
    return f" ({name})" if name else ""
