"""A quick GPU check of the chunked delta kernels (runtime/library/chunk_delta_triton.py) after a
change to them: do they compile on the card, and how fast are they at one shape, beside
fla-core's chunk_delta_rule forward. This is what ran when the device budget had no room for
benchmarks/gpu_chunked.py (which checks bf16 against float32 and times every model and
shape); its numbers are a check, not the side-by-side table.

Usage (nlc installed; fla-core optional):  python benchmarks/gpu_chunked_quick.py
"""

from __future__ import annotations

import torch
from triton.testing import do_bench

from nlc.runtime.library.chunk_delta_triton import chunk_scalar

B, T, H, D = 8, 2048, 16, 128


def main() -> None:
    g = torch.Generator("cuda").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, device="cuda", generator=g)

    q = torch.nn.functional.normalize(rand(B, T, H, D), dim=-1).bfloat16().requires_grad_()
    k = torch.nn.functional.normalize(rand(B, T, H, D), dim=-1).bfloat16().requires_grad_()
    v = rand(B, T, H, D).bfloat16().requires_grad_()
    beta = torch.rand(B, T, H, device="cuda").requires_grad_()
    log_decay = (-torch.rand(B, T, H, device="cuda") * 0.1).requires_grad_()
    for name, extra in (("DeltaNet", {}), ("GatedDeltaNet", {"log_decay": log_decay})):
        def forward(extra=extra):
            return chunk_scalar(q, k, v, beta, **extra)[0]

        def both(forward=forward):
            forward().float().sum().backward()
        print(f"{name} ours chunked fwd {do_bench(forward, warmup=10, rep=40):.3f} ms "
              f"fwd+bwd {do_bench(both, warmup=10, rep=40):.3f} ms")
    try:
        from fla.ops.delta_rule import chunk_delta_rule
        print(f"DeltaNet fla chunk fwd "
              f"{do_bench(lambda: chunk_delta_rule(q, k, v, beta.bfloat16(), scale=1.0)[0], warmup=10, rep=40):.3f} ms")
    except Exception as err:  # fla missing or refusing: say so
        print("fla", repr(err)[:200])


if __name__ == "__main__":
    main()
