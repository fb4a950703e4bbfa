"""Shared memory, registers and spills of the chunked Triton kernels on Hopper, without a GPU:
each kernel is compiled for sm_90 (Triton's own ptxas) at K = V = 128, a chunk of 64, bf16
inputs, with the launch options the host code uses, and cuobjdump reads the cubin's resource
use. An H200 gives a program at most 227 KiB of shared memory and a thread 255 registers;
STACK is the bytes a thread spills.

Covers runtime/library/chunk_rows_triton.py (with the chunk_decay_triton.py kernels it
reuses), runtime/library/chunk_joint_triton.py (n = 2, float32 pieces) with
runtime/library/joint_transfers_triton.py,
runtime/library/dual_triton.py at Titans' shapes (float32, as dual_chunked runs: the scan
with n = 4 states and d = 2 terms, the reads of the [256, 64] layer with two chunk-start
states and one pair, and of the [64, 256] one), and, for scale,
chunk_delta_triton.py's input-gradient kernel, whose spills were part of the timed runs in
docs/perf.md, and its forward's fused kkt + solve next to the two kernels it replaced.

Usage (no GPU needed; TRITON_INTERPRET must be unset; NAME keeps the kernels whose row
names contain it, e.g. "delta"):
    python benchmarks/kernel_resources.py [NAME]
"""

from __future__ import annotations

import inspect
import itertools
import os
import subprocess
import sys
import tempfile

import torch
import triton
from nlc.runtime.library import (
    chunk_decay_triton,
    chunk_delta_triton,
    chunk_dplr_triton,
    chunk_inverse_triton,
    chunk_joint_triton,
    chunk_kda_triton,
    dual_triton,
    joint_transfers_triton,
)
from nlc.runtime.library import chunk_rows_triton as rows
from nlc.runtime.library.chunk_triton import LOG_DECAY_FLOOR
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                         "cuobjdump")
H, K, V, BT = 16, 128, 128, 64
# the diagonal blocks as the launches take them; SAME_G (the rows' and columns' cumulative log
# decays one tensor, as every family's but dplr's) is the lighter case, shown for GLA's launch
DIAG = {"DIAG_DOT": chunk_decay_triton.FORWARD["scores_diag_dot"],
        "DIAG_SPAN": chunk_decay_triton.DIAG_SPAN, "SAME_G": False}
INDEX = {"starts": "*i32", "ends": "*i32", "offsets": "*i32", "bounds": "*i32", "T": "i32"}


def compiled(kernel, bf16: tuple[str, ...], constants: dict, num_warps=4, num_stages=3,
             scalars: tuple[str, ...] = ()):
    """(shared memory in KiB, cuobjdump's resource line) of `kernel` compiled for sm_90:
    the pointers named in `bf16` are bf16, the other pointers float32; `scalars` name int32
    arguments beside T."""
    params = list(inspect.signature(kernel.fn).parameters)
    flags = {n: p.default for n, p in inspect.signature(kernel.fn).parameters.items()
             if isinstance(p.default, (bool, int))}  # constexprs left out take their defaults
    constants = {**flags, **constants}
    types = {**INDEX, **dict.fromkeys(scalars, "i32")}
    signature = {p: "constexpr" if p in constants else
                 types.get(p, "*bf16" if p in bf16 else "*fp32") for p in params}
    source = ASTSource(kernel, signature,
                       constexprs={(params.index(n),): v for n, v in constants.items()})
    binary = triton.compile(source, target=TARGET,
                            options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(binary.asm["cubin"])
        f.flush()
        dump = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name],
                              capture_output=True, text=True, check=True).stdout
    usage = next(line.strip() for line in dump.splitlines() if "REG:" in line)
    return binary.metadata.shared / 1024, " ".join(usage.split()[:2])


def kernels():
    """(name, kernel, bf16 pointers, constants, warps, stages), as the host code launches."""
    rows_inputs = ("q", "k", "v", "w", "kt", "qw", "h", "do", "dq", "dk", "dv", "o")
    tiles = {"H": H, "K": K, "BT": BT, "BK": 128, "PREC": "tf32"}
    yield ("rows prepare", rows._prepare_kernel, rows_inputs, {**tiles, "DELTA": True}, 8, 3)
    for BV in (16, 32):
        yield (f"rows states BV={BV}", rows._states_kernel, rows_inputs,
               {**tiles, "V": V, "BV": BV, "DELTA": True, "HAS_H0": True}, 4, 2)
        yield (f"rows state grads BV={BV}", rows._state_grads_kernel, rows_inputs,
               {**tiles, "V": V, "BV": BV, "DELTA": True, "HAS_DHT": True}, 4, 2)
    yield ("rows output BV=64", rows._output_kernel, rows_inputs,
           {**tiles, "V": V, "BV": 64}, 4, 3)
    yield ("rows input grads BV=32", rows._input_grads_kernel, rows_inputs,
           {**tiles, "V": V, "BV": 32, "DELTA": True, "FLOOR": LOG_DECAY_FLOOR}, 8, 1)
    channel = {"H": H, "K": V, "BT": BT, "BK": 128, "PREC": "tf32", "STRICT": False}
    yield ("rows intra reads (decay kernels)", chunk_decay_triton._intra_grads_kernel,
           ("q", "k"), {**channel, "ACC": False, "ROWS_ONLY": True, "PAIR": 0, **DIAG}, 4, 3)
    yield ("rows dM (decay scores)", chunk_decay_triton._scores_kernel, ("q", "k"),
           {**channel, "PAIR": 0, "SPLIT": False, **DIAG}, 4, 3)
    joint = {"H": H, "K": K, "V": V, "n": 2, "C": BT, "R": 2 * BT, "BR": 2 * BT, "RB": 32,
             "BK": 128, "NP": 2, "PREC": "tf32"}
    warps = chunk_joint_triton.SEQUENTIAL_WARPS
    for BV in (16, 32):
        yield (f"joint states BV={BV}", chunk_joint_triton._states_kernel, (),
               {**joint, "BV": BV, "HAS_X0": True}, warps, 1)
        yield (f"joint state grads BV={BV}", chunk_joint_triton._state_grads_kernel, (),
               {**joint, "BV": BV, "HAS_DXT": True}, warps, 1)
    yield ("joint output BV=32", chunk_joint_triton._output_kernel, (),
           {**joint, "BV": 32}, 4, 3)
    transfers = {"C": BT, "n": 2, "CP": 2 * BT, "NN": joint_transfers_triton.NN}
    yield ("joint transfers", joint_transfers_triton._transfers_kernel, (), transfers, 4, 3)
    yield ("joint transfers grads", joint_transfers_triton._transfers_grad_kernel, (),
           transfers, 8, 3)
    yield from _kda_dplr()
    yield from _delta_prepare()
    scan = {"H": H, "N": 4, "D": 2, "NP": 4, "CP": BT, "DP": 2}
    yield ("dual scan", dual_triton._scan_fwd, (), scan, 1, 3)
    yield ("dual scan grads", dual_triton._scan_bwd, (), scan, 1, 3)
    for (R, Kd), dtype in itertools.product(((256, 64), (64, 256)),
                                            (torch.float32, torch.bfloat16)):
        read = {"H": H, "M": 2, "P": 1, **dual_triton._product_tiles(BT, R, Kd, dtype)}
        tag = f"[{R}, {Kd}] {str(dtype).removeprefix('torch.')}"
        half = () if dtype == torch.float32 else ("x", "starts", "phi", "psi", "cols", "rows")
        warps = dual_triton.WARPS
        yield (f"dual read {tag}", dual_triton._product_fwd, half, read, warps, 3)
        yield (f"dual read grads, pairs {tag}", dual_triton._product_bwd_pairs, half, read,
               warps, 3)
        yield (f"dual read grads, rows {tag}", dual_triton._product_bwd_rows, half, read,
               warps, 3)
        yield (f"dual read grads, keys {tag}", dual_triton._product_bwd_keys, half, read,
               warps, 3)
    yield ("(scale) delta input grads BV=32", chunk_delta_triton._input_grads_kernel,
           ("q", "k", "v", "h", "delta", "do", "dq", "dk", "dv", "w"),
           {**tiles, "V": V, "BV": 32, "DELTA": True, "HAS_G": True,
            "FLOOR": LOG_DECAY_FLOOR}, 8, 3)


def _kda_dplr():
    """chunk_kda_triton.py and chunk_dplr_triton.py as their host code launches them at
    (8, 2048, 16, 128) (S H = 128 programs: state_launch's BV = 32, 4 warps), with the
    chunk_decay_triton.py score kernels they call (in pairs: COLUMNS for dplr, ROWS for kda):
    every kernel of their forward + backward (docs/perf.md, "Structure of the slow chunked
    kernels" and after)."""
    inputs = ("q", "k", "v", "a", "b", "beta", "ld", "h", "w", "u", "delta", "d", "do", "dq",
              "dk", "dv", "da", "db", "o", "k2", "q2", "v2", "x", "y")
    tiles = {"H": H, "K": K, "BT": BT, "BK": 128, "PREC": "tf32"}
    pairs = {"no": 0, "COLUMNS": chunk_decay_triton.COLUMNS, "ROWS": chunk_decay_triton.ROWS}
    for (name, pair), strict in itertools.product(pairs.items(), (False, True)):
        yield (f"decay scores {name} pair STRICT={strict}", chunk_decay_triton._scores_kernel,
               inputs, {**tiles, "STRICT": strict, "PAIR": pair, "SPLIT": False, **DIAG}, 4, 3)
        if pair == 0 and not strict:  # GLA's launch choice (chunk_decay_triton.FORWARD)
            for warps in (1, 2):
                yield (f"decay scores, a program per row block, {warps} warps",
                       chunk_decay_triton._scores_kernel, inputs,
                       {**tiles, "STRICT": False, "PAIR": 0, "SPLIT": True, **DIAG,
                        "SAME_G": True}, warps, 3)
        for acc in (False, True):
            yield (f"decay intra grads {name} pair STRICT={strict} ACC={acc}",
                   chunk_decay_triton._intra_grads_kernel, inputs,
                   {**tiles, "STRICT": strict, "ACC": acc, "PAIR": pair, "ROWS_ONLY": False,
                    **DIAG},
                   4, 3)
    yield ("decay dscores BV=32", chunk_decay_triton._dscores_kernel, inputs,
           {"H": H, "V": V, "BT": BT, "BV": 32, "PREC": "tf32"}, 4, 3)
    for two, name in ((False, "kda"), (True, "dplr")):
        yield (f"{name} states BV=32", chunk_kda_triton._states_kernel, inputs,
               {**tiles, "V": V, "BV": 32, "HAS_H0": True, "TWO": two}, 4, 3)
        yield (f"{name} output BV=64", chunk_decay_triton._output_kernel, inputs,
               {**tiles, "V": V, "BV": 64, "TWO": two}, 4, 3)
    yield ("kda state grads BV=32", chunk_kda_triton._state_grads_kernel, inputs,
           {**tiles, "V": V, "BV": 32, "HAS_DHT": True}, 4, 3)
    yield ("kda wu", chunk_kda_triton._wu_kernel, inputs, {**tiles, "V": V, "BV": 64}, 4, 3)
    yield ("dplr wu", chunk_dplr_triton._wu_kernel, inputs, {**tiles, "V": V, "BV": 64}, 4, 3)
    for name, module in (("kda", chunk_kda_triton), ("dplr", chunk_dplr_triton)):
        yield (f"{name} value sums BV={module.SUMS_BLOCK}", module._value_sums_kernel, inputs,
               {**tiles, "V": V, "BV": module.SUMS_BLOCK}, 8, 3)
        yield (f"{name} key grads BK={module.KEY_BLOCK}", module._key_grads_kernel, inputs,
               {**tiles, "BK": module.KEY_BLOCK}, 8, 3)
        yield (f"{name} combine", module._combine_kernel, inputs,
               {"H": H, "K": K, "BT": BT, "BK": 128, "FLOOR": LOG_DECAY_FLOOR}, 8, 3)


def _delta_prepare():
    """chunk_delta_triton.py's forward before the states: the fused kkt + solve
    (`_prepare_kernel`, key slices of 64) at the warps the forward sweep tries, next to the
    kkt and solve kernels it replaced, for bf16 and float32 inputs."""
    bf16 = ("k", "beta", "ld")
    for dtype, prec, half, t_half in (("bf16", "tf32", bf16, (*bf16, "tinv")),  # T as the inputs
                                      ("float32", "ieee", (), ())):
        flags = {"H": H, "K": K, "BT": BT, "HAS_G": True, "FLOOR": LOG_DECAY_FLOOR,
                 "PREC": prec}
        yield (f"delta kkt {dtype}", chunk_delta_triton._kkt_kernel, half,
               {**flags, "BK": 128, "DELTA": True}, 4, 3)
        for batched, warps in itertools.product((False, True), (1, 2, 4)):
            tag = f"{dtype}{', batched inverse' if batched else ''}"
            if warps == 1:
                yield (f"delta solve {tag}", chunk_inverse_triton._solve_kernel, half,
                       {"H": H, "BT": BT, "BATCHED": batched}, 1, 3)
            yield (f"delta prepare (kkt + solve) {tag}", chunk_inverse_triton._prepare_kernel,
                   t_half, {**flags, "BK": 64, "BATCHED": batched}, warps, 3)
    # the sequential state pass: the delta rule's at one sequence of 16 heads (V blocks of
    # 16, whole key rows), the decay family's split along keys too (64 x 64 blocks)
    states = {"H": H, "K": K, "V": V, "BT": BT, "HAS_H0": True, "PREC": "tf32"}
    io = ("k", "u", "w", "h", "delta")
    yield ("delta states BV=16", chunk_delta_triton._states_kernel, io,
           {**states, "BK": 128, "BV": 16, "NK": 1, "DELTA": True}, 4, 3)
    yield ("delta (decay family) states split 64 x 64", chunk_delta_triton._states_kernel, io,
           {**states, "BK": 64, "BV": 64, "NK": 2, "DELTA": False}, 4, 3)


def main(only: str = ""):
    # a PYTHONPATH can put another Triton ahead of the one installed: say which compiles
    print(f"Triton {triton.__version__} ({triton.__file__}), sm_90\n")
    print("| kernel | warps | stages | shared KiB | registers, spill bytes |")
    print("|---|---|---|---|---|")
    for name, kernel, bf16, constants, warps, stages in kernels():
        if only not in name:
            continue
        shared, usage = compiled(kernel, bf16, constants, warps, stages)
        print(f"| {name} | {warps} | {stages} | {shared:.1f} | {usage} |")


if __name__ == "__main__":
    main(*sys.argv[1:2])
