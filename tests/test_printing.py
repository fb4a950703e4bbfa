"""`nlc derive` prints rules as a paper writes them: named elementwise functions with their
definitions, ⊙ for the Hadamard product, repeated subexpressions named once."""

from __future__ import annotations

import sympy as sp

from conftest import EXAMPLES
from nlc import pipeline
from nlc.derive import printing
from nlc.derive.printing import R, _shared_names, function_name

HUBER_MLP = (EXAMPLES / "ttt_mlp.nl").read_text().replace(
    "objective l2(W(k), v)", "objective huber(W(k), v, delta = 1)")


def rules(text: str, name: str = "huber_mlp.nl"):
    return [rule for _, found in pipeline.run(name, "derive", text=text) for rule in found]


def test_an_mlp_memory_with_a_huber_loss_reads_like_the_paper():
    assert HUBER_MLP != (EXAMPLES / "ttt_mlp.nl").read_text()
    (rule,) = rules(HUBER_MLP)
    text = rule.to_text()
    for raw in ("Lambda(", "HadamardProduct", "Piecewise", "Abs("):
        assert raw not in text, raw
    assert " ⊙ " in text and "\n  where\n" in text
    assert "    huber'(r) = (r if |r| <= 1; sign(r) otherwise)\n" in text
    assert "    gelu(r) = r*(erf(sqrt(2)*r/2) + 1)/2\n" in text
    assert "    gelu'(r) = " in text and "gelu'(W_W1_0*k)" in text
    assert max(len(line) for line in text.splitlines()) < 120, text


def test_named_subexpressions_substitute_back_to_the_derived_rule():
    (rule,) = rules(HUBER_MLP)
    exprs = [e for _, e in rule.next_state] + [rule.read]
    mapping, definitions = _shared_names(exprs)
    assert len(definitions) >= 4
    full = {}
    for symbol, definition in definitions:
        full[symbol] = definition.xreplace(full)
    for expr in exprs:
        assert expr.xreplace(mapping).xreplace(full) == expr


def test_small_rules_print_as_before():
    text = rules((EXAMPLES / "gated_deltanet.nl").read_text(), "gdn.nl")[0].to_text()
    assert "  S' = alpha*S - beta*(alpha*S*k - v)*k.T\n" in text and "where" not in text


def test_signs_are_multiplied_out_of_products():
    """A gradient step of rate 1 on -<S k, v> is -(-v k^T): printed as v*k.T, and a step
    of rate lr on a gradient -g as lr*g, not with the signs nested in parentheses."""
    text = rules((EXAMPLES / "linear_attention.nl").read_text(), "la.nl")[0].to_text()
    assert "  S' = S + v*k.T\n" in text and "-(-" not in text, text
    S, g = sp.MatrixSymbol("S", 3, 3), sp.MatrixSymbol("g", 3, 3)
    lr = sp.Symbol("lr")
    step = sp.MatMul(-lr, sp.MatMul(-1, g, evaluate=False), evaluate=False)
    assert printing.sstr(sp.MatAdd(S, step, evaluate=False)) == "lr*g + S"
    assert printing.sstr(sp.MatMul(-1, step, evaluate=False)) == "-lr*g"
    assert printing.latex(sp.MatAdd(S, sp.MatMul(-1, step, evaluate=False),
                                    evaluate=False)) == "- lr g + S"


def test_function_names():
    gelu = R * (1 + sp.erf(R / sp.sqrt(2))) / 2
    assert function_name(gelu, set()) == "gelu"
    assert function_name(sp.diff(gelu, R), set()) == "gelu'"
    assert function_name(sp.diff(gelu, R), {"gelu'"}) == "gelu'1"
    assert function_name(R ** 3, set()) == "phi1"
    # a plain exp or sign is its own name, not phi1 defined as it (Mamba-1's exp(A_log))
    assert function_name(sp.exp(R), set()) == "exp"
    assert function_name(sp.sign(R), set()) == "sign"
    assert function_name(sp.exp(2 * R), set()) == "phi1"
    huber = sp.Piecewise((R, sp.Abs(R) <= sp.Symbol("delta")),
                         (sp.Symbol("delta") * sp.sign(R), True))
    assert function_name(huber, set()) == "huber'"


def test_an_lq_norm_prints_as_the_sum_of_its_entries():
    """Moneta's lq retention divides by a power of the sum of |A|^q over the weight's entries;
    the engine builds that sum as Trace(ones * X), which the printers show as sum(X)."""
    (rule,) = rules((EXAMPLES / "moneta.nl").read_text(), "moneta.nl")
    text, tex = rule.to_text(), rule.to_latex()
    assert "Trace" not in text and "sum(phi1(M_W1))" in text, text
    assert r"\operatorname{tr}" not in tex and r"\operatorname{sum}" in tex


def test_numbers_leave_hadamard_products_and_zero_terms_drop():
    """HGRN's input -((-c) ⊙ inp) printed as written by SymPy, a momentum of 0 left
    `0*S_mom`, and the family line printed SymPy's repr (HadamardPower(g, 2), Lambda)."""
    from nlc.derive.printing import paper_text
    c, x, h, lam = (sp.MatrixSymbol(n, 3, 1) for n in ("c", "inp", "h", "lam"))
    S, U, V = (sp.MatrixSymbol(n, 3, 3) for n in ("S", "S_mom", "G"))
    (text,), _ = paper_text([sp.MatAdd(-sp.HadamardProduct(-c, x), sp.HadamardProduct(lam, h))])
    assert text == "c ⊙ inp + lam ⊙ h", text
    (text,), _ = paper_text([sp.MatAdd(sp.MatMul(0, U), -V)])
    assert text == "-G", text
    adam = rules((EXAMPLES / "adam.nl").read_text(), "adam.nl")
    from nlc.derive.classify import classify
    line = classify(adam[1]).to_text()
    assert "HadamardPower" not in line and "g^⊙2" in line, line
