"""Token-by-token drivers for generated levels.

A generated level provides a `step(state, inputs) -> (new_state, output)` over one token
(matrices in the last two axes, see ops.py); `recurrent` runs it along the sequence. For
rules whose gradients are taken at the state of a chunk start (TTT / Titans mini-batches),
`frozen_chunked` evaluates the anchored part of every token of a chunk at once (the costly
gradients, as batched matrix products) and leaves only the cheap combination with the
running state to a loop."""

from __future__ import annotations

import functools
import inspect
import itertools
import os
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.utils.checkpoint
from nlc.runtime.library import affine_chunk, member_batch

State = dict[str, torch.Tensor]
Step = Callable[[State, dict], tuple[State, torch.Tensor]]


def _float32(driver):
    """Run a driver in float32 with autocast off when autocast is on: a state carried over
    thousands of tokens drifts in bf16 (Titans' MLP memory diverged in a bf16 LM run)."""
    @functools.wraps(driver)
    def run(*args, **kwargs):
        device = _autocast_device()
        if device is None:
            return driver(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return driver(*_to_float32(args), **_to_float32(kwargs))
    return run


def _float32_by_chunk(driver):
    """`_float32` for a driver with arguments `tokens` and `cast` that casts its tokens itself
    where it uses them (`cast`: float32 under autocast, else None): every other argument is
    cast before it runs. A chunk recomputed in the backward pass then keeps the
    half-precision tokens it was given, not float32 copies of the whole sequence."""
    signature = inspect.signature(driver)

    @functools.wraps(driver)
    def run(*args, **kwargs):
        device = _autocast_device()
        if device is None:
            return driver(*args, cast=None, **kwargs)
        given = signature.bind(*args, **kwargs).arguments
        given = {name: value if name == "tokens" else _to_float32(value)
                 for name, value in given.items()}
        with torch.autocast(device, enabled=False):
            return driver(**given, cast=torch.float32)
    return run


def _autocast_device() -> str | None:
    for device in ("cuda", "cpu"):
        if torch.is_autocast_enabled(device):
            return device
    return None


def _to_float32(value):
    if isinstance(value, dict):
        return {k: _to_float32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not isinstance(value, Member):
        return type(value)(_to_float32(v) for v in value)
    if torch.is_tensor(value) and value.is_floating_point():
        return value.float()
    return value


def _tokens(tokens: dict) -> list[dict]:
    """One dict per token (axis 1). Unbinding once keeps the backward pass to one gradient
    per tensor; indexing `x[:, t]` in the loop would allocate a full-size zero gradient for
    every token."""
    names = list(tokens)
    if not names:
        return []
    columns = [tokens[n].unbind(1) for n in names]
    return [dict(zip(names, values)) for values in zip(*columns)]


POSITION = "#position"  # tokens seen so far, kept with the anchors of a chunked level


def _resume(state: State, anchors) -> tuple[State, dict, int]:
    """Split a level state into its tensors, the saved anchors and the position."""
    state = dict(state)
    position = int(state.pop(POSITION, 0))
    anchor = {a: state.pop(a) for a, _ in anchors if a in state}
    return state, anchor, position


def _suspend(state: State, anchor: dict, position: int, anchors) -> State:
    return {**state, **anchor, POSITION: position} if anchors else state


def _anchor(state: State, anchors) -> dict:
    """The chunk-start copies (the anchors) of a level's state tensors."""
    return {a: state[s] for a, s in anchors}


def _wide(anchor: dict) -> dict:
    """Anchors with a token axis of 1, to meet a whole chunk's tokens `[B, T, ...]`."""
    return {a: x.unsqueeze(1) for a, x in anchor.items()}


def _per_token(o: torch.Tensor, part: dict) -> torch.Tensor:
    """A chunk's reads or terms `[B, C, ...]`: one of the chunk-start state alone (`read h`
    at `every C tokens`) has a token axis of 1 (`_wide`), the same for every token."""
    if not torch.is_tensor(o) or o.dim() < 2:
        return o
    C = _any_tensor(part).shape[1]
    return o.expand(-1, C, *o.shape[2:]) if o.shape[1] == 1 != C else o


def _chunks(tokens: dict, size: int):
    """The tokens (axis 1) in consecutive parts of `size`: one split per tensor, whose
    backward is one concatenation (a slice per part would zero-fill a full-size gradient
    for every part)."""
    names = list(tokens)
    parts = [tokens[n].split(size, dim=1) for n in names]
    for values in zip(*parts):
        yield dict(zip(names, values))


def mid_chunk(state: State, every: int | None) -> bool:
    """Whether a saved state stopped inside a chunk (then only the recurrent form goes on)."""
    position = state.get(POSITION, 0)
    rows = position if isinstance(position, tuple) else (position,)
    return bool(every) and any(int(p) % every != 0 for p in rows)


SEGMENT = 16  # tokens per segment of a token loop recomputed in the backward pass


@_float32
def recurrent(step: Step, tokens: dict, state: State, *, consts: dict | None = None,
              anchors: tuple[tuple[str, str], ...] = (), anchor_every: int | None = None):
    """Run `step` over T tokens. `tokens` are `[B, T, H, r, c]`, `state` `[B, H, r, c]`,
    `consts` broadcast (parameters `[H, r, c]`). `anchors` pairs (anchor name, state name):
    every `anchor_every` tokens the anchor is reset to the state at that moment.

    With gradients and `recompute_chunks`, the loop runs in segments of SEGMENT tokens, each
    recomputed in the backward pass: the per-token states (an MLP memory's weights at every
    token) are not kept, only the state at each segment's start."""
    consts = dict(consts or {})
    state, anchor, position = _resume(state, anchors)
    T = next(iter(tokens.values())).shape[1]

    def segment(state, anchor, part, start):
        outputs = []
        for t, token in enumerate(_tokens(part)):
            if anchors and (start + t) % anchor_every == 0:
                anchor = _anchor(state, anchors)
            state, out = step(state, {**consts, **anchor, **token})
            outputs.append(out)
        return torch.stack(outputs, 1), state, anchor

    if not _recompute(tokens, state, consts):
        out, state, anchor = segment(state, anchor, tokens, position)
        return out, _suspend(state, anchor, position + T, anchors)
    outputs, start = [], position
    for part in _chunks(tokens, SEGMENT):
        out, state, anchor = _maybe_checkpoint(segment, True, state, anchor, part, start)
        outputs.append(out)
        start += _any_tensor(part).shape[1]
    return torch.cat(outputs, 1), _suspend(state, anchor, position + T, anchors)


PIECE = 64  # tokens per piece of an `every C tokens` chunk (bounds the memory of its terms)
# the key under which an `every C tokens` drive finds its piece's token count (no spec name
# has a space), which sums a term the same at every token once per token (`token_sum`)
PIECE_TOKENS = "piece tokens"


def _needs_grad(*dicts) -> bool:
    return torch.is_grad_enabled() and any(
        torch.is_tensor(v) and v.requires_grad for d in dicts for v in d.values())


def recompute_chunks(ref: torch.Tensor) -> bool:
    """Whether a chunked level recomputes every chunk in the backward pass even when the
    chunk builds nothing per token (the dual form; affine transitions on outer products):
    then only the chunk-start states are kept, not the chunk's activations. Those are about
    275 KiB per token and layer for examples/titans.nl at d_model 512 (37 GiB at batch
    16 x 2048 and 4 layers, docs/perf.md); recomputing costs one more forward of the chunk.
    `NLC_RECOMPUTE_CHUNKS=1` or `0` decides; by default CUDA tensors are recomputed (device
    memory bounds the batch) and CPU ones keep their activations (time bounds the run)."""
    flag = os.environ.get("NLC_RECOMPUTE_CHUNKS", "")
    if flag in ("0", "1"):
        return flag == "1"
    return ref.is_cuda


def _any_tensor(tokens: dict) -> torch.Tensor:
    return next(iter(tokens.values()))


def _recompute(tokens: dict, *dicts, builds_per_token: bool = False) -> bool:
    """Whether a driver's chunks (segments) run checkpointed: with gradients, always when a
    chunk builds per-token states (they must not survive to the backward pass), else as
    `recompute_chunks` decides for the tokens' device."""
    return _needs_grad(tokens, *dicts) and (
        builds_per_token or recompute_chunks(_any_tensor(tokens)))


def _maybe_checkpoint(fn, use: bool, *args):
    """Recompute `fn` in the backward pass instead of keeping its intermediates, when `use`
    (inside a compiled chunk the compiler decides what to keep). Chunk code draws no random
    numbers, so no RNG state is saved and restored (nothing to do under CUDA graph capture)."""
    if not use or torch.compiler.is_compiling():
        return fn(*args)
    return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False,
                                             preserve_rng_state=False)


_COMPILED: dict = {}
COMPILE_CHUNKS = False  # `nlc train --compile-chunks`, as NLC_COMPILE_CHUNKS=1


def set_compile_chunks(on: bool) -> None:
    """Compile chunk bodies (`compiled_chunk`) from now on, in this process, or not (then
    only NLC_COMPILE_CHUNKS=1 asks for it)."""
    global COMPILE_CHUNKS
    COMPILE_CHUNKS = on


def compiled_chunk(body: Callable) -> Callable:
    """`body` (one chunk of a chunked driver), compiled with torch.compile when
    NLC_COMPILE_CHUNKS=1 or `set_compile_chunks` (`nlc train --compile-chunks`), else `body`
    itself. A chunk is hundreds of small products and
    elementwise passes (a Titans LM step launched 84,613 kernels on a GPU, docs/perf.md):
    compiled, they can fuse, and every chunk of every layer of the same spec reuses one graph
    (a sequence's last, shorter chunk compiles its own). Compiling takes minutes on a small
    CPU, and on the CPU the chunk runs no faster, so it is off unless asked for. A model
    compiled as a whole (`nlc train --compile`) traces the body in its own graph instead."""
    if not _compile_asked():
        return body
    if body not in _COMPILED:
        _COMPILED[body] = _compile(body)
    return _COMPILED[body]


def _compile(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=False, options=inductor_options() or None)


# compiled chunks' Inductor settings unless NLC_CHUNK_INDUCTOR says otherwise: Titans' LM step
# on an H100 224.3k tokens/s without, 229.3k with (docs/perf.md, fifteenth batch)
CHUNK_INDUCTOR = "combo_kernels=1"


def inductor_options() -> dict:
    """Inductor settings for compiled chunks from `NLC_CHUNK_INDUCTOR`, `name=value` pairs
    separated by spaces, each a setting of `torch._inductor.config` with a value of its type
    (booleans as 0 or 1): for instance `combo_kernels=1` (independent small kernels launched
    as one) or `coordinate_descent_tuning=1` (each generated kernel's launch settings tuned
    on the device). A chunk is dozens of kernels of a few microseconds each (docs/perf.md),
    which these settings address. Unset, it is CHUNK_INDUCTOR; set empty, Inductor's
    defaults."""
    text = os.environ.get("NLC_CHUNK_INDUCTOR", CHUNK_INDUCTOR).strip()
    options, problems = {}, []
    for item in text.split():
        name, sep, value = item.partition("=")
        try:
            if not sep or not name or not value:
                raise ValueError(f"{item!r} is not name=value")
            options[name] = _setting(name, value)
        except ValueError as problem:
            problems.append(str(problem))
    if problems:
        from nlc.errors import NlcError
        raise NlcError(f"NLC_CHUNK_INDUCTOR={text!r}: " + "; ".join(problems))
    return options


def _setting(name: str, value: str):
    """`value` as the type of Inductor's setting `name`; ValueError names what is wrong."""
    from torch._inductor import config
    current = config
    for part in name.split("."):  # a setting of a part of the config: `triton.cudagraphs`
        if part.startswith("_") or not hasattr(current, part):
            raise ValueError(f"{name!r} is not a torch._inductor.config setting")
        current = getattr(current, part)
    if isinstance(current, bool):
        if value not in ("0", "1"):
            raise ValueError(f"{name} takes 0 or 1, not {value!r}")
        return value == "1"
    if isinstance(current, (int, float)):
        try:
            return type(current)(value)
        except ValueError:
            kind = "an integer" if isinstance(current, int) else "a number"
            raise ValueError(f"{name} takes {kind}, not {value!r}") from None
    if current is None:  # unset, of no given type: a number if it reads as one
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        return value
    if isinstance(current, str):
        return value
    if not callable(current) and hasattr(current, "__dict__"):  # a group: `triton`
        raise ValueError(f"{name!r} is a group of settings: name one of them ({name}.SETTING)")
    raise ValueError(f"{name} is a {type(current).__name__} setting, which NLC_CHUNK_INDUCTOR "
                     "cannot set")


def _compile_asked() -> bool:
    return ((COMPILE_CHUNKS or os.environ.get("NLC_COMPILE_CHUNKS", "") == "1")
            and not torch.compiler.is_compiling())


def chunk_runner(body: Callable, recompute: bool, reads: bool = False) -> Callable:
    """`body` as a chunked driver runs each chunk: compiled (`compiled_chunk`) or not, and,
    with `recompute`, recomputed in the backward pass (`_maybe_checkpoint`). A compiled chunk
    that is recomputed compiles the checkpointed body: the compiler's partitioner then
    recomputes only what the chunk's backward reads, not the whole chunk (the reads' outputs
    and the chunk's end state are not needed to differentiate them), where a checkpoint
    around the compiled chunk would run all of its forward again. `NLC_CHECKPOINT_OUTSIDE=1`
    keeps the checkpoint around the compiled chunk (for side-by-side timings). `reads`: the
    body calls the dual form's reads, of which it keeps some (`_save_reads`)."""
    if not recompute:
        return compiled_chunk(body)
    if not _compile_asked() or os.environ.get("NLC_CHECKPOINT_OUTSIDE") == "1":
        return functools.partial(_maybe_checkpoint, compiled_chunk(body), True)
    key = (body, "recomputed")
    if key not in _COMPILED:
        _COMPILED[key] = _compile(_checkpointed(body, reads))
    return _COMPILED[key]


def check_settings() -> None:
    """Refuse a bad NLC_SAVE_READS or NLC_CHUNK_INDUCTOR now (`nlc train` asks before its
    run starts), not when the first chunk compiles, after the run's folder and model are
    made."""
    _reads_kept()
    inductor_options()


def _reads_kept() -> str:
    save = os.environ.get("NLC_SAVE_READS", "1")
    if save not in ("0", "narrow", "1"):
        from nlc.errors import NlcError
        raise NlcError(f"NLC_SAVE_READS={save!r}: expected 0 (keep no read), narrow (the "
                       "reads no wider than their input) or 1 (keep every read, the default)")
    return save


def _checkpointed(body: Callable, reads: bool) -> Callable:
    save = _reads_kept()
    options = {}
    if reads and save in ("1", "narrow"):
        from nlc.runtime.library import dual_ops
        policy = functools.partial(_save_reads, dual_ops.dual_read_op._opoverload,
                                   save == "narrow")
        options["context_fn"] = functools.partial(
            torch.utils.checkpoint.create_selective_checkpoint_contexts, policy)

    @functools.wraps(body)
    def run(*args):
        return torch.utils.checkpoint.checkpoint(body, *args, use_reentrant=False,
                                                 preserve_rng_state=False, **options)
    return run


def _save_reads(read, narrow: bool, ctx, op, *args, **kwargs):
    """Which outputs a recomputed compiled chunk keeps besides its inputs, so that its
    backward pass does not run them again (a selective checkpoint policy): the dual form's
    reads (`read`, runtime/library/dual_ops.py), every one by default or with
    `NLC_SAVE_READS=1` (10 KiB a token and layer in Titans); with `=narrow` those no wider
    than their input (Titans' second layer: 64 floats a token and head, where the first
    layer's read is 256; 2 KiB); none with `=0`. Titans' LM step on an H100: 240.0k tokens/s
    at 10.5 GiB keeping the narrow reads, 245.4k at 11.5 GiB keeping all (docs/perf.md,
    sixteenth batch)."""
    policy = torch.utils.checkpoint.CheckpointPolicy
    if op is not read:
        return policy.PREFER_RECOMPUTE
    x, starts = args[:2]
    keep = not narrow or starts.shape[-2] <= x.shape[-1]
    return policy.MUST_SAVE if keep else policy.PREFER_RECOMPUTE


@_float32
def frozen_chunked(drive: Callable, combine: Callable, read: Callable, tokens: dict, state: State,
                   *, consts: dict | None = None, anchors: tuple[tuple[str, str], ...],
                   chunk: int, read_before: bool = False, additive: bool = False,
                   transition: Callable | None = None, pairs: Callable | None = None,
                   lazy_read: bool = False, final: bool = True, walk=None):
    """The frozen-gradient chunk form: per chunk, `drive(inputs)` computes every term that
    depends on the chunk-start state (the anchors) for all tokens at once; `combine(state,
    inputs)` adds one token's terms to the running state; `read(states, inputs)` reads every
    token of the chunk from the stacked per-token states.

    `additive` (`every C tokens`): the state changes by the sum of the chunk's terms and the
    reads see only the anchors, so `drive` returns its terms summed over the tokens it is
    given, a piece of PIECE tokens at a time, and `combine` runs once per chunk on the sums.
    Without `final` (the caller drops the final state) the last chunk's terms, which only
    the final state would see, are not computed: its reads see the anchors alone.

    `transition(inputs)`, where every state's combine is affine in it (retain, erase, left,
    right, input for all tokens of a chunk), replaces the per-token loop by the chunk-parallel
    form of runtime/library/affine_chunk.py. With `pairs(inputs)` (the drives as per-token
    outer products) no per-token matrix is built, and with `lazy_read` the reads meet the
    states through `nl.mm` without building them either. `walk` (a fused_walk.MLPWalk, from
    the compiler) lets the walk kernels take the chunks where they run
    (runtime/library/fused_walk.py)."""
    consts = dict(consts or {})
    state, anchor, position = _resume(state, anchors)
    T = next(iter(tokens.values())).shape[1]
    # with gradients, each chunk (piece) is recomputed in the backward pass instead of keeping
    # its per-token states (an MLP memory's weights per token: tens of GB at batch 64); a
    # chunk that builds none (outer products, reads of the unbuilt states) keeps its own
    recompute = _recompute(tokens, state, consts,
                           builds_per_token=not (transition and pairs and lazy_read))

    def read_piece(wide, piece):
        return _per_token(read({}, {**consts, **wide, **piece}), piece)

    def one_piece(wide, piece):  # `drive` sums its terms over the piece's tokens itself
        count = {PIECE_TOKENS: _any_tensor(piece).shape[1]}
        return drive({**consts, **wide, **piece, **count}), read_piece(wide, piece)

    outputs = []
    run = chunk_runner(_frozen_chunk, recompute)
    parts = list(_chunks(tokens, chunk))
    functions, options = (drive, combine, read), (transition, pairs, read_before, lazy_read)
    if _walks(walk, functions, options, consts, anchors, state, parts[0]):
        run = functools.partial(_maybe_checkpoint, _walk_chunk, recompute, walk)
    for i, part in enumerate(parts):
        if not additive:
            o, state, anchor = run(functions, options, consts, anchors, state, part)
            outputs.append(o)
            continue
        anchor = _anchor(state, anchors)
        wide = _wide(anchor)
        if not final and i == len(parts) - 1:  # its terms would reach only the final state
            outputs += [_maybe_checkpoint(read_piece, recompute, wide, piece)
                        for piece in _chunks(part, PIECE)]
            break
        total = None
        for piece in _chunks(part, PIECE):
            sums, o = _maybe_checkpoint(one_piece, recompute, wide, piece)
            total = sums if total is None else {k: total[k] + v for k, v in sums.items()}
            outputs.append(o)
        state = combine(state, {**consts, **total})
    return torch.cat(outputs, 1), _suspend(state, anchor, position + T, anchors)


def _frozen_chunk(functions, options, consts, anchors, state, part):
    """One chunk of `frozen_chunked` (module level, so that NLC_COMPILE_CHUNKS compiles it
    once for every chunk and layer): `functions` its (drive, combine, read), `options` its
    (transition, pairs, read_before, lazy_read). Returns (reads, state, anchors)."""
    drive, combine, read = functions
    transition, pairs, read_before, lazy_read = options
    anchor = _anchor(state, anchors)
    wide = _wide(anchor)
    if transition is not None:
        terms = (pairs or drive)({**consts, **wide, **part})
        stacked, state = _affine(transition({**consts, **wide, **part, **terms}), state,
                                 read_before, terms if pairs else None, lazy_read)
        return _per_token(read(stacked, {**consts, **wide, **part}), part), state, anchor
    # a term of the chunk-start state alone (a decay's -c S_0) has a token axis of 1: each
    # token adds it (zip over the unbound tokens would stop after the first)
    driven = {k: _per_token(v, part) for k, v in drive({**consts, **wide, **part}).items()}
    seen = []
    for token, terms in zip(_tokens(part), _tokens(driven)):
        if read_before:
            seen.append(state)
        state = combine(state, {**consts, **token, **terms})
        if not read_before:
            seen.append(state)
    stacked = {name: torch.stack([s[name] for s in seen], 1) for name in state}
    return _per_token(read(stacked, {**consts, **wide, **part}), part), state, anchor


def _walks(walk, functions, options, consts, anchors, state, part) -> bool:
    """Whether the walk kernels take this level's chunks (runtime/library/fused_walk.py)."""
    transition, pairs, read_before, lazy_read = options
    if walk is None or not (transition and pairs and lazy_read and read_before):
        return False
    from nlc.runtime.library import fused_walk
    if not fused_walk.wanted(walk, part[walk.token]):
        return False

    def printed(start, small, own):  # the chunked form as printed, for the check
        reads, last, _ = _frozen_chunk(functions, options, own, anchors, start, small)
        terms, moves = _moves(options, own, _wide(_anchor(start, anchors)), small)
        return reads, moves, terms, last
    return fused_walk.verified(walk, (functions, options), printed, consts, state, part)


def _moves(options, consts, wide, part) -> tuple[dict, dict]:
    """A chunk's drives as outer products and its transitions (`options`' pairs and
    transition functions), from its chunk-start tensors `wide`."""
    transition, pairs = options[:2]
    terms = pairs({**consts, **wide, **part})
    return terms, transition({**consts, **wide, **part, **terms})


def _walk_chunk(walk, functions, options, consts, anchors, state, part):
    """One chunk of `frozen_chunked` on the walk kernels: (reads, state, anchors)."""
    from nlc.runtime.library import fused_walk
    anchor = _anchor(state, anchors)
    terms, moves = _moves(options, consts, _wide(anchor), part)
    reads, last = fused_walk.chunk(walk, state, part[walk.token], moves, terms)
    return _per_token(reads, part), {**state, **last}, anchor


def _affine(transitions: dict, state: State, read_before: bool | None, pairs: dict | None,
            lazy: bool = False):
    """Every state through a chunk by its affine transition (runtime/library/affine_chunk.py):
    the per-token states the reads see (before or after each token's write; none when
    `read_before` is None) stacked along T, or unbuilt (`lazy`), and the chunk's last states.
    With `pairs` (drive -> its outer products) each input is a weighted sum of drives."""
    seen, last, shared = {}, {}, {}  # `shared`: what the states compute alike (a retention)
    for name, (retain, erase, left, right, inputs) in transitions.items():
        if pairs is None:
            every, last[name] = affine_chunk.states(state[name], retain, erase, left, right,
                                                    inputs, every_token=read_before is not None,
                                                    shared=shared)
            if every is not None:
                seen[name] = torch.cat([state[name][:, None], every[:, :-1]], 1) \
                    if read_before else every
            continue
        weighted = affine_chunk.weighted(inputs, pairs)
        states, last[name] = affine_chunk.low_rank(state[name], retain, erase, left, right,
                                                   weighted, read_before=read_before,
                                                   shared=shared)
        if states is not None:
            seen[name] = states if lazy else states.materialize()
    return seen, last


def _batched_members(members: list, inputs: dict, per_token: dict, wide: dict,
                     current: dict, stacks: member_batch.Stacks | None = None) -> dict:
    """The chunk's last states of members that share their pairs and transition functions
    (`Member.core`), as one batch: their chunk-start tensors and states stacked along the
    batch axis, the tokens repeated (one call of each shared function instead of one per
    member; runtime/library/member_batch.py)."""
    pairs, anchors, transition, names = members[0].core
    n = len(members)
    stacks = stacks or member_batch.Stacks(current)
    batched = member_batch.Repeated(inputs, per_token, n, stacks)
    states = {name: stacks.states(members, [m.core[3][i] for m in members])
              for i, name in enumerate(names)}

    def stacked(i):  # an anchor is its state at the chunk start: the stacked state, widened
        if all(m.core[1][i] in dict(m.anchors) for m in members):
            return stacks.anchors(members, [m.core[1][i] for m in members])
        return torch.cat([wide[m.name][m.core[1][i]] for m in members])

    terms = pairs(batched, *(stacked(i) for i in range(len(anchors))))
    _, last = _affine(dict(zip(names, transition(batched.with_values(terms)))), states, None,
                      terms)
    split = [last[name].chunk(n) for name in names]
    return {m.name: current[m.name] | {m.core[3][i]: split[i][j] for i in range(len(names))}
            for j, m in enumerate(members)}


class Member(NamedTuple):
    """One level of a coupled group (levels that read each other's outputs in a loop)."""

    name: str
    read: Callable                 # (state, inputs) -> o: the token's read, before any write
    step: Callable                 # (state, inputs) -> (state, o): the token's write
    anchors: tuple = ()            # (anchor name, state name) pairs
    every: int | None = None       # the anchors' period in tokens
    drive: Callable | None = None  # the frozen split, for the chunked form
    combine: Callable | None = None
    transition: Callable | None = None  # the combine as affine transitions (frozen_chunked)
    pairs: Callable | None = None       # the drives as outer products, for the transitions
    # (shared pairs, its chunk-start tensors' names, shared transition, the states' names):
    # members with the same shared functions run as one batch (coupled_chunked)
    core: tuple | None = None
    # (shared application of the memory, its chunk-start tensors' names, the read's tail):
    # members that apply their memories alike read as one batch (member_batch.reads)
    reads: tuple | None = None


@_float32
def coupled(members: list[Member], tokens: dict, states: dict, *, consts: dict | None = None):
    """Levels whose rules use each other's outputs (Hope's self-modifying memories), token by
    token: every member reads (before its write), then every member writes with all the
    reads among its inputs. `states` and the result's finals are keyed by level name."""
    consts = dict(consts or {})
    current, anchor, position = {}, {}, {}
    for m in members:
        current[m.name], anchor[m.name], position[m.name] = _resume(states[m.name], m.anchors)
    T = next(iter(tokens.values())).shape[1]
    outputs = {m.name: [] for m in members}
    for t, token in enumerate(_tokens(tokens)):
        inputs = {**consts, **token}
        for m in members:
            if m.anchors and (position[m.name] + t) % m.every == 0:
                anchor[m.name] = _anchor(current[m.name], m.anchors)
        read = {}
        for m in members:  # in the group's order: a read that uses an earlier member's sees it
            read[m.name] = inputs[m.name] = m.read(current[m.name],
                                                   {**inputs, **anchor[m.name]})
        for m in members:
            current[m.name], _ = m.step(current[m.name], {**inputs, **anchor[m.name]})
            outputs[m.name].append(read[m.name])
    finals = {m.name: _suspend(current[m.name], anchor[m.name], position[m.name] + T, m.anchors)
              for m in members}
    return {n: torch.stack(o, 1) for n, o in outputs.items()}, finals


@_float32
def coupled_chunked(members: list[Member], tokens: dict, states: dict, *, chunk: int,
                    consts: dict | None = None, fused=None):
    """The chunk-parallel form of a coupled group whose members all update every `chunk`
    tokens and read their chunk-start state: per chunk, every read for all its tokens at
    once, then every member's chunk-start terms at once, then the cheap per-token sums.
    Equal to `coupled` (exactly, up to rounding): nothing in a chunk sees the chunk's writes.
    `fused` (a fused_group.FusedGroup, from the compiler) lets the fused group kernels take
    every whole chunk but the last, where they run (runtime/library/fused_group.py)."""
    consts = dict(consts or {})
    current, position = {}, {}
    for m in members:
        current[m.name], _, position[m.name] = _resume(states[m.name], m.anchors)
    T = next(iter(tokens.values())).shape[1]
    outputs = {m.name: [] for m in members}
    if fused is not None:
        from nlc.runtime.library import fused_group
        ran = fused_group.run(fused, members, tokens, current, consts, chunk)
        if ran is not None:
            reads, current, done = ran
            for name, o in reads.items():
                outputs[name].append(o)
            tokens = {name: x[:, done:] for name, x in tokens.items()}
    # members whose chunks build only their last states (affine transitions on outer
    # products) keep what they compute; others are recomputed in the backward pass
    recompute = _recompute(tokens, consts, *current.values(),
                           builds_per_token=not all(m.transition and m.pairs for m in members))

    order = member_batch.tails_together(members)  # one order for every batch: one stack
    run = chunk_runner(_coupled_chunk, recompute)

    anchor = {}
    for part in _chunks(tokens, chunk):
        read, current, anchor = run(members, order, consts, current, part)
        for m in members:
            outputs[m.name].append(read[m.name])
    finals = {m.name: _suspend(current[m.name], anchor.get(m.name, {}), position[m.name] + T,
                               m.anchors) for m in members}
    return {n: torch.cat(o, 1) for n, o in outputs.items()}, finals


def _coupled_chunk(members: list[Member], order: list[Member], consts: dict, current: dict,
                   part: dict):
    """One chunk of `coupled_chunked` (module level, so that NLC_COMPILE_CHUNKS compiles it
    once for every chunk and layer): every read for all the chunk's tokens, then every
    member's chunk-start terms, then the last states. Returns (reads, states, anchors)."""
    anchor = {m.name: _anchor(current[m.name], m.anchors) for m in members}
    wide = {n: _wide(an) for n, an in anchor.items()}
    inputs = {**consts, **part}
    stacks = member_batch.Stacks(current)
    read = {}
    for batch in member_batch.read_batches(order):  # in the group's order: a read that
        if len(batch) > 1:                           # uses an earlier member's sees it
            got = member_batch.reads(batch, inputs, part, stacks)
        else:
            m, = batch
            got = {m.name: m.read(current[m.name], {**inputs, **wide[m.name]})}
        read |= got
        inputs |= got
    current = dict(current)
    batches: dict = {}
    for m in order:
        if m.core is not None:
            batches.setdefault((m.core[0], m.core[2]), []).append(m)
    batched = set()
    for same in batches.values():
        if len(same) > 1:
            current |= _batched_members(same, inputs, part | read, wide, current, stacks)
            batched.update(m.name for m in same)
    for m in members:
        if m.name in batched:
            continue
        if m.transition is not None:  # the reads saw the anchors: only the last states
            terms = (m.pairs or m.drive)({**inputs, **wide[m.name]})
            _, current[m.name] = _affine(m.transition({**inputs, **wide[m.name], **terms}),
                                         current[m.name], None, terms if m.pairs else None)
            continue
        driven = m.drive({**inputs, **wide[m.name]})
        for token, outs, terms in zip(_tokens(part), _tokens(read), _tokens(driven)):
            current[m.name] = m.combine(current[m.name], {**consts, **token, **outs, **terms})
    return read, current, anchor


SHORT_SEGMENT = 8  # tokens: a segment shorter than this runs its level token by token


def segment_mode(mode: str, length: int) -> str:
    """The mode a segment of `length` tokens runs in: a short one token by token (the chunked
    forms' setup per call, a triangular solve, cost 15 ms a call on the CPU, and a level
    restarted every token by an init or generate edge ran 40x slower chunked than token by
    token), else `mode`. Both forms compute the same rule."""
    return "recurrent" if length < SHORT_SEGMENT else mode


def segments(run: Callable, T: int, period: int, state, *, offset: int = 0,
             reset: Callable | None = None, every: int | None = None):
    """Run a level over segments that end at multiples of `period` (counted from `offset`, the
    tokens already seen): `run(start, end, state) -> (o, final)`. At each segment that starts
    on a multiple of `every` (default `period`), `reset(start, state)` may replace the state
    (a transfer from another level: init or generate). Returns the outputs, the final state
    and the state each segment started with, by its start (a target's reset looks its
    source's state up there)."""
    every = every or period
    outs, starts = [], {}
    start = 0
    while start < T:
        end = min(T, start + period - (offset + start) % period)
        if reset is not None and (offset + start) % every == 0:
            state = reset(start, state)
        starts[start] = state
        o, state = run(start, end, state)
        outs.append(o)
        start = end
    return torch.cat(outs, 1), state, starts


def state_from(source: State, target: State, pairs: tuple[tuple[str, str], ...]) -> State:
    """`init` between levels: the target's tensors start as the source's (pairs of names)."""
    return {**target, **{t: source[s] for s, t in pairs}}


def weights_from(o: torch.Tensor, target: State, shapes: tuple[tuple[str, int, int], ...]) -> State:
    """`generate`: the source's output `o [B, H, D]` at a segment's first token, cut into the
    target's tensors (name, rows, cols) in order: the target's weights (a hypernetwork)."""
    new, at = dict(target), 0
    for name, rows, cols in shapes:
        new[name] = o[..., at:at + rows * cols].reshape(*o.shape[:-1], rows, cols)
        at += rows * cols
    return new


def _slice(state, i: int):
    if isinstance(state, dict):
        return {name: s[i] if name == POSITION and isinstance(s, tuple) else _slice(s, i)
                for name, s in state.items()}
    return state[i:i + 1] if torch.is_tensor(state) else state


def _join(parts: list):
    first = parts[0]
    if isinstance(first, dict):
        return {name: _join_positions([p[name] for p in parts]) if name == POSITION
                else _join([p[name] for p in parts]) for name in first}
    if torch.is_tensor(first):
        return torch.cat(parts)
    return first


def _join_positions(parts: list):
    """Packed sequences end at different positions inside their chunks: the joined state
    keeps one per row (a tuple) where they differ, and a later call runs its rows one by one
    (`varlen`)."""
    rows = [r for p in parts for r in (p if isinstance(p, tuple) else (p,))]
    return rows[0] if all(r == rows[0] for r in rows) else tuple(rows)


def _rows_apart(state) -> bool:
    """Whether a state's rows stand at different positions (left by packed sequences)."""
    if not isinstance(state, dict):
        return False
    return isinstance(state.get(POSITION), tuple) or any(_rows_apart(s)
                                                          for s in state.values())


def varlen(run: Callable, tokens: dict, state: State, cu_seqlens):
    """Run `run(tokens, state) -> (out, final)` on each packed sequence of a `[1, T, ...]`
    batch separately; states are `[N, ...]` for N sequences. A batch whose rows a packed
    call left at different positions inside their chunks runs row by row."""
    if cu_seqlens is None and _rows_apart(state):
        rows = next(iter(tokens.values())).shape[0]
        parts = [({name: x[i:i + 1] for name, x in tokens.items()}, i) for i in range(rows)]
    elif cu_seqlens is None:
        return run(tokens, state)
    else:
        if next(iter(tokens.values())).shape[0] != 1:
            raise ValueError("with cu_seqlens the batch size must be 1 (sequences packed "
                             "along T)")
        parts = [({name: x[:, start:end] for name, x in tokens.items()}, i)
                 for i, (start, end) in enumerate(itertools.pairwise(
                     int(b) for b in cu_seqlens.tolist()))]
    outs, finals = [], []
    for part, i in parts:
        out, final = run(part, _slice(state, i))
        outs.append(out)
        finals.append(final)
    axis = 1 if cu_seqlens is not None else 0
    if isinstance(outs[0], dict):
        return ({name: torch.cat([o[name] for o in outs], axis) for name in outs[0]},
                _join(finals))
    return torch.cat(outs, axis), _join(finals)
