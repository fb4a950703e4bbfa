"""Several delta steps per token as consecutive tokens of the delta rule (the product
family's chunked form, docs/design.md "Kernel families").

A token t with n steps S <- S D_t (I - b_{t,1} k_{t,1} k_{t,1}^T) + b_{t,1} v_{t,1} k_{t,1}^T,
then S <- S (I - b_{t,i} k_{t,i} k_{t,i}^T) + b_{t,i} v_{t,i} k_{t,i}^T for i = 2..n, is n
tokens of the delta rule in a row: the gate D_t on the first of them and 1 on the others,
the read q_t only at the last (or at the first, before its write, for `read before`). So
the delta rule's chunked form and kernels run the product unchanged on a sequence n times
as long (Siems et al., DeltaProduct, arXiv:2502.10297, 2025, train it the same way)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SubSteps:
    """The interleaved sequence: `[B, n T, H, *]`, token t's step i at position n t + i."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    beta: torch.Tensor
    g: torch.Tensor | None
    steps: int
    read_at: int

    @property
    def ref(self) -> torch.Tensor:
        """`[B, n T, H]`: the interleaved sequence's shape, dtype and device."""
        return self.beta

    def read(self, o: torch.Tensor) -> torch.Tensor:
        """The delta rule's reads over the interleaved sequence -> one read per token."""
        return o[:, self.read_at::self.steps]


def _weave(parts) -> torch.Tensor:
    """n tensors `[B, T, H, *]` -> `[B, n T, H, *]`, token by token."""
    return torch.stack(tuple(parts), 2).flatten(1, 2)


def substeps(q, keys, values, rates, log_decay=None, *, read_before=False) -> SubSteps:
    """n (key, value, rate) triples per token, `[B, T, H, K]`, `[B, T, H, V]`, `[B, T, H]`,
    and the token's scalar log decay `[B, T, H]` (or None) -> the interleaved sequence."""
    n = len(keys)
    if not n == len(values) == len(rates):
        raise ValueError(f"substeps takes one key, value and rate per step, got {len(keys)}, "
                         f"{len(values)} and {len(rates)}")
    read_at = 0 if read_before else n - 1
    none = torch.zeros_like(q)
    queries = _weave(q if i == read_at else none for i in range(n))
    g = None
    if log_decay is not None:
        kept = torch.zeros_like(log_decay)  # log 1: the later steps are not gated
        g = _weave([log_decay] + [kept] * (n - 1))
    return SubSteps(queries, _weave(keys), _weave(values), _weave(rates), g, n, read_at)
