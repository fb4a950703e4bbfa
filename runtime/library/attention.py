"""The non-parametric family: the memory is the cache of keys and values, and the read is
the kernel-weighted average of the cached values (softmax attention, sliding windows).

`state` is `{"k": [B, H, S, K], "v": [B, H, S, V]}` (S cached tokens, empty at the start).
After a packed batch (`cu_seqlens`) the sequences' caches have different lengths: they are
left-padded to the longest, and `state["#valid"]` (`[B]`) counts each one's real tokens, so
that a continuation masks the padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

VALID = "#valid"  # real cached tokens per sequence (the rest of the cache is left padding)


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
        lengths = [x.shape[2] for x in ks]  # each part's cache holds only its own tokens
        longest = max(lengths)

        def padded(xs):  # left-pad: the real tokens end at the same place
            return torch.cat([F.pad(x, (0, 0, longest - x.shape[2], 0)) for x in xs])
        state = {"k": padded(ks), "v": padded(vs),
                 VALID: torch.tensor(lengths, device=q.device)}
    else:
        o, state = _attend(q, k, v, scale, window, state, mode)
    return o.transpose(1, 2).unsqueeze(-1), state


def _attend(q, k, v, scale, window, state, mode):
    valid = state.get(VALID)
    if state.get("k") is not None:
        cached_k, cached_v = state["k"], state["v"]
        if valid is not None:  # drop the padding no sequence needs
            cut = cached_k.shape[2] - int(valid.max())
            cached_k, cached_v = cached_k[..., cut:, :], cached_v[..., cut:, :]
        k = torch.cat([cached_k, k], dim=2)
        v = torch.cat([cached_v, v], dim=2)
    T, S = q.shape[2], k.shape[2] - q.shape[2]
    keep = _mask(T, S, window, q.device)
    if valid is not None and S:
        padding = S - valid.to(q.device)                                   # [B]
        real = torch.arange(S + T, device=q.device)[None, :] >= padding[:, None]
        keep = keep[None, None] & real[:, None, None, :]                   # [B, 1, T, S + T]
    if mode == "recurrent":  # the reference: each query's weights written out
        w = torch.exp(scale * (q @ k.mT) - (scale * (q @ k.mT)).amax(-1, keepdim=True).detach())
        w = w * keep
        o = (w @ v) / w.sum(-1, keepdim=True)
    else:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale)
    kept = k if window is None else k[..., -(window - 1):, :] if window > 1 else k[..., :0, :]
    vals = v if window is None else v[..., -(window - 1):, :] if window > 1 else v[..., :0, :]
    out = {"k": kept, "v": vals}
    if valid is not None:
        out[VALID] = (valid.to(q.device) + T).clamp(max=kept.shape[2])
    return o, out
