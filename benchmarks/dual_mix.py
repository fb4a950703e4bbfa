"""The dual form's chunk-end mix of a few states (runtime/library/dual.py, `_mix`) against the
matrix product it replaced, forward + backward, eager and compiled (GPU): coefs `[B, H, G, G]`
times the stacked chunk-start states `[B, H, G, r * c]`, at Titans' LM shape (batch 16 x 8
heads, G = 2: an MLP layer's weights and their momentum, r * c = 64 * 256). Checks both
against float64, then prints do_bench medians (ms).

    python benchmarks/dual_mix.py [--bh 128] [--G 2] [--width 16384]
"""

from __future__ import annotations

import argparse

import torch
from nlc.runtime.library.dual import _mix


def matmul(coefs, x):
    return coefs @ x


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bh", type=int, default=128, help="batch x heads")
    p.add_argument("--G", type=int, default=2)
    p.add_argument("--width", type=int, default=64 * 256)
    a = p.parse_args()
    from triton.testing import do_bench
    torch.manual_seed(0)
    coefs = torch.randn(a.bh, 1, a.G, a.G, device="cuda")
    x = torch.randn(a.bh, 1, a.G, a.width, device="cuda")
    dout = torch.randn(a.bh, 1, a.G, a.width, device="cuda")
    ref = [t.double() for t in (coefs, x)]
    ref = [t.requires_grad_() for t in ref]
    out = matmul(*ref)
    ref_grads = torch.autograd.grad(out, ref, dout.double())
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; coefs {list(coefs.shape)}"
          f" @ x {list(x.shape)}, float32, forward + backward")
    print("| form | ms | worst relative error vs float64 |\n|---|---|---|")
    for name, fn in (("matmul", matmul), ("_mix", _mix),
                     ("matmul, compiled", torch.compile(matmul)),
                     ("_mix, compiled", torch.compile(_mix))):
        leaves = [t.clone().requires_grad_() for t in (coefs, x)]

        def step(fn=fn, leaves=leaves):
            return torch.autograd.grad(fn(*leaves), leaves, dout)
        got = [step()[i] for i in range(2)]
        err = max(((g.double() - r).norm() / r.norm()).item() for g, r in zip(got, ref_grads))
        err = max(err, ((fn(*leaves).double() - out).norm() / out.norm()).item())
        ms = do_bench(step, warmup=10, rep=50, return_mode="median")
        print(f"| {name} | {ms:.3f} | {err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
