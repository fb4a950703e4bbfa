"""The start of every sequential state pass of the chunked kernels (chunk_decay_triton.py,
chunk_delta_triton.py, chunk_kda_triton.py, chunk_rows_triton.py): one program per (V block,
sequence, head), or per (V block x K block, sequence, head) where the state's key columns
evolve apart, walks its sequence's chunks in order (the states) or in reverse (their
gradients), carrying a float32 block of the state."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _state_prologue(s0, offsets, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                    BK: tl.constexpr, BV: tl.constexpr, HAS_S0: tl.constexpr):
    """The start of every sequential state kernel (one program per (V block, sequence, head),
    chunks in order or in reverse; here and in chunk_delta_triton.py, chunk_kda_triton.py):
    the head, the sequence's first and last chunk, the key and value offsets and masks, the
    state's offsets in a [S, H, V, K] tensor, and the carried float32 state (block), loaded
    from `s0` (the initial state, or the final state's gradient) if HAS_S0, else zeros."""
    return _split_state_prologue(s0, offsets, H, K, V, BK, BV, 1, HAS_S0)


@triton.jit
def _split_state_prologue(s0, offsets, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                          BK: tl.constexpr, BV: tl.constexpr, NK: tl.constexpr,
                          HAS_S0: tl.constexpr):
    """`_state_prologue` with the key axis split in NK blocks of BK too: one program per
    (V block x K block, sequence, head). Only where the state's key columns evolve apart
    (no delta rule: S' = S diag(decay) + v k^T)."""
    i_vk, i_sh = tl.program_id(0), tl.program_id(1)
    i_v, i_k = i_vk // NK, i_vk % NK
    i_s, i_h = i_sh // H, i_sh % H
    first = tl.load(offsets + i_s)
    last = tl.load(offsets + i_s + 1)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_vk = m_v[:, None] & m_k[None, :]
    p_state = (i_sh * V + o_v[:, None]) * K + o_k[None, :]
    if HAS_S0:
        b_S = tl.load(s0 + p_state, mask=m_vk, other=0.0).to(tl.float32)
    else:
        b_S = tl.zeros([BV, BK], dtype=tl.float32)
    return i_h, first, last, o_k, o_v, m_k, m_v, m_vk, p_state, b_S


@triton.jit
def _sequence(bounds, H: tl.constexpr):
    """The first token and the end of the sequence of this program's (sequence, head): a
    sequential state pass finds chunk i's tokens as first + (i - first chunk) * BT, by
    arithmetic, so that no load of the chunk table sits on each step's critical path (the
    next chunk's loads need no earlier load, and can be issued ahead)."""
    i_s = tl.program_id(1) // H
    return tl.load(bounds + i_s), tl.load(bounds + i_s + 1)
