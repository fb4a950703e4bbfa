"""One `tl.dot` of float32 tiles under each input precision, against float64: is Triton's
`tf32x3` (three TF32 products, meant to be close to float32) as close as it should be on this
GPU, at the tile shapes nlc's kernels use?

On an H100 with Triton 3.6 (2026-12-05, docs/perf.md "seventh batch") Titans' layer crashed
with an illegal memory access once its dual reads took `tf32x3` products at small tiles, and
the affine kernels' `tf32x3` products had moved Hope's gradients 300x further from float64
than float32 does. This script separates Triton's products from nlc's kernels: a kernel
that loads A `[M, K]` and B `[K, N]` (masked to the real sizes, as nlc's kernels pad an axis
to a power of two of at least 16) and stores A @ B. Each (shape, precision) runs in its own
process, so a fault is reported and the rest still run. `--warps 8 --trans` launches as the
dual reads do (8 warps, the second operand loaded as rows and transposed in the kernel).

    python benchmarks/dot_precision_check.py             # the table
    TRITON_INTERPRET=1 python benchmarks/dot_precision_check.py --shapes 16,16,8
      (the CPU: every precision is plain float32 there)
"""

from __future__ import annotations

import argparse
import subprocess
import sys

SHAPES = "16,16,8;32,16,8;32,32,16;64,16,8;64,64,16;64,64,64;32,64,256"
PRECISIONS = ("ieee", "tf32x3", "tf32")


def one(M: int, N: int, K: int, precision: str, warps: int = 4, trans: bool = False) -> str:
    """The relative error of A @ B `[M, N]` from one kernel, against float64 (with `trans`,
    B is stored `[N, K]` and transposed in the kernel)."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def product(a, b, c, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                TRANS: tl.constexpr):
        rm, rn, rk = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BK)
        ta = tl.load(a + rm[:, None] * K + rk[None, :],
                     mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        if TRANS:
            tb = tl.trans(tl.load(b + rn[:, None] * K + rk[None, :],
                                  mask=(rn[:, None] < N) & (rk[None, :] < K), other=0.0))
        else:
            tb = tl.load(b + rk[:, None] * N + rn[None, :],
                         mask=(rk[:, None] < K) & (rn[None, :] < N), other=0.0)
        out = tl.dot(ta, tb, input_precision=PREC)
        tl.store(c + rm[:, None] * N + rn[None, :], out,
                 mask=(rm[:, None] < M) & (rn[None, :] < N))

    def tile(n):
        return max(16, triton.next_power_of_2(n))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(M, K, device=dev, generator=g)
    b = torch.randn(K, N, device=dev, generator=g)
    c = torch.empty(M, N, device=dev)
    stored = b.t().contiguous() if trans else b
    product[(1,)](a, stored, c, M, N, K, tile(M), tile(N), tile(K), precision, trans,
                  num_warps=warps)
    ref = a.double() @ b.double()
    return f"{((c.double() - ref).norm() / ref.norm()).item():.1e}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=SHAPES, help="M,N,K triples separated by ';'")
    p.add_argument("--warps", type=int, default=4, help="the kernel's num_warps")
    p.add_argument("--trans", action="store_true",
                   help="the second operand stored [N, K] and transposed in the kernel")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # M,N,K,precision
    a = p.parse_args()
    if a.one:
        M, N, K, precision = a.one.split(",")
        print(one(int(M), int(N), int(K), precision, a.warps, a.trans))
        return
    print(f"{a.warps} warps{', second operand transposed in the kernel' if a.trans else ''}\n")
    print("| M, N, K | " + " | ".join(PRECISIONS) + " |")
    print("|---|" + "---|" * len(PRECISIONS))
    for shape in a.shapes.split(";"):
        cells = []
        for precision in PRECISIONS:
            extra = ["--warps", str(a.warps)] + (["--trans"] if a.trans else [])
            run = subprocess.run([sys.executable, __file__, "--one", f"{shape},{precision}",
                                  *extra],
                                 capture_output=True, text=True, timeout=300, check=False)
            lines = (run.stdout.strip() or run.stderr.strip() or "no output").splitlines()
            cells.append(lines[-1][:60] if run.returncode == 0
                         else f"failed: {lines[-1][:60]}")
        print(f"| {shape} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
