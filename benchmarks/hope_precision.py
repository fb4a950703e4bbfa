"""Hope's self-modifying Titans layer (examples/hope.nl) in float32 against float64: which of
the opt-in kernels lose precision, and how much against the PyTorch forms' own float32 error.

On an H100 (2026-12-05) the layer with the affine combine kernels forced differed from the
PyTorch forms by 4.8e-4 in W_x's gradient, while both kernel sets' own tests against float64
passed. This script runs the same layer and input in float64 (PyTorch forms: the reference)
and in float32 under each kernel setting, and prints every result's relative error against
the reference. A kernel setting is as good as the PyTorch forms when its errors are of the
same size as the float32 PyTorch row's.

    python benchmarks/hope_precision.py --device cuda
    TRITON_INTERPRET=1 python benchmarks/hope_precision.py --T 20    # the CPU, slow
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# (row, environment): NLC_TRITON=force sends the CPU through the kernels too
SETTINGS = [
    ("float32, PyTorch forms", {"NLC_TRITON": "0"}),
    ("float32, default kernels", {"NLC_TRITON": "force", "NLC_TERMS_TRITON": "0",
                                  "NLC_AFFINE_TRITON": "0"}),
    ("float32, + affine kernels (tf32x3 above chunks of 16)",
     {"NLC_TRITON": "force", "NLC_TERMS_TRITON": "0", "NLC_AFFINE_TRITON": "1",
      "prec": "tf32x3"}),
    ("float32, + affine kernels (ieee everywhere, the default)",
     {"NLC_TRITON": "force", "NLC_TERMS_TRITON": "0", "NLC_AFFINE_TRITON": "1",
      "prec": "ieee"}),
    ("float32, + terms kernels", {"NLC_TRITON": "force", "NLC_TERMS_TRITON": "1",
                                  "NLC_AFFINE_TRITON": "0"}),
]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def run(layer, x):
    xx = x.clone().requires_grad_()
    y = layer(xx)
    params = dict(layer.named_parameters())
    grads = torch.autograd.grad((y * y).sum(), [xx, *params.values()], allow_unused=True)
    return {"y": y.detach(), **{f"d{n}": g for n, g in zip(["x", *params], grads)
                                if g is not None}}


def with_env(env: dict, fn):
    from nlc.runtime.library import affine_triton
    saved = {k: os.environ.get(k) for k in env if k != "prec"}
    prec = affine_triton.LARGE_CHUNK_PREC
    try:
        for k, v in env.items():
            if k != "prec":
                os.environ[k] = v
        affine_triton.LARGE_CHUNK_PREC = env.get("prec", prec)
        return fn()
    finally:
        affine_triton.LARGE_CHUNK_PREC = prec
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--d-head", type=int, default=8)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--T", type=int, default=40, help="tokens (the main memory's chunk is 64)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: no CUDA device here")
    from nlc.emit import load_module
    module = load_module(str(ROOT / "examples" / "hope.nl"), {"d_head": a.d_head})
    torch.manual_seed(a.seed)
    layer = module.SelfModifyingTitans(d_model=a.d_model, heads=a.heads, d_head=a.d_head)
    layer = layer.to(a.device, torch.float64)
    x = torch.randn(1, a.T, a.d_model, device=a.device, dtype=torch.float64)
    ref = with_env({"NLC_TRITON": "0"}, lambda: run(layer, x))
    layer32, x32 = layer.float(), x.float()
    print(f"examples/hope.nl SelfModifyingTitans, d_model {a.d_model}, {a.heads} heads of "
          f"{a.d_head}, T = {a.T}, {a.device} ({torch.cuda.get_device_name() if a.device == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}; relative errors against float64 (PyTorch forms)\n")
    names = list(ref)
    print("| setting | worst | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for row, env in SETTINGS:
        try:
            got = with_env(env, lambda: run(layer32, x32))
        except Exception as e:  # noqa: BLE001 - a row that fails is reported, the rest run
            print(f"| {row} | failed: {type(e).__name__}: {str(e)[:120]} |")
            continue
        errs = [rel(got[n], ref[n]) for n in names]
        print(f"| {row} | {max(errs):.1e} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")


if __name__ == "__main__":
    main()
