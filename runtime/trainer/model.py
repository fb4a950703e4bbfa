"""The language model around a mixer: embedding, blocks, final norm, head (nanoGPT's shape).

    tokens [B, T] -> embed -> n x Block -> RMSNorm -> head -> logits [B, T, vocab]
    Block:  x = x + mixer(RMSNorm(x));  x = x + mlp(RMSNorm(x))

The mixer is whatever `mixer_factory(d_model)` returns: a compiled layer, or the builtin
softmax attention below. Its forward maps [B, T, d_model] to [B, T, d_model]; a layer that
follows flash-linear-attention and returns a tuple `(o, ...)` is accepted, `o` is used.
The second half of a block is `mlp_factory(d_model)`: the builtin MLP, a compiled layer
(CMS levels, Nested Learning Sec. 7.1), or None for no second half.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ModuleFactory = Callable[[int], "nn.Module | None"]


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (Zhang & Sennrich 2019)."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in float32 (the residual stream is float32 under autocast): one fused kernel each
        # way on a GPU, where the written-out formula was six over the whole activation
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).type_as(x)


class MLP(nn.Module):
    """The Transformer's feed-forward half: d -> ratio*d -> d with GELU (the one-level CMS)."""

    def __init__(self, d_model: int, ratio: int = 4):
        super().__init__()
        self.up = nn.Linear(d_model, ratio * d_model, bias=False)
        self.down = nn.Linear(ratio * d_model, d_model, bias=False)
        for layer in (self.up, self.down):
            nn.init.normal_(layer.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


def rotate(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021, RoFormer eq. 34) of x [B, T, H, D]."""
    _, T, _, D = x.shape
    half = D // 2
    freq = 10000.0 ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angle = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * freq[None, :]
    cos, sin = angle.cos()[None, :, None, :], angle.sin()[None, :, None, :]
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def attention_heads(d_model: int, heads: int | None = None) -> int:
    """The heads of `CausalSelfAttention` at width d_model (by default one per 64 channels);
    ValueError unless they split it evenly into heads of even width (rotary positions turn
    channel pairs)."""
    heads = heads or max(1, d_model // 64)
    if d_model % heads or (d_model // heads) % 2:
        raise ValueError(f"d_model {d_model} must split into {heads} heads of even width")
    return heads


class CausalSelfAttention(nn.Module):
    """Softmax attention (Vaswani et al. 2017) with rotary positions: `builtin:attention`.

    The non-parametric memory (softmax attention): o_t = sum_{i<=t} softmax_i(q_t k_i / sqrt(d)) v_i.
    """

    def __init__(self, d_model: int, heads: int | None = None):
        super().__init__()
        self.heads = attention_heads(d_model, heads)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        for layer in (self.qkv, self.proj):
            nn.init.normal_(layer.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).unbind(2)
        q, k = rotate(q), rotate(k)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=True)
        return self.proj(o.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, d_model: int, mixer: nn.Module, mlp: nn.Module | None):
        super().__init__()
        self.norm1 = None if getattr(mixer, "residual", False) else RMSNorm(d_model)
        self.mixer = mixer
        self.norm2 = RMSNorm(d_model) if mlp is not None else None
        self.mlp = mlp

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """With a `cache` ({"mixer": {...}, "mlp": {...}}, runtime/trainer/segments.py), the
        generated layers continue from their states there and update them."""
        mixer = _with_cache(self.mixer, cache, "mixer")
        if self.norm1 is None:  # a compiled `model`: its norms and residuals are inside it
            x = first_output(mixer(x))
        else:
            x = x + first_output(mixer(self.norm1(x)))
        if self.mlp is not None:
            x = x + first_output(_with_cache(self.mlp, cache, "mlp")(self.norm2(x)))
        return x


def keeps_state(module: nn.Module | None) -> bool:
    """Whether `module` is a generated layer or model: its forward continues from a `cache`
    and updates it (`step(x, cache)` decodes with the same cache)."""
    return module is not None and callable(getattr(module, "step", None))


def _with_cache(module: nn.Module, cache: dict | None, part: str):
    """`module`, called with its part of `cache` when there is one and it keeps a state."""
    if cache is None or not keeps_state(module):
        return module
    return lambda x: module(x, cache=cache[part])


def first_output(out):
    """Layers in the flash-linear-attention style return (o, attentions, cache): keep o."""
    return out[0] if isinstance(out, (tuple, list)) else out


class LanguageModel(nn.Module):
    """Embedding, `config.n_layers` blocks of norm -> mixer -> norm -> MLP, final norm, head.

    `config` needs `vocab_size` (> 0), `d_model`, `n_layers` and `mlp_ratio`; without an
    `mlp_factory` the blocks use the builtin MLP (none when `mlp_ratio` is 0).
    """

    def __init__(self, config, mixer_factory: ModuleFactory,
                 mlp_factory: ModuleFactory | None = None):
        super().__init__()
        if config.vocab_size < 1:
            raise ValueError("LanguageModel needs config.vocab_size > 0 (the task's vocabulary)")
        d = config.d_model
        if mlp_factory is None:
            mlp_factory = (lambda width: MLP(width, config.mlp_ratio)) if config.mlp_ratio else (
                lambda width: None)
        self.embed = nn.Embedding(config.vocab_size, d)
        self.blocks = nn.ModuleList(Block(d, mixer_factory(d), mlp_factory(d))
                                    for _ in range(config.n_layers))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, config.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02 / math.sqrt(2 * config.n_layers))

    def forward(self, tokens: torch.Tensor, caches: list[dict] | None = None) -> torch.Tensor:
        """`caches`, one per block, carry the layers' states from the previous segment of the
        same documents (runtime/trainer/segments.py); None: every sequence starts afresh."""
        x = self.embed(tokens)
        for i, block in enumerate(self.blocks):
            x = block(x) if caches is None else block(x, caches[i])
        return self.head(self.norm(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
