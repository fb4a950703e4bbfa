"""GPU benchmark of nlc's chunked Triton kernels (runtime/library/chunk_delta_triton.py) against
flash-linear-attention (fla), our fused recurrent kernels and SDPA flash, in one process.

For DeltaNet (delta rule, no decay), Gated DeltaNet (delta rule, scalar decay), simple GLA /
Mamba2 (decay family, scalar decay), GLA (decay family, channel decay), KDA (Kimi Delta
Attention: delta rule, channel decay), RWKV-7 (dplr family, channel decay), a row-decay
delta rule (a decay per value channel, tests/specs/row_decay.nl's level) and a momentum delta
rule (the joint family's (S, M), tests/specs/momentum_delta.nl's level):

GLA's "ours chunked" is runtime/library/chunk_decay_triton.py's `chunk_channel` (generated layers
dispatch to it since the 2026-12-04 run in docs/perf.md measured it faster than the recurrent
kernel at both shapes). KDA's is runtime/library/chunk_kda_triton.py's `chunk_kda`, compared with
fla's `fla.ops.kda.chunk_kda` where the installed fla has it (else its row records the
ImportError); it has not been timed yet. RWKV-7's is runtime/library/chunk_dplr_triton.py's
`chunk_dplr` (S_t = S_{t-1} (D_t + a_t b_t^T) + v_t k_t^T, with RWKV-7's a = -kh, b = kh * rate
for a unit removal key kh), compared with fla's `fla.ops.generalized_delta_rule`
`chunk_dplr_delta_rule` / `fused_recurrent_dplr_delta_rule` (q, k, v, a, b, gk; fla's state
[K, V] is our state transposed); it has not been timed yet, and its fla correctness row is
the check that fla's convention is ours. The row-decay delta rule's is
runtime/library/chunk_rows_triton.py's `chunk_rows`; it has no fused recurrent kernel and fla
has no such model, so its rows time it against our PyTorch chunked form
(runtime/library/rows.py's `row_decay_chunked_torch`, "ours PyTorch chunked"); it has not been
timed yet. The momentum delta rule's is runtime/library/chunk_joint_triton.py's `chunk_joint`,
timed likewise against runtime/library/joint.py's `joint_chunked_torch`; not timed yet either.

1. bf16 correctness on the GPU: ours chunked (and fla chunk, for scale) against float32
   PyTorch chunked forms (runtime/library/chunked.py's `*_chunked_torch`, independent of the Triton
   code) at (B, T, H, D) = (2, 512, 4, 128) with an initial state: relative Frobenius error of
   the output, the final state and every gradient;
2. cold start: wall time of the first forward + backward call (compilation, autotuning) at
   the first benchmark shape, ours chunked and fla chunk, with an empty Triton cache;
3. median times (triton.testing.do_bench), forward and forward + backward, at
   (8, 2048, 16, 128) and (1, 16384, 16, 128), bf16: ours chunked, ours fused recurrent
   (rendered as `nlc compile` renders them), fla chunk, fla fused recurrent, and torch SDPA
   (causal, flash) for scale. A failure (fla's refusals included) is recorded as its text.

Our value input is fla's v times beta (the generated code folds the rate into the value), and
our state is [V, K] (fla's is [K, V]); fla runs with scale = 1 to compute the same function.

fla's first calls autotune for a long time (84.7 s for `chunk_delta_rule` on an H200, and
`chunk_gla` did not return within about 7 minutes): `--skip-cold` leaves that section out
(`--cold` picks the models it times),
`--models` picks models, and each timing table is written to --out as soon as it is done.
`--profile` prints instead each model's per-kernel CUDA times of ours chunked (torch.profiler,
one forward + backward after two warm-up calls) at each of `--shapes`.

Usage (nlc installed, from outside the checkout's root):
    python benchmarks/gpu_chunked.py --out perf.md
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="triton_cold_"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from nlc.runtime.library.chunk_decay_triton import chunk_channel  # noqa: E402
from nlc.runtime.library.chunk_delta_triton import chunk_scalar  # noqa: E402
from nlc.runtime.library.chunk_dplr_triton import chunk_dplr
from nlc.runtime.library.chunk_joint_triton import chunk_joint
from nlc.runtime.library.chunk_kda_triton import chunk_kda
from nlc.runtime.library.chunk_rows_triton import chunk_rows
from nlc.runtime.library.chunked import decay_chunked_torch, delta_chunked_torch, dplr_chunked_torch
from nlc.runtime.library.joint import joint_chunked_torch
from nlc.runtime.library.rows import row_decay_chunked_torch

SHAPES = [(8, 2048, 16, 128), (1, 16384, 16, 128)]
# models with no fused recurrent kernel (and no fla counterpart): their chunked kernels are
# timed against our PyTorch chunked form
TORCH_TIMED = ("row-decay delta", "momentum delta")
CHECK_SHAPE = (2, 512, 4, 128)
# model -> (family, decay kind)
MODELS = {"DeltaNet": ("delta", "none"), "Gated DeltaNet": ("delta", "scalar"),
          "simple GLA / Mamba2": ("decay", "scalar"), "GLA": ("decay", "channel"),
          "KDA": ("delta", "channel"), "RWKV-7": ("dplr", "channel"),
          "row-decay delta": ("delta", "row"), "momentum delta": ("joint", "none")}


def log(*args):
    print(*args, flush=True)


# -- inputs ------------------------------------------------------------------------------------
def make_inputs(model, B, T, H, D, dtype, seed=0):
    family, decay = MODELS[model]
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device="cuda")

    x = {"q": randn(B, T, H, D) * D ** -0.5,
         "k": F.normalize(randn(B, T, H, D), dim=-1),
         "v": randn(B, T, H, D)}
    if family == "delta":
        x["beta"] = torch.rand(B, T, H, generator=gen, device="cuda")
    if family == "dplr":  # RWKV-7's rank-one term: a unit removal key, a rate in (0, 1)
        kh = F.normalize(randn(B, T, H, D), dim=-1)
        x["a"] = -kh
        x["b"] = kh * torch.rand(B, T, H, D, generator=gen, device="cuda")
    if family == "joint":  # M' = theta M - eta (S k - v) k^T, S' = alpha S + M' as X = [S, M]
        eta, theta, alpha = (torch.rand(B, T, H, generator=gen, device="cuda")
                             for _ in range(3))
        alpha, zero = 0.9 + 0.1 * alpha, torch.zeros_like(eta)
        x["P"] = torch.stack([torch.stack([alpha, zero], -1), torch.stack([theta, theta], -1)],
                             -2)
        x["Q"] = torch.stack([torch.stack([-eta, -eta], -1), torch.stack([zero, zero], -1)], -2)
        x["values"] = (eta[..., None] * x.pop("v")).unsqueeze(-2).expand(
            -1, -1, -1, 2, -1).contiguous()
        x["h0"] = randn(B, H, 2, D, D) * 0.1
        return {n: t.to(dtype) if n != "h0" else t for n, t in x.items()}
    if decay == "scalar":
        x["g"] = F.logsigmoid(randn(B, T, H) + 4.0)
    elif decay in ("channel", "row"):  # one per key channel, or per value channel (V = K)
        x["g"] = F.logsigmoid(randn(B, T, H, D) + 4.0)
    x["h0"] = randn(B, H, D, D) * 0.1
    return {n: t.to(dtype) if n != "h0" else t for n, t in x.items()}


# -- the implementations: each (inputs) -> (o, final state [B, H, V, K]) -------------------------
def ours_chunked(model):
    family, decay = MODELS[model]
    kernel = chunk_rows if decay == "row" else chunk_scalar if decay != "channel" \
        else chunk_kda if family == "delta" else chunk_channel

    def run(x):
        if family == "joint":
            return chunk_joint(x["q"], x["k"], x["values"], x["P"], x["Q"],
                               initial_state=x["h0"])
        if family == "dplr":
            return chunk_dplr(x["q"], x["k"], x["v"], x["a"], x["b"], x["g"],
                              initial_state=x["h0"])
        v = x["v"] * x["beta"][..., None] if family == "delta" else x["v"]
        return kernel(x["q"], x["k"], v, x.get("beta"), x.get("g"), initial_state=x["h0"])
    return run


def torch_reference(model):
    family, decay = MODELS[model]

    def run(x):
        if family == "joint":
            return joint_chunked_torch(x["q"], x["k"], x["values"], x["P"], x["Q"],
                                       initial_state=x["h0"])
        if family == "dplr":
            return dplr_chunked_torch(x["q"], x["k"], x["v"], x["a"], x["b"], x["g"],
                                      initial_state=x["h0"])
        if decay == "row":
            v = x["v"] * x["beta"][..., None]
            return row_decay_chunked_torch(x["q"], x["k"], v, x["beta"], x["g"],
                                           initial_state=x["h0"])
        if family == "delta":
            v = x["v"] * x["beta"][..., None]
            return delta_chunked_torch(x["q"], x["k"], v, x["beta"], x.get("g"),
                                       initial_state=x["h0"])
        return decay_chunked_torch(x["q"], x["k"], x["v"], x.get("g"), initial_state=x["h0"])
    return run


_RECURRENT = {}


def ours_recurrent(model):
    """Our fused recurrent kernel, rendered as `nlc compile` renders it for this family."""
    from nlc.emit.triton_render import RecurrentKernelPlan, render_recurrent
    family, decay = MODELS[model]
    if decay == "row" or family == "joint":
        raise NotImplementedError(f"no fused recurrent kernel for {model}")
    key = (family, decay)
    if key not in _RECURRENT:
        plan = RecurrentKernelPlan(family=family, decay=decay)
        path = Path(tempfile.mkdtemp()) / f"{plan.module}.py"
        try:
            source = render_recurrent(plan)
        except Exception as e:  # noqa: BLE001  ruff missing where wheels were installed
            if "ruff" not in str(e):
                raise
            import nlc.emit.triton_render as tr
            log("ruff not found: rendering the recurrent kernels unformatted")
            tr.ruff_format = lambda source, name: source  # formatting changes no semantics
            source = render_recurrent(plan)
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(plan.module, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _RECURRENT[key] = module.fused_recurrent
    fn = _RECURRENT[key]

    def run(x):
        v = x["v"] * x["beta"][..., None] if family == "delta" else x["v"]
        kw = {"g": x["g"]} if "g" in x else {}
        if family == "delta":
            kw["beta"] = x["beta"]
        if family == "dplr":
            kw.update(a=x["a"], b=x["b"])
        return fn(x["q"], x["k"], v, initial_state=x["h0"], output_final_state=True, **kw)
    return run


def fla_fn(model, chunk: bool):
    import fla.ops.delta_rule as dr
    import fla.ops.gated_delta_rule as gdr
    import fla.ops.gla as gla
    import fla.ops.simple_gla as sgla
    family, decay = MODELS[model]
    if decay == "row" or family == "joint":
        raise NotImplementedError(f"fla has no {model} rule")

    def run(x):
        h0 = x["h0"].transpose(-1, -2).contiguous()
        common = dict(scale=1.0, initial_state=h0, output_final_state=True)
        q, k, v = x["q"], x["k"], x["v"]
        if model == "DeltaNet":
            f = dr.chunk_delta_rule if chunk else dr.fused_recurrent_delta_rule
            o, ht = f(q, k, v, x["beta"], **common)
        elif model == "Gated DeltaNet":
            if chunk:
                o, ht = gdr.chunk_gated_delta_rule(q, k, v, x["g"], x["beta"], **common)
            else:
                o, ht = gdr.fused_recurrent_gated_delta_rule(q, k, v, g=x["g"], beta=x["beta"],
                                                             **common)
        elif model == "KDA":
            from fla.ops.kda import chunk_kda as fla_chunk_kda  # fla versions without it fail here
            from fla.ops.kda import fused_recurrent_kda
            f = fla_chunk_kda if chunk else fused_recurrent_kda
            o, ht = f(q, k, v, g=x["g"], beta=x["beta"], **common)
        elif model == "RWKV-7":  # fla versions without it fail here
            from fla.ops.generalized_delta_rule import (
                chunk_dplr_delta_rule,
                fused_recurrent_dplr_delta_rule,
            )
            f = chunk_dplr_delta_rule if chunk else fused_recurrent_dplr_delta_rule
            o, ht = f(q, k, v, a=x["a"], b=x["b"], gk=x["g"], **common)
        elif model == "GLA":
            if chunk:
                o, ht = gla.chunk_gla(q, k, v, x["g"], **common)
            else:
                o, ht = gla.fused_recurrent_gla(q, k, v, gk=x["g"], **common)
        else:
            f = sgla.chunk_simple_gla if chunk else sgla.fused_recurrent_simple_gla
            o, ht = f(q, k, v, g=x["g"], **common)
        return o, ht.transpose(-1, -2)
    return run


# -- correctness --------------------------------------------------------------------------------
def rel(x, ref):
    return ((x.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


def errors_against(fn, ref_fn, model):
    x = make_inputs(model, *CHECK_SHAPE, torch.bfloat16, seed=1)
    names = [n for n in x]
    leaves = {n: t.detach().clone().requires_grad_() for n, t in x.items()}
    ref_leaves = {n: t.detach().float().clone().requires_grad_() for n, t in x.items()}
    o, ht = fn(leaves)
    ro, rht = ref_fn(ref_leaves)
    gen = torch.Generator(device="cuda").manual_seed(2)
    wo = torch.randn(ro.shape, generator=gen, device="cuda")
    wh = torch.randn(rht.shape, generator=gen, device="cuda")
    grads = torch.autograd.grad((o.float() * wo).sum() + (ht.float() * wh).sum(),
                                [leaves[n] for n in names], allow_unused=True)
    rgrads = torch.autograd.grad((ro * wo).sum() + (rht * wh).sum(),
                                 [ref_leaves[n] for n in names], allow_unused=True)
    out = {"o": rel(o, ro), "state": rel(ht, rht)}
    for n, g, r in zip(names, grads, rgrads):
        out[f"d{n}"] = float("nan") if g is None else rel(g, r)
    return out


# -- timing -------------------------------------------------------------------------------------
def time_fn(fn, x, backward: bool):
    leaves = [t for t in x.values()]
    if backward:
        for t in leaves:
            t.requires_grad_(True)
    o, ht = fn(x)
    do = torch.randn_like(o)

    def step():
        o, ht = fn(x)
        if backward:
            torch.autograd.backward([o, ht], [do, torch.ones_like(ht)])
    ms = do_bench(step, warmup=10, rep=50, return_mode="median",
                  grad_to_none=leaves if backward else None)
    for t in leaves:
        t.requires_grad_(False)
        t.grad = None
    return ms


def cold_start(fn, model, shape):
    x = make_inputs(model, *shape, torch.bfloat16, seed=3)
    for t in x.values():
        t.requires_grad_(True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    o, ht = fn(x)
    torch.autograd.backward([o, ht], [torch.ones_like(o), torch.ones_like(ht)])
    torch.cuda.synchronize()
    return time.perf_counter() - start


def profile(model, shape):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    x = make_inputs(model, *shape, torch.bfloat16)
    for t in x.values():
        t.requires_grad_(True)
    fn = ours_chunked(model)
    for _ in range(2):
        o, ht = fn(x)
        torch.autograd.backward([o, ht], [torch.ones_like(o), torch.ones_like(ht)])
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        o, ht = fn(x)
        torch.autograd.backward([o, ht], [torch.ones_like(o), torch.ones_like(ht)])
        torch.cuda.synchronize()
    log(model, shape, "one forward + backward, CUDA time per kernel")
    log(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25,
                                  max_name_column_width=60))


def short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ").replace("|", "/")
    return text[:160]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--skip-cold", action="store_true",
                        help="no cold-start section (fla's autotuning takes minutes)")
    parser.add_argument("--cold", default=None,
                        help="the models whose cold start is timed (default: every one)")
    parser.add_argument("--check", default="ours chunked,fla chunk",
                        help="which kernels the correctness section checks")
    parser.add_argument("--skip", default="",
                        help="MODEL:KERNEL pairs not to time, comma-separated (GLA:fla chunk: "
                             "fla's chunk_gla autotunes for more than a device call lasts)")
    parser.add_argument("--profile", action="store_true",
                        help="only the per-kernel CUDA times of ours chunked (torch.profiler), "
                             "each model at each shape, no timing tables")
    parser.add_argument("--forward-only", action="store_true",
                        help="time forward passes only: fla's backward kernels then never "
                             "autotune (fla's chunk_gla as a whole autotuned past 7 minutes)")
    parser.add_argument("--shapes", default="",
                        help="B,T,H,D shapes separated by ';' (default: both of SHAPES)")
    args = parser.parse_args()
    skip = {tuple(pair.split(":", 1)) for pair in args.skip.split(",") if ":" in pair}
    shapes = [tuple(int(n) for n in s.split(",")) for s in args.shapes.split(";") if s] \
        or SHAPES
    models = args.models.split(",")
    if args.profile:
        for model in models:
            for shape in shapes:
                profile(model, shape)
        return
    try:
        import fla
        fla_version = getattr(fla, "__version__", "?")
    except ImportError as e:
        fla_version = f"missing ({e})"
    lines = [f"# Chunked kernels vs fla, {time.strftime('%Y-%m-%d')}", "",
             f"{torch.cuda.get_device_name()}, torch {torch.__version__}, Triton "
             f"{triton.__version__}, Python {platform.python_version()}, fla-core "
             f"{fla_version}. bf16 inputs, do_bench medians in ms.", ""]

    lines += ["## Cold start: first forward + backward call, empty Triton cache",
              f"(B, T, H, D) = {SHAPES[0]}; seconds of wall time.", "",
              "| model | ours chunked | fla chunk |", "|---|---|---|"]
    for model in [] if args.skip_cold else (args.cold.split(",") if args.cold else models):
        cells = []
        for fn in (ours_chunked(model), fla_fn(model, True)):
            try:
                cells.append(f"{cold_start(fn, model, SHAPES[0]):.1f}")
            except Exception as e:
                cells.append(short(e))
        log(model, "cold", cells)
        lines.append(f"| {model} | {' | '.join(cells)} |")
    lines.append("")

    lines += ["## bf16 correctness against float32 PyTorch chunked forms",
              f"(B, T, H, D) = {CHECK_SHAPE}, initial state; relative Frobenius errors.", "",
              "| model | kernel | errors |", "|---|---|---|"]
    for model in models:
        for name, make in (("ours chunked", lambda: ours_chunked(model)),
                           ("fla chunk", lambda: fla_fn(model, True))):
            if name not in args.check.split(",") or (model, name) in skip:
                continue
            try:  # built here: fla has no rule for some models
                errs = errors_against(make(), torch_reference(model), model)
                worst = max(errs.values())
                text = ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
                text = f"worst {worst:.1e} ({text})"
            except Exception as e:  # fla's refusals and our missing kernels are results too
                text = short(e)
            log(model, name, text)
            lines.append(f"| {model} | {name} | {text} |")
    lines.append("")

    impls = [("ours chunked", ours_chunked), ("ours recurrent", ours_recurrent),
             ("fla chunk", lambda m: fla_fn(m, True)),
             ("fla fused recurrent", lambda m: fla_fn(m, False)),
             ("ours PyTorch chunked", torch_reference)]  # timed where no recurrent kernel is

    for shape in shapes:
        lines += [f"## (B, T, H, D) = {shape}", "",
                  "| model | kernel | fwd | fwd+bwd | fwd / fla chunk | fwd+bwd / fla chunk |",
                  "|---|---|---|---|---|---|"]
        for model in models:
            x = make_inputs(model, *shape, torch.bfloat16)
            times = {}
            for name, make in impls:
                if name == "ours PyTorch chunked" and model not in TORCH_TIMED:
                    continue
                cells = []
                for backward in (False, True):
                    if (model, name) in skip:
                        cells.append("not timed (--skip)")
                        continue
                    if backward and args.forward_only:
                        cells.append("not timed (--forward-only)")
                        continue
                    try:
                        ms = time_fn(make(model), x, backward)
                        cells.append(ms)
                    except Exception as e:
                        cells.append(short(e))
                        if os.environ.get("NLC_BENCH_TRACE"):
                            traceback.print_exc()
                times[name] = cells
                log(shape, model, name, cells)
            ref = times["fla chunk"]  # a skipped or refused reference leaves no ratio
            for name, cells in times.items():
                text = [f"{c:.3f}" if isinstance(c, float) else c for c in cells]
                ratios = [f"{c / r:.2f}x" if isinstance(c, float) and isinstance(r, float)
                          else "" for c, r in zip(cells, ref)]
                lines.append(f"| {model} | {name} | {' | '.join(text + ratios)} |")
            args.out.write_text("\n".join(lines) + "\n")  # partial results survive a timeout
            del x
            torch.cuda.empty_cache()
        B, T, H, D = shape
        q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        sdpa = []
        for backward in (False, True):
            for t in (q, k, v):
                t.requires_grad_(backward)

            def step():
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                if backward:
                    o.backward(torch.ones_like(o))
            sdpa.append(do_bench(step, warmup=10, rep=50, return_mode="median",
                                 grad_to_none=[q, k, v] if backward else None))
        log(shape, "sdpa", sdpa)
        lines += [f"| softmax attention | torch SDPA causal (flash) | {sdpa[0]:.3f} | "
                  f"{sdpa[1]:.3f} | | |", ""]
    args.out.write_text("\n".join(lines) + "\n")
    log("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
