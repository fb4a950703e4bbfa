"""The non-parametric family: the memory is the cache of keys and values, and the read is
the kernel-weighted average of the cached values (softmax attention, sliding windows).

`state` is `{"k": [B, H, S, K], "v": [B, H, S, V]}` (S cached tokens, empty at the start)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _mask(T: int, S: int, window: int | None, device) -> torch.Tensor:
    """Query t (absolute position S + t) sees cached/new key j when j <= S + t (and within
    the window)."""
    q_pos = torch.arange(T, device=device)[:, None] + S
    k_pos = torch.arange(S + T, device=device)[None, :]
    keep = k_pos <= q_pos
    if window is not None:
        keep &= k_pos > q_pos - window
    return keep


def attention(q, k, v, *, scale: float, window: int | None, state: dict, cu_seqlens=None,
              mode: str = "chunked"):
    """q, k, v as columns `[B, T, H, D, 1]`; returns `(o [B, T, H, V, 1], state)`."""
    q, k, v = (x.squeeze(-1).transpose(1, 2) for x in (q, k, v))  # [B, H, T, D]
    if cu_seqlens is not None:
        outs, ks, vs = [], [], []
        bounds = [int(b) for b in cu_seqlens.tolist()]
        for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            part = {n: x[i:i + 1] for n, x in state.items()}
            o, st = _attend(q[..., s:e, :], k[..., s:e, :], v[..., s:e, :], scale, window, part,
                            mode)
            outs.append(o)
            ks.append(st["k"])
            vs.append(st["v"])
        o = torch.cat(outs, 2)
        length = max(x.shape[2] for x in ks)
        pad = [F.pad(x, (0, 0, length - x.shape[2], 0)) for x in ks]  # left-pad: positions end
        state = {"k": torch.cat(pad), "v": torch.cat([F.pad(x, (0, 0, length - x.shape[2], 0))
                                                       for x in vs])}
    else:
        o, state = _attend(q, k, v, scale, window, state, mode)
    return o.transpose(1, 2).unsqueeze(-1), state


def _attend(q, k, v, scale, window, state, mode):
    if state.get("k") is not None:
        k = torch.cat([state["k"], k], dim=2)
        v = torch.cat([state["v"], v], dim=2)
    T, S = q.shape[2], k.shape[2] - q.shape[2]
    keep = _mask(T, S, window, q.device)
    if mode == "recurrent":  # the reference: each query's weights written out
        w = torch.exp(scale * (q @ k.mT) - (scale * (q @ k.mT)).amax(-1, keepdim=True).detach())
        w = w * keep
        o = (w @ v) / w.sum(-1, keepdim=True)
    else:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale)
    kept = k if window is None else k[..., -(window - 1):, :] if window > 1 else k[..., :0, :]
    vals = v if window is None else v[..., -(window - 1):, :] if window > 1 else v[..., :0, :]
    return o, {"k": kept, "v": vals}
