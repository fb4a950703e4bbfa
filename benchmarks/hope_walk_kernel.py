"""Hope's main memory (examples/hope.nl, level `memory`: an MLP read before each token's write,
gradients at chunks of 64, decay and erase) on a GPU: the walk kernels
(runtime/library/mlp_walk_triton.py, NLC_WALK_KERNEL=1) against the PyTorch chunked form the
layer runs without them, forward + backward of the generated memory op.

First the correctness checks, then the timing table:
- at a small shape with a partial last chunk, the op with the kernels in float32 on the GPU
  against the op without them in float64 on the CPU: reads, final states and every
  gradient (q, k, alpha, eta, v, both initial maps), max |error| / max |reference|;
- at the timed shape, the op with the kernels against the op without them, both float32 on
  the GPU;
- forward + backward time, median of `--repeat` replays of a CUDA graph (eager where the
  capture fails, said so), and the peak memory of one step.

    python benchmarks/hope_walk_kernel.py [--B 16 --H 8 --T 2048 --d 64] [--compile-chunks]
                                          [--out FILE]

`--compile-chunks` compiles the PyTorch form's chunks with Inductor (NLC_COMPILE_CHUNKS=1, as
the LM rows of docs/perf.md; the kernels' chunks are not compiled), which must be set before
nlc is imported."""

from __future__ import annotations

import datetime
import os
import platform

import hope_common

COLUMNS = ["o", "W1 end", "W2 end", "dq", "dk", "dalpha", "deta", "dv", "dW1", "dW2"]


ARGS = hope_common.parse(__doc__.splitlines()[0])
if ARGS.compile_chunks:
    os.environ["NLC_COMPILE_CHUNKS"] = "1"

import torch
from hope_common import check, gradients, hope_module, timed_step


def inputs(B, H, T, d, device, dtype, seed=0):
    """q, k, alpha, eta, v as the layer makes them (unit q, k, v; alpha near 0.99, eta near
    0.02) and the initial maps W1 [B, H, 4d, d], W2 [B, H, d, 4d]."""
    g = torch.Generator().manual_seed(seed)
    F64 = torch.float64

    def unit():
        return torch.nn.functional.normalize(torch.randn(B, T, H, d, generator=g, dtype=F64),
                                             dim=-1)
    q, k, v = unit(), unit(), unit()
    alpha = torch.sigmoid(torch.randn(B, T, H, generator=g, dtype=F64) + 5)
    eta = torch.sigmoid(torch.randn(B, T, H, generator=g, dtype=F64) - 4)
    W1 = torch.randn(B, H, 4 * d, d, generator=g, dtype=F64) * 0.3 / d ** 0.5
    W2 = torch.randn(B, H, d, 4 * d, generator=g, dtype=F64) * 0.3 / (4 * d) ** 0.5
    return [x.to(device, dtype) for x in (q, k, alpha, eta, v, W1, W2)]


def memory(module, kernels: bool):
    """The generated memory op as a function of its inputs and initial maps, returning the
    reads and both final maps; the kernels asked for or turned off."""
    def run(q, k, alpha, eta, v, W1, W2):
        os.environ["NLC_WALK_KERNEL"] = "1" if kernels else "0"
        o, final = module.SelfModifyingTitans_memory_op(
            q, k, alpha, eta, v, initial_state={"M_W1": W1, "M_W2": W2},
            output_final_state=True)
        return [o, final["M_W1"], final["M_W2"]]
    return run




def main() -> None:
    a = ARGS
    import triton
    header = (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
              f"{triton.__version__}, Python {platform.python_version()}, "
              f"{datetime.date.today()}")
    print(header)
    module = hope_module()
    lines = [header, "", "| form | " + " | ".join(COLUMNS) + " | worst |",
             "|---|" + "---:|" * (len(COLUMNS) + 1)]
    print("\n".join(lines[1:]))
    small = inputs(2, 3, 150, 16, "cpu", torch.float64, seed=1)
    weights = [torch.randn_like(o) for o in memory(module, False)(*small)]
    ref = gradients(memory(module, False), small, weights)
    gpu = [x.to("cuda", torch.float32) for x in small]
    got = gradients(memory(module, True), gpu, [w.cuda() for w in weights])
    lines.append(check("kernels fp32 (GPU) vs PyTorch fp64 (CPU), 2 x 3 x 150, d 16", got, ref))

    big = inputs(a.B, a.H, a.T, a.d, "cuda", torch.float32)
    w_big = [torch.randn_like(o) for o in memory(module, False)(*big)]
    torch_run = gradients(memory(module, False), big, w_big)
    kernel_run = gradients(memory(module, True), big, w_big)
    lines.append(check(f"kernels vs PyTorch, fp32 (GPU), {a.B} x {a.H} x {a.T}, d {a.d}",
                       kernel_run, torch_run))
    del torch_run, kernel_run

    chunks = "compiled chunks" if a.compile_chunks else "eager chunks"
    tf32 = "on" if torch.backends.cuda.matmul.allow_tf32 else "off"
    title = (f"Forward + backward, B {a.B}, H {a.H}, T {a.T}, d {a.d}, hidden {4 * a.d}, "
             f"chunks of 64, float32 ({chunks} for the PyTorch form; TF32 {tf32})")
    lines += ["", title, "",
              "| form | ms | tokens/s | peak GiB | how |", "|---|---:|---:|---:|---|"]
    for label, kernels in (("walk kernels", True), ("PyTorch chunked form", False)):
        ms, peak, how = timed_step(memory(module, kernels), big, w_big, a.repeat)
        lines.append(f"| {label} | {ms:.1f} | {a.B * a.T / ms * 1e3:,.0f} | {peak:.2f} | "
                     f"{how} |")
        print(lines[-1])
    if a.out:
        with open(a.out, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
