"""The entrywise linear recurrence h_t = a_t * h_{t-1} + b_t of a vector or diagonal memory
with a decay (HGRN, minGRU, RG-LRU's real recurrences), for a whole sequence at once.

The decay family's chunked form takes outer-product inputs and reads `S q`; a diagonal memory
whose input is an entrywise product or whose read is the state itself (`read h`) runs here
instead. Within a block of C tokens, with L_t the cumulative sum of log a over the block,

    h_t = e^{L_t} h_0 + sum_{s <= t} e^{L_t - L_s} b_s,

the [C, C] weights masked before their exponential (so the upper triangle is 0, and so is its
gradient). Blocks of 16 tokens keep those weights small; the block is not semantics: every
block size gives the same states. Computes in at least float32."""

from __future__ import annotations

import torch

BLOCK = 16


def scan_chunked(b, log_a, *, initial_state=None, block: int = BLOCK, signed: bool = False):
    """`b` `[B, T, H, d]`; `log_a` the log of the decay, broadcasting to it (`[B, T, H, 1]`
    for a scalar gate) or None for none; `initial_state` `[B, H, d, 1]` or None (zeros).
    With `signed`, `log_a` is the gate itself, of any sign (`_signed_scan`).
    Returns (every state after its token's write `[B, T, H, d, 1]`, the last `[B, H, d, 1]`)."""
    if signed:
        return _signed_scan(b, log_a, initial_state, block)
    out_dtype = b.dtype
    dtype = torch.promote_types(b.dtype, torch.float32)
    b = b.to(dtype)
    B, T, H, d = b.shape
    log_a = torch.zeros((), dtype=dtype, device=b.device) if log_a is None else \
        torch.as_tensor(log_a, device=b.device).to(dtype)
    log_a = log_a.expand(B, T, H, d)
    h = b.new_zeros(B, H, d) if initial_state is None else initial_state[..., 0].to(dtype)
    keep = torch.ones(block, block, dtype=torch.bool, device=b.device).tril()
    states = []
    for start in range(0, T, block):
        bb, la = b[:, start:start + block], log_a[:, start:start + block]
        C = bb.shape[1]
        L = la.cumsum(1)                                      # [B, C, H, d]
        diff = L[:, :, None] - L[:, None, :]                  # [B, t, s, H, d]
        mask = ~keep[:C, :C, None, None]                      # s after t (the last block: C)
        weights = torch.exp(diff.masked_fill(mask, float("-inf")))
        hs = torch.einsum("btshd,bshd->bthd", weights, bb) + L.exp() * h[:, None]
        h = hs[:, -1]
        states.append(hs)
    return torch.cat(states, 1).to(out_dtype).unsqueeze(-1), h.to(out_dtype).unsqueeze(-1)


def states_before(states, initial_state):
    """Each token's state before its write: the initial state, then the states after the
    writes of the tokens before it (`[B, T, H, d, 1]`)."""
    first = torch.zeros_like(states[:, :1]) if initial_state is None else \
        initial_state[:, None].to(states.dtype)
    return torch.cat([first, states[:, :-1]], 1)


def _signed_scan(b, a, initial_state, block: int):
    """The scan with a gate `a` of any sign (an l2 step's 1 - r k^2): within a block, the
    weight of token s in the state after token t is the product a_{s+1} ... a_t, taken as a
    running product along t of a grid that holds a_u where u > s and 1 elsewhere (products,
    never quotients or logs: a gate of 0 or below stays exact)."""
    out_dtype = b.dtype
    dtype = torch.promote_types(b.dtype, torch.float32)
    b = b.to(dtype)
    B, T, H, d = b.shape
    a = torch.as_tensor(a, device=b.device).to(dtype).expand(B, T, H, d)
    h = b.new_zeros(B, H, d) if initial_state is None else initial_state[..., 0].to(dtype)
    i = torch.arange(block, device=b.device)
    later = (i[None, :] > i[:, None])[None, :, :, None, None]      # [1, s, u, 1, 1]: u > s
    lower = (i[:, None] >= i[None, :])[None, :, :, None, None]     # [1, t, s, 1, 1]: s <= t
    states = []
    for start in range(0, T, block):
        bb, aa = b[:, start:start + block], a[:, start:start + block]
        C = bb.shape[1]
        grid = torch.where(later[:, :C, :C], aa[:, None], 1.0)     # [B, s, u, H, d]
        weights = torch.where(lower[:, :C, :C], grid.cumprod(2).transpose(1, 2), 0.0)
        hs = torch.einsum("btshd,bshd->bthd", weights, bb) + aa.cumprod(1) * h[:, None]
        h = hs[:, -1]
        states.append(hs)
    return torch.cat(states, 1).to(out_dtype).unsqueeze(-1), h.to(out_dtype).unsqueeze(-1)
