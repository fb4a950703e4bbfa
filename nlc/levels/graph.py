"""`LevelGraph`: levels as networkx nodes and the knowledge-transfer edges between them.
`nlc graph` draws it through nlc/levels/figure.py and nlc/levels/draw.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from nlc.errors import Span
from nlc.levels.records import LevelRecord
from nlc.levels.vocab import TransferMode


def find_a_cycle(g: nx.DiGraph) -> list | None:
    """The edges of one cycle of `g`, or None. `nx.find_cycle` without a source restarts its
    search at every node, quadratic in a long chain of levels; a DAG test and one search from
    a node of a strongly connected component stay linear."""
    if nx.is_directed_acyclic_graph(g):
        return None
    on_cycle = set().union(*(c for c in nx.strongly_connected_components(g)
                             if len(c) > 1 or g.has_edge(*[next(iter(c))] * 2)))
    first = next(n for n in g.nodes if n in on_cycle)  # insertion order: stable messages
    return list(nx.find_cycle(g, source=first))


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    mode: TransferMode
    explicit: bool               # written as `transfer` in the spec, or implied by it
    span: Span = field(default_factory=Span.none, compare=False)


class LevelGraph:
    """A directed multigraph: node -> `LevelRecord` (attribute ``level``), edge -> `Edge`
    (attribute ``edge``, keyed by transfer mode). Iteration orders are stable."""

    def __init__(self, name: str):
        self.name = name
        self.g = nx.MultiDiGraph()

    def add_level(self, level: LevelRecord) -> None:
        self.g.add_node(level.name, level=level)

    def add_edge(self, edge: Edge) -> None:
        self.g.add_edge(edge.source, edge.target, key=edge.mode.value, edge=edge)

    def has_edge(self, source: str, target: str, mode: TransferMode) -> bool:
        return self.g.has_edge(source, target, key=mode.value)

    def level(self, name: str) -> LevelRecord:
        return self.g.nodes[name]["level"]

    @property
    def levels(self) -> tuple[LevelRecord, ...]:
        """Slowest first, then by name."""
        records = [self.g.nodes[n]["level"] for n in self.g.nodes]
        return tuple(sorted(records, key=lambda r: (tuple(-x for x in r.slowness), r.name)))

    @property
    def edges(self) -> tuple[Edge, ...]:
        edges = [d["edge"] for _, _, d in self.g.edges(data=True)]
        return tuple(sorted(edges, key=lambda e: (e.source, e.target, e.mode.value)))

    def find_cycle(self, keep=lambda edge: True) -> list[Edge] | None:
        """A cycle among the edges for which `keep(edge)` holds, or None."""
        g = nx.MultiDiGraph()
        g.add_nodes_from(self.g.nodes)
        g.add_edges_from((u, v, k, d) for u, v, k, d in self.g.edges(keys=True, data=True)
                         if keep(d["edge"]))
        cycle = find_a_cycle(g)
        if cycle is None:
            return None
        return [g.edges[u, v, k]["edge"] for u, v, k in cycle]
