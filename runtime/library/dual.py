"""The dual form of a frozen-gradient chunk (TTT's and Titans' mini-batch form without
per-token weights).

Inside a chunk, the gradients are taken at the chunk-start state, so each token adds terms
that are sums of outer products `col_j row_j` (a gradient of a linear map, or of an MLP's
layer, on one token). When the combine is linear in the state and in those terms with
scalar coefficients (decay, momentum, weight decay), every token's state is

    S_t[n] = sum_m Phi_t[n, m] S_0[m] + sum_{j, d} Psi_t[n, j, d] D_j[d],

for the chunk-start states S_0 and the terms D_j of token j. The coefficients follow from
the combine applied to basis vectors, and a read that meets the state only as `S_t @ x_t`
becomes

    S_t[n] @ x_t = sum_m Phi_t[n, m] (S_0[m] @ x_t) + sum_{j, d} Psi_t[n, j, d] col_j (row_j . x_t),

one masked attention-like product per term (Sun et al. 2024, "Learning to (Learn at Test
Time)", Sec. 2.7, the dual form; Titans Sec. 3.2). Nothing of size [tokens, rows, cols] is
built: the emitter checks the conditions (`LevelEmitter.dual_form`).

The products of chunk code live here too (`mm`, `outer_sum`, re-exported by ops.py): `mm` is
how a read meets a `DualState`. The coefficient scan and the reads of a `DualState` run as
Triton kernels on CUDA tensors (dual_triton.py, `_kernels`); the forms here are the reference."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from nlc.runtime.library.affine_chunk import AffineStates
from nlc.runtime.library.chunk_triton import triton_enabled
from nlc.runtime.library.scan import (
    State,
    _anchor,
    _chunks,
    _float32_by_chunk,
    _maybe_checkpoint,
    _needs_grad,
    _recompute,
    _resume,
    _suspend,
    _wide,
    chunk_runner,
)

Pairs = list[tuple[torch.Tensor, torch.Tensor]]


class DualState:
    """State `name` at every token of a chunk, as coefficients over the chunk-start states
    and the chunk's outer products; `nl.mm(S, x)` reads it (`product`)."""

    def __init__(self, name: str, phi: torch.Tensor, psi: torch.Tensor, start: State,
                 pairs: dict[str, Pairs], order: list[str], terms: list[str],
                 stacks: dict | None = None):
        self.name, self.phi, self.psi, self.start = name, phi, psi, start
        self.pairs, self.order, self.terms = pairs, order, terms
        # the start states of one shape stacked `[B, H, G, r, c]`, by their indices in
        # `order` (`_chunk_end`'s): the kernels read them as they are
        self.stacks = stacks or {}

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """S_t @ x_t for every token t: x `[B, T, H, k, 1]` -> `[B, T, H, r, 1]`."""
        kernels = _kernels(self.phi)
        if kernels is not None and kernels.product_fits(self.phi.shape[1]):
            return kernels.dual_read(self, x)
        shape = self.start[self.name].shape[-2:]
        out = 0
        coefs = self.phi.unbind(-1)  # one backward op for all of them, not one per select
        for m, other in enumerate(self.order):
            if self.start[other].shape[-2:] == shape:
                coef = coefs[m][..., None, None]                        # [B, T, H, 1, 1]
                out = out + coef * mm(self.start[other].unsqueeze(1), x)
        cols = _full(x, self.phi).squeeze(-1)                             # [B, T, H, k]
        weights = self.psi.unbind(-1)
        for d, term in enumerate(self.terms):
            weight = weights[d].permute(0, 2, 1, 3)                     # [B, H, t, j]
            for col, row in _matching(self.pairs[term], shape):
                col, row = _full(col, cols), _full(row, cols)
                scores = torch.einsum("bjhc,bthc->bhtj", row.squeeze(-2), cols)
                out = out + torch.einsum("bhtj,bjhr->bthr", weight * scores,
                                         col.squeeze(-1))[..., None]
        return out


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in chunk code. When a matrix shared by a chunk's tokens ([B, 1, H, r, k], an
    anchor) meets one column per token ([B, T, H, k, 1]), or one row per token meets a
    shared matrix, `@` would copy the shared matrix T times; this multiplies once."""
    if isinstance(a, (DualState, AffineStates)):  # a chunk's per-token states, not built
        return a.product(b)
    if a.dim() == 5 and b.dim() == 5:
        if a.shape[1] == 1 < b.shape[1] and b.shape[-1] == 1:      # shared matrix @ columns
            cols = b.squeeze(-1).transpose(1, 2)                          # [B, H, T, k]
            return (cols @ a.squeeze(1).mT).transpose(1, 2).unsqueeze(-1)  # [B, T, H, r, 1]
        if b.shape[1] == 1 < a.shape[1] and a.shape[-2] == 1:      # rows @ shared matrix
            rows = a.squeeze(-2).transpose(1, 2)                       # [B, H, T, k]
            return (rows @ b.squeeze(1)).transpose(1, 2).unsqueeze(-2)     # [B, T, H, 1, c]
    # a parameter ([r, k], or [H, r, k] one per head) meets a column or row per token: `@`
    # would broadcast the parameter over every token, and its backward would build and sum
    # one outer product per token
    if a.dim() in (2, 3) and b.dim() == 5 and b.shape[-1] == 1:
        cols = b.squeeze(-1)                                               # [B, T, H, k]
        if a.dim() == 2:
            return (cols @ a.mT).unsqueeze(-1)
        heads = max(a.shape[0], cols.shape[2])
        return torch.einsum("bthk,hrk->bthr", cols.expand(-1, -1, heads, -1),
                            a.expand(heads, -1, -1)).unsqueeze(-1)
    if b.dim() in (2, 3) and a.dim() == 5 and a.shape[-2] == 1:
        rows = a.squeeze(-2)                                               # [B, T, H, k]
        if b.dim() == 2:
            return (rows @ b).unsqueeze(-2)
        heads = max(b.shape[0], rows.shape[2])
        return torch.einsum("bthk,hkc->bthc", rows.expand(-1, -1, heads, -1),
                            b.expand(heads, -1, -1)).unsqueeze(-2)
    return a @ b


def outer_sum(col: torch.Tensor, row: torch.Tensor, tokens: int | None = None) -> torch.Tensor:
    """sum over the tokens (axis 1) of col_t @ row_t, for col [B, T, H, r, 1] and
    row [B, T, H, 1, c] (either may broadcast): one matrix product, [B, H, r, c]. With
    `tokens` (the count summed over), a product the same at every token (both broadcast
    along axis 1) counts once per token, as `token_sum`."""
    lead = torch.broadcast_shapes(col.shape[:-2], row.shape[:-2])
    col = col.expand(*lead, *col.shape[-2:]).squeeze(-1)
    row = row.expand(*lead, *row.shape[-2:]).squeeze(-2)
    total = torch.einsum("btHr,btHc->bHrc", col, row)
    return total * tokens if tokens is not None and lead[1] == 1 else total


def token_sum(x: torch.Tensor, tokens: int) -> torch.Tensor:
    """The sum over a piece of `tokens` tokens (axis 1) of a term `[B, T|1, ...]`: a term
    the same at every token (one built from the chunk-start state and constants alone, which
    broadcasts along axis 1) counts once per token, not once."""
    total = x.sum(1)
    return total * tokens if x.shape[1] == 1 else total


def _full(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """x `[B|1, T|1, H|1, r, c]` broadcast to `like`'s `[B, T, H]`."""
    return x.expand(*like.shape[:3], *x.shape[-2:])


@_float32_by_chunk
def dual_chunked(outer: Callable, combine: Callable, read: Callable, tokens: dict,
                 state: State, *, consts: dict | None = None,
                 anchors: tuple[tuple[str, str], ...], chunk: int, read_before: bool = False,
                 cast: torch.dtype | None = None):
    """A frozen-gradient level over whole chunks in the dual form. `outer(inputs)` gives each
    chunk-start term as (column, row) pairs per token, `combine(state, inputs)` adds one
    token's terms (linear, scalar coefficients), `read(states, inputs)` reads with
    `nl.mm(state, x)`. Under autocast (`cast`, set by `_float32_by_chunk`) each chunk casts
    its own tokens to float32: a recomputed chunk keeps them as they came (bf16 under an LM
    step's autocast, nl.per_token's `keep_precision`)."""
    consts = dict(consts or {})
    state, anchor, position = _resume(state, anchors)
    T = next(iter(tokens.values())).shape[1]
    order = list(state)
    # each token's transition depends on its gates only, not on the carried state: built for
    # every chunk at once (a handful of operators per call, not per chunk), then split
    terms, gates = _combine_reads(combine, order, {**consts, **tokens})
    lead = torch.broadcast_shapes(*(x.shape[:3] for x in tokens.values()))
    # (a combine that reads no gate still needs a tensor for the basis' dtype and device)
    # (a gate written inline reads parameters too: consts, already in `used`)
    used = {**consts, **{g: _cast(tokens[g], cast) for g in gates if g in tokens}} or {
        name: _cast(x, cast) for name, x in tokens.items()}
    step, add = _transitions(combine, used, order, terms, lead)
    # whether the scan kernel runs is decided once: a chunk is never longer than `chunk`
    kernels = _scan_kernels({"step": step}, len(order), len(terms), min(chunk, T))
    eyes = _eyes(step, add, chunk, read_before, kernels)
    # the coefficients restart at each chunk start and do not depend on the carried state:
    # every chunk's scan runs before the chunk loop, side by side (the PyTorch scan's
    # intermediates are recomputed in the backward pass, not kept)
    coefficients = _maybe_checkpoint(_chunk_coefficients, kernels is None and _needs_grad(
        {"step": step, "add": add}), step, add, chunk, eyes["tokens"], kernels)
    outputs, stacks = [], {}
    # recomputing whole chunks keeps only the chunk-start states (`recompute_chunks`) and the
    # chunks' coefficients
    run = chunk_runner(_dual_chunk, _recompute(tokens, state, consts), reads=True)
    for part, (phis, psis) in zip(_chunks(tokens, chunk), coefficients):
        anchor = _anchor(state, anchors)
        o, (state, stacks) = run(outer, read, consts, state, stacks, part, phis, psis, terms,
                                 eyes, anchors, read_before, cast)
        outputs.append(o)
    return torch.cat(outputs, 1), _suspend(state, anchor, position + T, anchors)


def _dual_chunk(outer, read, consts, state, stacks, part, phis, psis, terms, eyes, anchors,
                read_before, cast=None):
    """One chunk of `dual_chunked`: its reads and the state after its last token, from the
    chunk's coefficients (phis `[B, T, H, n, n]`, psis `[B, T, H, n, T, d]`:
    `_chunk_coefficients`; `eyes`: `_eyes`; `stacks`: `_chunk_end`'s); its tokens cast to
    `cast` first."""
    order = list(state)
    part = {name: _cast(x, cast) for name, x in part.items()}
    chunk_inputs = {**consts, **_wide(_anchor(state, anchors)), **part}
    pairs = outer(chunk_inputs)
    if set(pairs) != set(terms):
        raise ValueError(f"dual_chunked: the combine reads the terms {terms}, the outer "
                         f"products give {list(pairs)}")
    seen = _before(phis, psis, eyes["states"]) if read_before else (phis, psis)
    seen_phi, seen_psi = seen[0].unbind(-2), seen[1].unbind(-3)
    stacked = {n: DualState(n, seen_phi[i], seen_psi[i], state, pairs, order, terms, stacks)
               for i, n in enumerate(order)}
    o = read(stacked, chunk_inputs)
    return o, _chunk_end(state, stacks, pairs, order, terms, phis[:, -1], psis[:, -1])


def _cast(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return x if dtype is None or not x.is_floating_point() else x.to(dtype)


def _chunk_coefficients(step, add, chunk: int, here, kernels) -> list[tuple]:
    """(Phi, Psi) of each chunk of `chunk` tokens (`_scan` from the chunk's start), from every
    token's transition (step `[B, T, H, n, n]`, add `[B, T, H, n, d]`). The chunks run as one
    scan of a batch of (chunks x B) sequences, not one launch per chunk inside the chunk loop
    (there a scan kernel had one program per (batch, head) and most of the GPU idle:
    docs/perf.md), and a shorter last chunk as one more."""
    B, T = step.shape[:2]
    full = T // chunk * chunk
    out = []
    if full:
        phi, psi = _scan(*(_chunk_major(x[:, :full], chunk) for x in (step, add)), here,
                         kernels)
        out.extend(zip(phi.unflatten(0, (-1, B)).unbind(0), psi.unflatten(0, (-1, B)).unbind(0)))
    if full < T:
        out.append(_scan(step[:, full:], add[:, full:], here, kernels))
    return out


def _chunk_major(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """x `[B, T, ...]` (T a multiple of `chunk`) as `[T / chunk * B, chunk, ...]`, chunk by
    chunk, each chunk's B sequences together."""
    return x.unflatten(1, (-1, chunk)).transpose(0, 1).flatten(0, 1)


def _eyes(step, add, chunk: int, read_before: bool, kernels) -> dict:
    """The identities the chunks need, built once per call rather than once per chunk: of
    the chunk's tokens for the PyTorch scan (none when the scan kernel runs), of the states
    for a read before the write (None when not needed)."""
    n = step.shape[-1]
    like = {"dtype": step.dtype, "device": step.device}
    return {"tokens": None if kernels is not None else torch.eye(chunk, **like),
            "states": torch.eye(n, **like) if read_before else None}


def _combine_reads(combine, order, inputs) -> tuple[list[str], list[str]]:
    """The combine's terms (the names it reads that are neither states nor inputs: the
    outer products), and the inputs it reads (the gates), in the order it reads them. Found
    by running it once on meta tensors: nothing is computed, nothing launched."""
    reads = _Reads({name: _meta(x) for name, x in inputs.items()})
    combine({name: torch.zeros((), device="meta") for name in order}, reads)
    return reads.missing, [name for name in reads.seen if name in inputs]


class _Reads(dict):
    """A combine's inputs that records which names are read, and stands a meta scalar in
    for each one it was not given (a term)."""

    def __init__(self, given: dict):
        super().__init__(given)
        self.seen: list[str] = []
        self.missing: list[str] = []

    def __getitem__(self, name):
        if name not in self.seen:
            self.seen.append(name)
        return super().__getitem__(name)

    def __missing__(self, name):
        self.missing.append(name)
        value = torch.zeros((), device="meta")
        self[name] = value
        return value


def _meta(x):
    return torch.empty_like(x, device="meta") if torch.is_tensor(x) else x


def _coefficients(combine, inputs, order, terms, lead):
    """Phi `[B, T, H, n, n]` and Psi `[B, T, H, n, T, d]` of the states after each token's
    write (`_transitions`, then `_scan`)."""
    step, add = _transitions(combine, inputs, order, terms, lead)
    return _scan(step, add, None, _scan_kernels({"step": step}, len(order), len(terms),
                                                step.shape[1]))


def _transitions(combine, inputs, order, terms, lead):
    """Each token's affine map s -> A_t s + b_t: step A `[B, T, H, n, n]` and add b
    `[B, T, H, n, d]` (b_t: the coefficients of the token's own terms), from the combine
    applied to basis vectors."""
    B, T, H = lead
    n, d = len(order), len(terms)
    like = _like(inputs)
    basis = torch.eye(n + d, dtype=like.dtype, device=like.device)
    out = combine({name: basis[i] for i, name in enumerate(order)},
                  {**inputs, **{name: basis[n + i] for i, name in enumerate(terms)}})
    rows = torch.stack([out[name].expand(B, T, H, 1, n + d).squeeze(-2) for name in order],
                       -2)
    return rows[..., :n], rows[..., n:]


def _scan(step, add, here=None, kernels=None):
    """The inclusive scan of a chunk's transitions from the chunk start: Phi and Psi. In
    log2(T) doubling steps (Hillis & Steele 1986) instead of a loop over the tokens, or as
    the scan kernel (`kernels`: dual_triton.py, when `_scan_kernels` said it runs). `here`:
    an identity of at least T tokens, if built."""
    T, d = step.shape[1], add.shape[-1]
    if kernels is not None:
        return kernels.coefficient_scan(step, add)
    # b_t sits in column t
    here = torch.eye(T, dtype=add.dtype, device=add.device) if here is None else here[:T, :T]
    add = torch.einsum("bthnd,tj->bthnjd", add, here).flatten(-2)
    offset = 1
    while offset < T:
        step, add = (torch.cat([step[:, :offset], step[:, offset:] @ step[:, :-offset]], 1),
                     torch.cat([add[:, :offset], step[:, offset:] @ add[:, :-offset]
                                + add[:, offset:]], 1))
        offset *= 2
    return step, add.unflatten(-1, (T, d))


def _traced_without_kernels() -> bool:
    """Whether torch.compile is tracing this code and it traces the PyTorch forms of the scan
    and the reads: only with NLC_COMPILE_DUAL_KERNELS=0. By default traced code calls the
    kernels as custom ops (dual_ops.py)."""
    return (torch.compiler.is_compiling()
            and os.environ.get("NLC_COMPILE_DUAL_KERNELS") == "0")


def _kernels(ref: torch.Tensor):
    """dual_triton.py (this form's scan and reads as Triton kernels) when they run for tensors
    like `ref`: CUDA ones unless NLC_TRITON=0, CPU ones with NLC_TRITON=force; else None.
    Under torch.compile (a compiled chunk or model) the traced code calls the kernels as
    custom ops (dual_ops.py); with NLC_COMPILE_DUAL_KERNELS=0 it traces the PyTorch forms
    instead, and Inductor fuses them."""
    # float32 only: half-precision reads made an illegal memory access in their backward on
    # an H200 (2026-12-05); dual_chunked runs in float32 under autocast anyway
    if (not triton_enabled(ref) or ref.dtype != torch.float32
            or _traced_without_kernels()):
        return None
    try:
        from nlc.runtime.library import dual_triton
    except ImportError:  # no triton on this machine
        return None
    return dual_triton


def _like(inputs: dict) -> torch.Tensor:
    return next(x for x in inputs.values() if torch.is_tensor(x) and x.is_floating_point())


def _scan_kernels(inputs: dict, n: int, d: int, T: int):
    """dual_triton.py when its scan runs for these inputs (n states, d terms, T tokens)."""
    kernels = _kernels(_like(inputs))
    return kernels if kernels is not None and kernels.scan_fits(n, d, T) else None


def _before(phis, psis, eye=None):
    """The coefficients of the states each token's read sees before its own write."""
    if eye is None:
        eye = torch.eye(phis.shape[-1], dtype=phis.dtype, device=phis.device)
    first = eye.expand(phis.shape[0], 1, *phis.shape[2:])
    return (torch.cat([first, phis[:, :-1]], 1),
            torch.cat([torch.zeros_like(psis[:, :1]), psis[:, :-1]], 1))


def _chunk_end(state, stacks, pairs, order, terms, phi, psi):
    """The states after the chunk's last token, from its coefficients phi `[B, H, n, n]`
    and psi `[B, H, n, T, d]`. The states of one shape (an MLP layer's weights and their
    momentum) are built together: a scaled sum of their chunk-start states, and one batched
    product per (column, row) pair of a term of that shape, whatever the number of states.
    Returns the states, and `stacks`: per group (a tuple of indices into `order`) the states
    stacked `[B, H, G, r, c]`, of which the returned states are views. The next chunk starts
    from those: its start states need no stack (a copy per chunk, which a chunk whose
    activations are kept would keep for the backward pass); only the first chunk stacks."""
    new, stacked = {}, {}
    for group in _shape_groups(state, order):
        shape = state[order[group[0]]].shape[-2:]
        coefs = _pick(_pick(phi, 2, group), 3, group)                   # [B, H, G, G]
        starts = stacks.get(tuple(group))
        if starts is None:
            starts = torch.stack(torch.broadcast_tensors(*(state[order[m]] for m in group)), 2)
        total = _mix(coefs, starts.flatten(-2)).unflatten(-1, shape)     # [B, H, G, r, c]
        weights = _pick(psi, 2, group)                                  # [B, H, G, T, d]
        for dd, term in enumerate(terms):
            for col, row in _matching(pairs[term], shape):
                cols = col.squeeze(-1).permute(0, 2, 3, 1).unsqueeze(2)  # [B, H, 1, r, T]
                weighted = (weights[..., dd].unsqueeze(-2) * cols).flatten(2, 3)
                rows = row.squeeze(-2).transpose(1, 2)                  # [B, H, T, c]
                total = total + (weighted @ rows).unflatten(2, (len(group), shape[0]))
        new.update({order[m]: s for m, s in zip(group, total.unbind(2))})
        stacked[tuple(group)] = total
    return {name: new[name] for name in order}, stacked


def _mix(coefs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """coefs @ x for a few states (`coefs` [..., G, G], x [..., G, N] with N an MLP layer's
    weights, thousands wide), as G scaled sums: elementwise work, which compiled chunks fuse
    into one pass over x. As a matrix product contracting over G = 2, it and its two
    backward products went to cuBLAS's float32 FMA kernels at 53 to 118 us a launch: by
    their launch counts, 28% of Titans' LM step on an H100 (docs/perf.md, ninth batch)."""
    if coefs.shape[-1] > 4:
        return coefs @ x
    out = coefs[..., :, :1] * x[..., :1, :]
    for m in range(1, coefs.shape[-1]):
        out = out + coefs[..., :, m:m + 1] * x[..., m:m + 1, :]
    return out


def _shape_groups(state, order) -> list[list[int]]:
    """The indices (into `order`) of the states of each shape, in order."""
    groups: dict = {}
    for m, name in enumerate(order):
        groups.setdefault(tuple(state[name].shape[-2:]), []).append(m)
    return list(groups.values())


def _pick(x: torch.Tensor, dim: int, index: list[int]) -> torch.Tensor:
    """x's entries `index` along `dim`: a strided view when they are evenly spaced (the
    states of one shape usually are), else one stack. Never an index tensor, which would be
    copied from the host (a CUDA graph capture refuses that)."""
    step = index[1] - index[0] if len(index) > 1 else 1
    if step > 0 and index == list(range(index[0], index[-1] + 1, step)):
        # one slice, one autograd node: each view's backward is a fill and a copy
        return x[(slice(None),) * (dim % x.dim()) + (slice(index[0], index[-1] + 1, step),)]
    return torch.stack([x.select(dim, i) for i in index], dim)


def _matching(pairs: Pairs, shape) -> Pairs:
    """A term's (column, row) pairs when the term has the state's shape, else none."""
    col, row = pairs[0]
    return pairs if (col.shape[-2], row.shape[-1]) == tuple(shape) else []
