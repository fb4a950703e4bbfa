"""Derivation stays polynomial where the math allows, and stops at a located budget error
where it does not (nlc/derive/budget.py, steps.py, expand.py). Budgets are set low here so
the hostile specs stay fast; nothing asserts on wall-clock time."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from nlc import pipeline
from nlc.derive.budget import time_budget
from nlc.derive.classify import classify
from nlc.derive.evaluate import Evaluator
from nlc.derive.expand import expand_terms, tree_size
from nlc.errors import NlcError, Span

GDN = (Path(__file__).parents[1] / "examples" / "gated_deltanet.nl").read_text()

SMALL = """layer L {
  dims d_model = 8, d_k = 3, d_v = 2
  param W_q, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param w_a, w_b : [d_model]
  param W_o : [d_v, d_model]
  context from x {
    q = x @ W_q
    k = x @ W_k
    v = x @ W_v
    a = sigmoid(x @ w_a)
    b = sigmoid(x @ w_b)
  }
  level memory every 1 token {
    state S : matrix[d_v, d_k] = zeros
    objective OBJECTIVE
    retention decay(a, order = before)
    algorithm gd(lr = RATE, steps = STEPS)
    read S(q)
  }
  output memory @ W_o
}
"""


def small(steps: int, rate: str = "b", objective: str = "l2(S(k), v)") -> str:
    return (SMALL.replace("STEPS", str(steps)).replace("RATE", rate)
            .replace("OBJECTIVE", objective))


def rule_of(text: str, dims: bool = False):
    specs = pipeline.run("budget.nl", "check", text=text)
    from nlc.derive import derive
    (rule,) = derive(specs[0], dict(specs[0].dims) if dims else None)
    return rule


def gdn_steps(n: int) -> str:
    return GDN.replace("gd(lr = beta)", f"gd(lr = beta, steps = {n})")


@pytest.mark.parametrize("steps", [3, 7, 16])
def test_repeated_delta_steps_match_unrolled_numerics(steps):
    rule = rule_of(small(steps), dims=True)
    assert any("closed form" in note for note in rule.notes)
    rng = np.random.default_rng(steps)
    (_, S), = rule.states
    symbols = {s.name: s for s in rule.next_of("S").free_symbols}
    k, v = (symbols[n] for n in ("k", "v"))
    values = {S: rng.normal(size=(2, 3)), k: rng.normal(size=(3, 1)) / 2,
              v: rng.normal(size=(2, 1)), symbols["a"]: 0.9, symbols["b"]: 0.7}
    got = Evaluator(values)(rule.next_of("S"))
    # written out: the decay, then `steps` delta steps with the same k, v and rate
    want = 0.9 * values[S]
    for _ in range(steps):
        want = want - 0.7 * (want @ values[k] - values[v]) @ values[k].T
    np.testing.assert_allclose(np.asarray(got, dtype=float), want, rtol=1e-10, atol=1e-12)


def test_steps_grow_the_rule_linearly_not_exponentially():
    sizes = {n: tree_size(rule_of(gdn_steps(n)).next_of("S")) for n in (2, 4, 8, 16)}
    # unrolled, each step doubled the tree (2^16 copies of S at 16 steps)
    assert sizes[16] - sizes[8] <= 2 * (sizes[8] - sizes[4]) + 10, sizes
    assert sizes[16] < 40 * 16, sizes
    assert classify(rule_of(gdn_steps(16))).family.value == "product"


def test_a_power_of_a_sum_in_the_rate_is_not_multiplied_out():
    rate = "((a + b + q @ k + 1) / 4) ^ 64"
    for steps in (1, 4):
        c = classify(rule_of(small(steps, rate)))
        assert c.family.value == ("delta" if steps == 1 else "product")
        beta = c.param("beta")
        # unexpanded: a handful of powers of the sum, not C(67, 3) = 47,905 monomials
        assert len(sp.Add.make_args(beta)) <= steps + 1
        assert tree_size(beta) < 500


def test_expand_terms_keeps_scalars_whole():
    S, k = sp.MatrixSymbol("S", 2, 3), sp.MatrixSymbol("k", 3, 1)
    a = sp.Symbol("a")
    expr = sp.MatMul((a + 1) ** 50, sp.MatAdd(S, S * k * k.T, evaluate=False), evaluate=False)
    terms = expand_terms(expr)
    assert len(terms) == 2 and all(t.has((a + 1) ** 50) for t in terms)


UNROLLED = small(16, objective="lp(S(k), v, p = 3)")  # no closed form: unrolled


def _line_of(text: str, err: NlcError) -> str:
    return text.splitlines()[err.span.line - 1]


def test_unrolled_steps_stop_at_the_size_budget(monkeypatch):
    monkeypatch.setenv("NLC_DERIVE_MAX_TERMS", "400")
    with pytest.raises(NlcError) as info:
        pipeline.run("budget.nl", "derive", text=UNROLLED)
    err = info.value
    assert "gd(steps = 16)" in err.message and "derivation budget" in err.message
    assert "algorithm gd" in _line_of(UNROLLED, err)


def test_unrolled_steps_stop_at_the_time_budget(monkeypatch):
    monkeypatch.setenv("NLC_DERIVE_SECONDS", "0.2")  # 16 unrolled lp steps take minutes
    with pytest.raises(NlcError) as info:
        pipeline.run("budget.nl", "derive", text=UNROLLED)
    err = info.value
    assert "ran past its budget of 0.2 s" in err.message
    assert "algorithm gd" in _line_of(UNROLLED, err)


def test_time_budget_leaves_an_outer_timer_in_charge():
    def outer(signum, frame):
        raise AssertionError("the outer timer fired")
    old = signal.signal(signal.SIGALRM, outer)
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        with time_budget("x", Span.none()):
            assert signal.getsignal(signal.SIGALRM) is outer  # the outer handler stays
        assert signal.getsignal(signal.SIGALRM) is outer
        remaining = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 0 < remaining <= 30
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    with time_budget("x", Span.none()):
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0  # armed when nothing else is
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0  # and disarmed after


@pytest.mark.parametrize("name", ["NLC_DERIVE_SECONDS", "NLC_DERIVE_MAX_TERMS"])
def test_budget_variables_are_validated(monkeypatch, name):
    monkeypatch.setenv(name, "lots")
    with pytest.raises(NlcError, match=name):
        pipeline.run("budget.nl", "derive", text=small(2))
