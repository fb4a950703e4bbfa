"""Shared pieces of the chunked Triton kernels (chunk_delta_triton.py, chunk_decay_triton.py,
chunk_kda_triton.py, chunk_dplr_triton.py).

Every chunked kernel works on packed sequences: tokens `[N, H, *]` (a batch `[B, T, H, *]` is
B sequences of T tokens, packed), `cu_seqlens` the sequences' boundaries. A chunk never spans
two sequences, so a sequence's last chunk may be short; the kernels mask its missing rows.
`ChunkTable` lists, for every chunk, its first token and the end of its sequence, and for
every sequence the index of its first chunk (where its per-chunk states start)."""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass

import torch

# Log decays below this are clamped to it: e^-110 underflows to exactly 0 in float32, so the
# clamp changes nothing a float32 product can see, while -inf (a decay of exactly 0) would make
# differences of cumulative sums NaN (-inf - -inf).
LOG_DECAY_FLOOR = -110.0

# The sequential state passes (one program per V block, sequence and head, walking the chunks)
# leave SMs idle when few sequences x heads are in flight: a narrower V block then puts more
# programs to work (V blocks of 16 at 16 sequences x heads: 2.74 against 2.89 ms for DeltaNet's
# forward + backward at (1, 16384, 16, 128) on an H200, docs/perf.md).
# `benchmarks/kernel_profile.py --sweep-states` times the alternatives;
# NLC_STATE_PASSES='{"BV_few": 32, "num_warps": 8}' overrides them for such a run.
STATE_PASSES = {"few": 64, "BV_few": 16, "some": 256, "BV_some": 32, "num_warps": 4,
                "split_BK": 64, "split_BV": 64, "split_warps": 4,
                **json.loads(os.environ.get("NLC_STATE_PASSES", "{}"))}


def state_launch(BV: int, programs: int) -> tuple[int, int]:
    """(V block, warps) of a sequential state pass run by `programs` sequences x heads."""
    if programs < STATE_PASSES["few"]:
        return min(BV, STATE_PASSES["BV_few"]), STATE_PASSES["num_warps"]
    if programs < STATE_PASSES["some"]:
        return min(BV, STATE_PASSES["BV_some"]), STATE_PASSES["num_warps"]
    return BV, 4


def split_state_launch(BK: int, BV: int, programs: int) -> tuple[int, int, int]:
    """(K block, V block, warps) of a forward state pass whose key columns evolve apart (the
    decay family, no delta rule), run by `programs` sequences x heads: key blocks of at most
    64, so that each program loads a slice of the chunk's keys, and V blocks as
    `state_launch` narrows them when few programs run, at most 64. Simple GLA's state pass
    took 322 us against fla's 134 us at (1, 16384, 16, 128) on an H100 with the whole key
    axis in every program; 64 x 64 blocks (half the programs there) took 316 us
    (docs/perf.md, "seventh batch"); this launch, more programs again, is not timed.
    NLC_STATE_PASSES sets "split_BK", "split_BV" (the widest V block), "split_warps"."""
    narrow, _ = state_launch(BV, programs)
    return (min(BK, STATE_PASSES["split_BK"]), min(narrow, STATE_PASSES["split_BV"]),
            STATE_PASSES["split_warps"])


@dataclass(frozen=True)
class ChunkTable:
    starts: torch.Tensor   # [NC] int32: each chunk's first token (packed index)
    ends: torch.Tensor     # [NC] int32: the end (exclusive) of the chunk's sequence
    offsets: torch.Tensor  # [S + 1] int32: each sequence's first chunk
    bounds: torch.Tensor   # [S + 1] int32: cu_seqlens
    chunks: int            # NC
    sequences: int         # S


_TABLES: dict = {}


def chunk_table(cu_seqlens: list[int], chunk: int, device) -> ChunkTable:
    """The chunk table of packed sequences with boundaries `cu_seqlens` (host integers)."""
    key = (tuple(cu_seqlens), chunk, str(device))
    table = _TABLES.get(key)
    if table is not None:
        return table
    starts, ends, offsets = [], [], [0]
    for bos, eos in itertools.pairwise(cu_seqlens):
        for s in range(bos, eos, chunk):
            starts.append(s)
            ends.append(eos)
        offsets.append(len(starts))

    def ints(xs):
        return torch.tensor(xs, dtype=torch.int32, device=device)

    table = ChunkTable(ints(starts or [0]), ints(ends or [0]), ints(offsets), ints(cu_seqlens),
                       len(starts), len(cu_seqlens) - 1)
    if len(_TABLES) > 64:  # many distinct packings (varlen training): keep the cache small
        _TABLES.clear()
    _TABLES[key] = table
    return table


def boundaries(batch: int, length: int, cu_seqlens) -> list[int]:
    """Host list of sequence boundaries: `cu_seqlens`, or B sequences of T tokens."""
    if cu_seqlens is None:
        return [b * length for b in range(batch + 1)]
    if batch != 1:
        raise ValueError("with cu_seqlens the batch size must be 1 (sequences packed along T)")
    bounds = [int(b) for b in cu_seqlens.tolist()]
    if bounds[0] != 0 or bounds[-1] != length or any(a > b for a, b in itertools.pairwise(bounds)):
        raise ValueError(f"cu_seqlens must rise from 0 to T = {length}, got {bounds}")
    return bounds


def pow2(n: int, least: int = 16) -> int:
    """The tile width for an axis of n entries (tl.dot needs 16 at least)."""
    return max(least, 1 << (max(n, 1) - 1).bit_length())


def dot_precision(dtype: torch.dtype) -> str:
    """float32 inputs get exact float32 products; half-precision inputs use the tensor cores'
    own modes (the operands are already rounded, accumulation is float32 either way)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def compute_dtype(q: torch.Tensor) -> torch.dtype:
    """The operands' dtype in the kernels: under autocast (mixed-precision training) the
    autocast dtype, as for a matmul, else q's. Float32 operands take the exact float32
    products, which use no tensor cores: in a bf16-autocast LM step the context code hands
    the op float32 tensors, and without this cast the chunked kernels ran 20-30x slower than
    on bf16 operands (benchmarks/lm_step_profile.py)."""
    device = q.device.type
    if device in ("cuda", "cpu") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return q.dtype


SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_DIM = 256


def check_inputs(q, k, v, beta, log_decay, initial_state, cu_seqlens, channel: bool,
                 rows: bool = False):
    """Shapes and dtypes of a chunked kernel's inputs, with an error that names the tensor.
    The log decay is one per key channel (`channel`), per value channel (`rows`) or a scalar."""
    if q.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q and v must be [B, T, H, D], got {list(q.shape)}, {list(v.shape)}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    sequences = B if cu_seqlens is None else len(cu_seqlens) - 1
    decay = [B, T, H, V] if rows else [B, T, H, K] if channel else [B, T, H]
    expect = {"k": (k, [B, T, H, K]), "v": (v, [B, T, H, V]),
              "beta": (beta, [B, T, H]),
              "log_decay": (log_decay, decay),
              "initial_state": (initial_state, [sequences, H, V, K])}
    check_tensors(q, expect)


def check_tensors(q, expect: dict):
    """Each named tensor (None: absent) has its expected shape, a supported dtype and q's
    device; q has a supported dtype."""
    for name, (x, shape) in expect.items():
        if x is None:
            continue
        if list(x.shape) != shape:
            raise ValueError(f"{name} must be {shape}, got {list(x.shape)}")
        if x.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device}, q on {q.device}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"q must be float32, bfloat16 or float16, got {q.dtype}")


def check_dims(K: int, V: int, chunk: int):
    if K > MAX_DIM or V > MAX_DIM:
        raise ValueError(f"the chunked kernels take key and value widths up to {MAX_DIM}, "
                         f"got K = {K}, V = {V}")
    if chunk not in (16, 32, 64):
        raise ValueError(f"chunk_size must be 16, 32 or 64 for the Triton kernels, got {chunk}")


# --------------------------------------------------------------------------- dispatch
# (family, decay kind) pairs whose chunked Triton kernels the dispatch uses: chunk_scalar
# (chunk_delta_triton.py) for no or a scalar decay, chunk_channel (chunk_decay_triton.py) and
# chunk_kda (chunk_kda_triton.py) for a decay per key channel, chunk_dplr (chunk_dplr_triton.py)
# for the dplr family with any decay (a scalar or no decay is a per-channel one), chunk_rows
# (chunk_rows_triton.py) for the decay and delta families with a decay per row (value
# channel), chunk_joint (chunk_joint_triton.py) for the joint family (n jointly affine
# states; joint.py asks with read_before False, the kernels take either read). The kernels
# are tested under the Triton interpreter (tests/test_chunk_triton.py,
# tests/test_chunk_kda_triton.py, tests/test_chunk_dplr_triton.py,
# tests/test_chunk_rows_triton.py, tests/test_chunk_joint_triton.py); benchmarks/gpu_chunked.py
# times them on a GPU.
CHUNKED_KERNELS = {("delta", "none"), ("delta", "scalar"), ("decay", "none"),
                   ("decay", "scalar"), ("decay", "channel"), ("delta", "channel"),
                   ("dplr", "none"), ("dplr", "scalar"), ("dplr", "channel"),
                   ("decay", "row"), ("delta", "row"), ("joint", "none")}
JOINT_MAX_STATES = 4  # the joint kernels' widest stack of states


def joint_fits(n: int, K: int) -> bool:
    """Whether chunk_joint takes n states of K keys: their tiles are n blocks of K rounded up
    to a power of two, at most 512 columns (a [32, 512] float32 tile is 64 KiB)."""
    return 2 <= n <= JOINT_MAX_STATES and pow2(n, 2) * pow2(K) <= 512
# inputs at least this long go to the chunked kernels; shorter ones (decoding, prompts of a
# few tokens) to the fused recurrent kernel, which needs no per-chunk work
CHUNKED_MIN_TOKENS = 64


def triton_enabled(ref: torch.Tensor) -> bool:
    """CUDA tensors go to Triton kernels unless NLC_TRITON=0; NLC_TRITON=force sends CPU
    tensors too (with TRITON_INTERPRET=1: how CI tests the dispatch)."""
    import os
    flag = os.environ.get("NLC_TRITON", "1")
    return flag == "force" or (ref.is_cuda and flag != "0")


def opted_in(ref: torch.Tensor, flag: str, default: bool = False) -> bool:
    """For kernels that run only when asked: `flag`=1 (the environment variable) on CUDA
    tensors unless NLC_TRITON=0, NLC_TRITON=force anywhere (how the tests run them), never
    with `flag`=0; with `default`, an unset `flag` counts as 1 (kernels that won their GPU
    timing: the fused group kernels). The chunk-start terms kernels lost to the PyTorch terms
    in their first GPU timing, and the affine combine kernels are not yet checked on a GPU
    (docs/perf.md)."""
    import os
    value = os.environ.get(flag)
    if value == "0":
        return False
    asked = value == "1" or (value is None and default)
    return os.environ.get("NLC_TRITON") == "force" or (asked and triton_enabled(ref))


def has_chunked_kernel(family: str, decay: str) -> bool:
    return (family, decay) in CHUNKED_KERNELS


def chunked_kernel_for(q: torch.Tensor, family: str, decay: str, read_before: bool,
                       chunk: int, K: int, V: int):
    """The chunked Triton entry point for these inputs, or None (then plain PyTorch)."""
    if (read_before or not has_chunked_kernel(family, decay) or not triton_enabled(q)
            or q.dtype not in SUPPORTED_DTYPES or K > MAX_DIM or V > MAX_DIM
            or chunk not in (16, 32, 64)):
        return None
    try:
        if family == "dplr":
            from nlc.runtime.library.chunk_dplr_triton import chunk_dplr
            return chunk_dplr
        if decay == "row":
            from nlc.runtime.library.chunk_rows_triton import chunk_rows
            return chunk_rows
        if family == "joint":
            from nlc.runtime.library.chunk_joint_triton import chunk_joint
            return chunk_joint
        if decay == "channel" and family == "delta":
            from nlc.runtime.library.chunk_kda_triton import chunk_kda
            return chunk_kda
        if decay == "channel":
            from nlc.runtime.library.chunk_decay_triton import chunk_channel
            return chunk_channel
        from nlc.runtime.library.chunk_delta_triton import chunk_scalar
    except ImportError:  # no triton on this machine
        return None
    return chunk_scalar
