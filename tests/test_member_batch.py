"""A coupled group's reads as one batch (runtime/library/member_batch.py, printed by
nlc/emit/group_reads.py): Hope's k, v, eta and alpha memories applied once, stacked, then
each member's tail, equal to every member's own read (float64)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nlc.emit import load_module
from nlc.runtime.library import member_batch, ops

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
F64 = torch.float64
SMALL = {"d_model": 16.0, "heads": 2.0, "d_head": 8.0}


@pytest.fixture(scope="module")
def hope():
    return load_module(str(EXAMPLES / "hope.nl"), SMALL)


def _group_call(hope, monkeypatch, x):
    """What the generated group op hands to nl.coupled_chunked: (members, tokens, consts)."""
    seen = []
    real = ops.coupled_chunked

    def spy(members, tokens, states, **kw):
        seen.append((members, tokens, kw["consts"]))
        return real(members, tokens, states, **kw)
    monkeypatch.setattr(ops, "coupled_chunked", spy)
    layer = hope.SelfModifyingTitans().double()
    with torch.no_grad():
        layer(x)
    return layer, seen[0]


def _states(layer, members, seed):
    """A state per member, each drawn apart (a batch that mixed members up reads others')."""
    g = torch.Generator().manual_seed(seed)
    shapes = layer.initial_state(2)
    return {m.name: {s: 0.3 * torch.randn(shapes[m.name][s].shape, dtype=F64, generator=g)
                     for _, s in m.anchors} for m in members}


def _own_reads(members, current, inputs):
    return {m.name: m.read(current[m.name], {**inputs, **{
        a: current[m.name][s].unsqueeze(1) for a, s in m.anchors}}) for m in members}


def test_the_batched_read_equals_every_members_own_read(hope, monkeypatch):
    x = torch.randn(2, 16, 16, dtype=F64, generator=torch.Generator().manual_seed(0))
    layer, (members, tokens, consts) = _group_call(hope, monkeypatch, x)
    assert {m.name for m in members} == {"k", "v", "eta", "alpha"}
    assert len({m.reads[0] for m in members}) == 1      # one application for all four
    tails = {m.name: m.reads[2] for m in members}
    assert tails["k"] is tails["v"] and len(set(tails.values())) == 3
    order = member_batch.tails_together(members)
    assert [member_batch.read_batches(order)] == [[order]]
    current = _states(layer, members, seed=1)
    inputs = {**consts, **tokens}
    got = member_batch.reads(order, inputs, tokens, member_batch.Stacks(current))
    want = _own_reads(members, current, inputs)
    assert set(got) == set(want)
    for name, o in want.items():
        assert got[name].shape == o.shape, name
        assert torch.allclose(got[name], o, rtol=0, atol=1e-12), name
    assert not torch.allclose(want["k"], want["v"])  # distinct members, distinct reads

    # the comparison fails when the batch stacks the members in another order than it splits
    stacked = member_batch.Stacks.anchors
    monkeypatch.setattr(member_batch.Stacks, "anchors",
                        lambda self, ms, names: stacked(self, ms[::-1], names[::-1]))
    wrong = member_batch.reads(order, inputs, tokens, member_batch.Stacks(current))
    assert not all(torch.allclose(wrong[n], want[n], rtol=0, atol=1e-12) for n in want)



def test_only_a_read_that_applies_its_memory_once_is_split_into_application_and_tail():
    """nlc/emit/group_reads.py on Hope's level k and on reads made from it: the memory
    applied twice, or its tensors used outside the application, keep their own read."""
    import dataclasses

    import sympy as sp

    from nlc import pipeline
    from nlc.derive.forms import FORM_RULES
    from nlc.derive.matfuncs import ColumnMap, Total
    from nlc.emit.group_reads import APPLIED, application
    from nlc.emit.levels import LevelPrinter
    plan = pipeline.run(str(EXAMPLES / "hope.nl"), "plan", {"overrides": {}}).layers[0]
    level = plan.level("k")

    def found(read):
        rule = dataclasses.replace(level.rule, read=read)
        return application(LevelPrinter(dataclasses.replace(level, rule=rule)))

    applied, tail = found(level.rule.read)
    stand_in = sp.MatrixSymbol(APPLIED, *applied.shape)
    assert tail == ColumnMap(sp.Symbol("l2norm"), stand_in)
    assert tail.xreplace({stand_in: applied}) == level.rule.read
    tensors = {m.name: m for m in applied.atoms(sp.MatrixSymbol)}
    W = (tensors["K_W1_0"], tensors["K_W2_0"])
    h = tensors["h"]
    twice = FORM_RULES["mlp"].apply(level.rule.form, W, 2 * h)
    assert found(level.rule.read + twice) is None
    assert found(Total(W[0]) * level.rule.read) is None
    assert application(LevelPrinter(plan.level("memory"))) is None  # not in a group


def test_the_batched_group_traces_as_one_graph(hope):
    """`nlc train --compile` traces the chunk loop: the batch's inputs mapping, its memo and
    its runs of tails must not break the graph (itertools.groupby did)."""
    torch.manual_seed(0)
    layer = hope.SelfModifyingTitans().double()
    x = torch.randn(1, 32, 16, dtype=F64)
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x), layer(x), rtol=0, atol=1e-12)


VECTOR_START = """
layer R {
  dims d_model = 8, d = 6
  param W_k, W_q : [d_model, d]
  param W_o : [d, d_model]
  context from x {
    k = l2norm(x @ W_k)
    q = l2norm(x @ W_q)
  }
  level g every 1 token, gradients at chunk(4) {
    state G : vector[d] = learned(std = 0.5)
    objective l2(G(k), dot(mem, q))
    algorithm gd(lr = 0.1)
    read start G(q)
  }
  level mem {
    state S : matrix[d, d] = learned(std = 0.5)
    objective l2(S(k), g * q)
    algorithm gd(lr = 0.1)
    read before S(q)
  }
  output mem @ W_o
}
"""


def test_a_vector_memory_read_at_the_chunk_start_in_a_loop_compiles_and_agrees(tmp_path):
    """A vector memory's application <G, q> is a scalar, which no batched application shares
    (compiling this group failed: the shared-read search took its shape)."""
    path = tmp_path / "vector_start.nl"
    path.write_text(VECTOR_START)
    module = load_module(str(path))
    torch.manual_seed(0)
    recurrent = module.R(mode="recurrent").double()
    chunked = module.R(mode="chunked").double()
    chunked.load_state_dict(recurrent.state_dict())
    x = torch.randn(2, 13, 8, dtype=F64)
    want, got = recurrent(x), chunked(x)
    assert want.abs().max() > 1e-3
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
