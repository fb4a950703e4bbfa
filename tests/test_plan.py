"""Stage `plan`: frozen records with golden dumps, and what they buy a user: layers built with
sizes other than the spec's."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest
import torch
from conftest import EXAMPLES, GOLDENS

from nlc import pipeline
from nlc.emit import load_layer
from nlc.plan.records import to_text

PLANNED = ["gated_deltanet", "titans", "hope", "softmax_attention", "linear_attention"]


@pytest.mark.parametrize("name", PLANNED)
def test_plan_dump_is_golden(name, golden):
    plans = pipeline.run(str(EXAMPLES / f"{name}.nl"), "plan")
    golden(GOLDENS / "plan" / f"{name}.txt", "".join(to_text(p) for p in plans.records))


def test_plan_records_are_frozen():
    plans = pipeline.run(str(EXAMPLES / "gated_deltanet.nl"), "plan")
    layer = plans.layers[0]
    for record in (layer, layer.levels[0], layer.params[0], layer.levels[0].states[0]):
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.name = "other"


def test_cli_dumps_the_plan():
    out = subprocess.run([sys.executable, "-m", "nlc", "check", "--stop-after", "plan",
                          "--dump", str(EXAMPLES / "deltanet.nl")],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("LayerPlan\n") and "execution: chunked delta" in out


def test_emit_is_the_last_stage():
    assert list(pipeline.STAGES)[-2:] == ["plan", "emit"]
    outputs = pipeline.run(str(EXAMPLES / "deltanet.nl"), "emit")
    assert "class DeltaNet(nn.Module)" in outputs["deltanet"]


def _train_step(layer, x, unused=()):
    """Forward and backward; every parameter but `unused` gets a finite gradient."""
    out = layer(x)
    out.square().mean().backward()
    assert out.shape == x.shape and torch.isfinite(out).all()
    for name, p in layer.named_parameters():
        if name in unused:
            assert p.grad is None
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    return out


def test_a_layer_built_with_other_sizes_runs_forward_and_backward():
    torch.manual_seed(0)
    cls = load_layer(str(EXAMPLES / "gated_deltanet.nl"))
    layer = cls(d_model=96, heads=3, d_k=32, d_v=48)
    assert layer.W_q.shape == (3, 96, 32) and layer.W_o.shape == (3, 48, 96)
    assert layer.initial_state(2)["memory"]["S"].shape == (2, 3, 48, 32)
    x = torch.randn(2, 70, 96)
    chunked = _train_step(layer, x)
    layer.mode = "recurrent"
    with torch.no_grad():
        recurrent = layer(x)
    torch.testing.assert_close(chunked, recurrent, atol=1e-4, rtol=1e-4)


def test_an_mlp_memory_layer_takes_its_sizes():
    """Titans' MLP hidden width is `4 * d_head`: it follows d_head."""
    torch.manual_seed(0)
    layer = load_layer(str(EXAMPLES / "titans.nl"))(d_model=48, heads=2, d_head=8)
    states = layer.initial_state(1)["memory"]
    assert {tuple(s.shape[2:]) for s in states.values()} == {(32, 8), (8, 32)}
    _train_step(layer, torch.randn(1, 20, 48))


def test_the_hope_model_takes_its_width():
    torch.manual_seed(0)
    model = load_layer(str(EXAMPLES / "hope.nl"))(d_model=64)
    # the CMS's levels first write at token 512 or later: their value views reach no output
    _train_step(model, torch.randn(1, 17, 64),
                unused={f"layers.1.W_v{i}" for i in (1, 2, 3, 4)})


@pytest.mark.parametrize("sizes, message", [
    ({"d_k": 0}, "d_k must be a positive int, got 0"),
    ({"heads": 2.5}, "heads must be a positive int, got 2.5"),
])
def test_bad_sizes_are_refused(sizes, message):
    cls = load_layer(str(EXAMPLES / "deltanet.nl"))
    with pytest.raises(ValueError, match=message):
        cls(**sizes)


SPELLED = """layer Small {
  dims d_model = 32, heads = 2, d_k = d_model / heads, d_v = 2 * d_k
  param W_q, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param W_o : [d_v, d_model]
  context from x {
    q = l2norm(x @ W_q)
    k = l2norm(x @ W_k)
    v = x @ W_v
  }
  level memory every 1 token {
    state S : matrix[d_v, d_k] = zeros
    objective dot(S(k), v)
    algorithm gd(lr = 1)
    read S(q)
  }
  output memory @ W_o
}
"""


def test_a_dim_spelled_from_dims_follows_them(tmp_path):
    path = tmp_path / "small.nl"
    path.write_text(SPELLED)
    cls = load_layer(str(path))
    assert (cls().d_k, cls().d_v) == (16, 32)
    layer = cls(d_model=48, heads=3)
    assert (layer.d_k, layer.d_v) == (16, 32) and layer.W_v.shape == (3, 48, 32)
    assert cls(d_model=48, heads=3, d_k=8).d_v == 16
    _train_step(layer, torch.randn(1, 5, 48))
    with pytest.raises(ValueError, match="50 / 3, which is not a whole number"):
        cls(d_model=50, heads=3)


def test_levels_with_the_same_rule_share_their_drive_and_combine():
    """Hope's five MLP memories differ only in their reads and state names: one drive and
    one combine, each level's a call of them with its own tensors."""
    code = pipeline.run(str(EXAMPLES / "hope.nl"), "emit")["hope"]
    for kind in ("drive", "combine"):
        shared = f"SelfModifyingTitans_mlp_memory_{kind}"
        assert code.count(f"def {shared}(") == 1
        assert code.count(f"{shared}(") == 1 + 5
    assert "K_W1_next, K_W2_next = SelfModifyingTitans_mlp_memory_combine(" in code


def test_blocks_with_one_rule_on_other_tensors_share_their_functions():
    """CMS's three blocks run one rule on other inputs, parameters and states: one step,
    drive, combine and read, written in cms_fast's names; each level's calls it."""
    code = pipeline.run(str(EXAMPLES / "cms.nl"), "emit")["cms"]
    for kind in ("step", "drive", "combine", "read"):
        assert code.count(f"def mlp_memory_{kind}(") == 1
        assert code.count(f"mlp_memory_{kind}(") == 1 + 3
    assert "def mlp_memory_step(x, W_k1, W_v1, M1_W1, M1_W2, M1_W1_0, M1_W2_0):" in code


def _cms_mid_alone(tmp_path):
    """cms.nl's middle block as a spec of its own (reading x): its functions are its own."""
    from nlc.emit import load_module
    text = (EXAMPLES / "cms.nl").read_text()
    head, _, rest = text.partition("  level cms_fast")
    block = "  level cms_mid" + rest.partition("  level cms_mid")[2].partition("  level")[0]
    path = tmp_path / "cms_mid_alone.nl"
    path.write_text(head + block.replace("cms_fast", "x") + "  output cms_mid\n}\n")
    return load_module(str(path), {"d_model": 8, "d_hidden": 12})


@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
def test_a_shared_step_computes_the_levels_own_rule(mode, tmp_path):
    """cms_mid's op in cms.nl (its functions shared with the other blocks, in cms_fast's
    names) == the same block compiled alone (its own functions), over two updates."""
    from nlc.emit import load_module
    alone = _cms_mid_alone(tmp_path)
    assert "mlp_memory_step" not in vars(alone)
    shared = load_module(str(EXAMPLES / "cms.nl"), {"d_model": 8, "d_hidden": 12})
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 600, 1, 8, generator=gen, dtype=torch.float64)
    W_k, W_v = (torch.randn(1, 8, 8, generator=gen, dtype=torch.float64) / 3 for _ in "kv")
    state = {"M2_W1": torch.randn(2, 1, 12, 8, generator=gen, dtype=torch.float64) / 3,
             "M2_W2": torch.randn(2, 1, 8, 12, generator=gen, dtype=torch.float64) / 3}
    kw = {"W_k2": W_k, "W_v2": W_v, "d_hidden": 12, "initial_state": state,
          "output_final_state": True, "mode": mode}
    o, final = shared.cms_mid_op(x, **kw)
    o_alone, final_alone = alone.cms_mid_op(x, **kw)
    assert (final["M2_W1"] - state["M2_W1"]).abs().max() > 1e-3  # the block did update
    assert torch.equal(o, o_alone)
    assert all(torch.equal(final[n], final_alone[n]) for n in state)


@pytest.mark.parametrize("dim, message", [
    ("mode", "dim 'mode' would be an argument of the layer's constructor"),
    ("self", "dim 'self' would be an argument of the layer's constructor"),
    ("nl", "dim 'nl' would be an argument of the layer's constructor"),
    ("training", "dim 'training' would be the attribute `self.training` of Small"),
])
def test_a_dim_named_like_the_constructors_own_names_is_refused(dim, message, tmp_path):
    """Every dim is a constructor argument and an attribute of the layer."""
    from nlc.errors import NlcError
    path = tmp_path / "small.nl"
    path.write_text(SPELLED.replace("d_v = 2 * d_k", f"{dim} = 4, d_v = 2 * d_k"))
    with pytest.raises(NlcError, match=re.escape(message)) as err:
        load_layer(str(path))
    assert err.value.span.line == 2
