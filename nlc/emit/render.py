"""The render step: plans -> source text through the Jinja templates, formatted with ruff.

This is the one place where text enters generated code, so it enforces what may:
- `Prose`: text for comments and docstrings (a spec's file name, a family's description),
  made by `prose()`: one line of printable ASCII without quotes or backslashes;
- `PyLiteral`: a Python string literal made by `py_literal()` (`repr`, checked);
- numbers;
- every other string is code the compiler printed: one line per string, printable ASCII, no
  backslash, and every string literal in it an identifier (a dict key such as `state["S"]`)
  or identifiers joined by '/' (a kernel's key, `"delta/scalar"`).
`render` walks the whole template context and refuses anything else before rendering, so
a file name or a run folder's text can reach generated code only as prose or a literal."""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import io
import keyword
import re
import subprocess
import sys
import tokenize
import unicodedata
from pathlib import Path

import jinja2

from nlc import __version__
from nlc.emit.names import MARK
from nlc.errors import NlcError

_PRINTABLE = re.compile(r"[ -~]*")          # printable ASCII, one line
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")  # or a/b


class Prose(str):
    """Text safe in a comment or a docstring; only `prose()` makes one."""


class PyLiteral(str):
    """The source of a Python string literal; only `py_literal()` makes one."""


def prose(text: object) -> Prose:
    """`text` for a comment or a docstring, on one line: other whitespace (a newline) becomes
    a space; quotes, backslashes and characters other than printable ASCII become '?'."""
    return Prose("".join(" " if c.isspace() else c if " " <= c <= "~" and c not in "\"\\"
                         else "?" for c in str(text)))


def py_literal(value: str) -> PyLiteral:
    """A Python literal that evaluates to `value` (any text: a file name, a path)."""
    if not isinstance(value, str):
        raise TypeError(f"py_literal takes a str, got {type(value).__name__}")
    source = ascii(value)  # repr with non-ASCII characters escaped: `ü.nl` is '\xfc.nl'
    if not _PRINTABLE.fullmatch(source) or ast.literal_eval(source) != value:
        raise AssertionError(f"ascii() of {value!r} is not a one-line literal")
    return PyLiteral(source)


def check_code(text: str, where: str = "") -> None:
    """Refuse a string that is not printed code of the compiler's (see the module doc)."""
    def refuse(why: str):
        raise NlcError(f"internal error: unsafe text for generated code{where}: {why}: "
                       f"{text[:80]!r}")
    if not all(_PRINTABLE.fullmatch(line.replace(MARK, "")) for line in text.split("\n")):
        refuse("not printable ASCII, one statement a line")  # MARK: spec names' placeholders
    if "\\" in text:
        refuse("a backslash")
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text + "\n").readline))
    except (tokenize.TokenError, IndentationError, SyntaxError) as err:
        refuse(f"does not tokenize ({err})")
    for tok in tokens:
        if tok.type == tokenize.ERRORTOKEN and tok.string.strip():
            refuse(f"stray {tok.string!r}")
        if tok.type == tokenize.STRING:
            value = ast.literal_eval(tok.string) if tok.string[0] in "'\"" else None
            if not isinstance(value, str) or not (value == "" or _IDENTIFIER.fullmatch(value)):
                refuse(f"the string {tok.string} is not an identifier")


def check_context(value, where: str = "") -> None:
    """Walk a template context (plans, lists, dicts) and check every string in it."""
    if isinstance(value, (Prose, PyLiteral)) or value is None:
        return
    if isinstance(value, bool | int | float):
        return
    if isinstance(value, str):
        check_code(value, where)
    elif isinstance(value, dict):
        for k, v in value.items():
            check_context(k, where)
            check_context(v, f"{where}[{k!r}]")
    elif isinstance(value, list | tuple) and value and all(
            type(item) is str for item in value):  # lines of code: one statement may span several
        for item in value:
            if "\n" in item:
                check_code(item, where)  # refused: one line per string
        check_code("\n".join(value), where)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            check_context(item, where)
    elif dataclasses.is_dataclass(value):
        hidden = {f.name for f in dataclasses.fields(value) if not f.metadata.get("template", 1)}
        names = vars(value) if hasattr(value, "__dict__") else [
            f.name for f in dataclasses.fields(value)]
        for name in names:
            if name not in hidden:
                check_context(getattr(value, name), f"{where}.{name}")
    else:
        raise NlcError(f"internal error: a {type(value).__name__} reached a template{where}")


@functools.cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("nlc.templates", "."),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True, autoescape=False)


@dataclasses.dataclass(frozen=True)
class Source:
    """Where generated code comes from: the spec's file name and a digest of its text."""

    name: Prose
    literal: PyLiteral
    digest: Prose
    version: Prose = Prose(__version__)


def source(path: str, text: str) -> Source:
    name = Path(path).name
    return Source(prose(name), py_literal(name),
                  prose(hashlib.sha256(text.encode()).hexdigest()[:16]))


def ruff_format(source: str, name: str) -> str:
    """Format with ruff (a dependency, pinned to a minor version so output is stable)."""
    import shutil
    try:
        from ruff.__main__ import find_ruff_bin
        binary = find_ruff_bin()
    except (ImportError, FileNotFoundError):
        binary = shutil.which("ruff")
    if binary is None:
        raise NlcError("ruff is not installed; `pip install ruff` (nlc formats its output "
                       "with it)")
    # --isolated: no pyproject.toml found from the working directory changes the output
    done = subprocess.run([binary, "format", "--quiet", "--isolated", "--line-length", "100",
                           "--stdin-filename", name, "-"], input=source, text=True,
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise NlcError(f"internal error: generated code for {name} does not parse:\n"
                       f"{done.stderr.strip()}")
    return done.stdout


def render(template: str, **context) -> str:
    """The template's text for `context`, every string in it checked; not yet formatted."""
    check_context(context, f" ({template})")
    return environment().get_template(template).render(**context)


# top-level packages the generated code, the runtime and the compiler import, and those they
# import in turn, which a module of the same name beside them would shadow (the standard
# library's are in sys). A fixed list, so that a spec's module name does not depend on what
# the machine has installed.
IMPORTED = frozenset({
    "torch", "triton", "nlc", "numpy", "sympy", "networkx", "lark", "jinja2", "safetensors",
    "typing_extensions", "filelock", "fsspec", "mpmath", "markupsafe", "setuptools",
    "pkg_resources", "packaging", "einops", "fla", "ruff", "pytest", "_pytest", "pluggy",
    "matplotlib", "PIL", "yaml", "requests", "certifi", "urllib3", "idna", "charset_normalizer",
    "nvidia", "cuda", "functorch", "torchgen", "tqdm", "six", "dateutil", "pyparsing",
})


def spec_module_name(path: str) -> str:
    """The generated file's module name: the spec's stem, made an ASCII identifier (accents
    dropped, `délta` -> `delta`; other symbols made `_`); `spec_` goes before a stem that is
    not one (`1x`), a Python keyword (`import`), a name starting with `__` (`__init__`) or the
    name of a module it would shadow when imported from its folder (`torch`, `math`,
    `typing_extensions`). A stem with no ASCII letter or digit left
    (`δέλτα`) is `spec_` and a hash of it: stable, and not the same for another such stem."""
    stem = Path(path).stem
    letters = "".join(c for c in unicodedata.normalize("NFKD", stem)
                      if not unicodedata.combining(c))
    name = "".join(c if c.isalnum() and c.isascii() or c == "_" else "_" for c in letters)
    if not name.strip("_"):
        return f"spec_{hashlib.sha256(stem.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    plain = not name[0].isdigit() and not keyword.iskeyword(name) \
        and name not in sys.stdlib_module_names and name not in IMPORTED \
        and not name.startswith("__")  # `__init__` would make the folder a package
    return name if plain else f"spec_{name}"
