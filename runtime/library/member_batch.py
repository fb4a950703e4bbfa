"""Members of a coupled group run as one batch (scan.coupled_chunked).

Hope's generating memories k, v, eta and alpha are MLPs of one form: their reads apply the
same function to the same tokens, and their gradient pairs and transitions are one function
of each memory's tensors. A batch stacks the members' chunk-start states along the batch
axis and repeats the tokens once per member, so that each shared function runs once for
the whole group instead of once per member (a GPU launches its kernels once, not n times).

`Stacks` makes each stacked state and repeated token once per chunk, for the reads and the
pairs alike; `reads` runs the members' reads: the memories applied once, then each member's
tail (the squashing after the memory: an l2norm, a sigmoid of the mean plus a bias), a
tail shared by several members once for all of them."""

from __future__ import annotations

from collections.abc import Mapping

import torch


class Stacks:
    """One chunk's stacked states and repeated tokens, each made once."""

    def __init__(self, current: dict):
        self.current = current  # level name -> its state at the chunk start
        self.made: dict = {}

    def states(self, members: list, names: list[str]) -> torch.Tensor:
        """The members' states (`names[i]` of `members[i]`) stacked along the batch axis."""
        key = tuple((m.name, n) for m, n in zip(members, names))
        if key not in self.made:
            self.made[key] = torch.cat([self.current[m][n] for m, n in key])
        return self.made[key]

    def anchors(self, members: list, anchors: list[str]) -> torch.Tensor:
        """The members' chunk-start tensors (`anchors[i]` of `members[i]`), stacked and
        widened to meet a chunk's tokens: an anchor is its state at the chunk start."""
        return self.states(members, [dict(m.anchors)[a] for m, a in zip(members, anchors)]
                           ).unsqueeze(1)

    def repeated(self, name: str, x: torch.Tensor, n: int) -> torch.Tensor:
        """`x` n times along the batch axis: one copy, whose backward pass is one sum (n
        concatenated copies would accumulate n gradients; `Tensor.repeat` builds index
        tensors in its backward pass; a stride-0 view made products' backward passes copy
        batch by batch)."""
        key = ("repeated", name, n)
        if key not in self.made or self.made[key][0] is not x:
            wide = x.unsqueeze(0).expand(n, *x.shape).reshape(n * x.shape[0], *x.shape[1:])
            self.made[key] = (x, wide.contiguous())
        return self.made[key][1]


class Repeated(Mapping):
    """The inputs of a batch of `n` members: the per-token tensors repeated when a function
    first reads them (generated functions read only the names they use), the rest as given."""

    def __init__(self, inputs: dict, per_token: dict, n: int, stacks: Stacks):
        self.inputs, self.n, self.stacks = inputs, n, stacks
        self.per_token = {k: v for k, v in per_token.items() if inputs.get(k) is v}

    def __getitem__(self, name: str):
        if name in self.per_token:
            return self.stacks.repeated(name, self.per_token[name], self.n)
        return self.inputs[name]

    def once(self, name: str):
        """The input `name` as given, not repeated (for kernels that read a token for every
        member themselves: ops.shared_outer_terms)."""
        return self.inputs[name]

    def __iter__(self):
        return iter(self.inputs)

    def __len__(self) -> int:
        return len(self.inputs)

    def with_values(self, extra: dict) -> Repeated:
        """These inputs and `extra` (which take precedence), as one batch's inputs."""
        return Repeated({**self.inputs, **extra}, self.per_token, self.n, self.stacks)


def tails_together(members: list) -> list:
    """The members in group order, but those with the same read tail next to each other (a
    tail then runs once on one slice of the batched reads)."""
    first: dict = {}
    for i, m in enumerate(members):
        first.setdefault(_tail(m), i)
    return sorted(members, key=lambda m: first[_tail(m)])


def _tail(m):
    return m.reads[2] if m.reads is not None else m.name


def read_batches(members: list) -> list[list]:
    """The members in batches of those whose reads apply one function (`Member.reads`); a
    member without one is a batch of its own."""
    batches: dict = {}
    for m in members:
        batches.setdefault(m.reads[0] if m.reads is not None else m.name, []).append(m)
    return list(batches.values())


def reads(members: list, inputs: dict, per_token: dict, stacks: Stacks) -> dict:
    """The reads of members whose memories are applied by one function `(apply, its
    chunk-start tensors' names, tail) = Member.reads`: the memories' tensors stacked, applied
    once to the tokens repeated, each tail on its members' rows. `members` have equal tails
    next to each other (tails_together)."""
    apply, anchors, _ = members[0].reads
    n = len(members)
    batched = Repeated(inputs, per_token, n, stacks)
    applied = apply(batched, *(stacks.anchors(members, [m.reads[1][i] for m in members])
                               for i in range(len(anchors))))
    rows = applied.shape[0] // n
    groups: list[list] = []  # runs of members with one tail
    for m in members:
        if groups and _tail(groups[-1][0]) == _tail(m):
            groups[-1].append(m)
        else:
            groups.append([m])
    out = {}
    # one split (its backward is one concatenation), not a slice per group
    for group, part in zip(groups, applied.split([len(g) * rows for g in groups])):
        own = Repeated(inputs, per_token, len(group), stacks)
        o = group[0].reads[2](own, part)
        out |= dict(zip((m.name for m in group), o.chunk(len(group))))
    return out
