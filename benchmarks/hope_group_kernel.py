"""Hope's generating memories (examples/hope.nl's group k, v, eta, alpha) on a GPU: the fused
group kernels (runtime/library/mlp_group_triton.py, one launch forward and one backward for
the whole sequence) against the PyTorch chunked form the layer runs today (the generated
group op, `coupled_chunked`), forward + backward of one layer's group.

First the correctness checks, then the timing table:
- the kernels in float32 against the closed form in float64 on the CPU
  (runtime/library/mlp_group.py, itself checked against the group op by
  tests/test_mlp_group.py), at a small shape with a partial last chunk: outputs, last states
  and every gradient, max |error| / max |reference|;
- at the timed shape, the kernels (float32 products, "ieee") against the PyTorch form on the
  GPU in float32;
- forward + backward time, median of `--repeat` replays of a CUDA graph (each path captured
  whole; eager where the capture fails, said so), and the peak memory of one step.

    python benchmarks/hope_group_kernel.py [--B 16 --H 8 --T 2048 --d 64] [--compile-chunks]
                                           [--skip-torch] [--out FILE]

`--compile-chunks` times the PyTorch form with its chunks compiled by Inductor
(NLC_COMPILE_CHUNKS=1, as the LM rows of docs/perf.md), which must be set before nlc is
imported: run the script once per setting."""

from __future__ import annotations

import datetime
import os
import platform
import sys

import hope_common

NAMES = (("k", "K"), ("v", "V"), ("eta", "E"), ("alpha", "A"))
# the correctness table's columns: outputs, last states, gradients
COLUMNS = ["k", "v", "eta", "alpha", "W1 end", "W2 end", "dh", "dW1", "dW2", "dbias"]


ARGS = hope_common.parse(__doc__.splitlines()[0], skip_torch=True)
if ARGS.compile_chunks:
    os.environ["NLC_COMPILE_CHUNKS"] = "1"

import torch
from hope_common import check, gradients, hope_module, timed_step
from nlc.runtime.library import mlp_group, mlp_group_triton

GROUP = mlp_group.Group(tails=("l2norm", "l2norm", ("sigmoid_mean", 0), ("sigmoid_mean", 1)),
                        key=0, value=1, rate=2, retention=3)


def inputs(B, H, T, d, device, dtype, seed=0):
    """h [N, T, d], W1 [N, 4, F, d], W2 [N, 4, d, F] (N = B x H rows) and the biases of the
    rate and the retention per head [H, 2]."""
    g = torch.Generator().manual_seed(seed)
    N = B * H
    F = 4 * d
    W1 = torch.randn(N, 4, F, d, generator=g, dtype=torch.float64) * 0.3 / d ** 0.5 * 4
    W2 = torch.randn(N, 4, d, F, generator=g, dtype=torch.float64) * 0.3 / F ** 0.5 * 4
    h = torch.randn(N, T, d, generator=g, dtype=torch.float64)
    bias = torch.tensor([[-4.0, 5.0]], dtype=torch.float64) + 0.5 * torch.randn(H, 2, generator=g)
    return [x.to(device, dtype) for x in (h, W1, W2, bias)]


def rows(bias, N):
    """Per-head biases [H, 2] -> per row [N, 2] (rows are batch-major)."""
    return bias.repeat(N // bias.shape[0], 1)


def closed_form(h, W1, W2, bias, chunk=16):
    bias = rows(bias, h.shape[0])
    reads = []
    for c0 in range(0, h.shape[1], chunk):
        o, W1, W2 = mlp_group.chunk_forward(GROUP, W1, W2, h[:, c0:c0 + chunk], bias)
        reads.append(o)
    return [torch.cat([r[i] for r in reads], 1) for i in range(4)] + [W1, W2]


def kernel(h, W1, W2, bias, precision="ieee"):
    return list(mlp_group_triton.group_chunks(h, W1, W2, rows(bias, h.shape[0]), chunk=16,
                                              precision=precision))


def torch_form(module, B, H):
    """The generated group op on the kernel's layout: h [N, T, d], W1 [N, 4, F, d], ..."""
    def run(h, W1, W2, bias):
        N, T, d = h.shape
        hb = h.reshape(B, H, T, d).transpose(1, 2)
        state = {n: {f"{L}_W1": W1[:, i].reshape(B, H, *W1.shape[2:]),
                     f"{L}_W2": W2[:, i].reshape(B, H, *W2.shape[2:])}
                 for i, (n, L) in enumerate(NAMES)}
        outs, final = module.SelfModifyingTitans_k_v_eta_alpha_group_op(
            hb, b_eta=bias[:, 0], b_alpha=bias[:, 1], initial_state=state,
            output_final_state=True)
        flat = [outs[n].transpose(1, 2).reshape(N, T, *outs[n].shape[3:]) for n, _ in NAMES]
        W1n = torch.stack([final[n][f"{L}_W1"] for n, L in NAMES], 2).flatten(0, 1)
        W2n = torch.stack([final[n][f"{L}_W2"] for n, L in NAMES], 2).flatten(0, 1)
        return flat + [W1n, W2n]
    return run




def main() -> None:
    a = ARGS
    dev = "cuda"
    import triton
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}, Python {platform.python_version()}, "
          f"{datetime.date.today()}")
    module = hope_module()

    print("\nCorrectness: max |error| / max |reference| (outputs, last states, gradients)\n")
    print("| form | " + " | ".join(COLUMNS) + " | worst |")
    print("|---|" + "---:|" * (len(COLUMNS) + 1))
    small = inputs(2, 3, 37, 16, "cpu", torch.float64, seed=1)
    weights_small = [torch.randn_like(o) for o in closed_form(*small)]
    ref = gradients(closed_form, small, weights_small)
    gpu_small = [x.to(dev, torch.float32) for x in small]
    w_gpu = [w.to(dev) for w in weights_small]
    for precision in ("ieee", "tf32"):
        got = gradients(lambda *x, p=precision: kernel(*x, precision=p), gpu_small,
                        [w.double() for w in w_gpu])
        check(f"kernels ({precision}), float32, 2 x 3 x 37, d 16, against float64", got, ref)

    T, d = a.T, a.d
    big = inputs(a.B, a.H, T, d, dev, torch.float32)
    weights = [torch.randn_like(o) for o in kernel(*big)]
    torch_run = torch_form(module, a.B, a.H)
    if not a.skip_torch:
        ref_big = gradients(torch_run, big, [w.double() for w in weights])
        got_big = gradients(kernel, big, [w.double() for w in weights])
        check(f"kernels (ieee) against the PyTorch form, float32, {a.B} x {a.H} x {T}, d {d}",
              got_big, ref_big)
        del ref_big, got_big

    print(f"\nForward + backward of the group, B {a.B}, H {a.H}, T {T}, d {d} (hidden {4 * d}), "
          f"chunks of 16, float32 states, median of {a.repeat}\n")
    print("| form | ms | tokens/s | peak GiB | run as |")
    print("|---|---:|---:|---:|---|")
    rows = [("fused kernels, float32 products (ieee)", kernel),
            ("fused kernels, TF32 products", lambda *x: kernel(*x, precision="tf32"))]
    if not a.skip_torch:
        label = "PyTorch chunked form" + (", compiled chunks" if a.compile_chunks else ", eager")
        rows.append((label, torch_run))
    for label, fn in rows:
        ms, peak, how = timed_step(fn, big, weights, a.repeat)
        line = f"| {label} | {ms:.1f} | {a.B * T / ms * 1e3:,.0f} | {peak:.2f} | {how} |"
        print(line, flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
