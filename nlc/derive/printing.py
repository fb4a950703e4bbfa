"""Text and LaTeX printers for derived rules.

SymPy's printers decide whether a matrix product needs parentheses by asking whether it
could extract a minus sign, which negates the product and calls `doit()` on the whole
subtree. `doit` does not share work between repeated subexpressions, and an MLP's
gradient repeats its forward pass many times, so printing one rule took minutes. These
printers read the sign from the product's leading coefficient instead."""

from __future__ import annotations

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import PRECEDENCE, precedence, precedence_traditional
from sympy.printing.str import StrPrinter


def _signed(expr) -> tuple[bool, list]:
    """A product's sign and its factors with every sign taken out, without doit(): its
    numbers (multiplied into one leading coefficient), a scalar factor's minus (-lr) and a
    nested product's sign, so that -(-v*k.T) prints as v*k.T and (-lr)*(-g) as lr*g."""
    negative, number, factors = False, sp.Integer(1), []
    for a in expr.args:
        if isinstance(a, sp.MatMul):
            inner, more = _signed(a)
            negative ^= inner
            if more and more[0].is_Number:
                number, more = number * more[0], more[1:]
            factors += more
        elif a.is_Number:
            negative ^= bool(a.is_extended_negative)
            number *= abs(a)
        elif isinstance(a, sp.Mul) and not a.is_Matrix and a.could_extract_minus_sign():
            negative = not negative
            factors.append(-a)
        else:
            factors.append(a)
    return negative, ([number] if number != 1 or not factors else []) + factors


def _negative_product(expr) -> bool:
    return _signed(expr)[0]


def _negated(expr):
    """-expr for a product that prints with a minus sign, without doit()."""
    factors = _signed(expr)[1]
    return factors[0] if len(factors) == 1 else sp.MatMul(*factors, evaluate=False)


def _entries_summed(expr):
    """X for Trace(1 * X) with 1 a matrix of ones (the sum of all of X's entries, as
    nlc.derive.retention's lq norm builds it), else None."""
    arg = expr.arg
    if isinstance(arg, sp.MatMul) and len(arg.args) == 2 and isinstance(arg.args[0], sp.OneMatrix):
        return arg.args[1]
    return None


def _precedence(item, fallback=precedence) -> int:
    if isinstance(item, sp.MatMul):
        return PRECEDENCE["Add"] if _negative_product(item) else PRECEDENCE["Mul"]
    return fallback(item)


def _display(text: str) -> str:
    """Printed math as the reader sees it: the compiler's own symbols (bound variables,
    nlc.derive.symbols.internal) lose the mark that keeps them apart from spec names."""
    return text.replace("ı", "")


class RuleStrPrinter(StrPrinter):
    def parenthesize(self, item, level, strict=False):
        prec = _precedence(item)
        if prec < level or (not strict and prec <= level):
            return f"({self._print(item)})"
        return self._print(item)

    def _print_MatMul(self, expr):
        negative, args = _signed(expr)
        if len(args) > 1 and isinstance(args[-1], sp.OneMatrix) \
                and not any(isinstance(a, sp.MatrixExpr) for a in args[:-1]):
            args = args[:-1]  # a number times a column of ones: the number, broadcast
        return ("-" if negative else "") + "*".join(
            self.parenthesize(a, PRECEDENCE["Mul"]) for a in args)

    def _print_OneMatrix(self, expr):  # a row of ones prints as the transposed column
        return "1.T" if expr.shape[0] == 1 and expr.shape[1] != 1 else "1"

    def _print_Trace(self, expr):
        summed = _entries_summed(expr)
        if summed is None:  # StrPrinter has no Trace of its own
            return f"Trace({self._print(expr.arg)})"
        return f"sum({self._print(summed)})"

    def _print_DiagMatrix(self, expr):  # a gate per channel: Diag(g), as papers write it
        return f"Diag({self._print(expr.args[0])})"

    def _print_MatAdd(self, expr):
        parts = []
        for term in self._as_ordered_terms(expr):
            t = self._print(term)
            sign = "+"
            if t.startswith("-") and not term.is_Add:
                sign, t = "-", t[1:]
            if _precedence(term) < PRECEDENCE["Add"] or term.is_Add:
                t = f"({t})"
            parts += [sign, t]
        return ("" if parts[0] == "+" else "-") + " ".join(parts[1:])


class RuleLatexPrinter(LatexPrinter):
    def parenthesize(self, item, level, is_neg=False, strict=False) -> str:
        prec = _precedence(item, precedence_traditional)
        if is_neg and strict:
            return self._add_parens(self._print(item))
        if prec < level or (not strict and prec <= level):
            return self._add_parens(self._print(item))
        return self._print(item)

    def _print_MatAdd(self, expr):
        tex = ""
        for i, term in enumerate(self._as_ordered_terms(expr)):
            if i and isinstance(term, sp.MatMul) and _negative_product(term):
                tex += " - "
                term = _negated(term)
            elif i:
                tex += " + "
            text = self._print(term)
            tex += rf"\left({text}\right)" if self._needs_add_brackets(term) else text
        return tex

    def _print_MatMul(self, expr):
        negative, args = _signed(expr)
        sign = "- " if negative else ""

        def part(x):
            if isinstance(x, sp.Mul) and not isinstance(x, sp.MatMul):
                return self._print(x)
            return self.parenthesize(x, PRECEDENCE["Mul"], False)
        return sign + " ".join(part(a) for a in args)

    def _print_Trace(self, expr):
        summed = _entries_summed(expr)
        if summed is None:
            return super()._print_Trace(expr)
        return rf"\operatorname{{sum}}\left({self._print(summed)}\right)"

    def _print_DiagMatrix(self, expr):
        return rf"\operatorname{{Diag}}\left({self._print(expr.args[0])}\right)"


def sstr(expr) -> str:
    return _display(RuleStrPrinter().doprint(expr))


def latex(expr) -> str:
    return _display(RuleLatexPrinter().doprint(expr))


# ------------------------------------------------------------------ the paper's way
# `nlc derive` prints a rule as a paper writes it: elementwise functions by name (gelu,
# huber') with their definitions on lines of their own, the Hadamard product as ⊙, and each
# large subexpression that repeats (an MLP memory's forward pass inside its gradient) named
# once, x1 = ..., instead of printed at every use.

R = sp.Symbol("r")
MIN_SHARED_SIZE = 12  # tree nodes: smaller repeats (alpha*S) read better inline
NAMED_FUNCTIONS = ("gelu", "silu", "sigmoid", "tanh", "softplus")  # printed by name


def _known_functions() -> dict:
    """name -> its body in r, from the function registry (nlc/functions.py)."""
    from nlc import functions
    return {n: functions.REGISTRY[n].scalar()(R) for n in NAMED_FUNCTIONS}


def _same(body, ref) -> bool:
    try:
        return sp.simplify(body - ref) == 0
    except (TypeError, ValueError, RecursionError):
        return False


def _huber_threshold(body):
    """delta when `body` is Huber's derivative: r inside |r| <= delta, delta*sign(r) beyond."""
    if not isinstance(body, sp.Piecewise) or len(body.args) != 2:
        return None
    (inside, cond), (outside, _) = body.args
    if inside != R or not isinstance(cond, (sp.Le, sp.Ge)) or cond.lts != sp.Abs(R):
        return None  # |r| <= delta, which SymPy may store as delta >= |r|
    return cond.gts if sp.simplify(outside - cond.gts * sp.sign(R)) == 0 else None


def function_name(body, taken: set[str]) -> str:
    """A name for the elementwise function `r -> body`: gelu, gelu', huber', ... or phi1."""
    name = None
    if isinstance(body, (sp.exp, sp.log, sp.sign, sp.tanh)) and body.args == (R,):
        name = type(body).__name__  # exp(...) reads better than phi1 defined as exp
    elif _huber_threshold(body) is not None:
        name = "huber'"
    elif sp.count_ops(body) < 60:
        for known, ref in _known_functions().items():
            if _same(body, ref):
                name = known
            elif _same(body, sp.diff(ref, R)):
                name = known + "'"
            if name:
                break
    base = name or "phi"
    if name and name not in taken:
        return name
    i = 1
    while f"{base}{i}" in taken:
        i += 1
    return f"{base}{i}"


class PaperStrPrinter(RuleStrPrinter):
    """RuleStrPrinter with named elementwise functions, ⊙, |x| and inline conditionals."""

    def __init__(self, names: dict):
        super().__init__()
        self.names = names  # canonical Lambda body -> name

    def _print_ElementwiseApplyFunction(self, expr):
        body = expr.function.expr.xreplace({expr.function.variables[0]: R})
        return f"{self.names[body]}({self._print(expr.expr)})"

    def _print_HadamardProduct(self, expr):
        return " ⊙ ".join(self.parenthesize(a, PRECEDENCE["Mul"]) for a in expr.args)

    def _print_HadamardPower(self, expr):  # g^⊙2, the entrywise square
        base, exp = expr.args
        return f"{self.parenthesize(base, PRECEDENCE['Pow'])}^⊙{self._print(exp)}"

    def _print_Abs(self, expr):
        return f"|{self._print(expr.args[0])}|"

    def _print_Piecewise(self, expr):
        *cases, (last, _) = expr.args
        text = "; ".join(f"{self._print(e)} if {self._print(c)}" for e, c in cases)
        return f"({text}; {self._print(last)} otherwise)"


def _walk(exprs) -> tuple[dict, dict, list]:
    """Tree size and number of parent references of every node of the expressions' DAG (each
    shared node visited once), and the nodes in post-order. Lambdas are leaves."""
    size, refs, order = {}, {}, []

    def visit(node):
        if node in size:
            refs[node] += 1
            return size[node]
        refs[node] = 1
        children = () if isinstance(node, sp.Lambda) else node.args
        size[node] = 1 + sum(visit(a) for a in children)
        order.append(node)
        return size[node]

    for e in exprs:
        visit(e)
    return size, refs, order


def _shared_names(exprs) -> tuple[dict, list]:
    """{subexpression: its name x1, x2, ...} for repeated large subexpressions, innermost first,
    and [(name symbol, its definition with inner names substituted)]."""
    size, refs, order = _walk(exprs)
    mapping, definitions = {}, []
    for node in order:
        if refs[node] < 2 or size[node] < MIN_SHARED_SIZE or node.is_Atom:
            continue
        name = f"x{len(definitions) + 1}"
        symbol = (sp.MatrixSymbol(name, *node.shape) if isinstance(node, sp.MatrixExpr)
                  else sp.Symbol(name))
        definitions.append((symbol, node.xreplace(mapping)))
        mapping[node] = symbol
    return mapping, definitions


def _tidy(expr):
    """The text's expression: numbers out of Hadamard products (-((-c) ⊙ x) is c ⊙ x) and
    terms times 0 dropped (a momentum of 0 left `0*S_mom`); the rule itself is unchanged."""
    if not isinstance(expr, sp.MatrixExpr):
        return expr

    def pull(h):
        coef, parts = sp.Integer(1), []
        for arg in h.args:
            c, rest = arg.as_coeff_mmul() if isinstance(arg, sp.MatMul) else (1, arg)
            if not sp.sympify(c).is_number:  # only numbers move (a symbol's factor stays)
                c, rest = 1, arg
            coef, parts = coef * c, [*parts, rest.doit() if isinstance(rest, sp.MatMul) else rest]
        return sp.MatMul(coef, sp.HadamardProduct(*parts)).doit() if coef != 1 else h

    def is_zero_term(e):
        return isinstance(e, sp.MatMul) and e.args[0] == 0

    def is_unit_term(e):
        return isinstance(e, sp.MatMul) and e.args[0] == 1

    def nested(e):  # -1 * (-1 * h): numbers only, as pulling them out leaves them
        return isinstance(e, sp.MatMul) and len(e.args) == 2 and e.args[0].is_number \
            and isinstance(e.args[1], sp.MatMul) and e.args[1].args[0].is_number

    def flat(e):  # -1 * (-1 * h) -> 1 * h
        inner = e.args[1]
        return sp.MatMul(e.args[0] * inner.args[0], *inner.args[1:])

    def drop_zero_terms(e):
        kept = [a for a in e.args if not is_zero_term(a)]
        return sp.MatAdd(*kept) if len(kept) > 1 else kept[0] if kept else e

    def scaled_factor(e):  # (-c) ⊙ x
        return isinstance(e, sp.HadamardProduct) and any(
            isinstance(a, sp.MatMul) and a.args[0].is_number and a.args[0] != 1 for a in e.args)

    steps = [(scaled_factor, pull), (nested, flat),
             (is_unit_term, lambda e: sp.MatMul(*e.args[1:]) if len(e.args) > 2 else e.args[1]),
             (lambda e: isinstance(e, sp.MatAdd) and any(map(is_zero_term, e.args)),
              drop_zero_terms)]
    for query, change in steps:  # a step that finds nothing leaves the expression as it is
        if any(query(n) for n in sp.preorder_traversal(expr)):
            expr = expr.replace(query, change)
    return expr


def term_text(expr, where: bool = True) -> str:
    """One expression on one line as `nlc derive` prints it (⊙, named functions), the
    definitions of the functions it names after it in parentheses unless `where` is off."""
    (text,), lines = paper_text([expr])
    return f"{text} (where {'; '.join(lines)})" if where and lines else text


def paper_text(exprs: list) -> tuple[list[str], list[str]]:
    """The expressions as text, and the `where` lines they need: shared subexpressions
    (x1 = ...) and elementwise functions (gelu'(r) = ...)."""
    from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

    exprs = [_tidy(e) for e in exprs]
    mapping, definitions = _shared_names(exprs)
    shown = [e.xreplace(mapping) for e in exprs]
    bodies = []
    for e in [*shown, *(d for _, d in definitions)]:
        for f in e.atoms(ElementwiseApplyFunction):
            body = f.function.expr.xreplace({f.function.variables[0]: R})
            if body not in bodies:
                bodies.append(body)
    names: dict = {}
    for body in bodies:
        names[body] = function_name(body, set(names.values()))
    printer = PaperStrPrinter(names)
    where = [f"{printer.doprint(s)} = {printer.doprint(d)}" for s, d in definitions]
    where += [f"{names[b]}(r) = {printer.doprint(b)}" for b in bodies
              if printer.doprint(b) != f"{names[b]}(r)"]  # not `tanh(r) = tanh(r)`
    return [_display(printer.doprint(e)) for e in shown], [_display(w) for w in where]
