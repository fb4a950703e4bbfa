"""Documents longer than one training segment: states carried from segment to segment.

A level that updates every 4096 tokens never updates in a 512-token sequence when every
sequence starts from the initial state. With `carry_state = S`, each sequence of the batch
is a document of `seq_len` tokens, cut into consecutive segments of S tokens:

    document  [t_0 ........................................ t_{seq_len-1}]
    segments  [ 0 .. S-1 ] [ S .. 2S-1 ] ...                [ .. seq_len-1]
    caches    {} -------> c_1 --------> c_2 ---> ...                          (detached)

Each segment runs the model with one cache per generated layer (the `cache` the generated
`forward(x, cache=...)` continues from and updates in place: every level's state, its anchors
and `#position` inside the chunk, the short convolutions' tails; docs/emit.md). Between
segments the caches are detached: the forward value equals one call over the document,
the gradient stops at segment boundaries (truncated backpropagation through time). A new
document starts from fresh caches: nothing is carried from one batch to the next.
"""

from __future__ import annotations

import torch
from nlc.runtime.trainer.model import keeps_state

from nlc.errors import NlcError


def check_carriable(model: torch.nn.Module) -> None:
    """Refuse a model whose mixers keep no state across calls: carrying would silently
    train them on segments with no memory of the document."""
    for i, block in enumerate(model.blocks):
        if not keeps_state(block.mixer):
            name = type(block.mixer).__name__
            raise NlcError(f"carry_state needs layers that carry a state across calls; "
                           f"blocks.{i}.mixer is {name}, which does not",
                           hint="use a layer spec (.nl) as the mixer, or --carry-state 0")


def fresh_caches(model: torch.nn.Module) -> list[dict]:
    """One empty cache per block (mixer and MLP): a document's start."""
    return [{"mixer": {}, "mlp": {}} for _ in model.blocks]


def detach(value):
    """The same caches with every tensor cut from the graph (ints and names kept)."""
    if isinstance(value, dict):
        return {k: detach(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(detach(v) for v in value)
    return value.detach() if torch.is_tensor(value) else value


def bounds(seq_len: int, segment: int) -> list[tuple[int, int]]:
    """(start, end) of each segment; the last may be shorter."""
    return [(start, min(seq_len, start + segment)) for start in range(0, seq_len, segment)]


def forward_segments(model, tokens: torch.Tensor, segment: int, caches=None, on_segment=None):
    """Run `model` over `tokens [B, T]` in segments of `segment` tokens, carrying the caches.

    `on_segment(start, end, logits)` is called for each segment while its graph is alive
    (the trainer backpropagates there); it returns what is kept of the segment (default:
    the logits, detached). Returns (the kept values, the caches after the last segment).
    """
    caches = fresh_caches(model) if caches is None else caches
    kept = []
    for start, end in bounds(tokens.shape[1], segment):
        logits = model(tokens[:, start:end], caches=caches)
        kept.append(on_segment(start, end, logits) if on_segment else logits.detach())
        caches[:] = detach(caches)
    return kept, caches
