"""Bytes a layer keeps for its backward pass, per token, with whole chunks recomputed or kept.

    python benchmarks/saved_activations.py [--B 1] [--T 256] [--specs titans,ttt_mlp,...]
        [--device cuda] [--bf16] [--breakdown]

Device-independent: it counts the distinct storages alive after one forward pass (what
autograd saved, and what checkpointed chunks hold to recompute) of the generated layer at the
LM's sizes
(d_model 512, 8 heads of 64; fp32, no autocast), once with `NLC_RECOMPUTE_CHUNKS=0` (each
chunk's activations kept, the CPU default) and once with `=1` (only the chunk-start states
kept, the CUDA default; runtime/library/scan.py `recompute_chunks`). This is the part of peak
memory that grows with batch x length: times 4 layers and 16 x 2048 tokens it is most of an LM
step's peak. Prints a markdown table with the machine, versions and date (docs/perf.md).

`--device cuda --bf16` measures the path an LM step on a GPU takes (the fused context
kernels, the dual kernels, bf16 autocast; with NLC_COMPILE_CHUNKS=1 in the environment, the
compiled chunks), and `--breakdown` lists, per spec with its chunks recomputed, what the
bytes are: the kept storages grouped by shape (the batch axis left out), dtype and the
operation that made them, largest first."""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import re
import warnings
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensor

from nlc import __version__
from nlc.factories import mixer_from_spec

ROOT = Path(__file__).resolve().parents[1]
LM_TOKENS, LM_LAYERS = 16 * 2048, 4


def head_dims(spec: Path) -> dict:
    """Heads of 64: `d_k` and `d_v` where the spec names its heads' widths so (DeltaNet and
    the other matrix memories), else `d_head`."""
    declared = re.search(r"\bd_k\s*=", spec.read_text())
    return {"d_k": 64, "d_v": 64} if declared else {"d_head": 64}


def kept_storages(layer: torch.nn.Module, x: torch.Tensor, bf16: bool = False) -> dict:
    """The storages alive after the forward pass, beyond the parameters and x: what autograd
    saved (the hook turns each into a Python object gc can see) and what a checkpointed chunk
    holds for its recomputation (its inputs). Each as (bytes, (shape, dtype, the operation
    that made the tensor)); under bf16 autocast on x's device with `bf16`."""
    before = _storages()
    with (torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t),
          torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16)):
        y = layer(x)
    alive = _storages()
    del y
    return {key: found for key, found in alive.items() if key not in before}


def _storages() -> dict:
    gc.collect()
    found = {}
    with warnings.catch_warnings():  # isinstance on deprecated torch module attributes warns
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        if isinstance(obj, FakeTensor):  # compiling chunks (NLC_COMPILE_CHUNKS=1) leaves them
            continue
        storage = obj.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in found or obj.numel() * obj.element_size() == storage.nbytes():
            made_by = type(obj.grad_fn).__name__ if obj.grad_fn is not None else "leaf"
            found[key] = (storage.nbytes(), (tuple(obj.shape[1:]), str(obj.dtype), made_by))
    return found


def breakdown(storages: dict, tokens: int, top: int = 12) -> list[str]:
    """Markdown rows: KiB per token of the largest groups of kept storages."""
    groups: dict = {}
    for nbytes, kind in storages.values():
        count, total = groups.get(kind, (0, 0))
        groups[kind] = (count + 1, total + nbytes)
    rows = sorted(groups.items(), key=lambda kv: -kv[1][1])[:top]
    return [f"| {list(shape)} | {dtype} | {made_by} | {count} | {total / tokens / 1024:.2f} |"
            for (shape, dtype, made_by), (count, total) in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--T", type=int, default=256)
    parser.add_argument("--specs", default="titans,ttt_mlp,ttt_linear,hope,moneta,yaad,memora,"
                                            "gated_deltanet")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--bf16", action="store_true", help="under bf16 autocast, as an LM step")
    parser.add_argument("--breakdown", action="store_true",
                        help="list what the recomputed chunks' bytes are, by tensor kind")
    args = parser.parse_args()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name() if device.type == "cuda" else platform.machine()
    precision = "bf16 autocast" if args.bf16 else "fp32"
    print(f"{where}, torch {torch.__version__}, nlc {__version__}, "
          f"{datetime.date.today()}; d_model 512, 8 heads of 64, {precision}, B = {args.B}, "
          f"T = {args.T}, NLC_COMPILE_CHUNKS={os.environ.get('NLC_COMPILE_CHUNKS', '')!r}; "
          f"KiB kept per token and layer, and that times {LM_LAYERS} layers x {LM_TOKENS} "
          "tokens in GiB\n")
    print("| spec | chunks kept | chunks recomputed | LM (kept) | LM (recomputed) |")
    print("|---|---|---|---|---|")
    details = {}
    tokens = args.B * args.T
    for name in args.specs.split(","):
        per_token = {}
        for flag in ("0", "1"):
            os.environ["NLC_RECOMPUTE_CHUNKS"] = flag
            torch.manual_seed(0)
            dims = head_dims(ROOT / "examples" / f"{name}.nl")
            layer = mixer_from_spec(str(ROOT / "examples" / f"{name}.nl"), heads=8,
                                    **dims)(512).to(device)
            x = torch.randn(args.B, args.T, 512, device=device, requires_grad=True)
            storages = kept_storages(layer, x, args.bf16)
            per_token[flag] = sum(n for n, _ in storages.values()) / tokens
            if flag == "1":  # the breakdown is of the recomputed chunks
                details[name] = storages
        lm = {f: b * LM_TOKENS * LM_LAYERS / 2 ** 30 for f, b in per_token.items()}
        print(f"| examples/{name}.nl | {per_token['0'] / 1024:.1f} | "
              f"{per_token['1'] / 1024:.1f} | {lm['0']:.1f} | {lm['1']:.1f} |")
    if args.breakdown:
        for name, storages in details.items():
            print(f"\nexamples/{name}.nl, chunks recomputed: the largest kinds of kept tensor\n")
            print("| shape (no batch axis) | dtype | made by | tensors | KiB per token |")
            print("|---|---|---|---|---|")
            print("\n".join(breakdown(storages, tokens)))


if __name__ == "__main__":
    main()
