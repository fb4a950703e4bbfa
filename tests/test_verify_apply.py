"""An optimizer's `apply` lines against the catalog's updates (nlc/verify/apply.py): every
shipped optimizer that claims a model verifies its apply, and a wrong apply (a sign flipped,
the square root dropped, eps on the wrong side of it, ...) fails the claim with a message
located at the apply line, while the levels still verify."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import EXAMPLES

from nlc.catalog.applies import APPLIES, Orthogonalized
from nlc.catalog.optimizers import newton_schulz
from nlc.syntax import parse
from nlc.verify.verify import verify_module

OPTIMIZERS = sorted(p.stem for p in EXAMPLES.glob("*.nl")
                    if re.search(r"^optimizer \w+ claims", p.read_text(), re.MULTILINE))

# (example, kind of mistake, as written, mutated)
MUTATIONS = [
    ("adam", "sqrt dropped", "(sqrt(v / (1 - b2 ^ t)) + eps)", "(v / (1 - b2 ^ t) + eps)"),
    ("adam", "sign flipped", "param - lr", "param + lr"),
    ("adam", "eps inside the sqrt", "(sqrt(v / (1 - b2 ^ t)) + eps)",
     "sqrt(v / (1 - b2 ^ t) + eps)"),
    ("adam", "no bias correction", "(first_moment / (1 - b1 ^ t))", "first_moment"),
    ("m3", "sqrt dropped", "/ sqrt(V + eps)", "/ (V + eps)"),
    ("m3", "sign flipped", "param - lr", "param + lr"),
    ("m3", "eps outside the sqrt", "sqrt(V + eps)", "(sqrt(V) + eps)"),
    ("m3", "alpha on the fast memory", "newton_schulz5(fast) + alpha * newton_schulz5(slow)",
     "alpha * newton_schulz5(fast) + newton_schulz5(slow)"),
    ("muon", "sign flipped", "param - lr", "param + lr"),
    ("muon", "orthogonalization dropped", "newton_schulz5(B)", "B"),
    ("sgd_momentum", "sign flipped", "param + m", "param - m"),
    ("sgd_momentum", "parameter dropped", "param + m", "m"),
    ("dgd", "sign flipped", "param = W", "param = -W"),
    ("dgd", "memory added to the parameter", "param = W", "param = param + W"),
]


def _report(text: str, name: str = "spec.nl"):
    (report,) = verify_module(parse(text, name), name)
    return report


def _apply_line(text: str) -> tuple[int, str]:
    (found,) = [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1)
                if line.strip().startswith("apply ")]
    return found


def test_every_claimed_optimizer_has_an_update_and_mutations():
    assert OPTIMIZERS == ["adam", "dgd", "m3", "muon", "sgd_momentum"]
    # and PyTorch's SGD with momentum, which tests below write (no example of its own)
    assert sorted(e.id for e in APPLIES) == sorted(OPTIMIZERS + ["sgd_momentum_buffer"])
    assert {m[0] for m in MUTATIONS if m[1] == "sign flipped"} == set(OPTIMIZERS)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_shipped_apply_verifies(name):
    report = _report((EXAMPLES / f"{name}.nl").read_text(), f"{name}.nl")
    assert report.claim_holds and report.apply.differs == ""
    (match,) = report.apply.matches
    assert match.entry.id == name
    assert match.symbolic is True and match.numeric < 1e-12  # proved, not only sampled


@pytest.mark.parametrize("name, kind, old, new", MUTATIONS,
                         ids=[f"{m[0]}-{m[1].replace(' ', '_')}" for m in MUTATIONS])
def test_a_wrong_apply_fails_at_its_line(name, kind, old, new):
    text = (EXAMPLES / f"{name}.nl").read_text()
    _, written = _apply_line(text)
    assert written.count(old) == 1
    wrong = text.replace(written, written.replace(old, new))
    report = _report(wrong, f"{name}.nl")
    assert not report.claim_holds, kind
    assert all(any(c.entry.id.startswith(name) for c in lv.matches) for lv in report.levels)
    # not the claimed update (Muon without its orthogonalization is PyTorch's SGD)
    assert all(c.entry.id == "sgd_momentum_buffer" for c in report.apply.matches)
    assert bool(report.apply.matches) == (kind == "orthogonalization dropped")
    line, written = _apply_line(wrong)
    assert report.apply.differs.startswith(f"{name}.nl:{line}:"), report.apply.differs
    assert f": '{written}' differs from " in report.apply.differs
    assert "symbolically different" in report.apply.differs or (
        "numerically different, max rel err" in report.apply.differs)
    assert "inf" not in report.apply.differs.split("differs from")[-1]  # no error of inf


def test_cli_prints_the_apply_line_and_exits_1(tmp_path):
    wrong = tmp_path / "adam.nl"
    wrong.write_text((EXAMPLES / "adam.nl").read_text().replace("param - lr", "param + lr"))
    out = subprocess.run([sys.executable, "-m", "nlc", "verify", str(wrong)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 1, out.stderr
    assert f"\n{wrong}:24:19: 'apply param = param + lr * " in out.stdout
    assert "differs from Adam's update" in out.stdout and "0/1 claims verified" in out.stdout
    assert re.search(r"^ +apply +new variant", out.stdout, re.MULTILINE)


def test_an_equal_apply_written_otherwise_verifies():
    """sqrt(v / c) as sqrt(v) / sqrt(c), and lr under another name: still Adam's update."""
    text = (EXAMPLES / "adam.nl").read_text()
    split = text.replace("sqrt(v / (1 - b2 ^ t))", "sqrt(v) / sqrt(1 - b2 ^ t)")
    renamed = text.replace("hyper lr =", "hyper eta =").replace("param - lr", "param - eta")
    for variant in (split, renamed):
        assert variant != text
        assert _report(variant).claim_holds


def test_a_hyper_named_as_the_paper_names_it_keeps_its_role():
    """lr and eps exchanged in the apply is not Adam, though some binding would match."""
    text = (EXAMPLES / "adam.nl").read_text()
    swapped = text.replace("- lr *", "- eps *").replace("+ eps)", "+ lr)")
    report = _report(swapped)
    assert not report.claim_holds and "differs from Adam's update" in report.apply.differs


def test_an_update_hyper_written_as_a_number_is_named():
    text = (EXAMPLES / "muon.nl").read_text().replace("param - lr", "param - 0.02")
    report = _report(text, "muon.nl")
    assert not report.claim_holds
    assert report.apply.differs.endswith(
        "is not Muon's update: it takes 1 hyper(s) of its own (lr), the apply lines read 0 "
        "that no level reads (none): a number in a hyper's place is not the paper's hyper: "
        "name it")


def test_a_hyper_the_update_does_not_have_is_named():
    """AdamW's decoupled weight decay in Adam's apply line: not Adam, and the line says
    which hypers the apply reads beyond Adam's."""
    text = (EXAMPLES / "adam.nl").read_text()
    assert "hyper lr" in text
    variant = text.replace("hyper lr", "hyper wd = 0.01, lr").replace(
        "apply param = param - lr *", "apply param = param - lr * wd * param - lr *")
    assert variant != text
    report = _report(variant)
    assert not report.claim_holds
    assert "the apply lines read 3 that no level reads (eps, lr, wd): the update has no " \
        "hyper for wd" in report.apply.differs, report.apply.differs


def test_fewer_hypers_without_a_number_say_only_the_counts():
    """An apply that reads fewer hypers than the update, with no number in a hyper's place,
    was told "a number in a hyper's place is not the paper's hyper"."""
    text = (EXAMPLES / "adam.nl").read_text().replace(" + eps)", ")")
    report = _report(text)
    assert not report.claim_holds
    assert report.apply.differs.endswith(
        "is not Adam's update: it takes 2 hyper(s) of its own (lr, eps), the apply lines read "
        "1 that no level reads (lr)"), report.apply.differs


def test_a_claim_whose_levels_are_partly_there_names_the_missing_one():
    """RMSprop claiming Adam: its one level equals Adam's second moment, and verify said "no
    levels of RMSprop equal its levels"."""
    text = """optimizer RMSprop claims adam {
  hyper lr = 0.01, alpha = 0.99, eps = 1e-8
  level sq over gradients g every 1 step {
    state v : like(param) = zeros
    objective dot(v, g * g)
    retention decay(alpha)
    algorithm gd(lr = 1 - alpha)
    apply param = param - lr * g / (sqrt(v) + eps)
  }
}
"""
    report = _report(text, "rmsprop.nl")
    assert not report.claim_holds
    assert report.apply.differs.endswith(
        "is not compared with Adam's update: no level of RMSprop equals adam_first_moment "
        "(sq equals adam_second_moment)"), report.apply.differs


def test_apply_lines_are_composed_in_order():
    text = (EXAMPLES / "sgd_momentum.nl").read_text()
    halves = text.replace("    apply param = param + m\n",
                          "    apply param = param + m / 2\n    apply param = param + m / 2\n")
    assert _report(halves).claim_holds
    uneven = halves.replace("m / 2\n  }", "m / 3\n  }")
    assert uneven != halves
    report = _report(uneven, "sgd.nl")
    assert not report.claim_holds
    assert report.apply.differs.startswith(
        "sgd.nl:17:19: 'apply param = param + m / 2' (with the apply at line 18) differs")


def test_newton_schulz_is_checked_numerically(monkeypatch):
    """Symbolically Newton-Schulz is an undefined function on both sides; the numbers
    compare the engine's iteration with the catalog's, so four iterations are caught."""
    monkeypatch.setattr(Orthogonalized, "evaluate", staticmethod(lambda x: newton_schulz(x, 4)))
    report = _report((EXAMPLES / "muon.nl").read_text(), "muon.nl")
    assert not report.claim_holds
    assert "numerically different" in report.apply.differs


def test_adams_second_moment_averages_the_squared_gradient():
    text = (EXAMPLES / "adam.nl").read_text().replace("dot(v, g * g)", "dot(v, g * g * g)")
    report = _report(text)
    assert not report.claim_holds
    levels = {lv.level: [c.entry.id for c in lv.matches] for lv in report.levels}
    assert levels == {"first_moment": ["adam_first_moment"], "second_moment": []}
    assert "no level of Adam equals adam_second_moment (first_moment equals " \
        "adam_first_moment)" in report.apply.differs


def test_an_unclaimed_optimizer_is_compared_with_nothing_it_does_not_bind():
    report = _report((EXAMPLES / "delta_momentum.nl").read_text())
    assert report.apply is not None and not report.apply.matches
    assert report.apply.differs == "" and report.verdict == "no claim"


TORCH_SGD = """optimizer TorchSGD {
  hyper lr = 0.01, mu = 0.9
  level buffer over gradients g every 1 step {
    state B : like(param) = zeros
    objective dot(B, g)
    retention decay(mu)
    algorithm gd(lr = 1)
    apply param = param - lr * buffer
  }
}
"""


def test_sgd_with_momentum_in_pytorchs_form_is_identified():
    """B = mu B + g, W = W - lr B (torch.optim.SGD): identify called the update a new variant
    that differs from Muon's. A sign flipped in its apply is caught at the line."""
    report = _report(TORCH_SGD, "torch_sgd.nl")
    (match,) = report.apply.matches
    assert match.entry.id == "sgd_momentum_buffer" and match.symbolic is True
    flipped = _report(TORCH_SGD.replace("param - lr", "param + lr"), "torch_sgd.nl")
    assert not flipped.apply.matches and "9:" in flipped.apply.differs
