"""A DeltaNet mixer built on fla-core's `chunk_delta_rule`, shaped like examples/deltanet.nl
(q, k, v projections; causal depthwise convolutions of width 4; SiLU; L2-normalized q, k;
sigmoid beta; RMS-normalized output; output projection). Only the benchmarks use it, as the
reference for training throughput."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FlaDeltaNet(nn.Module):
    def __init__(self, d_model: int, heads: int = 8, head_dim: int = 64, width: int = 4):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim, self.width = heads, head_dim, width
        self.qkv = nn.Linear(d_model, 3 * inner, bias=False)
        self.beta = nn.Linear(d_model, heads, bias=False)
        self.conv = nn.Parameter(torch.randn(3 * inner, 1, width) * width ** -0.5)
        self.out = nn.Linear(inner, d_model, bias=False)

    def forward(self, x):
        from fla.ops.delta_rule import chunk_delta_rule
        B, T, _ = x.shape
        h = self.qkv(x).transpose(1, 2)
        h = F.conv1d(F.pad(h, (self.width - 1, 0)), self.conv, groups=h.shape[1])
        q, k, v = F.silu(h).transpose(1, 2).split(self.heads * self.head_dim, dim=-1)
        q, k, v = (t.reshape(B, T, self.heads, self.head_dim) for t in (q, k, v))
        beta = torch.sigmoid(self.beta(x))
        o, _ = chunk_delta_rule(q, k, v, beta, scale=1.0, use_qk_l2norm_in_kernel=True)
        o = o * torch.rsqrt(o.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(o.dtype)
        return self.out(o.reshape(B, T, -1))
