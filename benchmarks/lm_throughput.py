"""LM training throughput, peak memory and cold start (GPU), one row per mixer, each row in its
own process: our generated layers (eager and under torch.compile) next to fla's layers and
a hand-written layer on fla's chunk_delta_rule, at the LM shape of docs/perf.md (d_model 512,
4 layers, 8 heads of 64, batch 16 x 2048, bf16 autocast, AdamW).

    python benchmarks/lm_throughput.py [--rows deltanet,fla_deltanet,...] [--steps 10]
                                       [--batch 16 --seq-len 2048] [--out FILE]

A row's cold start is its first step's wall time in a fresh process (compile, autotune, CUDA
graph capture and the allocator's first touch); Triton's on-disk cache is per machine, so the
first row that uses a kernel pays for compiling it. Rows that fail are reported with their error."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HEADS, HEAD_DIM, D_MODEL, LAYERS = 8, 64, 512, 4


def _spec(name, **dims):
    from nlc.factories import mixer_from_spec
    return mixer_from_spec(str(ROOT / "examples" / f"{name}.nl"), heads=HEADS, **dims)


def _fla_layer(cls_name, **kw):
    from fla import layers
    cls = getattr(layers, cls_name)

    class Wrapped(torch.nn.Module):  # fla's layers return (output, attentions, cache)
        def __init__(self, d):
            super().__init__()
            self.inner = cls(hidden_size=d, num_heads=HEADS, **kw)

        def forward(self, x):
            return self.inner(x)[0]
    return Wrapped


def _ours_in_fla_gdn(d):
    """fla's GatedDeltaNet layer (projections, short convolutions, gated RMS norm) with its
    chunk_gated_delta_rule call replaced by our chunked kernel: the layer's context code with
    our kernel, since fla's gated backward refuses on Triton < 3.7.1 (fla #640)."""
    import fla.layers.gated_deltanet as gdn
    import torch.nn.functional as F
    from nlc.runtime.library.chunk_delta_triton import chunk_scalar

    def ours(q, k, v, g, beta, scale=None, A_log=None, dt_bias=None, **_):
        q, k = F.normalize(q.float(), dim=-1), F.normalize(k.float(), dim=-1)
        beta = beta.float().sigmoid()
        ld = -A_log.float().exp() * F.softplus(g.float() + dt_bias.float())
        q = q * (q.shape[-1] ** -0.5 if scale is None else scale)
        o, _ = chunk_scalar(q, k, v.float() * beta[..., None], beta, ld)
        return o.to(v.dtype), None
    gdn.chunk_gated_delta_rule = ours
    return _fla_layer("GatedDeltaNet", head_dim=HEAD_DIM, expand_v=1.0)(d)


def _hand_fla_deltanet(d):
    sys.path.insert(0, str(Path(__file__).parent))
    from fla_deltanet import FlaDeltaNet
    return FlaDeltaNet(d, heads=HEADS, head_dim=HEAD_DIM)


ROWS = {
    "deltanet": ("nlc examples/deltanet.nl", lambda: _spec("deltanet", d_k=64, d_v=64), False),
    "deltanet_compiled": ("nlc examples/deltanet.nl, torch.compile",
                          lambda: _spec("deltanet", d_k=64, d_v=64), True),
    "gated_deltanet": ("nlc examples/gated_deltanet.nl",
                       lambda: _spec("gated_deltanet", d_k=64, d_v=64), False),
    "gated_deltanet_unfused": ("nlc examples/gated_deltanet.nl, NLC_CONTEXT_TRITON=0",
                               lambda: _spec("gated_deltanet", d_k=64, d_v=64), False),
    "gated_deltanet_compiled": ("nlc examples/gated_deltanet.nl, torch.compile",
                                lambda: _spec("gated_deltanet", d_k=64, d_v=64), True),
    "titans": ("nlc examples/titans.nl", lambda: _spec("titans", d_head=64), False),
    "titans_kept": ("nlc examples/titans.nl, NLC_RECOMPUTE_CHUNKS=0 (chunk activations kept)",
                    lambda: _spec("titans", d_head=64), False),
    "titans_graphed_kept": ("nlc examples/titans.nl, CUDA graphs, NLC_RECOMPUTE_CHUNKS=0",
                            lambda: _spec("titans", d_head=64), "graphs"),
    "titans_compiled_chunks": ("nlc examples/titans.nl, NLC_COMPILE_CHUNKS=1",
                               lambda: _spec("titans", d_head=64), False),
    "titans_graphed": ("nlc examples/titans.nl, forward and backward as CUDA graphs",
                       lambda: _spec("titans", d_head=64), "graphs"),
    "titans_graphed_torch_terms": ("nlc examples/titans.nl, CUDA graphs, NLC_TERMS_TRITON=0",
                                   lambda: _spec("titans", d_head=64), "graphs"),
    "hope_graphed_torch_terms": ("nlc examples/hope.nl, CUDA graphs, NLC_TERMS_TRITON=0",
                                 lambda: _spec("hope", d_head=64), "graphs"),
    # the kernels that run only when asked (docs/triton.md): the chunk-start terms, the
    # affine combine
    "titans_graphed_terms_kernels": ("nlc examples/titans.nl, CUDA graphs, NLC_TERMS_TRITON=1",
                                     lambda: _spec("titans", d_head=64), "graphs"),
    "hope_graphed_terms_kernels": ("nlc examples/hope.nl, CUDA graphs, NLC_TERMS_TRITON=1",
                                   lambda: _spec("hope", d_head=64), "graphs"),
    "hope_graphed_affine_kernels": ("nlc examples/hope.nl, CUDA graphs, NLC_AFFINE_TRITON=1",
                                    lambda: _spec("hope", d_head=64), "graphs"),
    # Inductor fuses each chunk's elementwise passes, the graphs replay the launches
    "titans_graphed_compiled_chunks": ("nlc examples/titans.nl, CUDA graphs, NLC_COMPILE_CHUNKS=1",
                                       lambda: _spec("titans", d_head=64), "graphs"),
    "fla_hand_deltanet": ("hand layer on fla chunk_delta_rule", lambda: _hand_fla_deltanet,
                          False),
    "fla_hand_deltanet_compiled": ("hand layer on fla chunk_delta_rule, torch.compile",
                                   lambda: _hand_fla_deltanet, True),
    "fla_deltanet": ("fla.layers.DeltaNet (chunk)",
                     lambda: _fla_layer("DeltaNet", expand_k=1.0, expand_v=1.0), False),
    "fla_gated_deltanet": ("fla.layers.GatedDeltaNet (chunk)",
                           lambda: _fla_layer("GatedDeltaNet", head_dim=HEAD_DIM,
                                              expand_v=1.0), False),
    "fla_gdn_our_kernel": ("fla.layers.GatedDeltaNet, our chunked kernel",
                           lambda: _ours_in_fla_gdn, False),
    "fla_gdn_our_kernel_compiled": ("fla.layers.GatedDeltaNet, our chunked kernel, torch.compile",
                                    lambda: _ours_in_fla_gdn, True),
    "hope": ("nlc examples/hope.nl (Hope: self-modifying Titans + CMS)",
             lambda: _spec("hope", d_head=64), False),
    "hope_graphed": ("nlc examples/hope.nl, forward and backward as CUDA graphs",
                     lambda: _spec("hope", d_head=64), "graphs"),
    "hope_graphed_compiled_chunks": ("nlc examples/hope.nl, CUDA graphs, NLC_COMPILE_CHUNKS=1",
                                     lambda: _spec("hope", d_head=64), "graphs"),
    # the other MLP memories: does each train at T = 2048 on one GPU, how fast, how large
    "ttt_mlp": ("nlc examples/ttt_mlp.nl", lambda: _spec("ttt_mlp", d_head=64), False),
    "moneta": ("nlc examples/moneta.nl", lambda: _spec("moneta", d_head=64), False),
    # the float32 products of Titans' memory on the tensor cores: the dual reads' kernels as
    # three TF32 products (close to float32), or those as one and cuBLAS's float32 GEMMs as
    # TF32 too (`nlc train --tf32`: TF32_ROWS)
    "titans_graphed_dual_tf32x3": ("nlc examples/titans.nl, CUDA graphs, NLC_DUAL_PREC=tf32x3",
                                   lambda: _spec("titans", d_head=64), "graphs"),
    "titans_graphed_tf32": ("nlc examples/titans.nl, CUDA graphs, --tf32 (dual reads and "
                            "GEMMs in TF32)", lambda: _spec("titans", d_head=64), "graphs"),
    # the fastest settings of the sections above together: CUDA graphs with compiled chunks
    # (and, for Titans, TF32 as `nlc train --tf32`)
    "ttt_mlp_graphed_compiled_chunks": ("nlc examples/ttt_mlp.nl, CUDA graphs, "
                                        "NLC_COMPILE_CHUNKS=1",
                                        lambda: _spec("ttt_mlp", d_head=64), "graphs"),
    # compiled chunks that trace the dual form's PyTorch forms (the default before the dual
    # kernels became custom ops), against the default, which calls the kernels from the
    # compiled chunks so that their TF32 products run there too
    "titans_graphed_compiled_tf32": ("nlc examples/titans.nl, CUDA graphs, NLC_COMPILE_CHUNKS=1, "
                                     "NLC_COMPILE_DUAL_KERNELS=0, --tf32",
                                     lambda: _spec("titans", d_head=64), "graphs"),
    "titans_graphed_compiled_kernels_tf32": ("nlc examples/titans.nl, CUDA graphs, "
                                             "NLC_COMPILE_CHUNKS=1, NLC_COMPILE_DUAL_KERNELS=1, "
                                             "--tf32", lambda: _spec("titans", d_head=64),
                                             "graphs"),
    # the same with each compiled chunk's activations kept (Inductor chooses what to save):
    # no forward pass of the chunk again in the backward pass, at some memory
    "titans_graphed_compiled_kernels_tf32_kept": ("nlc examples/titans.nl, CUDA graphs, "
                                                  "NLC_COMPILE_CHUNKS=1, NLC_RECOMPUTE_CHUNKS=0, "
                                                  "--tf32", lambda: _spec("titans", d_head=64),
                                                  "graphs"),
    # Hope's chunks spent about half of a step in cuBLAS's float32 GEMMs on the FMA units
    # (docs/perf.md, ninth batch): the same with --tf32
    "hope_graphed_compiled_chunks_tf32": ("nlc examples/hope.nl, CUDA graphs, "
                                          "NLC_COMPILE_CHUNKS=1, --tf32",
                                          lambda: _spec("hope", d_head=64), "graphs"),
    "yaad": ("nlc examples/yaad.nl", lambda: _spec("yaad", d_head=64), False),
    "memora": ("nlc examples/memora.nl", lambda: _spec("memora", d_head=64), False),
}


# set in the row's process; `_unfused`: the context ops on PyTorch, not the fused kernels
# of runtime/library/context_triton.py (the default on CUDA); `_kept`: the chunks' activations
# kept for the backward pass, not recomputed (the default on CUDA recomputes them)
ENV = {"titans_compiled_chunks": {"NLC_COMPILE_CHUNKS": "1"},
       "titans_graphed_compiled_chunks": {"NLC_COMPILE_CHUNKS": "1"},
       "hope_graphed_compiled_chunks": {"NLC_COMPILE_CHUNKS": "1"},
       "hope_graphed_compiled_chunks_tf32": {"NLC_COMPILE_CHUNKS": "1"},
       "ttt_mlp_graphed_compiled_chunks": {"NLC_COMPILE_CHUNKS": "1"},
       "titans_graphed_compiled_tf32": {"NLC_COMPILE_CHUNKS": "1",
                                        "NLC_COMPILE_DUAL_KERNELS": "0"},
       "titans_graphed_compiled_kernels_tf32": {"NLC_COMPILE_CHUNKS": "1",
                                                "NLC_COMPILE_DUAL_KERNELS": "1"},
       "titans_graphed_compiled_kernels_tf32_kept": {"NLC_COMPILE_CHUNKS": "1",
                                                     "NLC_COMPILE_DUAL_KERNELS": "1",
                                                     "NLC_RECOMPUTE_CHUNKS": "0"},
       "titans_graphed_torch_terms": {"NLC_TERMS_TRITON": "0"},
       "hope_graphed_torch_terms": {"NLC_TERMS_TRITON": "0"},
       "titans_graphed_terms_kernels": {"NLC_TERMS_TRITON": "1"},
       "hope_graphed_terms_kernels": {"NLC_TERMS_TRITON": "1"},
       "hope_graphed_affine_kernels": {"NLC_AFFINE_TRITON": "1"},
       "titans_kept": {"NLC_RECOMPUTE_CHUNKS": "0"},
       "titans_graphed_kept": {"NLC_RECOMPUTE_CHUNKS": "0"},
       "gated_deltanet_unfused": {"NLC_CONTEXT_TRITON": "0"},
       "titans_graphed_dual_tf32x3": {"NLC_DUAL_PREC": "tf32x3"}}
# run as `nlc train --tf32` does (train.use_tf32)
TF32_ROWS = {"titans_graphed_tf32", "titans_graphed_compiled_tf32",
             "titans_graphed_compiled_kernels_tf32", "titans_graphed_compiled_kernels_tf32_kept",
             "hope_graphed_compiled_chunks_tf32"}

# Variants of the fastest rows, named by a suffix, each setting one more variable:
# `_outside`: the checkpoint around each compiled chunk instead of inside it (how chunks were
# recomputed before scan.chunk_runner: the backward pass runs the chunk's whole forward
# again, the chunk end and the reads' outputs included); `_saved_reads`, `_saved_narrow`,
# `_saved_none`: what the recomputed compiled chunks keep of the dual reads' outputs (all,
# 10 KiB per token and layer, the default since the sixteenth batch; those no wider than
# their input, 2 KiB, the default from the fourteenth; none), not run again in the backward
# pass; `_combo`, `_tuned`,
# `_autotuned`: Inductor settings for the compiled chunks (scan.inductor_options): independent
# kernels launched as one (the default since the fifteenth batch), each kernel's launch
# settings tuned, the products' kernels chosen by timing Triton's against cuBLAS's; `_plain`:
# Inductor's defaults; `_group` / `_nogroup`: Hope's generating memories on the fused group
# kernels (runtime/library/fused_group.py, on by default on CUDA since session 50) or not;
# `_walk`: Hope's main memory on the walk kernels as well (runtime/library/fused_walk.py)
VARIANTS = {"_group": {"NLC_GROUP_KERNEL": "1"}, "_nogroup": {"NLC_GROUP_KERNEL": "0"},
            "_walk": {"NLC_GROUP_KERNEL": "1", "NLC_WALK_KERNEL": "1"},
            "_outside": {"NLC_CHECKPOINT_OUTSIDE": "1"}, "_saved_reads": {"NLC_SAVE_READS": "1"},
            "_saved_narrow": {"NLC_SAVE_READS": "narrow"}, "_saved_none": {"NLC_SAVE_READS": "0"},
            "_combo": {"NLC_CHUNK_INDUCTOR": "combo_kernels=1"},
            "_plain": {"NLC_CHUNK_INDUCTOR": ""},
            "_tuned": {"NLC_CHUNK_INDUCTOR": "coordinate_descent_tuning=1"},
            "_autotuned": {"NLC_CHUNK_INDUCTOR": "max_autotune=1 "
                                                 "max_autotune_gemm_backends=TRITON,ATEN"}}
_HOPE_ONLY = ("_group", "_nogroup", "_walk")
for _base, _suffixes in (("titans_graphed_compiled_kernels_tf32",
                          tuple(v for v in VARIANTS if v not in _HOPE_ONLY)),
                         ("hope_graphed_compiled_chunks_tf32",
                          ("_outside", "_combo", "_plain", "_tuned", "_group", "_nogroup",
                           "_walk"))):
    for _suffix in _suffixes:
        _label, _build, _mode = ROWS[_base]
        _set = ", ".join(f"{k}={v}" for k, v in VARIANTS[_suffix].items())
        ROWS[_base + _suffix] = (_label.replace(", --tf32", f", {_set}, --tf32"), _build, _mode)
        ENV[_base + _suffix] = {**ENV[_base], **VARIANTS[_suffix]}
        TF32_ROWS.add(_base + _suffix)


def run_row(name: str, steps: int, B: int, T: int, profile_to: str | None = None) -> dict:
    from nlc.runtime.trainer.config import TrainConfig
    from nlc.runtime.trainer.distributed import World
    from nlc.runtime.trainer.model import LanguageModel
    from nlc.runtime.trainer.train import autocast_for, graphed, use_tf32
    label, factory, compiled = ROWS[name]
    cfg = TrainConfig(task="lm", d_model=D_MODEL, n_layers=LAYERS, vocab_size=256,
                      cuda_graphs=compiled == "graphs", tf32=name in TF32_ROWS)
    torch.manual_seed(0)
    model = LanguageModel(cfg, factory()).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (B, T), device="cuda")
    world = World(device=torch.device("cuda"))
    if cfg.tf32:
        use_tf32(world)
    autocast = autocast_for(cfg, world.device)  # the trainer's (its cache off under graphs)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if cfg.cuda_graphs:  # `nlc train --cuda-graphs`: the step's launches replay as one graph
        forward = graphed(model, x, world, cfg)
    else:
        forward = torch.compile(model) if compiled else model
    capture = time.perf_counter() - t0
    times, loss = timed_steps(forward, opt, x, autocast, steps)
    warm = sorted(times[2:])
    if profile_to:  # one more step under the profiler, after the timed ones
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            timed_steps(forward, opt, x, autocast, 1)
        # kernel names in full: a template's functor says which elementwise op it is
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40,
                                          max_name_column_width=400)
        Path(profile_to, f"{name}_profile.txt").write_text(f"{label}\n{table}\n")
        # every kernel in launch order (start and duration in us): where the forward graph
        # ends and the backward begins, and which kernels repeat per chunk
        kernels = sorted((e.time_range.start, e.time_range.elapsed_us(), e.name)
                         for e in prof.events() if e.device_type.name == "CUDA")
        Path(profile_to, f"{name}_kernels.tsv").write_text(
            "".join(f"{t:.1f}\t{d:.1f}\t{n[:120]}\n" for t, d, n in kernels))
    return {"label": label, "tokens_per_s": B * T / warm[len(warm) // 2],
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
            "first_step_s": times[0] + capture,
            "loss": loss}


def timed_steps(forward, opt, x, autocast, steps: int) -> tuple[list[float], float]:
    """`steps` LM training steps on the tokens `x` (next-byte cross-entropy, `opt` stepping):
    the wall time of each, synchronized, and the last loss."""
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast():
            logits = forward(x)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times, loss.item()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--out", default=None, help="also write the table here (markdown)")
    p.add_argument("--profile-to", default=None,
                   help="a folder: profile one more step of each row (CUDA kernels, after the "
                        "timed steps) into ROW_profile.txt there")
    p.add_argument("--row", default=None, help=argparse.SUPPRESS)  # child process
    a = p.parse_args()
    if a.row:
        print(json.dumps(run_row(a.row, a.steps, a.batch, a.seq_len, a.profile_to)))
        return
    if a.steps < 3:
        p.error("--steps must be at least 3: the first 2 steps are warm-up and not timed")
    unknown = set(a.rows.split(",")) - set(ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    lines = [(f"## LM training step: {torch.cuda.get_device_name(0)}, torch {torch.__version__},"
             f" Triton {__import__('triton').__version__}, {datetime.date.today()}"), "",
             (f"d_model {D_MODEL}, {LAYERS} layers, {HEADS} heads of {HEAD_DIM}, batch "
             f"{a.batch} x {a.seq_len}, bf16 autocast, AdamW; median of {a.steps - 2} steps "
             "after 2 warm-up steps; each row in a fresh process."), "",
             "| mixer | tokens/s | peak GiB | first step s |", "|---|---|---|---|"]
    for name in a.rows.split(","):
        extra = ["--profile-to", a.profile_to] if a.profile_to else []
        proc = subprocess.run([sys.executable, __file__, "--row", name, "--steps", str(a.steps),
                               "--batch", str(a.batch), "--seq-len", str(a.seq_len), *extra],
                              check=False, capture_output=True, text=True,
                              env={**os.environ, **ENV.get(name, {})})
        try:
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            lines.append(f"| {r['label']} | {r['tokens_per_s']:.0f} | {r['peak_gib']:.1f} | "
                         f"{r['first_step_s']:.1f} |")
        except (IndexError, json.JSONDecodeError):
            err = " / ".join(proc.stderr.strip().splitlines()[-3:]) or "no output"
            lines.append(f"| {ROWS[name][0]} | failed: {err[:500]} | | |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
