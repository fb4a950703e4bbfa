"""The catalog's ids and titles, without SymPy, so that `nlc check` can refuse a `claims`
that no entry answers to (nlc/catalog/models.py holds the entries; a test keeps the two equal).

A claim names an entry (`claims deltanet`) or the common prefix of several
(`claims linear_attention` covers the state and its normalizer; `claims adam`, both moments).
"""

from __future__ import annotations

import re

from nlc.errors import NlcError, Span

CATALOG_TITLES = {
    "linear_attention": "Linear attention",
    "linear_attention_normalizer": "Linear attention normalizer z = z + k",
    "retnet": "RetNet",
    "mamba2": "Mamba2 (SSD)",
    "gla": "Gated linear attention",
    "deltanet": "DeltaNet",
    "gated_deltanet": "Gated DeltaNet",
    "kda": "Kimi Delta Attention",
    "deltaproduct": "DeltaProduct",
    "deltaproduct_gated": "Gated DeltaProduct (gate before the first step)",
    "titans_linear": "Titans, linear memory without momentum (ordering C)",
    "rwkv7": "RWKV-7",
    "longhorn": "Longhorn",
    "mesa": "Mesa layer",
    "mesanet": "MesaNet",
    "longhorn_channel": "Longhorn with a beta per value channel",
    "ttt_linear": "TTT-Linear",
    "ttt_mlp": "TTT-MLP",
    "titans": "Titans (MLP memory, momentum, weight decay)",
    "moneta": "Moneta",
    "yaad": "Yaad",
    "memora": "Memora",
    "sgd_momentum": "SGD with momentum as a memory of gradients",
    "adam_first_moment": "Adam's first moment",
    "adam_second_moment": "Adam's second moment",
    "dgd": "Delta gradient descent",
    "muon": "the momentum buffer B = mu B + g (Muon's, torch.optim.SGD's)",
    "m3_fast": "M3's fast momentum",
    "m3_slow": "M3's slow momentum",
    "m3_second_moment": "M3's second moment",
    "softmax_attention": "Softmax attention (Nadaraya-Watson)",
    "forgetting_transformer": "Forgetting Transformer (softmax attention with a forget gate)",
    "sliding_window": "Sliding-window attention",
}


def claimable(claim: str) -> bool:
    """Whether some entry answers to `claim` (its id, or an id that continues `claim_`)."""
    return any(i == claim or i.startswith(claim + "_") for i in CATALOG_TITLES)


def suggest(claim: str) -> str | None:
    """The closest id by spelling, else the entry whose title has the word (kimi -> kda)."""
    import difflib
    close = difflib.get_close_matches(claim, sorted(CATALOG_TITLES), n=1, cutoff=0.6)
    if close:
        return close[0]
    for entry_id, title in sorted(CATALOG_TITLES.items()):
        words = re.findall(r"[a-z0-9]+", title.lower())
        if difflib.get_close_matches(claim.lower(), words, n=1, cutoff=0.8):
            return entry_id
    return None


def check_claims(specs, source: str | None = None) -> None:
    """Refuse the first spec whose `claims` names no catalog entry, located at the claim."""
    for spec in specs:
        if not spec.claims or claimable(spec.claims):
            continue
        guess = suggest(spec.claims)
        message = f"unknown catalog id '{spec.claims}'" + (
            f", did you mean '{guess}'?" if guess else "")
        raise NlcError(message, _claim_span(spec, source),
                       hint="the catalog: " + ", ".join(sorted(CATALOG_TITLES)))


def _claim_span(spec, source: str | None) -> Span:
    """The claim's name after `claims` in the declaration's header (else the declaration)."""
    span = spec.span
    if source is None or not span.known:
        return span
    lines = source.split("\n")
    for number in range(span.line, min(len(lines), span.line + 5) + 1):
        text = lines[number - 1]
        start = span.column - 1 if number == span.line else 0
        found = re.compile(rf"\bclaims\s+({re.escape(spec.claims)})\b").search(text, start)
        if found:
            return Span(number, found.start(1) + 1, number, found.end(1) + 1)
    return span
