"""A learned initial state on the simplex (a KL retention takes its log, examples/memora.nl)
stays on it while the training level updates it: its parameter holds logits, and the state
is their row softmax. Held as the rows themselves, a few AdamW steps pushed entries of 1/32
below zero, and log(W) made the forward NaN (an LM run at T = 512 diverged at step 5)."""

import torch
from conftest import EXAMPLES

from nlc.emit import load_layer


def test_a_learned_simplex_state_stays_on_the_simplex_under_training():
    torch.manual_seed(0)
    layer = load_layer(str(EXAMPLES / "memora.nl"))(d_model=16, heads=1, d_head=8)
    x = torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(layer.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        layer(x).sum().backward()
        opt.step()
    states = layer.initial_state(2)["memory"]
    for w in states.values():
        assert w.shape[0] == 2 and (w > 0).all()
        assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-6)
    assert torch.isfinite(layer(x)).all()
