"""How close the chunked Triton kernels stay to float64 at the gates' limits: relative errors of
the output, final state and each gradient, in float32, for the cases of
tests/test_chunk_triton.py's `test_chunked_triton_at_gate_limits` (every third token's decay
at 0, 1e-30 or 1; T = 40, chunks of 16, 2 heads, K = V = 16). A clamped log decay (-110)
costs the ordinary decays after it in its chunk float32's spacing at that magnitude, so the
rows at 0 and 1e-30 sit near 1e-5, the rows at 1 near 1e-7.

    python benchmarks/limit_precision.py             # Triton interpreter (set TRITON_INTERPRET=1)
    NLC_TRITON_TEST_DEVICE=cuda python benchmarks/limit_precision.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_chunk_triton as cases


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main():
    print(f"device {cases.DEVICE}; relative error against the float64 token loop")
    for kind in ("delta/scalar", "decay/scalar", "decay/channel"):
        family, decay = kind.split("/")
        for limit in ("decay0", "decay1e-30", "decay1"):
            x = cases.limit_inputs(family, decay, limit)
            torch.manual_seed(0)
            weights = (torch.randn(1, 40, 2, 16, device=cases.DEVICE),
                       torch.randn(1, 2, 16, 16, device=cases.DEVICE))
            o, ht, grads = cases.run_and_grad(cases.triton_fn(None, 16), x, weights)
            x64 = {n: None if t is None else t.double() for n, t in x.items()}
            ro, rht, rgrads = cases.run_and_grad(cases.reference_fn([0, 40]), x64,
                                                 tuple(w.double() for w in weights))
            errors = [f"o {rel(o, ro):.1e}", f"state {rel(ht, rht):.1e}"]
            errors += [f"d{n} {rel(g, rgrads[n]):.1e}" for n, g in grads.items()
                       if g is not None and rgrads.get(n) is not None
                       and rgrads[n].norm() > 0]
            print(f"{kind:14s} {limit:11s} " + "  ".join(errors), flush=True)


if __name__ == "__main__":
    main()
