"""What `nlc graph` draws, before any syntax: a `LevelGraph` as a `Panel` of frequency `Band`s
(slowest first) and `Link`s (the parallel transfer edges between two levels merged into one,
mutual ones drawn once both ways), and a file as `Figure`s: a model draws its blocks' panels
in order, a layer or optimizer that no model uses draws alone. The printers in
`nlc/levels/draw.py` only lay these records out as text, DOT, Mermaid or JSON."""

from __future__ import annotations

from dataclasses import dataclass

from nlc.levels.graph import Edge, LevelGraph
from nlc.levels.records import TRAIN, LevelRecord
from nlc.levels.vocab import TransferMode

MODES = tuple(TransferMode)  # the order modes are listed in a label


@dataclass(frozen=True, slots=True)
class Band:
    """The levels that update at one frequency, in the order the spec declares them."""

    unit: str
    period: int
    levels: tuple[LevelRecord, ...]

    @property
    def label(self) -> str:
        return f"every {self.period} {self.unit}{'' if self.period == 1 else 's'}"


@dataclass(frozen=True, slots=True)
class Link:
    """Every transfer edge from `source` to `target`, as one drawn edge; `two_way` when the
    same modes (stated the same way) also go from `target` to `source`."""

    source: str
    target: str
    modes: tuple[TransferMode, ...]
    stated: tuple[TransferMode, ...]   # the modes written as `transfer` in the spec
    two_way: bool

    @property
    def label(self) -> str:
        return ", ".join(m.value + ("*" if m in self.stated else "") for m in self.modes)

    @property
    def edges(self) -> int:
        return len(self.modes) * (2 if self.two_way else 1)


@dataclass(frozen=True, slots=True)
class Panel:
    """One declaration's level graph as drawn."""

    name: str
    kind: str                          # layer | optimizer
    bands: tuple[Band, ...]            # slowest first
    links: tuple[Link, ...]            # by source, then target, in level order
    edge_count: int                    # transfer edges before merging

    @property
    def levels(self) -> tuple[LevelRecord, ...]:
        return tuple(lv for band in self.bands for lv in band.levels)

    def band_of(self, level: str) -> int:
        return next(i for i, b in enumerate(self.bands) if any(lv.name == level for lv in b.levels))


@dataclass(frozen=True, slots=True)
class Figure:
    """One drawing: a model (its blocks' panels, in order, a layer drawn once per use) or a
    single layer or optimizer."""

    name: str
    kind: str                          # model | layer | optimizer
    panels: tuple[Panel, ...]


def bands(graph: LevelGraph) -> tuple[Band, ...]:
    """Levels grouped by frequency, slowest first; `train` leads its band (it is the outer
    loop), the others keep their order in the spec."""
    order = {name: i for i, name in enumerate(graph.g.nodes)}  # insertion = declaration order
    groups: dict[tuple[str, int], list[LevelRecord]] = {}
    for level in sorted(graph.levels, key=lambda lv: (lv.name != TRAIN, order[lv.name])):
        groups.setdefault((level.unit, level.period), []).append(level)
    slowest_first = sorted(groups.items(), key=lambda kv: tuple(-x for x in kv[1][0].slowness))
    return tuple(Band(unit, period, tuple(levels)) for (unit, period), levels in slowest_first)


def links(edges: tuple[Edge, ...], order: list[str]) -> tuple[Link, ...]:
    """Merge the edges between each ordered pair of levels; a pair linked both ways with the
    same modes becomes one two-way link, drawn from the level that comes first in `order`."""
    pairs: dict[tuple[str, str], list[Edge]] = {}
    for e in edges:
        pairs.setdefault((e.source, e.target), []).append(e)

    def key(pair):
        found = pairs.get(pair, [])
        return (tuple(m for m in MODES if any(e.mode is m for e in found)),
                tuple(m for m in MODES if any(e.mode is m and e.explicit for e in found)))

    rank = {name: i for i, name in enumerate(order)}
    result = []
    for source, target in sorted(pairs, key=lambda p: (rank[p[0]], rank[p[1]])):
        modes, stated = key((source, target))
        two_way = key((target, source)) == (modes, stated)
        if two_way and rank[target] < rank[source]:
            continue  # drawn from the other end
        result.append(Link(source, target, modes, stated, two_way))
    return tuple(result)


def panel(name: str, kind: str, graph: LevelGraph) -> Panel:
    grouped = bands(graph)
    order = [lv.name for band in grouped for lv in band.levels]
    return Panel(name, kind, grouped, links(graph.edges, order), len(graph.edges))


def figures(specs) -> tuple[Figure, ...]:
    """The drawings of a checked file, in file order; a layer that a model uses is drawn
    inside that model, not alone."""
    panels = {s.name: panel(s.name, s.kind.value, s.graph) for s in specs if not s.blocks}
    in_models = {name for s in specs for name in s.blocks}
    result = []
    for s in specs:
        if s.blocks:
            result.append(Figure(s.name, s.kind.value, tuple(panels[b] for b in s.blocks)))
        elif s.name not in in_models:
            result.append(Figure(s.name, s.kind.value, (panels[s.name],)))
    return tuple(result)
