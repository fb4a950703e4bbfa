"""An MLP-memory layer in float32 against float64: which of the optional kernel settings lose
precision, and how much against the PyTorch forms' own float32 error.

On an H100 (2026-12-05) Hope's layer with the affine combine kernels forced differed from the
PyTorch forms by 4.8e-4 in W_x's gradient, while the kernels' own tests against float64
passed; this script found the cause (their `tf32x3` products at the main memory's chunk;
docs/perf.md, "sixth batch"). It runs a layer and one input in float64 (PyTorch forms: the
reference) and in float32 under each setting, and prints every result's relative error
against the reference. A setting is as good as the PyTorch forms when its errors are of the
same size as the float32 PyTorch row's.

    python benchmarks/layer_precision.py --device cuda                  # Hope's layer
    python benchmarks/layer_precision.py --model titans --device cuda   # the dual reads
    TRITON_INTERPRET=1 python benchmarks/layer_precision.py --T 20      # the CPU, slow

(The interpreter computes every product in plain float32, whatever precision is asked: on
the CPU the settings differ only in their order of operations.)
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

FORCE = {"NLC_TRITON": "force", "NLC_TERMS_TRITON": "0", "NLC_AFFINE_TRITON": "0"}
# (row, environment, module-level precisions): NLC_TRITON=force sends the CPU through the
# kernels too; the precisions are set on the modules, which read them once at import
SETTINGS = {
    "hope": [
        ("float32, PyTorch forms", {"NLC_TRITON": "0"}, {}),
        ("float32, default kernels", FORCE, {}),
        ("float32, + affine kernels (tf32x3 above chunks of 16)",
         {**FORCE, "NLC_AFFINE_TRITON": "1"}, {"affine": "tf32x3"}),
        ("float32, + affine kernels (exact products, the default)",
         {**FORCE, "NLC_AFFINE_TRITON": "1"}, {"affine": "ieee"}),
        ("float32, + terms kernels", {**FORCE, "NLC_TERMS_TRITON": "1"}, {}),
    ],
    "titans": [
        ("float32, PyTorch forms", {"NLC_TRITON": "0"}, {}),
        ("float32, default kernels (dual reads, exact products)", FORCE, {"dual": "ieee"}),
        ("float32, dual reads in tf32x3", FORCE, {"dual": "tf32x3"}),
        ("float32, dual reads in tf32", FORCE, {"dual": "tf32"}),
        ("float32, + terms kernels", {**FORCE, "NLC_TERMS_TRITON": "1"}, {}),
    ],
}
LAYERS = {"hope": ("hope.nl", "SelfModifyingTitans"), "titans": ("titans.nl", "Titans")}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def run(layer, x):
    xx = x.clone().requires_grad_()
    y = layer(xx)
    params = dict(layer.named_parameters())
    grads = torch.autograd.grad((y * y).sum(), [xx, *params.values()], allow_unused=True)
    return {"y": y.detach(), **{f"d{n}": g for n, g in zip(["x", *params], grads)
                                if g is not None}}


def with_setting(env: dict, precisions: dict, fn):
    """fn() under the environment `env` and the kernels' module-level precisions; both put
    back afterwards."""
    from nlc.runtime.library import affine_triton, dual_triton
    where = {"affine": (affine_triton, "LARGE_CHUNK_PREC"),
             "dual": (dual_triton, "FLOAT32_PREC")}
    saved_env = {k: os.environ.get(k) for k in env}
    saved = {k: getattr(*where[k]) for k in precisions}
    try:
        os.environ.update(env)
        for k, v in precisions.items():
            setattr(*where[k], v)
        return fn()
    finally:
        for k, v in saved.items():
            setattr(*where[k], v)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="hope", choices=sorted(LAYERS))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--d-head", type=int, default=8)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--T", type=int, default=40,
                   help="tokens (Hope's main memory and Titans take chunks of 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", default=None,
                   help="comma-separated row numbers (from 0) to run, default all: a row whose "
                        "kernel faults poisons the CUDA context, so a GPU run takes each row "
                        "in its own process (with CUDA_LAUNCH_BLOCKING=1 to name the kernel)")
    p.add_argument("--no-header", action="store_true", help="the table's rows only")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: no CUDA device here")
    from nlc.emit import load_module
    spec, cls = LAYERS[a.model]
    module = load_module(str(ROOT / "examples" / spec), {"d_head": a.d_head})
    torch.manual_seed(a.seed)
    layer = getattr(module, cls)(d_model=a.d_model, heads=a.heads, d_head=a.d_head)
    layer = layer.to(a.device, torch.float64)
    x = torch.randn(1, a.T, a.d_model, device=a.device, dtype=torch.float64)
    ref = with_setting({"NLC_TRITON": "0"}, {}, lambda: run(layer, x))
    layer32, x32 = layer.float(), x.float()
    card = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    names = list(ref)
    if not a.no_header:
        print(f"examples/{spec} {cls}, d_model {a.d_model}, {a.heads} heads of {a.d_head}, "
              f"T = {a.T}, {a.device} ({card}), torch {torch.__version__}; relative errors "
              "against float64 (PyTorch forms)\n")
        print("| setting | worst | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
    settings = SETTINGS[a.model]
    chosen = range(len(settings)) if a.rows is None else [int(r) for r in a.rows.split(",")]
    for i in chosen:
        row, env, precisions = settings[i]
        try:
            got = with_setting(env, precisions, lambda: run(layer32, x32))
        except Exception as e:  # noqa: BLE001 - a row that fails is reported, the rest run
            where = traceback.extract_tb(e.__traceback__)
            frames = "; ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in where[-4:])
            msg = str(e).splitlines()[0][:120] if str(e) else ""
            print(f"| {row} | failed: {type(e).__name__}: {msg} (at {frames}) |")
            continue
        errs = [rel(got[n], ref[n]) for n in names]
        print(f"| {row} | {max(errs):.1e} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")


if __name__ == "__main__":
    main()
