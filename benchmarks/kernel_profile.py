"""Where a chunked kernel's forward + backward time goes (GPU): each Triton kernel's CUDA time
for our chunked kernels and for fla-core's chunk kernels on the same inputs, from
torch.profiler, so a slow backward can be pinned on one kernel.

    python benchmarks/kernel_profile.py [--shape 8,2048,16,128] [--models deltanet,gdn,sgla,gla]
                                        [--sweep] [--forward] [--sweep-forward]

--sweep also times our forward + backward under each launch configuration of the
input-gradient kernel (chunk_delta_triton.INPUT_GRADS; for gla, chunk_decay_triton.BACKWARD:
its input-gradient kernel's key and value blocks and warps, the scores-gradient kernel's
warps), with the float32 kernel's gradients
as the reference for the bf16 ones; --sweep-states does the same for the sequential state
passes' launch when few sequences x heads are in flight (chunk_triton.STATE_PASSES; for
gla, its forward's state pass, which splits the key axis too, by forward time, with
chunk_decay_triton.FORWARD["states_few"] when few run).
--forward profiles the forward pass alone; --sweep-forward times our forward under each
launch of the forward kernels (chunk_delta_triton.FORWARD; GLA: chunk_decay_triton.FORWARD)
next to fla's chunk forward.
Models: deltanet, gdn (Gated DeltaNet), sgla (simple GLA / Mamba2: decay, no delta rule),
gla (GLA: a decay per key channel, chunk_decay_triton.chunk_channel against fla's chunk_gla;
fla's chunk_gla autotunes for minutes on its first call, so profile its forward alone).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile


def inputs(B, T, H, D, gated, seed=0, channel=False):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, device="cuda", generator=g)
    q = F.normalize(rand(B, T, H, D), dim=-1).bfloat16()
    k = F.normalize(rand(B, T, H, D), dim=-1).bfloat16()
    v = rand(B, T, H, D).bfloat16()
    beta = torch.rand(B, T, H, device="cuda", generator=g).bfloat16()
    ld = F.logsigmoid(rand(B, T, H, *((D,) if channel else ())) + 3.0) if gated else None
    return q, k, v, beta, ld


def ours(q, k, v, beta, ld):
    from nlc.runtime.library.chunk_delta_triton import chunk_scalar
    if beta is None and ld is not None and ld.dim() == 4:  # GLA
        from nlc.runtime.library.chunk_decay_triton import chunk_channel
        return chunk_channel(q, k, v, None, ld)[0]
    if beta is None:  # simple GLA
        return chunk_scalar(q, k, v, None, ld)[0]
    return chunk_scalar(q, k, v * beta[..., None], beta, ld)[0]


def fla(q, k, v, beta, ld):
    if beta is None and ld is not None and ld.dim() == 4:
        from fla.ops.gla import chunk_gla
        return chunk_gla(q, k, v, g=ld, scale=1.0)[0]
    if beta is None:
        from fla.ops.simple_gla import chunk_simple_gla
        return chunk_simple_gla(q, k, v, g=ld, scale=1.0)[0]
    if ld is None:
        from fla.ops.delta_rule import chunk_delta_rule
        return chunk_delta_rule(q, k, v, beta, scale=1.0)[0]
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    return chunk_gated_delta_rule(q, k, v, ld, beta, scale=1.0)[0]


def model_inputs(model, B, T, H, D):
    q, k, v, beta, ld = inputs(B, T, H, D, gated=model in ("gdn", "sgla", "gla"),
                               channel=model == "gla")
    return q, k, v, None if model in ("sgla", "gla") else beta, ld


def kernel_times(fn, args, reps=5, forward=False):
    """CUDA time per call of each kernel (us), forward + backward (forward alone with
    `forward`), after two warm-up calls."""
    leaves = [a.detach().requires_grad_() if a is not None and not forward else a
              for a in args]
    do = torch.randn_like(args[2])

    def call():
        o = fn(*leaves)
        if not forward:
            torch.autograd.grad(o, [x for x in leaves if x is not None], do)
    for _ in range(2):
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            call()
        torch.cuda.synchronize()
    times = defaultdict(float)
    for e in prof.key_averages():
        if e.device_type.name == "CUDA" or getattr(e, "self_device_time_total", 0):
            t = getattr(e, "self_device_time_total", None) or e.self_cuda_time_total
            if t:
                times[e.key[:60]] += t / reps
    return times


def sweep(args, table: dict, grid: dict, forward=False):
    """do_bench medians of our fwd + bwd (the forward alone with `forward`) under each launch
    configuration in `grid` (written into the launch dict `table`), and the worst relative
    error of each (gradients; the output with `forward`) against our float32 kernel. Returns
    the fastest configuration."""
    import itertools

    from triton.testing import do_bench
    do = torch.randn_like(args[2])

    def grads(xs):
        if forward:
            return (ours(*xs),)
        leaves = [a.detach().requires_grad_() if a is not None else None for a in xs]
        o = ours(*leaves)
        return torch.autograd.grad(o, [x for x in leaves if x is not None], do.to(o.dtype))
    ref = grads([a.float() if a is not None else None for a in args])  # float32 kernel
    default, best = dict(table), None
    for values in itertools.product(*grid.values()):
        launch = dict(zip(grid, values))
        table.update(launch)
        name = " ".join(f"{k} {v}" for k, v in launch.items())
        try:
            got = grads(args)
            err = max(((g.double() - r.double()).norm() / r.double().norm()).item()
                      for g, r in zip(got, ref))
            ms = do_bench(lambda: grads(args), warmup=5, rep=30, return_mode="median")
            print(f"  {name}: {ms:.3f} ms {'fwd' if forward else 'fwd + bwd'}, worst "
                  f"{'output' if forward else 'gradient'} error {err:.1e}", flush=True)
        except Exception as err:  # noqa: BLE001  out of resources: say so, go on
            print(f"  {name}: failed: {str(err)[:100]}")
            continue
        if best is None or ms < best[0]:
            best = (ms, launch)
    table.update(default)
    print(f"  fastest: {json.dumps(best[1])}")
    return best[1]


def forward_sweep(model, args, shape):
    """fla's chunk forward (do_bench median), then our forward under each launch of the
    forward kernels (chunk_delta_triton.FORWARD)."""
    from nlc.runtime.library import chunk_decay_triton, chunk_delta_triton
    from triton.testing import do_bench
    launches = chunk_decay_triton if model == "gla" else chunk_delta_triton
    try:
        fla_ms = f"{do_bench(lambda: fla(*args), warmup=5, rep=30):.3f} ms"
    except Exception as err:  # noqa: BLE001  fla missing or refusing: say so
        fla_ms = f"failed: {str(err)[:80]}"
    print(f"\n{model} {shape} bf16 forward: fla chunk {fla_ms}; ours, forward launch sweep "
          f"(default {json.dumps(launches.FORWARD)}):")
    grid = {"prepare_warps": (1, 2, 4), "wu_warps": (4, 8),
            "output_warps": (4, 8), "output_BV": (64, 128)}
    if model == "sgla":  # no delta rule: no solve, no w and u
        grid = {"kkt_warps": (4, 8), "output_warps": (2, 4, 8), "output_BV": (32, 64, 128)}
    if model == "gla":  # chunk_channel's own launch table
        grid = {"scores_warps": (1, 2, 4), "scores_split": (False, True),
                "scores_diag_dot": (False, True)}
    sweep(args, launches.FORWARD, grid, forward=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="8,2048,16,128")
    p.add_argument("--models", default="deltanet,gdn")
    p.add_argument("--sweep", action="store_true", help="sweep the input-gradient launch")
    p.add_argument("--sweep-states", action="store_true", help="sweep the state passes' launch")
    p.add_argument("--best-to", default=None, help="--sweep: write the fastest launch (JSON)")
    p.add_argument("--no-profile", action="store_true", help="sweeps only")
    p.add_argument("--forward", action="store_true", help="profile the forward pass alone")
    p.add_argument("--sweep-forward", action="store_true",
                   help="sweep the forward kernels' launch, next to fla's chunk forward")
    a = p.parse_args()
    B, T, H, D = map(int, a.shape.split(","))
    for model in a.models.split(","):
        args = model_inputs(model, B, T, H, D)
        if a.sweep_forward:
            forward_sweep(model, args, (B, T, H, D))
        if a.sweep:
            from nlc.runtime.library import chunk_decay_triton as cdc
            from nlc.runtime.library import chunk_delta_triton as cdt
            print(f"\n{model} ours {(B, T, H, D)} bf16, input-gradient launch sweep:")
            if model == "gla":  # chunk_channel's backward launch table
                best = sweep(args, cdc.BACKWARD,
                             {"input_BK": (32, 64, 128), "input_BV": (32, 64),
                              "input_warps": (4, 8), "dscores_warps": (4, 8)})
            else:
                best = sweep(args, cdt.INPUT_GRADS,
                             {"BV": (32, 64), "num_warps": (4, 8), "num_stages": (1, 2, 3)})
            if a.best_to and model == a.models.split(",")[0]:
                Path(a.best_to).write_text(json.dumps(best))
        if a.sweep_states:
            from nlc.runtime.library import chunk_triton as ct
            print(f"\n{model} ours {(B, T, H, D)} bf16, state passes' launch sweep "
                  f"({B * H} sequences x heads):")
            few = B * H < ct.STATE_PASSES["few"]
            if model == "gla" and few:  # its forward's own launch (K block, V block, warps)
                from nlc.runtime.library import chunk_decay_triton as cdc
                sweep(args, cdc.FORWARD, {"states_few": [
                    (bk, bv, w) for bk in (32, 64) for bv in (32, 64) for w in (4, 8)]},
                      forward=True)
            elif model == "gla":  # its forward's state pass splits the key axis too
                sweep(args, ct.STATE_PASSES,
                      {"BV_some": (16, 32, 64), "split_BK": (32, 64),
                       "split_warps": (2, 4, 8)}, forward=True)
            else:
                sweep(args, ct.STATE_PASSES,
                      {"BV_few" if few else "BV_some": (16, 32, 64), "num_warps": (4, 8)})
        for name, fn in () if a.no_profile else (("ours", ours), ("fla", fla)):
            try:
                times = kernel_times(fn, args, forward=a.forward)
            except Exception as err:  # noqa: BLE001  fla's gated backward refuses (fla #640)
                print(f"\n{model} {name} {(B, T, H, D)}: failed: {type(err).__name__}: "
                      f"{str(err)[:160]}")
                continue
            total = sum(times.values())
            print(f"\n{model} {name} {(B, T, H, D)} bf16, {'fwd' if a.forward else 'fwd + bwd'}:"
                  f" {total / 1e3:.3f} ms of kernel time")
            for key, t in sorted(times.items(), key=lambda kv: -kv[1])[:14]:
                print(f"  {t:9.1f} us  {100 * t / total:5.1f}%  {key}")


if __name__ == "__main__":
    main()
