"""The entrywise linear recurrence h_t = a_t * h_{t-1} + b_t of a vector or diagonal memory
with a decay (HGRN, minGRU, RG-LRU's real recurrences), for a whole sequence at once.

The decay family's chunked form takes outer-product inputs and reads `S q`; a diagonal memory
whose input is an entrywise product or whose read is the state itself (`read h`) runs here
instead. The sequence is cut into blocks of C tokens, all blocks at once. Within a block,
with P[t, s] = a_{s+1} ... a_t (1 where s = t),

    h_t = P[t, -1] h_in + sum_{s <= t} P[t, s] b_s,

h_in the state entering the block: the sum is one masked [C, C] product per block, the
states entering the blocks come from a scan over the blocks of (the block's product of
gates, its end state from zeros), composed as (A1, E1) then (A2, E2) = (A1 A2, A2 E1 + E2)
in log2(blocks) doubling steps, with no loop over tokens or blocks. P comes from cumulative
log decays (their differences masked before the exponential: the upper triangle is 0, and
so is its gradient); a gate of any sign (`signed`: an l2 step's 1 - r k^2) takes running
products of a masked grid instead, never quotients or logs. Blocks of 16 tokens keep the
weights small; the block is not semantics: every block size gives the same states. Computes
in at least float32."""

from __future__ import annotations

import torch

BLOCK = 16


def scan_chunked(b, log_a, *, initial_state=None, block: int = BLOCK, signed: bool = False):
    """`b` `[B, T, H, d]`; `log_a` the log of the decay, broadcasting to it (`[B, T, H, 1]`
    for a scalar gate) or None for none; with `signed`, the gate itself, of any sign;
    `initial_state` `[B, H, d, 1]` or None (zeros). Returns (every state after its token's
    write `[B, T, H, d, 1]`, the last `[B, H, d, 1]`)."""
    out_dtype = b.dtype
    dtype = torch.promote_types(b.dtype, torch.float32)
    b = b.to(dtype)
    B, T, H, d = b.shape
    neutral = 1.0 if signed else 0.0  # a gate of 1: its log 0
    gate = torch.full((), neutral, dtype=dtype, device=b.device) if log_a is None else \
        torch.as_tensor(log_a, device=b.device).to(dtype)
    gate = gate.expand(B, T, H, d)
    h0 = b.new_zeros(B, H, d) if initial_state is None else initial_state[..., 0].to(dtype)
    C = min(block, T)
    pad = -T % C
    if pad:  # a last block cut short: padded with inputs of 0 and gates of 1
        b = torch.cat([b, b.new_zeros(B, pad, H, d)], 1)
        gate = torch.cat([gate, gate.new_full((B, pad, H, d), neutral)], 1)
    n = (T + pad) // C
    bb, gg = b.reshape(B, n, C, H, d), gate.reshape(B, n, C, H, d)
    weights, start = (_products if signed else _exponentials)(gg, C)
    local = torch.einsum("bntshd,bnshd->bnthd", weights, bb)   # from a zero state
    entering = _entering(start[:, :, -1], local[:, :, -1], h0)  # [B, n, H, d]
    states = (local + start * entering[:, :, None]).reshape(B, n * C, H, d)[:, :T]
    last = states[:, -1]
    return states.to(out_dtype).unsqueeze(-1), last.to(out_dtype).unsqueeze(-1)


def _masks(C: int, device):
    i = torch.arange(C, device=device)
    return i[None, :] > i[:, None], i[:, None] >= i[None, :]   # [s, u]: u > s; [t, s]: s <= t


def _exponentials(log_a, C: int):
    """Per block: the weights [t, s] = exp(L_t - L_s) (masked before the exponential) and the
    products from the block's start exp(L_t), L the cumulative log decay."""
    _, lower = _masks(C, log_a.device)
    L = log_a.cumsum(2)                                          # [B, n, C, H, d]
    diff = L[:, :, :, None] - L[:, :, None, :]                   # [B, n, t, s, H, d]
    weights = torch.exp(diff.masked_fill(~lower[:, :, None, None], float("-inf")))
    return weights, L.exp()


def _products(a, C: int):
    """Per block, for gates of any sign: the weights [t, s] = a_{s+1} ... a_t as running
    products along t of a grid holding a_u where u > s and 1 elsewhere, and the products
    from the block's start a_0 ... a_t."""
    later, lower = _masks(C, a.device)
    grid = torch.where(later[:, :, None, None], a[:, :, None], 1.0)   # [B, n, s, u, H, d]
    weights = torch.where(lower[:, :, None, None], grid.cumprod(3).transpose(2, 3), 0.0)
    return weights, a.cumprod(2)


def _entering(A, E, h0):
    """The state entering each block, from each block's product of gates A `[B, n, H, d]` and
    its end state from zeros E: an inclusive scan of (A, E) by doubling, then h0 carried."""
    n = A.shape[1]
    shift = 1
    while shift < n:
        A_prev = torch.cat([torch.ones_like(A[:, :shift]), A[:, :-shift]], 1)
        E_prev = torch.cat([torch.zeros_like(E[:, :shift]), E[:, :-shift]], 1)
        A, E = A * A_prev, A * E_prev + E
        shift *= 2
    ends = E + A * h0[:, None]                                   # each block's end state
    return torch.cat([h0[:, None], ends[:, :-1]], 1)


def states_before(states, initial_state):
    """Each token's state before its write: the initial state, then the states after the
    writes of the tokens before it (`[B, T, H, d, 1]`)."""
    first = torch.zeros_like(states[:, :1]) if initial_state is None else \
        initial_state[:, None].to(states.dtype)
    return torch.cat([first, states[:, :-1]], 1)
