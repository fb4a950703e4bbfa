"""Tokens per second of a per-token MLP memory level: the fused step kernel vs the token loop.

Runs the generated ops of examples/moneta.nl, yaad.nl and memora.nl (generated/*.py, their
nlc_step_* kernel modules next to them) on one CUDA GPU, float32 inputs:

1. a check: the kernel's output, final state and every gradient against the float32 token
   loop on the GPU (relative error, Frobenius norm), at T = 64;
2. forward and forward + backward wall time (CUDA-synchronized medians of a few runs) of the
   op at (B, T, H, d_head), the kernel (NLC_TRITON unset: CUDA tensors go to it) against the
   token loop (NLC_TRITON=0), as tokens per second, each with its peak memory
   (torch.cuda.max_memory_allocated over the timed call).

The token loop is timed over its first LOOP_TOKENS tokens and extrapolated to T ("~").
Not run yet (no GPU in the session that wrote it). Usage, from the repository root:

    python benchmarks/gpu_step_kernel.py [--shape 16,2048,4,64] [--models moneta,yaad,memora]

`--smoke` runs a tiny shape on the CPU under TRITON_INTERPRET=1 (the kernel forced with
NLC_TRITON=force), to check that the script itself works.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOOP_TOKENS = 64


def load(name: str):
    path = ROOT / "generated" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inputs(torch, name: str, B: int, T: int, H: int, d: int, device: str, seed: int = 0):
    """The op's inputs as its layer would make them (unit q, k; gates in (0, 1)), leaves."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device)

    q, k = (torch.nn.functional.normalize(rand(B, T, H, d), dim=-1) for _ in range(2))
    tokens = {"q": q, "k": k, "v": rand(B, T, H, d),
              "alpha": 0.9 + 0.1 * torch.rand(B, T, H, generator=g).to(device)}
    if name == "yaad":
        tokens["delta"] = 0.5 + torch.rand(B, T, H, generator=g).to(device)
    tokens["eta"] = 0.01 * torch.rand(B, T, H, generator=g).to(device)
    w1, w2 = rand(B, H, 4 * d, d), rand(B, H, d, 4 * d)
    state = ({"M_W1": torch.softmax(w1, -1), "M_W2": torch.softmax(w2, -1)} if name == "memora"
             else {"M_W1": w1, "M_W2": w2})
    return ({n: x.requires_grad_() for n, x in tokens.items()},
            {n: x.requires_grad_() for n, x in state.items()})


def run(module, tokens, state, backward: bool):
    o, final = module.memory_op(*tokens.values(), initial_state=state, output_final_state=True)
    if backward:
        loss = o.square().mean() + sum(s.square().mean() for s in final.values())
        loss.backward()
    return o, final


def timed(torch, fn, device: str, repeats: int) -> tuple[float, float]:
    """(median seconds, peak GiB above the start) of fn()."""
    fn()  # warm-up (compiles the kernel)
    times, peak = [], 0.0
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
            peak = max(peak, (torch.cuda.max_memory_allocated() - base) / 2 ** 30)
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak


def check(torch, module, name, device, d) -> dict:
    """Relative errors of the kernel against the token loop (float32, T = 64)."""
    results = []
    for flag in ("force" if device == "cpu" else "1", "0"):
        os.environ["NLC_TRITON"] = flag
        tokens, state = inputs(torch, name, 2, 64, 2, d, device)
        o, final = run(module, tokens, state, backward=True)
        leaves = {**tokens, **state}
        results.append({"o": o.detach(), **{n: f.detach() for n, f in final.items()},
                        **{f"d{n}": x.grad for n, x in leaves.items()}})
    kernel, loop = results
    return {k: ((kernel[k] - loop[k]).norm() / loop[k].norm()).item() for k in loop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="16,2048,4,64", help="B,T,H,d_head")
    parser.add_argument("--models", default="moneta,yaad,memora")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device (use --smoke for a CPU check of the script)")
    B, T, H, d = (2, 40, 2, 8) if args.smoke else map(int, args.shape.split(","))
    loop_tokens = min(T, LOOP_TOKENS)
    print(f"(B, T, H, d_head) = ({B}, {T}, {H}, {d}); torch {torch.__version__}; "
          f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu (interpreter)'}")
    print("| model | check (max rel. err.) | kernel fwd tok/s | loop fwd tok/s | kernel fwd+bwd "
          "tok/s | loop fwd+bwd tok/s | kernel fwd+bwd peak GiB | loop fwd+bwd peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        module = load(name)
        worst = max(check(torch, module, name, device, d).values())
        row = [name, f"{worst:.1e}"]
        cells = {}
        for backward in (False, True):
            for flag, length in (("force" if device == "cpu" else "1", T), ("0", loop_tokens)):
                os.environ["NLC_TRITON"] = flag
                tokens, state = inputs(torch, name, B, length, H, d, device)
                context = torch.enable_grad() if backward else torch.no_grad()

                def call(module=module, tokens=tokens, state=state, backward=backward,
                         context=context):
                    with context:
                        run(module, tokens, state, backward)
                seconds, peak = timed(torch, call, device, args.repeats)
                mark = "~" if length < T else ""
                cells[(backward, flag == "0")] = (f"{mark}{B * length / seconds:,.0f}",
                                                  f"{mark}{peak:.2f}")
        row += [cells[(False, False)][0], cells[(False, True)][0], cells[(True, False)][0],
                cells[(True, True)][0], cells[(True, False)][1], cells[(True, True)][1]]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
