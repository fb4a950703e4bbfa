"""The non-parametric family: the memory is the cache of keys and values, and the read is
the kernel-weighted average of the cached values (softmax attention, sliding windows).

`state` is `{"k": [B, H, S, K], "v": [B, H, S, V]}` (S cached tokens, empty at the start).
After a packed batch (`cu_seqlens`) the sequences' caches have different lengths: they are
left-padded to the longest, and `state["#valid"]` (`[B]`) counts each one's real tokens, so
that a continuation masks the padding.

With a forget gate (`decay(f)` on the cache; the Forgetting Transformer), token s's weight at
token t is multiplied by f_j for every s < j <= t: the logits get the bias G_t - G_s, G the
cumulative log gate, and the cache keeps `state["g"]` (`[B, H, S]`), each cached token's
log decay since it was written, G_last - G_s (at most 0), so that a continuation's bias is
exact without a growing sum. The bias is added in at least float32 (in bfloat16 a bias of
-100 would be off by 0.5)."""

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
              mode: str = "chunked", log_decay=None):
    """q, k, v as columns `[B, T, H, D, 1]`, `log_decay` (the forget gate's log) `[B, T, H,
    1, 1]` or a number's tensor, or None; returns `(o [B, T, H, V, 1], state)`."""
    q, k, v = (x.squeeze(-1).transpose(1, 2) for x in (q, k, v))  # [B, H, T, D]
    g = None
    if log_decay is not None:  # [B, H, T], in at least float32
        wide = torch.promote_types(q.dtype, torch.float32)
        g = torch.as_tensor(log_decay, device=q.device).to(wide)
        g = g.reshape(*g.shape[:3]).transpose(1, 2) if g.dim() else g
        g = g.expand(q.shape[0], q.shape[1], q.shape[2])
    if cu_seqlens is not None:
        outs, parts = [], []
        bounds = [int(b) for b in cu_seqlens.tolist()]
        for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            part = {n: x[i:i + 1] for n, x in state.items()}
            o, st = _attend(q[..., s:e, :], k[..., s:e, :], v[..., s:e, :], scale, window, part,
                            mode, None if g is None else g[..., s:e])
            outs.append(o)
            parts.append(st)
        o = torch.cat(outs, 2)
        lengths = [st["k"].shape[2] for st in parts]  # each part's cache: its own tokens
        longest = max(lengths)

        def padded(name, pad):  # left-pad: the real tokens end at the same place
            xs = [st[name] for st in parts]
            return torch.cat([F.pad(x, pad(longest - x.shape[2])) for x in xs])
        state = {"k": padded("k", lambda n: (0, 0, n, 0)), "v": padded("v", lambda n: (0, 0, n, 0)),
                 VALID: torch.tensor(lengths, device=q.device)}
        if g is not None:
            state["g"] = padded("g", lambda n: (n, 0))
    else:
        o, state = _attend(q, k, v, scale, window, state, mode, g)
    return o.transpose(1, 2).unsqueeze(-1), state


def _attend(q, k, v, scale, window, state, mode, g=None):
    valid = state.get(VALID)
    cached_g = None
    if state.get("k") is not None:
        cached_k, cached_v, cached_g = state["k"], state["v"], state.get("g")
        if valid is not None:  # drop the padding no sequence needs
            cut = cached_k.shape[2] - int(valid.max())
            cached_k, cached_v = cached_k[..., cut:, :], cached_v[..., cut:, :]
            cached_g = None if cached_g is None else cached_g[..., cut:]
        k = torch.cat([cached_k, k], dim=2)
        v = torch.cat([cached_v, v], dim=2)
    T, S = q.shape[2], k.shape[2] - q.shape[2]
    keep = _mask(T, S, window, q.device)
    if valid is not None and S:
        padding = S - valid.to(q.device)                                   # [B]
        real = torch.arange(S + T, device=q.device)[None, :] >= padding[:, None]
        keep = keep[None, None] & real[:, None, None, :]                   # [B, 1, T, S + T]
    bias, positions = None, None
    if g is not None:
        reached = g.cumsum(-1)                                  # G_t - G_last of the cache
        if S and cached_g is None:
            raise ValueError("the cache was filled without the forget gate's sums (state['g'])")
        positions = reached if not S else torch.cat([-cached_g.to(g.dtype), reached], -1)
        bias = reached[..., :, None] - positions[..., None, :]  # [B, H, T, S + T], <= 0 kept
    o = _weighted(q, k, v, scale, keep, bias, mode)
    kept = k if window is None else k[..., -(window - 1):, :] if window > 1 else k[..., :0, :]
    vals = v if window is None else v[..., -(window - 1):, :] if window > 1 else v[..., :0, :]
    out = {"k": kept, "v": vals}
    if positions is not None:
        out["g"] = (reached[..., -1:] - positions)[..., positions.shape[-1] - kept.shape[2]:]
    if valid is not None:
        out[VALID] = (valid.to(q.device) + T).clamp(max=kept.shape[2])
    return o, out


def _weighted(q, k, v, scale, keep, bias, mode):
    """sum_s w_ts v_s / sum_s w_ts with w_ts = exp(scale q_t . k_s + bias_ts) over the kept
    (t, s); `bias` None or `[B, H, T, S]` in at least float32 (the inputs are computed in its
    dtype, and the result cast back)."""
    dtype = q.dtype
    if bias is not None:
        q, k, v = (x.to(bias.dtype) for x in (q, k, v))
    if mode == "recurrent":  # the reference: each query's weights written out
        logits = scale * (q @ k.mT) + (0 if bias is None else bias)
        logits = logits.masked_fill(~keep, float("-inf"))
        w = torch.exp(logits - logits.amax(-1, keepdim=True).detach())
        o = (w @ v) / w.sum(-1, keepdim=True)
    else:
        mask = keep if bias is None else bias.masked_fill(~keep, float("-inf"))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return o.to(dtype)
