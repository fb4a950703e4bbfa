"""Derived rules against the catalog: every example that claims a model verifies, wrong
formulas are caught, and identification names each example and not its neighbours."""

from __future__ import annotations

import re

import pytest

from conftest import EXAMPLES, example_paths
from nlc.syntax import parse
from nlc.verify.verify import verify_module


def _claims(path) -> str | None:
    match = re.search(r"claims (\w+)", path.read_text())
    return match.group(1) if match else None


CLAIMING = [p for p in example_paths() if _claims(p)]
VERIFIED = [pytest.param(p, id=p.stem) for p in CLAIMING]


def _verify(text: str, name: str = "spec.nl"):
    return verify_module(parse(text, name), name)


def test_examples_claim_models():
    assert len(CLAIMING) >= 15, "the catalog's models need examples that claim them"


@pytest.mark.parametrize("path", VERIFIED)
def test_example_verifies(path):
    reports = _verify(path.read_text(), str(path))
    assert reports
    for report in reports:
        if not report.claims:
            continue
        assert report.claim_holds, [(lv.level, [c.entry.id for c in lv.matches], lv.differs)
                                    for lv in report.levels]
        for level in report.levels:
            claimed = [c for c in level.matches if c.entry.id.startswith(report.claims)]
            assert claimed, level.level
            for c in claimed:
                assert c.symbolic is True  # every claimed example is proved, not only sampled
                assert c.numeric < 1e-12


def _levels(text):
    (report,) = [r for r in _verify(text) if r.levels]
    return {lv.level: [c.entry.id for c in lv.matches] for lv in report.levels}, report


def test_ordering_c_labelled_gated_deltanet_is_refused():
    text = (EXAMPLES / "gated_deltanet.nl").read_text()
    assert "order = before" in text or "decay(alpha)" in text
    wrong = re.sub(r"decay\(alpha(, order = before)?\)", "decay(alpha, order = parallel)", text)
    assert wrong != text
    levels, report = _levels(wrong)
    assert not report.claim_holds
    assert "gated_deltanet" not in levels["memory"]
    # ordering C is Titans' linear memory, whose loss has no 1/2 (scale = 2)
    levels, _ = _levels(wrong.replace("l2(S(k), v)", "l2(S(k), v, scale = 2)"))
    assert "titans_linear" in levels["memory"]


def test_titans_with_a_half_is_refused():
    text = (EXAMPLES / "titans.nl").read_text()
    wrong = text.replace("scale = 2", "scale = 1")
    assert wrong != text
    levels, report = _levels(wrong)
    assert not report.claim_holds
    assert "titans" not in levels["memory"]


def test_yaad_with_the_entrywise_huber_is_refused():
    """Yaad switches on the norm of the whole error (Miras eq. 16); the per-entry Huber is
    another rule, even though both are Huber losses with the same threshold."""
    text = (EXAMPLES / "yaad.nl").read_text()
    wrong = text.replace("switch = norm", "switch = entries")
    assert wrong != text
    levels, report = _levels(wrong)
    assert not report.claim_holds
    assert "yaad" not in levels["memory"]


@pytest.mark.parametrize("name, old, new", [
    ("moneta", "lp(M(k), v, p = 3)", "lp(M(k), v, p = 4)"),            # another l_p
    ("moneta", "lq(q = 4)", "lq(q = 3)"),                               # another l_q
    ("memora", "l2(M(k), v)", "l2(M(k), v, scale = 2)"),                # another scale
    ("yaad", "order = parallel", "order = before"),                     # ordering A
    ("titans", "weight_decay(alpha)", "weight_decay(alpha, order = before)"),  # ordering A
])
def test_mlp_variants_are_refused(name, old, new):
    text = (EXAMPLES / f"{name}.nl").read_text()
    wrong = text.replace(old, new)
    assert wrong != text
    levels, report = _levels(wrong)
    assert not report.claim_holds
    assert name not in levels["memory"]


def test_mlp_claims_are_proved_by_parts():
    """The symbolic check of an MLP memory can fail: a wrong chain rule, a wrong loss or a
    wrong rule around the gradient each make it False."""
    from nlc.catalog.models import by_id
    from nlc.derive.engine import LevelDerivation
    from nlc.derive.symbols import SymbolTable
    from nlc.verify import mlp
    from nlc.verify.equality import opaque_gradient
    from nlc.verify.verify import _derived_values, _rule_at, instantiate, roles_of
    assert mlp.chain_rule_equal(2, True, True) is True
    module = parse((EXAMPLES / "titans.nl").read_text().replace("scale = 2", "scale = 1"), "t")
    rule, _ = _rule_at(module, "Titans", "memory", (2, 3), gradient=opaque_gradient)
    roles = roles_of(rule)
    spec = instantiate(module, "Titans", (2, 3))
    derivation = LevelDerivation(spec, spec.graph.level("memory"), SymbolTable(spec, {}, (2, 3)))
    assert mlp.loss_equal(derivation, by_id("titans"), roles.delta) is False  # the 1/2
    assert mlp.algebra_equal(rule, _derived_values(rule), by_id("titans"), roles) is True
    assert mlp.algebra_equal(rule, _derived_values(rule), by_id("moneta"), roles) is False


def test_longhorn_needs_the_implicit_step():
    text = (EXAMPLES / "longhorn.nl").read_text()
    wrong = re.sub(r"implicit\(", "gd(", text)
    assert wrong != text
    levels, report = _levels(wrong)
    assert not report.claim_holds
    assert levels["memory"] == ["deltanet"]


NEIGHBOURS = {
    "deltanet": ["gated_deltanet", "longhorn", "linear_attention"],
    "gated_deltanet": ["deltanet", "titans_linear", "mamba2"],
    "linear_attention": ["retnet", "mamba2", "deltanet"],
    "retnet": ["linear_attention", "mamba2"],
    "mamba2": ["retnet", "gla"],
    "gla": ["mamba2", "kda"],
    "longhorn": ["deltanet"],
    "softmax_attention": ["sliding_window"],
    "sliding_window": ["softmax_attention"],
}


@pytest.mark.parametrize("name", sorted(NEIGHBOURS))
def test_identified_as_itself_not_neighbours(name):
    levels, _ = _levels((EXAMPLES / f"{name}.nl").read_text())
    found = {e for ids in levels.values() for e in ids}
    assert any(e == name or e.startswith(name + "_") for e in found)
    assert not found & set(NEIGHBOURS[name])


def _nlc(*args, cwd=None):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "nlc", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_cli_verify_ok_and_mismatch(tmp_path):
    ok = _nlc("verify", str(EXAMPLES / "deltanet.nl"))
    assert ok.returncode == 0, ok.stderr
    assert "1/1 claims verified" in ok.stdout
    wrong = tmp_path / "wrong.nl"
    wrong.write_text((EXAMPLES / "deltanet.nl").read_text().replace("claims deltanet",
                                                                     "claims gated_deltanet"))
    bad = _nlc("verify", str(wrong), "--format", "json")
    assert bad.returncode == 1
    import json
    data = json.loads(bad.stdout)
    assert data["specs"][0]["verdict"] == "MISMATCH"
    table = _nlc("verify", str(wrong))  # the row's "equals deltanet, equal" is not a pass
    assert "MISMATCH: not gated_deltanet" in table.stdout


def test_the_light_catalog_ids_match_the_catalog():
    """`nlc check` knows the catalog's ids without SymPy; they must be the entries' ids."""
    from nlc.catalog.ids import CATALOG_TITLES, claimable
    from nlc.catalog.models import ENTRIES
    assert CATALOG_TITLES == {e.id: e.title for e in ENTRIES}
    for path in example_paths():
        for spec in parse(path.read_text(), str(path)).decls:
            assert spec.claims is None or claimable(spec.claims), (path, spec.claims)


def test_an_unknown_claim_fails_check_and_verify_with_a_suggestion(tmp_path):
    wrong = tmp_path / "kimi.nl"
    wrong.write_text((EXAMPLES / "deltanet.nl").read_text().replace("claims deltanet",
                                                                     "claims kimi"))
    for command in ("check", "verify"):
        out = _nlc(command, str(wrong))
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert f"{wrong}:9:23: error: unknown catalog id 'kimi', did you mean 'kda'?" \
            in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_cli_identify_and_derive():
    out = _nlc("identify", str(EXAMPLES / "gated_deltanet.nl"))
    assert out.returncode == 0 and "Gated DeltaNet" in out.stdout
    out = _nlc("derive", str(EXAMPLES / "gated_deltanet.nl"))
    assert out.returncode == 0 and "family: delta" in out.stdout
    out = _nlc("derive", str(EXAMPLES / "gated_deltanet.nl"), "--format", "latex")
    assert out.returncode == 0 and "\\\\" in out.stdout or "S'" in out.stdout


def test_cli_derive_reports_underivable_combination(tmp_path):
    """Several steps per token with gradients frozen per chunk are not derived: a located
    error that says what works instead."""
    spec = tmp_path / "product.nl"
    text = (EXAMPLES / "ttt_linear.nl").read_text().replace("gd(lr = eta)", "gd(lr = eta, steps = 2)")
    assert text != (EXAMPLES / "ttt_linear.nl").read_text()
    spec.write_text(text)
    out = _nlc("derive", str(spec))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "error:" in out.stderr


def test_cli_derives_several_steps_per_token(tmp_path):
    spec = tmp_path / "product.nl"
    text = (EXAMPLES / "deltanet.nl").read_text().replace("gd(lr = beta)", "gd(lr = beta, steps = 2)")
    spec.write_text(text)
    out = _nlc("derive", str(spec))
    assert out.returncode == 0, out.stderr
    assert "2 gradient steps per token" in out.stdout


def test_demo_runs_end_to_end(tmp_path):
    """The README's main job with a reduced training budget (--quick): every stage runs."""
    out = _nlc("demo", "--quick", "--out", str(tmp_path / "demo"), cwd=str(EXAMPLES.parent))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "claims verified" in out.stdout and "Traceback" not in out.stderr
    verified, claimed = re.search(r"(\d+)/(\d+) claims verified", out.stdout).groups()
    assert verified == claimed and int(claimed) >= 10
    assert "3. compile" in out.stdout and "4. train on MQAR" in out.stdout
    accuracy = {}
    for name in ("linear_attention", "deltanet", "gated_deltanet", "softmax_attention"):
        found = re.search(rf"^   {name} +(\d\.\d{{3}}) ", out.stdout, re.M)
        assert found, name
        accuracy[name] = float(found.group(1))
    # quick still shows learning: guessing a value in the context scores 0.25
    assert accuracy["softmax_attention"] > 0.5, accuracy
    assert "chance: 0.031" in out.stdout
    # every model's progress shows from its first step, with speed and ETA
    firsts = re.findall(r"^step 1/150 .* tok/s +eta ", out.stderr, re.M)
    assert len(firsts) == 4, out.stderr[-2000:]
    assert (tmp_path / "demo" / "mqar.png").stat().st_size > 0


MOMENTUM_DELTA = """layer MomentumDelta {
  dims d_model = 16, heads = 2, d_k = 8, d_v = 8
  param W_q, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param W_o : [d_v, d_model]
  param w_a : [d_model]
  context from x {
    q = l2norm(x @ W_q)
    k = l2norm(x @ W_k)
    v = x @ W_v
    alpha = sigmoid(x @ w_a)
  }
  level memory every 1 token {
    state S : matrix[d_v, d_k] = zeros
    objective l2(S(k), v)
    retention decay(alpha)
    algorithm momentum(lr = 0.5, momentum = 0.9)
    read S(q)
  }
  output memory @ W_o
}
"""


def test_nearest_is_ranked_by_the_axes_that_differ():
    """A new variant's nearest models come from a distance over the design space's axes
    (form, objective, gate, momentum, rate), not the first entries of its form; the line
    says what differs from the closest."""
    (level,) = _verify(MOMENTUM_DELTA)[0].levels
    assert not level.matches
    assert level.nearest[0] == "gated_deltanet"
    assert level.differs == "Gated DeltaNet + momentum"
    (level,) = verify_module(parse((EXAMPLES / "lp_matrix.nl").read_text(), "lp_matrix.nl"),
                             "lp_matrix.nl")[0].levels
    assert level.nearest[0] == "gated_deltanet"
    assert level.differs == ("Gated DeltaNet with objective lp (gated_deltanet: l2); the gate's order = "
                             "parallel (gated_deltanet: order = before)")


@pytest.mark.parametrize("example, old, new, says", [
    ("moneta", "p = 3", "p = 4", "the objective's p = 4 (moneta: p = 3)"),
    ("titans", "scale = 2", "scale = 3", "the objective's scale = 3 (titans: scale = 2)"),
    ("yaad", "switch = norm", "switch = entries",
     "the objective's switch = entries (yaad: switch = norm)")])
def test_a_variant_on_every_axis_names_the_objective_argument_that_differs(example, old, new,
                                                                              says):
    """A level that equals a published model on every compared axis but fails to verify
    against it: the line names the objective's argument that differs from the paper's loss."""
    text = (EXAMPLES / f"{example}.nl").read_text()
    assert old in text
    text = re.sub(r" claims \w+", "", text.replace(old, new))
    (level,) = verify_module(parse(text, "variant.nl"), "variant.nl")[0].levels
    assert not level.matches and level.nearest[0] == example
    assert level.differs.endswith("on every axis nlc compares, but " + says)


def test_a_retention_verifies_under_either_spelling():
    """weight_decay(a) keeps 1 - a of the state, decay(1 - a) too: the catalog's gate is the
    factor kept, so both spellings verify as the same model (weight_decay(a) + gd as Titans'
    linear memory was a new variant), and Titans' MLP memory written with decay(1 - a) is
    still Titans."""
    gated = (EXAMPLES / "gated_deltanet.nl").read_text()
    linear = re.sub(r"retention decay\(alpha(, order = before)?\)",
                    "retention weight_decay(1 - alpha, order = parallel)", gated)
    linear = linear.replace("l2(S(k), v)", "l2(S(k), v, scale = 2)")  # Titans' loss
    assert linear != gated
    levels, _ = _levels(linear)
    assert "titans_linear" in levels["memory"]
    titans = (EXAMPLES / "titans.nl").read_text()
    spelled = re.sub(r"weight_decay\((\w+)\)", r"decay(1 - \1, order = parallel)", titans)
    assert spelled != titans
    levels, report = _levels(spelled)
    assert report.claim_holds, levels


def test_an_average_of_the_parameter_is_not_adams_moment():
    """Adam's moments average the gradient and its square; the same recurrence over `param`
    and `param * param` is another optimizer, and `claims adam` must fail (it verified)."""
    text = (EXAMPLES / "adam.nl").read_text()
    changed = text.replace("objective dot(m, g)", "objective dot(m, param)").replace(
        "objective dot(v, g * g)", "objective dot(v, param * param)")
    assert changed.count("param * param") == 1 and "dot(m, param)" in changed
    (report,) = verify_module(parse(changed, "not_adam.nl"), "not_adam.nl")
    assert not report.claim_holds
    assert all(not level.matches for level in report.levels)
    (report,) = verify_module(parse(text, "adam.nl"), "adam.nl")
    assert report.claim_holds


@pytest.mark.parametrize("example, edit, said", [
    ("gated_deltanet", (r"decay\(alpha(, order = before)?\)", "decay(alpha, order = parallel)"),
     "the gate's order = parallel (gated_deltanet: order = before)"),
    ("gated_deltanet", (r"algorithm gd\(lr = beta\)", "algorithm gd(lr = beta, steps = 3)"),
     "3 steps per token (gated_deltanet: one)"),
    ("memora", (r"kl\((\w+)\)", r"weight_decay(\1)"), "retention weight_decay (memora: kl)"),
])
def test_a_variant_on_every_compared_axis_names_what_it_writes_otherwise(example, edit, said):
    """The nearest model's line named "the algorithm, the read or an argument" for a level
    that differs from it in the gate's order, its steps per token or a retention the entry
    names: it now says which."""
    text = (EXAMPLES / f"{example}.nl").read_text()
    variant = re.sub(*edit, text)
    assert variant != text
    (report,) = [r for r in _verify(variant) if r.levels]
    assert any(said in level.differs for level in report.levels), \
        [level.differs for level in report.levels]


HGRN2_PAPER = """layer HGRN2 claims gla {
  dims d_model = 16, d_k = 4, d_v = 3
  param W_f, W_q : [d_model, d_k]
  param W_i : [d_model, d_v]
  param W_out : [d_v, d_model]
  context from x { f = sigmoid(x @ W_f); k = 1 - f; q = x @ W_q; v = x @ W_i }
  level memory {
    state W : matrix[d_k, d_v] = zeros
    objective dot(W(v), k)
    retention decay(GATE)
    algorithm gd(lr = 1)
    read q @ W
  }
  output memory @ W_out
}
"""


def test_a_state_read_as_q_at_w_takes_its_gate_per_row_as_a_channel_gate():
    """HGRN2 in its paper's layout (Qin et al. 2024, eq. 5: S [d_k, d_v], S' = Diag(f) S +
    (1 - f) i^T, read q^T S) is GLA on S^T: its forget gate per row of W decays the input
    channels of the state as compared. It was taken as a row gate, which no entry has."""
    (report,) = [r for r in _verify(HGRN2_PAPER.replace("GATE", "f")) if r.levels]
    assert report.claim_holds, [lv.differs for lv in report.levels]
    # a gate per column of W (per output channel of S = W^T) is not GLA
    other = HGRN2_PAPER.replace("GATE", "g").replace("k = 1 - f;", "k = 1 - f; g = "
                                                    "sigmoid(x @ W_g);")
    other = other.replace("param W_i : [d_model, d_v]", "param W_i, W_g : [d_model, d_v]")
    (report,) = [r for r in _verify(other) if r.levels]
    assert not report.claim_holds


@pytest.mark.parametrize("read, said", [
    # RWKV-6's read: before the write, with the bonus of the current token (Peng et al. 2024)
    ("read before S(q) + dot(q, k) * v",
     ["it reads before the write", "its read is not the memory applied to the query"]),
    ("read before S(q)", ["it reads before the write"]),
    ("read 2 * S(q)", ["its read is not the memory applied to the query"]),
])
def test_a_claimed_update_with_another_read_is_refused_and_the_read_named(read, said):
    """verify compared the update only: GLA's update read before the write, with a bonus
    term (RWKV-6), verified as GLA. The read is compared with the paper's, the memory
    applied to the query after the write, and the line says how it differs."""
    text = (EXAMPLES / "gla.nl").read_text()
    variant = text.replace("read S(q)", read)
    assert variant != text
    (report,) = [r for r in _verify(variant) if r.levels]
    assert not report.claim_holds
    (level,) = report.levels
    assert level.nearest[0] == "gla"
    assert level.differs.startswith("Gated linear attention's update;"), level.differs
    for phrase in said:
        assert phrase in level.differs, level.differs
    if "before" not in read:
        assert "reads before" not in level.differs


def test_an_mlp_memory_read_before_its_write_is_not_titans():
    text = (EXAMPLES / "titans.nl").read_text()
    variant = re.sub(r"read M\(q\)", "read before M(q)", text)
    assert variant != text
    (report,) = [r for r in _verify(variant) if r.levels]
    assert not report.claim_holds
    assert "it reads before the write" in report.levels[0].differs


def test_monetas_read_applies_its_normalized_weights():
    """Moneta reads W = A / ||A||_4^2 of its state A (Miras eqs. 24-25): the example
    verifies with that read, and the catalog's read of the raw state would not be it."""
    import numpy as np

    from nlc.catalog.models import ENTRIES
    (moneta,) = [e for e in ENTRIES if e.id == "moneta"]
    (report,) = [r for r in _verify((EXAMPLES / "moneta.nl").read_text()) if r.levels]
    assert report.claim_holds
    a = np.random.default_rng(0).normal(size=(3, 3))
    assert not np.allclose(moneta.read_weights(a), a)


def test_an_erase_is_an_axis_of_the_nearest_model():
    """Mamba2's update with an erase (Comba's inner decay, as an erase of rate dt * 0.5) was
    "Mamba2, on every axis nlc compares": the erase was not an axis."""
    text = (EXAMPLES / "mamba2.nl").read_text()
    variant = text.replace("retention decay(alpha)",
                           "retention decay(alpha, order = parallel), erase(key = k, rate = dt * 0.5)")
    assert variant != text
    (report,) = [r for r in _verify(variant) if r.levels]
    assert not report.claim_holds
    assert "+ an erase" in report.levels[0].differs, report.levels[0].differs


def test_nearest_sees_spellings_gates_from_levels_and_other_retentions():
    """Hope's levels were nearest to Memora (their gates, reads of the levels eta and alpha,
    were taken for constants); a plain residual MLP memory was nearest to Memora (its kl
    retention was no axis, and an MLP without TTT's norm counted as another form); Comba's
    dot objective with an erase was "Mamba2 + an erase"; a kl or lq retention went unnamed."""
    hope = verify_module(parse((EXAMPLES / "hope.nl").read_text(), "hope.nl"), "hope.nl")
    levels = {lv.level: lv for r in hope for lv in r.levels}
    assert levels["memory"].nearest[0] == "titans", levels["memory"].differs
    assert levels["cms_fast"].nearest[0] == "ttt_mlp"
    assert "no norm on the output" in levels["cms_fast"].differs
    comba = (EXAMPLES / "gated_deltanet.nl").read_text().replace(
        "objective l2(S(k), v)", "objective dot(S(k), v)").replace(
        "retention decay(alpha, order = before)",
        "retention decay(alpha, order = before), erase(key = 0.5 * k, rate = beta)")
    comba = re.sub(r" claims \w+", "", comba)
    (level,) = [lv for r in _verify(comba) for lv in r.levels]
    assert level.nearest[0] == "gated_deltanet", level.differs
    assert "the erase along (1/2)*k, not the key k" in level.differs, level.differs
    kl = (EXAMPLES / "lp_matrix.nl").read_text().replace(
        "retention decay(alpha, order = parallel)", "retention kl(alpha)").replace(
        "= zeros", "= learned")
    (level,) = [lv for r in _verify(kl) for lv in r.levels]
    assert "retention kl (gated_deltanet: none beyond its gate)" in level.differs, level.differs


def test_an_omega_window_is_named_where_the_rest_is_the_nearest_model():
    text = (EXAMPLES / "gated_deltanet.nl").read_text()
    variant = text.replace("objective l2(S(k), v)", "objective omega(l2(S(k), v), window = 3)")
    variant = variant.replace("claims gated_deltanet", "")
    assert variant != text
    (report,) = [r for r in _verify(variant) if r.levels]
    (level,) = report.levels
    assert not level.matches
    assert "the losses of a window of 3 tokens (gated_deltanet: the token's own)" in \
        level.differs, level.differs
    # the gate's order is named beside the window, as without one (it went unnamed)
    parallel = variant.replace("decay(alpha, order = before)", "decay(alpha, order = parallel)")
    assert parallel != variant
    (report,) = [r for r in _verify(parallel) if r.levels]
    assert "the gate's order = parallel (gated_deltanet: order = before)" in \
        report.levels[0].differs, report.levels[0].differs


def test_a_failed_claim_says_how_the_level_differs_from_the_claimed_entry(tmp_path):
    """A failed claim's line described the nearest entry, not the claimed one, and the
    verify table printed no line at all."""
    text = (EXAMPLES / "gated_deltanet.nl").read_text()
    claimed = text.replace("claims gated_deltanet", "claims titans_linear").replace(
        "decay(alpha, order = before)", "decay(alpha, order = parallel)")
    assert claimed != text
    (report,) = [r for r in _verify(claimed) if r.levels]
    assert not report.claim_holds
    assert report.levels[0].nearest[0] == "titans_linear"
    assert "scale = 1 (titans_linear: scale = 2)" in report.levels[0].differs
    path = tmp_path / "claimed.nl"
    path.write_text(claimed)
    out = _nlc("verify", str(path))
    assert out.returncode == 1
    assert "memory: not titans_linear: " in out.stdout, out.stdout
    # a level that is another model: the line says why it is not the claimed one
    path.write_text((EXAMPLES / "deltanet.nl").read_text().replace("claims deltanet",
                                                                    "claims gated_deltanet"))
    out = _nlc("verify", str(path))
    assert out.returncode == 1
    assert "memory: not gated_deltanet: " in out.stdout, out.stdout


@pytest.mark.parametrize("algorithm, said, unsaid", [
    ("newton_schulz(lr = beta, momentum = 0.9)",
     ["Gated DeltaNet + momentum", "its step orthogonalized by Newton-Schulz",
      "the losses of a window of 3 tokens"], ["steps per token"]),
    ("newton_schulz(lr = beta)",  # momentum 0 by default: no momentum
     ["its step orthogonalized by Newton-Schulz"], ["+ momentum", "steps per token"]),
    ("momentum(lr = beta, momentum = 0.9)",
     ["Gated DeltaNet + momentum", "the losses of a window of 3 tokens"], ["Newton-Schulz"]),
])
def test_the_nearest_line_names_what_the_axes_do_not_see_beside_them(algorithm, said, unsaid):
    """Atlas-style memories: with momentum on the axes the window went unnamed, Newton-Schulz
    was never named, its iteration count read as 5 steps per token, and a momentum of 0
    read as momentum."""
    text = (EXAMPLES / "gated_deltanet.nl").read_text().replace("claims gated_deltanet", "")
    variant = text.replace("objective l2(S(k), v)",
                           "objective omega(l2(S(k), v), window = 3)").replace(
        "algorithm gd(lr = beta)", f"algorithm {algorithm}")
    assert variant.count("window = 3") == 1 and algorithm in variant
    (report,) = [r for r in _verify(variant) if r.levels]
    (level,) = report.levels
    for phrase in said:
        assert phrase in level.differs, level.differs
    for phrase in unsaid:
        assert phrase not in level.differs, level.differs


def test_a_self_generated_target_is_not_the_model_whose_rule_it_shares():
    """DeltaNet with the value read from its own state, `l2(S(k), S(q))` (a self-generated
    target, as Hope's memories have), derives S (I - b k k^T + b q k^T): DeltaNet's rule at
    v = S q, which verified as DeltaNet. The catalog's models take their values from the
    tokens; the line names the difference."""
    text = (EXAMPLES / "deltanet.nl").read_text()
    variant = re.sub(r"objective l2\(S\(k\), v\)", "objective l2(S(k), S(q))", text)
    assert variant != text
    (report,) = [r for r in _verify(variant) if r.levels]
    (level,) = report.levels
    assert not report.claim_holds and not level.matches
    assert "its value computed from its own state (deltanet: from the tokens)" in \
        level.differs, level.differs
    (report,) = [r for r in _verify(text) if r.levels]
    assert report.claim_holds


def test_a_cache_with_another_weight_names_the_weight():
    """Based's Taylor kernel as a cache's weight was "on every axis nlc compares: the
    difference is in the algorithm, the read or an argument nlc does not compare"."""
    text = (EXAMPLES / "softmax_attention.nl").read_text()
    variant = text.replace("weight = exp(dot(q, k) / sqrt(d_k))", "weight = 1 + dot(q, k)")
    variant = variant.replace("claims softmax_attention", "")
    assert variant != text
    (report,) = [r for r in _verify(variant) if r.levels]
    (level,) = report.levels
    assert not level.matches
    assert "the weight 1 + dot(q, k) (softmax_attention: exp of the scaled dot product" in \
        level.differs, level.differs


def test_a_rate_per_output_channel_is_named_against_a_rate_per_token():
    """KDA with beta : [d_v] read "on every axis nlc compares: the difference is in the
    algorithm, the read or an argument"; derive knew the rate was per row."""
    text = (EXAMPLES / "kda.nl").read_text()
    variant = re.sub(r"param w_beta : \[d_model\]", "param w_beta : [d_model, d_v]", text)
    assert variant != text, "kda.nl's rate parameter moved: update this test"
    (report,) = [r for r in _verify(variant) if r.levels]
    (level,) = report.levels
    assert not report.claim_holds
    assert "with a rate per output channel (kda: one rate per token)" in level.differs, \
        level.differs


def test_a_learned_gate_the_same_at_every_token_is_not_glas():
    """GLA's gate per channel depends on the input; linear attention with a learned decay
    per channel, exp(-exp(a_log)), was "this is Gated linear attention"."""
    text = (EXAMPLES / "gla.nl").read_text()
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("alpha = ")]
    assert len(lines) == 1, "gla.nl's gate line moved: update this test"
    variant = text.replace(lines[0], "    alpha = exp(-exp(a_log))").replace(
        "  param W_o", "  param a_log : [d_k]\n  param W_o", 1).replace("claims gla", "")
    (report,) = [r for r in _verify(variant) if r.levels]
    (level,) = report.levels
    assert not level.matches
    assert "a constant per-channel retention gate" in level.differs, level.differs


def test_an_optimizer_level_that_learns_from_more_than_its_gradient_says_from_what():
    """SGD momentum of g / (sqrt(v) + eps) read "on every axis nlc compares: the difference
    is in the algorithm, the read or an argument nlc does not compare"."""
    text = (EXAMPLES / "sgd_momentum.nl").read_text()
    objective = [ln for ln in text.splitlines() if ln.strip().startswith("objective ")]
    assert len(objective) == 1, "sgd_momentum.nl's objective moved: update this test"
    variant = text.replace(objective[0], objective[0].replace("g)", "g / (1 + g * g))"))
    assert variant != text
    (report,) = [r for r in _verify(variant.replace("claims sgd_momentum", "")) if r.levels]
    level = report.levels[0]
    assert not level.matches
    assert "it learns from " in level.differs and "(sgd_momentum: from the gradient g)" in \
        level.differs, level.differs


def test_an_ssd_recurrence_whose_gate_does_not_come_from_its_rate_is_not_mamba2():
    """mLSTM's memory without its normalizer, S = f S + i v k^T with a sigmoid forget gate and
    an exponential input gate of their own, has Mamba2's form but not its parameterization
    (exp(dt A) and dt): identify said "this is Mamba2". examples/mamba2.nl stays Mamba2."""
    mlstm = '''layer MLSTM {
  dims d_model = 16, heads = 2, d_k = 4, d_v = 4
  param W_q, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param W_o : [d_v, d_model]
  param w_i, w_f : [d_model]
  context from x {
    q = x @ W_q
    k = x @ W_k
    v = x @ W_v
    i = exp(x @ w_i)
    f = sigmoid(x @ w_f)
  }
  level memory every 1 token {
    state C : matrix[d_v, d_k] = zeros
    objective dot(C(k), v)
    retention decay(f)
    algorithm gd(lr = i)
    read C(q)
  }
  output memory @ W_o
}
'''
    (report,) = _verify(mlstm, "mlstm.nl")
    (level,) = report.levels
    assert level.matches == [] and level.nearest == ["mamba2"]
    assert "a gate and a rate that share no input" in level.differs
    shared = mlstm.replace("i = exp(x @ w_i)\n    f = sigmoid(x @ w_f)",
                           "f = sigmoid(x @ w_f)\n    i = exp(x @ w_i) * f")
    (report,) = _verify(shared, "mlstm_shared.nl")
    assert [c.entry.id for c in report.levels[0].matches] == ["mamba2"]


def test_a_delta_rule_with_gradients_at_the_chunk_start_says_so():
    """identify said only that the difference was 'in the algorithm, the read or an argument
    nlc does not compare'."""
    text = (EXAMPLES / "deltanet.nl").read_text().replace(
        "level memory every 1 token {", "level memory every 1 token, gradients at chunk(4) {")
    (report,) = _verify(text, "deltanet_chunk.nl")
    (level,) = report.levels
    assert level.matches == [] and level.nearest[0] == "deltanet"
    assert "its gradients at the start of chunks of 4 tokens (deltanet: at each token's " \
        "state)" in level.differs


def test_identify_says_which_constants_of_the_paper_it_does_not_compare():
    """Lightning attention's decays (another constant per head) were "this is RetNet" with no
    word that RetNet's own decays 1 - 2^(-5-h) were not compared."""
    from nlc.verify.report import identify_text
    text = identify_text(_verify((EXAMPLES / "retnet.nl").read_text()))
    assert "this is RetNet" in text
    assert "the recurrence is compared, not the paper's constants: its decays per head, " \
        "1 - 2^(-5-h)" in text


def test_a_moment_of_squares_is_nearest_a_second_moment():
    """AdaBelief's s = b2 s + (1 - b2) (g - m)^2 was nearest SGD's momentum: Adam's moments'
    rate 1 - b2 counted as a difference, and squares as data were no axis."""
    text = """optimizer AdaBelief {
  hyper lr = 0.001, b1 = 0.9, b2 = 0.999
  level first_moment over gradients g every 1 step {
    state m : like(param) = zeros
    objective l2(m, g)
    retention decay(b1, order = parallel)
    algorithm gd(lr = 1 - b1)
  }
  level belief over gradients g every 1 step {
    state s : like(param) = zeros
    objective l2(s, (g - first_moment) * (g - first_moment))
    retention decay(b2, order = parallel)
    algorithm gd(lr = 1 - b2)
    apply param = param - lr * first_moment / (sqrt(belief) + 0.00000001)
  }
}
"""
    levels = {lv.level: lv for r in _verify(text) for lv in r.levels}
    assert levels["belief"].nearest[0] == "adam_second_moment", levels["belief"].differs
    assert "(adam_second_moment: from g ⊙ g)" in levels["belief"].differs


def test_a_gated_implicit_step_is_named_as_the_difference():
    """Longhorn with a forget gate is Gated DeltaNet's point on every compared axis, and
    identify said "the difference is in the algorithm, the read or an argument nlc does not
    compare": the line names the implicit step, and the plain gradient step says the other."""
    text = re.sub(r" claims \w+", "", (EXAMPLES / "longhorn.nl").read_text())
    text = text.replace("beta = sigmoid(x @ w_beta)",
                        "beta = sigmoid(x @ w_beta)\n    a = sigmoid(x @ w_beta + 3)")
    gated = text.replace("retention none", "retention decay(a)")
    (level,) = verify_module(parse(gated, "gated.nl"), "gated.nl")[0].levels
    assert not level.matches
    assert "an implicit step (gated_deltanet: a gradient step)" in level.differs, level.differs
    explicit = gated.replace("algorithm implicit(lr = beta)", "algorithm gd(lr = beta)")
    (level,) = verify_module(parse(explicit, "explicit.nl"), "explicit.nl")[0].levels
    assert [m.entry.id for m in level.matches] == ["gated_deltanet"]  # the step was the difference
