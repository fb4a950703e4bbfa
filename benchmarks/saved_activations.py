"""Bytes a layer keeps for its backward pass, per token, with whole chunks recomputed or kept.

    python benchmarks/saved_activations.py [--B 1] [--T 256] [--specs titans,ttt_mlp,...]

Device-independent: it counts the distinct storages alive after one forward pass (what
autograd saved, and what checkpointed chunks hold to recompute) of the generated layer at the
LM's sizes
(d_model 512, 8 heads of 64; fp32, no autocast), once with `NLC_RECOMPUTE_CHUNKS=0` (each
chunk's activations kept, the CPU default) and once with `=1` (only the chunk-start states
kept, the CUDA default; runtime/library/scan.py `recompute_chunks`). This is the part of peak
memory that grows with batch x length: times 4 layers and 16 x 2048 tokens it is most of an LM
step's peak. Prints a markdown table with the machine, versions and date (docs/perf.md)."""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import warnings
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensor

from nlc import __version__
from nlc.factories import mixer_from_spec

ROOT = Path(__file__).resolve().parents[1]
LM_TOKENS, LM_LAYERS = 16 * 2048, 4
HEAD_DIMS = {"gated_deltanet": {"d_k": 64, "d_v": 64}}  # others: d_head


def kept_bytes(layer: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors alive after the forward pass, beyond the parameters and x: what
    autograd saved (the hook turns each into a Python object gc can see) and what a
    checkpointed chunk holds for its recomputation (its inputs)."""
    before = _storages()

    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        y = layer(x)
    alive = _storages()
    del y
    return sum(n for key, n in alive.items() if key not in before)


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
        found[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--T", type=int, default=256)
    parser.add_argument("--specs", default="titans,ttt_mlp,ttt_linear,hope,moneta,yaad,memora,"
                                            "gated_deltanet")
    args = parser.parse_args()
    print(f"{platform.machine()}, torch {torch.__version__}, nlc {__version__}, "
          f"{datetime.date.today()}; d_model 512, 8 heads of 64, fp32, B = {args.B}, "
          f"T = {args.T}; KiB kept per token and layer, and that times {LM_LAYERS} layers x "
          f"{LM_TOKENS} tokens in GiB\n")
    print("| spec | chunks kept | chunks recomputed | LM (kept) | LM (recomputed) |")
    print("|---|---|---|---|---|")
    for name in args.specs.split(","):
        per_token = {}
        for flag in ("0", "1"):
            os.environ["NLC_RECOMPUTE_CHUNKS"] = flag
            torch.manual_seed(0)
            dims = HEAD_DIMS.get(name, {"d_head": 64})
            layer = mixer_from_spec(str(ROOT / "examples" / f"{name}.nl"), heads=8,
                                    **dims)(512)
            x = torch.randn(args.B, args.T, 512, requires_grad=True)
            per_token[flag] = kept_bytes(layer, x) / (args.B * args.T)
        lm = {f: b * LM_TOKENS * LM_LAYERS / 2 ** 30 for f, b in per_token.items()}
        print(f"| examples/{name}.nl | {per_token['0'] / 1024:.1f} | "
              f"{per_token['1'] / 1024:.1f} | {lm['0']:.1f} | {lm['1']:.1f} |")


if __name__ == "__main__":
    main()
