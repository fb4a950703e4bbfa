"""An optimizer's apply lines run in order, each on the parameter the one before left
(docs/language.md, section 13), whatever the parameter's layout: the step sees a parameter
as a matrix (`nl.as_matrix`), a view where the layout allows and a copy where it does not
(a channels_last 4-D weight, a transposed matrix flattened). The second line read the first
line's matrix from before its write, so where it was a copy AdamW's weight decay was lost."""

from __future__ import annotations

import torch

from nlc.emit import load_optimizer

ADAMW = """optimizer AdamW {
  hyper lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1

  level first_moment over gradients g every 1 step {
    state m : like(param) = zeros
    objective dot(m, g)
    retention decay(b1)
    algorithm gd(lr = 1 - b1)
  }

  level second_moment over gradients g every 1 step {
    state v : like(param) = zeros
    objective dot(v, g * g)
    retention decay(b2)
    algorithm gd(lr = 1 - b2)
    apply param = param - lr * wd * param
    apply param = param - lr * (first_moment / (1 - b1 ^ t)) / (sqrt(v / (1 - b2 ^ t)) + eps)
  }
}
"""


def _parameters(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    conv = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64)
    wide = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    return [torch.nn.Parameter(p) for p in (
        conv.to(memory_format=torch.channels_last),   # as_matrix copies it
        wide.transpose(0, 2),                           # [5, 4, 3], not contiguous: a copy
        torch.randn(4, 3, generator=g, dtype=torch.float64).T,  # a transposed matrix: a view
        torch.randn(5, generator=g, dtype=torch.float64))]


def test_each_apply_line_sees_the_parameter_the_line_before_left(tmp_path):
    path = tmp_path / "adamw.nl"
    path.write_text(ADAMW)
    cls = load_optimizer(str(path))
    ours, theirs = _parameters(0), _parameters(0)
    assert not ours[0].is_contiguous() and not ours[1].is_contiguous()
    opts = [cls(ours), torch.optim.AdamW(theirs, lr=0.01, betas=(0.9, 0.999), eps=1e-8,
                                         weight_decay=0.1)]
    target = torch.Generator().manual_seed(1)
    goals = [torch.randn(p.shape, generator=target, dtype=torch.float64) for p in ours]
    for _ in range(12):
        for params, opt in zip((ours, theirs), opts):
            opt.zero_grad()
            loss = sum(((p - y) ** 3).abs().sum() for p, y in zip(params, goals))
            loss.backward()
            opt.step()
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), (a - b).abs().max()


DIM_RULE = """optimizer DimRule {
  dims k = 4
  hyper lr = 0.1
  level mom over gradients g every 1 step {
    state m : like(param) = zeros
    objective dot(m, g / k)
    retention decay(1 - 1 / k)
    algorithm gd(lr = 1)
    apply param = param - lr * k * m
  }
}
"""


def test_a_dim_in_an_optimizer_rule_is_compiled_in_as_its_number(tmp_path):
    """`dims k` in a rule and an apply (an EMA of weight 1/k): compile said "generated code
    has no value for 'k'", unlocated, after check had passed; -D k=2 sets it too."""
    path = tmp_path / "dim_rule.nl"
    path.write_text(DIM_RULE)
    for k in (4, 2):
        cls = load_optimizer(str(path), **({"k": float(k)} if k != 4 else {}))
        (p,) = _parameters(0)[3:]
        want, m = p.detach().clone(), torch.zeros_like(p)
        opt = cls([p])
        for step in range(3):
            grad = torch.full_like(p, float(step + 1))
            p.grad = grad.clone()
            opt.step()
            m = (1 - 1 / k) * m + grad / k
            want = want - 0.1 * k * m
            assert torch.allclose(p.detach(), want, rtol=1e-13, atol=0), (k, step)
