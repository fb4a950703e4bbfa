"""Stage `parse`: spec text -> `Module` (grammar/nl.lark, Lark LALR, positions propagated).

Every failure becomes an `NlcError` with the location of the offending token; limits on
size and nesting are enforced before any recursion over the tree.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

import lark
from lark import Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from nlc.errors import NlcError, Span
from nlc.fileio import MAX_SPEC_BYTES
from nlc.syntax import ast
from nlc.syntax.names import MAX_DEPTH, check_identifier, check_number

# Readable names for the grammar's anonymous terminals, used in "expected ..." messages.
_TERMINAL_WORDS = {
    "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['",
    "RSQB": "']'", "COMMA": "','", "COLON": "':'", "SEMICOLON": "';'", "EQUAL": "'='",
    "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'", "AT": "'@'",
    "CIRCUMFLEX": "'^'", "__ANON_0": "'->'", "NAME": "a name", "NUMBER": "a number",
    "UNIT": "'token(s)' or 'step(s)'", "READ_WHEN": "'before', 'after' or 'start'",
    "THEN": "'then'", "$END": "end of file",
}


def _grammar_text() -> str:
    try:
        return resources.files("nlc.grammar").joinpath("nl.lark").read_text()
    except (ModuleNotFoundError, FileNotFoundError):  # running from a source tree, not installed
        return (Path(__file__).resolve().parents[2] / "grammar" / "nl.lark").read_text()


@cache
def language_keywords() -> frozenset[str]:
    """The words the grammar spells out (`layer`, `level`, `tokens`...): some lex as names
    where only a name can follow, so the checker refuses them as names (docs/language.md,
    section 1)."""
    text = _grammar_text()
    spelled = re.findall(r'"([A-Za-z_]+)"', text)
    # and the words of the terminals written as patterns ending at a word's end: UNIT's
    # `/(tokens|token|steps|step)(?![A-Za-z0-9_])/`, READ_WHEN's
    alternatives = re.findall(r"/\(([A-Za-z_|]+)\)\(\?!", text)
    return frozenset(spelled + [w for a in alternatives for w in a.split("|")])


_comment_sinks: list[list[tuple[int, str]]] = []


def _on_comment(tok: Token) -> Token:
    if _comment_sinks:
        _comment_sinks[-1].append((tok.line, str(tok)))
    return tok


@cache
def _parser() -> lark.Lark:
    return lark.Lark(_grammar_text(), parser="lalr", propagate_positions=True, cache=True,
                     maybe_placeholders=False, lexer_callbacks={"COMMENT": _on_comment})


def _span(meta_or_token) -> Span:
    m = meta_or_token
    if isinstance(m, Token):
        return Span(m.line, m.column, m.end_line or m.line, m.end_column or m.column + len(m))
    if getattr(m, "empty", False):
        return Span.none()
    return Span(m.line, m.column, m.end_line, m.end_column)


def _words(expected) -> str:
    names = sorted({_TERMINAL_WORDS.get(t, f"'{t.lower()}'") for t in expected})
    if len(names) > 8:
        names = names[:8] + ["..."]
    return ", ".join(names)


def _syntax_error(err: UnexpectedInput, text: str) -> NlcError:
    if isinstance(err, UnexpectedCharacters):
        ch = text[err.pos_in_stream] if err.pos_in_stream < len(text) else "?"
        span = Span(err.line, err.column, err.line, err.column + 1)
        if ch == "\ufeff":  # a byte order mark past the file's start (read_spec drops one there)
            return NlcError("unexpected byte order mark (U+FEFF)", span,
                            hint="delete it: most editors do not show it")
        return NlcError(f"unexpected character {ch!r}", span)
    if isinstance(err, UnexpectedEOF):
        lines = text.rstrip(" \t\f\r\n").split("\n")  # lines as the lexer counts them
        span = Span(len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)
        hint = f"expected {_words(err.expected)}"
        brace = _unclosed(text, len(text), "{", "}", whole=True)
        if brace is not None and "RBRACE" in err.expected:  # a block left open
            line = text.count("\n", 0, brace) + 1
            col = brace - (text.rfind("\n", 0, brace) + 1) + 1
            hint = f"the '{{' at {line}:{col} is not closed: add '}}'; " + hint
        return NlcError("unexpected end of file", span, hint=hint)
    assert isinstance(err, UnexpectedToken)
    tok = err.token
    if tok.type == "$END":
        return _syntax_error(UnexpectedEOF(err.expected), text)
    span = _span(tok)
    shown = str(tok)[:40]
    hint = f"expected {_words(err.expected)}"
    if tok.type == "COMMA" and "THEN" in err.expected:  # `objective a, b`
        return NlcError("unexpected ','", span, hint="a token's steps are joined by 'then', "
                        "in order: objective l2(S(k1), v1) then l2(S(k2), v2)")
    if tok.type == "THEN":
        hint = "'then' joins the steps of an objective or an algorithm; " + hint
    opened = _unclosed(text, tok.start_pos) if "RPAR" in err.expected else None
    if opened is not None:  # `read S(q` then the next line
        line = text.count("\n", 0, opened) + 1
        col = opened - (text.rfind("\n", 0, opened) + 1) + 1
        hint = f"the '(' at {line}:{col} is not closed; " + hint
    if tok.type == "NAME":
        from nlc.errors import did_you_mean
        keywords = [t.lower() for t in err.expected if t not in _TERMINAL_WORDS
                    and t.lower().isidentifier()]  # `objectve` where `objective` may go
        near = did_you_mean(shown, keywords)
        return NlcError(f"unexpected name '{shown}'", span,
                        hint=f"{near} {hint}" if near else hint)
    if tok.type == "NUMBER":
        return NlcError(f"unexpected number '{shown}'", span, hint=hint)
    if shown.isidentifier():  # a keyword of the language
        brace = (_unclosed(text, tok.start_pos, "{", "}", whole=True)
                 if "RBRACE" in err.expected else None)
        if brace is not None and shown in _BLOCK_STARTS:  # `level` inside an unclosed block
            line = text.count("\n", 0, brace) + 1
            col = brace - (text.rfind("\n", 0, brace) + 1) + 1
            hint = (f"the block opened by the '{{' at {line}:{col} is still open here: is its "
                    f"'}}' missing? " + hint)
        elif "NAME" in err.expected:
            hint += f" ('{shown}' is a keyword and cannot be used as a name)"
        return NlcError(f"unexpected keyword '{shown}'", span, hint=hint)
    return NlcError(f"unexpected '{shown}'", span, hint=hint)


# keywords that begin a declaration or a block's statement: one inside a block that does not
# take it most often means the block before it was left open
_BLOCK_STARTS = {"layer", "model", "optimizer", "level", "context", "output", "dims", "hyper",
                 "param", "transfer", "block", "state", "objective", "retention", "algorithm",
                 "read", "apply"}


def _unclosed(text: str, pos: int, open_: str = "(", close: str = ")",
              whole: bool = False) -> int | None:
    """The offset of the last `open_` that the statement before `pos` (back to a '{', '}' or
    ';'; the whole text with `whole`) leaves open; None when it closes them all."""
    start = 0 if whole else max(text.rfind(c, 0, pos) for c in "{};") + 1
    opened: list[int] = []
    i = start
    while i < pos:
        if text[i] == "#":  # a comment's brackets do not count
            end = text.find("\n", i, pos)
            i = pos if end < 0 else end
            continue
        if text[i] == open_:
            opened.append(i)
        elif text[i] == close and opened:
            opened.pop()
        i += 1
    return opened[-1] if opened else None


def _check_depth(tree: Tree) -> None:
    """Refuse trees deeper than MAX_DEPTH, iteratively (so a hostile spec cannot exhaust
    the Python stack in the recursive stages after this one)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise NlcError(f"spec is nested too deeply (more than {MAX_DEPTH} levels)",
                           _span(node.meta), hint="each operator of a chain such as a + b + c "
                           "nests one level: split a long expression into context values")
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, Tree))


_BINOPS = {"add": ast.BinOpKind.ADD, "sub": ast.BinOpKind.SUB, "mul": ast.BinOpKind.MUL,
           "div": ast.BinOpKind.DIV, "matmul": ast.BinOpKind.MATMUL, "pow": ast.BinOpKind.POW}


def _ident(tok: Token, *, defining: bool = False) -> str:
    check_identifier(str(tok), _span(tok), defining=defining)
    return str(tok)


@v_args(meta=True)
class _ToAst(Transformer):
    """Lark tree -> ast records. Names that the spec defines are checked as definitions."""

    def start(self, meta, decls):
        return ast.Module(tuple(decls), _span(meta))

    def _decl(self, kind, meta, children):
        name, *rest = children
        claims = None
        if rest and isinstance(rest[0], tuple) and rest[0][0] == "claims":
            claims = rest.pop(0)[1]
        return ast.Decl(kind, _ident(name, defining=True), claims, tuple(rest), _span(meta))

    def layer_decl(self, meta, children):
        return self._decl(ast.DeclKind.LAYER, meta, children)

    def optimizer_decl(self, meta, children):
        return self._decl(ast.DeclKind.OPTIMIZER, meta, children)

    def model_decl(self, meta, children):
        return self._decl(ast.DeclKind.MODEL, meta, children)

    def claims(self, meta, children):
        return ("claims", _ident(children[0]))

    def dims_stmt(self, meta, defs):
        return ast.Dims(tuple(defs), _span(meta))

    def hyper_stmt(self, meta, defs):
        return ast.Hyper(tuple(defs), _span(meta))

    def dim_def(self, meta, children):
        return ast.DimDef(_ident(children[0], defining=True), children[1], _span(meta))

    def name_list(self, meta, names):
        return tuple((_ident(n, defining=True), _span(n)) for n in names)

    def shape(self, meta, items):
        return ("shape", tuple(items))

    def param_stmt(self, meta, children):
        names, (_, shape), *init = children
        return ast.Param(tuple(n for n, _ in names), shape, init[0] if init else None, _span(meta))

    def context_block(self, meta, children):
        sources, *body = children
        return ast.Context(tuple(n for n, _ in sources), tuple(body), _span(meta))

    def assign(self, meta, children):
        return ast.Assign(_ident(children[0], defining=True), children[1], _span(meta))

    def over_clause(self, meta, children):
        return ("over", _ident(children[0], defining=True))

    def inputs_clause(self, meta, children):
        return ("inputs", _ident(children[0], defining=True))

    def every_clause(self, meta, children):
        unit = ast.Unit.TOKEN if str(children[1]).startswith("token") else ast.Unit.STEP
        return ("every", ast.Every(children[0], unit, _span(meta)))

    def chunk_clause(self, meta, children):
        return ("chunk", children[0])

    def level_block(self, meta, children):
        name, *rest = children
        heads = {}
        while rest and isinstance(rest[0], tuple):
            key, value = rest.pop(0)
            heads[key] = value
        return ast.Level(_ident(name, defining=True), heads.get("over"), heads.get("every"),
                         heads.get("chunk"), tuple(rest), _span(meta), heads.get("inputs"))

    def state_stmt(self, meta, children):
        name, form, *init = children
        return ast.State(_ident(name, defining=True), form, init[0] if init else None, _span(meta))

    def objective_stmt(self, meta, children):
        return ast.Clause(ast.ClauseKind.OBJECTIVE, tuple(children), span=_span(meta))

    def retention_stmt(self, meta, children):
        return ast.Clause(ast.ClauseKind.RETENTION, tuple(children), span=_span(meta))

    def algorithm_stmt(self, meta, children):
        return ast.Clause(ast.ClauseKind.ALGORITHM, tuple(children), span=_span(meta))

    def read_stmt(self, meta, children):
        when = str(children[0]) if len(children) == 2 else None
        return ast.Clause(ast.ClauseKind.READ, (children[-1],), when=when, span=_span(meta))

    def apply_stmt(self, meta, children):
        return ast.Clause(ast.ClauseKind.APPLY, (children[1],), target=_ident(children[0]),
                          span=_span(meta))

    def output_stmt(self, meta, children):
        return ast.Output(children[0], _span(meta))

    def transfer_stmt(self, meta, children):
        src, dst, mode = children
        return ast.Transfer(_ident(src), _ident(dst), _ident(mode), _span(meta),
                            tuple(_span(t) for t in (src, dst, mode)))

    def block_stmt(self, meta, children):
        return ast.Block(tuple(_ident(c) for c in children), _span(meta))

    # expressions
    def number(self, meta, children):
        tok = children[0]
        value = check_number(str(tok), _span(tok))
        is_int = str(tok).isdigit()
        # finite means at most 309 digits, within int()'s limit, once leading zeros are gone
        whole = int(str(tok).lstrip("0") or "0") if is_int else value
        return ast.Num(whole, is_int, _span(tok))

    def name(self, meta, children):
        return ast.Name(_ident(children[0]), _span(children[0]))

    def call(self, meta, children):
        func, *args = children
        return ast.Call(_ident(func), tuple(args), _span(meta))

    def index(self, meta, children):
        base, *items = children
        return ast.Index(_ident(base), tuple(items), _span(meta))

    def keyword(self, meta, children):
        return ast.Keyword(_ident(children[0]), children[1], _span(meta))

    def chain(self, meta, children):
        return ast.Chain(tuple(children), _span(meta))

    def neg(self, meta, children):
        return ast.Neg(children[0], _span(meta))

    def __default__(self, data, children, meta):
        if data in _BINOPS:
            left, right = children
            return ast.BinOp(_BINOPS[data], left, right, _span(meta))
        raise AssertionError(f"grammar rule without a transformer: {data}")


def parse(text: str, path: str = "<spec>", comments: list | None = None) -> ast.Module:
    """Parse spec text into a `Module`; every failure is a located `NlcError`.
    If `comments` is a list, the spec's comments are appended to it as ``(line, text)``."""
    _comment_sinks.append(comments if comments is not None else [])
    try:
        if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
            raise NlcError(f"spec is larger than {MAX_SPEC_BYTES // 1024} KiB", Span(1, 1, 1, 2))
        try:
            tree = _parser().parse(text)
        except UnexpectedInput as err:
            raise _syntax_error(err, text) from None
        _check_depth(tree)
        try:
            return _ToAst().transform(tree)
        except lark.exceptions.VisitError as err:
            if isinstance(err.orig_exc, NlcError):
                raise err.orig_exc from None
            raise
    except NlcError as err:
        raise err.located(path, text) from None
    finally:
        _comment_sinks.pop()
