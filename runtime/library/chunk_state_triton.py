"""The start of every sequential state pass of the chunked kernels (chunk_decay_triton.py,
chunk_delta_triton.py, chunk_kda_triton.py, chunk_rows_triton.py, chunk_joint_triton.py):
one program per (V block, sequence, head), or per (V block x K block, sequence, head) where
the state's key columns evolve apart, walks its sequence's chunks in order (the states) or
in reverse (their gradients), carrying a float32 block of the state.

Helpers that compute where a kernel stores take no tensor: the kernels load the chunk
table themselves. torch.compile learns which arguments a launch writes from the kernel's
IR, where a helper is still a call; it follows a stored-to address back through a call's
result to every argument of the call, so a helper that loaded the chunk table and returned
indices would mark the table (and the initial state beside it) as written, and the
partition of a compiled model's graph fails (tests/test_compile_trace.py)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _state_block(H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr, NK: tl.constexpr):
    """This program's block of the state, one program per (V block x K block, sequence,
    head) with the key axis in NK blocks of BK (NK = 1: whole rows): the sequence, the head,
    the key and value offsets and masks, and the block's offsets in a [S, H, V, K] tensor.
    The kernel then loads its sequence's first and last chunk (`offsets[i_s]`,
    `offsets[i_s + 1]`) and, where it finds a chunk's tokens by arithmetic (first token
    `bounds[i_s] + (i - first chunk) * BT`, so that no load of the chunk table sits on each
    step's critical path), the sequence's bounds."""
    i_vk, i_sh = tl.program_id(0), tl.program_id(1)
    i_v, i_k = i_vk // NK, i_vk % NK
    i_s, i_h = i_sh // H, i_sh % H
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_vk = m_v[:, None] & m_k[None, :]
    p_state = (i_sh * V + o_v[:, None]) * K + o_k[None, :]
    return i_s, i_h, o_k, o_v, m_k, m_v, m_vk, p_state


@triton.jit
def _carried(s0, p_state, mask, HAS_S0: tl.constexpr, BV: tl.constexpr, BW: tl.constexpr):
    """The carried float32 state block ([BV, BW]) at the start of the walk: loaded from `s0`
    (the initial state, or the final state's gradient) if HAS_S0, else zeros."""
    if HAS_S0:
        b_S = tl.load(s0 + p_state, mask=mask, other=0.0).to(tl.float32)
    else:
        b_S = tl.zeros([BV, BW], dtype=tl.float32)
    return b_S


@triton.jit
def _tokens(bos, eos, BT: tl.constexpr):
    """A chunk's tokens from its first token and its sequence's end (both loaded by the
    kernel from the chunk table), and their mask."""
    tok = bos + tl.arange(0, BT)
    return tok, tok < eos
