"""GPU results for the runtime: data-parallel agreement and scaling, MQAR accuracy, byte-level
LM bits per byte, and training throughput against fla-core's chunk_delta_rule.

    python benchmarks/gpu_train.py --out DIR [--parts ddp,mqar,lm,throughput,results]

Each part writes DIR/<part>.md (markdown) and prints it. Every run is an `nlc train`
subprocess (a spec compiled on the spot); runs of different models go to different GPUs in
parallel when there are several. NCCL_NVLS_ENABLE=0 is kept for every child."""

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

ENV = dict(os.environ, NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1",
           NVSHMEM_DISABLE_NVLS="1", PYTHONUNBUFFERED="1")
ROOT = Path(__file__).resolve().parents[1]
MODELS = ["linear_attention", "deltanet", "gated_deltanet", "titans", "softmax_attention"]


def spec_of(model: str) -> str:
    """examples/MODEL.nl, or a variant spec in benchmarks/specs/MODEL.nl."""
    example = ROOT / "examples" / f"{model}.nl"
    return str(example if example.exists() else ROOT / "benchmarks" / "specs" / f"{model}.nl")


def header() -> str:
    return (f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, torch "
            f"{torch.__version__}, Triton {__import__('triton').__version__}, "
            f"{datetime.date.today()}")


def nlc_train(spec, out, args, gpu=None, nproc=1):
    env = dict(ENV)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    cmd = [sys.executable, "-m", "nlc", "train", spec, "--out", str(out), "--quiet", *args]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    # run outside the checkout, so that the installed nlc (with nlc.runtime) is imported
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd="/tmp")


def finish(proc, label):
    out, _ = proc.communicate()
    if proc.returncode != 0:
        print(f"--- {label} failed (exit {proc.returncode}):\n{out[-3000:]}", flush=True)
    return proc.returncode == 0, out


def metrics(run: Path, kind: str):
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("kind") == kind]


def summary(run: Path) -> dict:
    path = run / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def in_parallel(jobs, gpus):
    """jobs: (label, spec, out, args); at most one per GPU at a time."""
    results, queue = {}, list(jobs)
    while queue:
        batch, queue = queue[:gpus], queue[gpus:]
        procs = [(label, out, nlc_train(spec, out, args, gpu=i))
                 for i, (label, spec, out, args) in enumerate(batch)]
        for label, out, proc in procs:
            ok, text = finish(proc, label)
            results[label] = (ok, out, text)
    return results


def part_ddp(out: Path, steps: int) -> str:
    """1 GPU vs 2 GPUs (DDP over NCCL) at the same global batch, fp32: losses and tokens/s."""
    args = ["--task", "lm", "--steps", str(steps), "--batch-size", "32", "--seq-len", "512",
            "--d-model", "256", "--n-layers", "2", "--no-bf16", "--eval-interval", "0",
            "--checkpoint-interval", "0", "--log-interval", "1", "--warmup", "10"]
    spec = str(ROOT / "examples/gated_deltanet.nl")
    one, two = out / "ddp1", out / "ddp2"
    finish(nlc_train(spec, one, args, gpu=0), "ddp 1 GPU")
    ok, _ = finish(nlc_train(spec, two, args, nproc=2), "ddp 2 GPUs")
    a, b = metrics(one, "train"), metrics(two, "train")
    diff = max((abs(x["loss"] - y["loss"]) for x, y in zip(a, b)), default=float("nan"))
    skip = max(len(a) // 4, 1)  # the first steps include compilation and warm-up
    tps = [sum(r["tokens_per_s"] for r in m[skip:]) / max(len(m[skip:]), 1) for m in (a, b)]
    eff = tps[1] / (2 * tps[0]) if tps[0] else float("nan")
    return "\n".join([
        f"## Data parallel (DDP over NCCL), {header()}", "",
        f"Gated DeltaNet from examples/gated_deltanet.nl, byte-level LM, d_model 256, 2 layers, "
        f"global batch 32 x 512 tokens, fp32, {steps} steps; tokens/s averaged after the first "
        f"{skip} logged steps.", "",
        "| GPUs | final loss | tokens/s |", "|---|---|---|",
        f"| 1 | {a[-1]['loss'] if a else 'n/a'} | {tps[0]:.0f} |",
        f"| 2 | {b[-1]['loss'] if b else 'n/a'} | {tps[1]:.0f} |", "",
        f"Largest per-step loss difference, 2 GPUs vs 1: {diff:.2e}. "
        f"Scaling efficiency tokens/s(2) / (2 x tokens/s(1)): {eff:.2f}.", ""])


def part_mqar(out: Path, steps: int) -> str:
    args = ["--task", "mqar", "--seq-len", "256", "--mqar-num-kv-pairs", "16", "--d-model",
            "128", "--n-layers", "2", "--steps", str(steps), "--batch-size", "64", "--lr",
            "1e-3", "--eval-interval", "0", "--checkpoint-interval", "0", "--warmup", "50"]
    jobs = [(m, spec_of(m), out / f"mqar_{m}", args) for m in MODELS]
    start = time.time()
    results = in_parallel(jobs, torch.cuda.device_count())
    rows = ["| model | MQAR accuracy | final train loss | tokens/s |", "|---|---|---|---|"]
    for m in MODELS:
        ok, run, text = results[m]
        s = summary(run)
        ev = metrics(run, "eval")
        acc = ev[-1].get("accuracy") if ev else None
        rows.append(f"| {m} | {acc if acc is not None else 'failed'} | "
                    f"{s.get('final_loss', 'n/a')} | {s.get('tokens_per_s', 0):.0f} |")
    return "\n".join([
        f"## MQAR (L, N) = (256, 16), {header()}", "",
        f"vocab 8192, 2 layers, d_model 128, batch 64, {steps} steps, lr 1e-3, bf16 autocast, "
        f"every model from its spec; {time.time() - start:.0f} s in all.", "", *rows, ""])


def part_lm(out: Path, steps: int) -> str:
    args = ["--task", "lm", "--seq-len", "512", "--d-model", "128", "--n-layers", "2",
            "--steps", str(steps), "--batch-size", "32", "--eval-interval", "0",
            "--checkpoint-interval", "0", "--warmup", "50", "--lr", "2e-3"]
    jobs = [(m, spec_of(m), out / f"lm_{m}", args) for m in MODELS]
    results = in_parallel(jobs, torch.cuda.device_count())
    rows = ["| model | val bits per byte | tokens/s |", "|---|---|---|"]
    for m in MODELS:
        ok, run, _ = results[m]
        ev = metrics(run, "eval")
        bpb = ev[-1].get("bits_per_byte") if ev else None
        rows.append(f"| {m} | {bpb if bpb is not None else 'failed'} | "
                    f"{summary(run).get('tokens_per_s', 0):.0f} |")
    return "\n".join([
        f"## Byte-level LM (Python standard library sources), {header()}", "",
        f"d_model 128, 2 layers, batch 32 x 512 bytes, {steps} steps, lr 2e-3, bf16.", "",
        *rows, ""])


def part_throughput(out: Path, steps: int) -> str:
    """DeltaNet and Gated DeltaNet LMs from our specs vs the same shapes with fla's
    chunk_delta_rule (fla's gated chunk backward refuses on Triton < 3.7.1, fla #640)."""
    from nlc.runtime.trainer.config import TrainConfig
    from nlc.runtime.trainer.model import LanguageModel

    from nlc.factories import mixer_from_spec
    sys.path.insert(0, str(Path(__file__).parent))
    from fla_deltanet import FlaDeltaNet

    cfg = TrainConfig(task="lm", d_model=512, n_layers=4, vocab_size=256)
    B, T = 16, 2048
    rows = ["| mixer | tokens/s (fwd + bwd + AdamW, bf16) |", "|---|---|"]
    for label, factory in [("nlc spec examples/deltanet.nl", mixer_from_spec(
            str(ROOT / "examples/deltanet.nl"), d_k=64, d_v=64, heads=8)),
            ("nlc spec examples/gated_deltanet.nl", mixer_from_spec(
                str(ROOT / "examples/gated_deltanet.nl"), d_k=64, d_v=64, heads=8)),
            ("fla-core chunk_delta_rule", lambda d: FlaDeltaNet(d, heads=8, head_dim=64))]:
        try:
            torch.manual_seed(0)
            model = LanguageModel(cfg, factory).cuda()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            x = torch.randint(0, 256, (B, T), device="cuda")
            times = []
            for step in range(steps):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits = model(x)
                loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1),
                                                         x.flatten())
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            best = sorted(times[2:])[len(times[2:]) // 2]
            rows.append(f"| {label} | {B * T / best:.0f} |")
        except Exception as err:  # record, don't hide
            rows.append(f"| {label} | failed: {type(err).__name__}: {str(err)[:200]} |")
    return "\n".join([
        f"## Training throughput, DeltaNet LM, {header()}", "",
        f"d_model 512, 4 layers, 8 heads of 64, batch {B} x {T} tokens, median of "
        f"{steps - 2} steps after 2 warm-up steps, one card.", "", *rows, ""])


MQAR_ARGS = ["--task", "mqar", "--seq-len", "256", "--mqar-num-kv-pairs", "16", "--d-model",
             "128", "--n-layers", "2", "--batch-size", "64", "--warmup", "100",
             "--eval-interval", "500", "--checkpoint-interval", "0"]
LM_ARGS = ["--task", "lm", "--seq-len", "512", "--d-model", "128", "--n-layers", "2",
           "--batch-size", "32", "--eval-interval", "0", "--checkpoint-interval", "0",
           "--warmup", "50", "--lr", "2e-3"]


def run_plan(plan: dict[int, list[list[tuple]]]) -> dict:
    """plan: GPU -> waves of jobs (label, spec, out, args). On each GPU the jobs of a wave run
    at the same time, the waves one after another; the GPUs go on independently."""
    import threading
    results: dict = {}

    def worker(gpu, waves):
        for wave in waves:
            procs = [(label, out, nlc_train(spec, out, args, gpu=gpu))
                     for label, spec, out, args in wave]
            for label, out, proc in procs:
                ok, text = finish(proc, label)
                results[label] = (ok, out, text)

    threads = [threading.Thread(target=worker, args=(gpu, waves)) for gpu, waves in plan.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def part_results(out: Path, steps: int) -> str:
    """MQAR (256, 16) and the byte-level LM for every model in one go, all runs at once,
    spread round robin over the GPUs. Every MQAR run has the same step count and the same
    wall-clock budget (--time-budget); the table says how many steps each reached.
    Environment: NLC_MQAR_BUDGET, NLC_MQAR_VOCAB, NLC_MQAR_LR, NLC_LM_BUDGET, NLC_LM_MODELS."""
    budget = float(os.environ.get("NLC_MQAR_BUDGET", "330"))
    lm_budget = float(os.environ.get("NLC_LM_BUDGET", "150"))
    spec = {m: spec_of(m) for m in MODELS}
    lr = os.environ.get("NLC_MQAR_LR", "1e-3")
    mqar_args = [*MQAR_ARGS, "--steps", str(steps), "--time-budget", str(budget), "--lr", lr]
    lm_args = [*LM_ARGS, "--steps", "150", "--time-budget", str(lm_budget)]
    vocab = os.environ.get("NLC_MQAR_VOCAB", "8192")
    mqar_args += ["--mqar-vocab-size", vocab]
    lm_models = os.environ.get("NLC_LM_MODELS", ",".join(MODELS)).split(",")
    jobs = [(f"mqar {m}", spec[m], out / f"mqar_{m}", mqar_args) for m in MODELS]
    jobs += [(f"lm {m}", spec[m], out / f"lm_{m}", lm_args) for m in lm_models if m]
    gpus = max(1, torch.cuda.device_count())
    plan = {g: [jobs[g::gpus]] for g in range(gpus)}   # one wave: round robin over the GPUs
    placement = "; ".join(f"GPU {g}: " + ", ".join(j[0] for j in jobs[g::gpus])
                          for g in range(gpus))
    start = time.time()
    results = run_plan(plan)
    rows = ["| model | MQAR accuracy | steps reached | evals (step: accuracy) | final train loss "
            "| LM bits per byte | LM steps |", "|---|---|---|---|---|---|---|"]
    for m in MODELS:
        run = out / f"mqar_{m}"
        ev = metrics(run, "eval")
        s = summary(run)
        acc = f"{ev[-1]['accuracy']:.4f}" if ev else "failed"
        if metrics(run, "diverged"):
            acc = f"diverged at step {metrics(run, 'diverged')[0]['step']}"
        curve = ", ".join(f"{e['step']}: {e['accuracy']:.3f}" for e in ev)
        lm = metrics(out / f"lm_{m}", "eval")
        bpb = f"{lm[-1]['bits_per_byte']:.3f}" if lm else "failed"
        if metrics(out / f"lm_{m}", "diverged"):
            bpb = f"diverged at step {metrics(out / f'lm_{m}', 'diverged')[0]['step']}"
        rows.append(f"| {m} | {acc} | {s.get('steps', '-')} | {curve} | "
                    f"{s.get('final_loss', float('nan')):.3f} | {bpb} | "
                    f"{summary(out / f'lm_{m}').get('steps', '-')} |")
    return "\n".join([
        f"## MQAR (L, N) = (256, 16) and byte-level LM, {header()}", "",
        f"MQAR: vocab {vocab}, 2 layers, d_model 128, batch 64, lr {lr} (warmup 100, cosine "
        f"over {steps} steps), bf16 autocast, at most {steps} steps or {budget:.0f} s each. "
        f"LM: d_model 128, 2 layers, batch 32 x 512 bytes, lr 2e-3, 150 steps or "
        f"{lm_budget:.0f} s. All runs at once ({placement}); {time.time() - start:.0f} s in "
        "all.", "", *rows, ""])


PARTS = {"ddp": part_ddp, "mqar": part_mqar, "lm": part_lm, "throughput": part_throughput,
         "results": part_results}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--parts", default="ddp,mqar,lm,throughput")
    p.add_argument("--models", default=",".join(MODELS), help="for mqar and lm")
    p.add_argument("--steps", type=json.loads,
                   default={"ddp": 40, "mqar": 600, "lm": 300, "throughput": 10,
                            "results": 3000})
    a = p.parse_args()
    MODELS[:] = a.models.split(",")
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for part in a.parts.split(","):
        start = time.time()
        try:
            text = PARTS[part](out, a.steps[part])
        except Exception as err:  # one part failing must not lose the others
            text = f"## {part}: failed: {type(err).__name__}: {err}\n"
        text += f"\n({part}: {time.time() - start:.0f} s)\n"
        (out / f"{part}.md").write_text(text)
        print(text, flush=True)


if __name__ == "__main__":
    main()
