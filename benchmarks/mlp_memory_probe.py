"""Where an MLP-memory spec's numbers leave float32 at T tokens (docs/results.md, "At T = 2048").

One layer of SPEC at d_model 128 (its other dims as written, seed 0) in `mode="recurrent"`, on
one input of T tokens (random, each token scaled to RMS 1 as the LM's norm would), float32:
- the largest entry of each state after tokens 16, 256 and T (forward growth);
- a random loss on the output, back through the T tokens: the largest entry of each state's
  gradient at tokens T, T/2 and 1 (how much the recurrence amplifies gradients going back),
  the number of tokens whose state gradient is not finite, and each parameter's largest
  gradient entry.

Usage: python benchmarks/mlp_memory_probe.py SPEC [--T 2048]
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from nlc.emit import load_layer


def largest(x: torch.Tensor) -> float:
    return x.detach().abs().amax().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    parser.add_argument("--T", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cls = load_layer(args.spec)
    module = sys.modules[cls.__module__]
    torch.manual_seed(0)
    model = cls(d_model=128, mode="recurrent")
    states, grads = [], {}
    step = module.memory_step

    def recorded(state, inputs):  # the token loop calls the module's step by name
        new, out = step(state, inputs)
        token = len(states) + 1
        states.append({n: largest(s) for n, s in new.items()})
        for n, s in new.items():
            if s.requires_grad:
                s.register_hook(lambda g, t=token, n=n: grads.setdefault(t, {}).update(
                    {n: largest(g)}))
        return new, out

    module.memory_step = recorded
    x = torch.randn(1, args.T, 128, generator=torch.Generator().manual_seed(1))
    y = model(x / x.pow(2).mean(-1, keepdim=True).sqrt())
    print(f"{args.spec}, T = {args.T}, torch {torch.__version__}")
    print(f"output finite: {bool(torch.isfinite(y).all())}")
    for t in (16, 256, args.T):
        print(f"largest state entry after token {t}:",
              ", ".join(f"{n} {v:.1e}" for n, v in states[t - 1].items()))
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    ((y * w).sum() / math.sqrt(y.numel())).backward()
    bad = [t for t, g in grads.items() if not all(math.isfinite(v) for v in g.values())]
    for t in (args.T, args.T // 2, 1):
        print(f"largest state gradient at token {t}:",
              ", ".join(f"{n} {v:.1e}" for n, v in sorted(grads[t].items())))
    print(f"tokens with a non-finite state gradient: {len(bad)}")
    print("largest parameter gradient:", ", ".join(
        f"{n} {largest(p.grad):.1e}" for n, p in model.named_parameters() if p.grad is not None))


if __name__ == "__main__":
    main()
