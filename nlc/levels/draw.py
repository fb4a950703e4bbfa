"""The printers of `nlc graph`: `Figure`s (nlc/levels/figure.py) as an indented text tree,
Graphviz DOT, or a Mermaid flowchart, and the checked specs as JSON (the complete data form:
every edge, mode and frequency). Each mode has one look, given by the tables below."""

from __future__ import annotations

import json

from nlc.levels.figure import MODES, Figure, Link, Panel, figures
from nlc.levels.records import LevelRecord
from nlc.levels.vocab import TransferMode as M

# The look of each mode; an edge with several modes takes all of theirs, the later mode in
# TransferMode order (context, init, backprop, direct, generate) winning a shared attribute:
# a `context, init` edge is dashed, an `init, direct` one dotted.
DOT_STYLE = {M.CONTEXT: {}, M.INIT: {"style": "dashed"},
             M.BACKPROP: {"color": "firebrick", "fontcolor": "firebrick"},
             M.DIRECT: {"style": "dotted"}, M.GENERATE: {"penwidth": "2.5"}}
MERMAID_STYLE = {M.CONTEXT: {}, M.INIT: {"stroke-dasharray": "8 4"},
                 M.BACKPROP: {"stroke": "firebrick", "color": "firebrick"},
                 M.DIRECT: {"stroke-dasharray": "2 3"}, M.GENERATE: {"stroke-width": "3px"}}
GRAPH_DOT = {"labelloc": "t", "fontname": "Helvetica", "newrank": "true", "compound": "true"}
BLOCK_DOT = {"color": "#3465a4", "fontcolor": "#3465a4", "penwidth": "2", "label": "output"}
BLOCK_MERMAID = {"stroke": "#3465a4", "stroke-width": "3px", "color": "#3465a4"}
BOTH_WAYS, STATED = "both ways", "* stated by 'transfer'"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _state(level: LevelRecord) -> list[str]:
    state = level.state
    about = [f"{state.name}: {state.form.kind}" if state else "parameters"]
    if level.grad_chunk:
        about.append(f"gradients at chunk({level.grad_chunk})")
    return about


def _node_label(level: LevelRecord) -> str:
    return "\n".join([level.name] + _state(level))


def _title(panel: Panel) -> str:
    return (f"{panel.kind} {panel.name}: {_plural(len(panel.levels), 'level')}, "
            f"{_plural(panel.edge_count, 'edge')}")


def _style(link: Link, table: dict) -> dict:
    merged: dict = {}
    for mode in MODES:
        if mode in link.modes:
            merged.update(table[mode])
    return merged


def _legend(fig: Figure) -> list[tuple[str, dict, dict]]:
    """(label, DOT attributes, Mermaid style) of each look the figure uses."""
    all_links = [link for p in fig.panels for link in p.links]
    rows = [(m.value, DOT_STYLE[m], MERMAID_STYLE[m]) for m in MODES
            if any(m in link.modes for link in all_links)]
    if any(link.two_way for link in all_links):
        rows.append((BOTH_WAYS, {"dir": "both"}, {}))
    if len(fig.panels) > 1:
        rows.append(("next block", BLOCK_DOT, BLOCK_MERMAID))
    return rows


def _stated(fig: Figure) -> bool:
    return any(link.stated for p in fig.panels for link in p.links)


# ------------------------------------------------------------------ text
def _text_panel(panel: Panel, indent: str, title: str) -> list[str]:
    lines = [indent + title + _title(panel)]
    width = max(len(lv.name) for lv in panel.levels)
    for band in panel.bands:
        lines.append(f"{indent}  {band.label}")
        lines += [f"{indent}    {lv.name:<{width}}  {', '.join(_state(lv))}" for lv in band.levels]
    by_source: dict[tuple, list[str]] = {}  # (source, arrow, label) -> targets, in link order
    for link in panel.links:
        by_source.setdefault((link.source, "<->" if link.two_way else "->", link.label),
                             []).append(link.target)
    rows: dict[tuple, list[str]] = {}  # (arrow, label, targets) -> sources: `a, b -> c`
    for (source, arrow, label), targets in by_source.items():
        rows.setdefault((arrow, label, ", ".join(targets)), []).append(source)
    if not rows:
        return lines
    notes = [n for n, used in (("<-> " + BOTH_WAYS, any(a == "<->" for a, _, _ in rows)),
                               (STATED, any(link.stated for link in panel.links))) if used]
    lines.append(f"{indent}  edges" + (f" ({'; '.join(notes)})" if notes else ""))
    src = max(len(", ".join(s)) for s in rows.values())
    arw = max(len(a) for a, _, _ in rows)
    dst = max(len(t) for _, _, t in rows)
    for (arrow, label, targets), sources in rows.items():
        lines.append(f"{indent}    {', '.join(sources):<{src}} {arrow:>{arw}} {targets:<{dst}}"
                     f"  [{label}]")
    return lines


def to_text(figs: tuple[Figure, ...]) -> str:
    out: list[str] = []
    for fig in figs:
        if fig.kind != "model":
            out += _text_panel(fig.panels[0], "", "")
            continue
        out.append(f"model {fig.name}: {' -> '.join(p.name for p in fig.panels)}")
        for i, panel in enumerate(fig.panels, 1):
            out += _text_panel(panel, "  ", f"block {i}: ")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ DOT
def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(attrs: dict) -> str:
    return "[" + ", ".join(f"{k}={_q(str(v))}" for k, v in attrs.items()) + "]"


def _dot_panel(panel: Panel, prefix: str, indent: str) -> tuple[list[str], list[str]]:
    """The clusters of a panel's bands, and its edges (drawn after every cluster)."""
    node = {lv.name: _q(prefix + lv.name) for lv in panel.levels}
    clusters, edges = [], []
    for i, band in enumerate(panel.bands, 1):
        clusters += [f"{indent}subgraph {_q(f'cluster_{prefix}band{i}')} {{",
                     f"{indent}  label={_q(band.label)};"]
        clusters += [f"{indent}  {node[lv.name]} {_attrs({'label': _node_label(lv)})};"
                     for lv in band.levels]
        clusters.append(f"{indent}}}")
    for link in panel.links:
        attrs = {"label": link.label} | _style(link, DOT_STYLE)
        if link.two_way:
            attrs["dir"] = "both"
        if panel.band_of(link.source) > panel.band_of(link.target):
            attrs["constraint"] = "false"  # a faster level feeds a slower one: keep band order
        edges.append(f"  {node[link.source]} -> {node[link.target]} {_attrs(attrs)};")
    for upper, lower in zip(panel.bands, panel.bands[1:]):
        edges.append(f"  {node[upper.levels[0].name]} -> {node[lower.levels[0].name]} "
                     "[style=invis];  // slowest band on top")
    return clusters, edges


def _dot_figure(fig: Figure) -> str:
    model = fig.kind == "model"
    title = (f"model {fig.name}: {' -> '.join(p.name for p in fig.panels)}" if model
             else _title(fig.panels[0]))
    lines = [f"digraph {_q(fig.name)} {{",
             f"  graph {_attrs(GRAPH_DOT | {'label': title})};",
             '  node [shape=box, style=rounded, fontname="Helvetica", fontsize=11];',
             '  edge [fontname="Helvetica", fontsize=10];']
    edges: list[str] = []
    for i, panel in enumerate(fig.panels, 1):
        if not model:
            clusters, panel_edges = _dot_panel(panel, "", "  ")
            lines += clusters
        else:
            clusters, panel_edges = _dot_panel(panel, f"b{i}.", "    ")
            lines += [f"  subgraph {_q(f'cluster_b{i}')} {{",
                      f"    label={_q(f'block {i}: {panel.kind} {panel.name}')};", *clusters, "  }"]
        edges += panel_edges
    for i, (a, b) in enumerate(zip(fig.panels, fig.panels[1:]), 1):
        attrs = BLOCK_DOT | {"ltail": f"cluster_b{i}", "lhead": f"cluster_b{i + 1}"}
        tail, head = _q(f"b{i}.{a.levels[-1].name}"), _q(f"b{i + 1}.{b.levels[0].name}")
        edges.append(f"  {tail} -> {head} {_attrs(attrs)};")
    lines += edges
    legend = _legend(fig)
    if legend:
        lines += ['  subgraph "cluster_legend" {', '    label="legend"; style=dashed; fontsize=10;',
                  "    node [shape=point, style=invis, width=0.01];"]
        for i, (label, attrs, _) in enumerate(legend):
            look = _attrs(attrs | {"label": label})
            lines.append(f'    "legend.{i}.a" -> "legend.{i}.b" {look};')
        if _stated(fig):
            note = {"shape": "plaintext", "style": "", "label": STATED}
            lines.append(f'    "legend.stated" {_attrs(note)};')
        lines.append("  }")
    return "\n".join(lines + ["}"]) + "\n"


def to_dot(figs: tuple[Figure, ...]) -> str:
    return "".join(_dot_figure(fig) for fig in figs)


# ------------------------------------------------------------------ Mermaid
def _arrow(style: dict, two_way: bool, thick: bool) -> str:
    line = "-.-" if "stroke-dasharray" in style else "==" if thick else "--"
    return ("<" if two_way else "") + line + ">"


def _mermaid_figure(fig: Figure) -> str:
    """Ids are b<block>_<level> for nodes, b<block>_<band> for bands (a level name never
    starts with a digit) and b<block> for blocks: no spec can make two of them clash or spell
    a Mermaid keyword."""
    model = fig.kind == "model"
    lines, links, looks = ["flowchart TB"], [], []  # looks[i]: the linkStyle of links[i]
    for i, panel in enumerate(fig.panels, 1):
        prefix, indent = f"b{i}_", "    " if model else "  "
        if model:
            lines.append(f'  subgraph b{i}["block {i}: {panel.kind} {panel.name}"]')
        for j, band in enumerate(panel.bands, 1):
            lines.append(f'{indent}subgraph {prefix}{j}["{band.label}"]')
            lines += [f'{indent}  {prefix}{lv.name}["{_node_label(lv).replace(chr(10), "<br/>")}"]'
                      for lv in band.levels]
            lines.append(f"{indent}end")
        if model:
            lines.append("  end")
        for link in panel.links:
            style = _style(link, MERMAID_STYLE)
            arrow = _arrow(style, link.two_way, M.GENERATE in link.modes)
            links.append(f"  {prefix}{link.source} {arrow}|{link.label}| {prefix}{link.target}")
            looks.append(style)
    for i in range(1, len(fig.panels)):
        links.append(f"  b{i} ==>|output| b{i + 1}")
        looks.append(BLOCK_MERMAID)
    legend = _legend(fig)
    if legend:
        ends = [f"legend{i}{end}" for i in range(len(legend)) for end in "ab"]
        links.append('  subgraph legend["legend"]')
        looks.append(None)
        for i, (label, _, style) in enumerate(legend):
            arrow = _arrow(style, label == BOTH_WAYS, "stroke-width" in style)
            links.append(f'    legend{i}a[" "] {arrow}|{label}| legend{i}b[" "]')
            looks.append(style)
        if _stated(fig):
            links.append(f'    legend_stated["{STATED}"]')
            looks.append(None)
            ends.append("legend_stated")
        links.append("  end")
        looks.append(None)
    lines += links
    numbered = [look for look in looks if look is not None]  # linkStyle counts links only
    by_look: dict[str, list[int]] = {}
    for n, look in enumerate(numbered):
        if look:
            by_look.setdefault(",".join(f"{k}:{v}" for k, v in look.items()), []).append(n)
    lines += [f"  linkStyle {','.join(map(str, ns))} {look}" for look, ns in by_look.items()]
    if legend:
        lines += ["  classDef legendNode fill:none,stroke:none",
                  f"  class {','.join(ends)} legendNode"]
    return "\n".join(lines) + "\n"


def to_mermaid(figs: tuple[Figure, ...]) -> str:
    return "".join(_mermaid_figure(fig) for fig in figs)


# ------------------------------------------------------------------ JSON
def _level_data(level: LevelRecord) -> dict:
    state = level.state
    return {"name": level.name, "unit": level.unit, "period": level.period,
            "gradient_chunk": level.grad_chunk, "frequency": level.frequency_text(),
            "state": None if state is None else
            {"name": state.name, "form": state.form.kind,
             "dims": [d.text for d in state.form.dims], "init": state.init},
            "objective": level.objective.kind if level.objective else None,
            "retention": [t.kind for t in level.retentions],
            "algorithm": level.algorithm.kind if level.algorithm else None}


def json_data(spec) -> dict:
    """One spec as data. `edges` lists every transfer edge; `bands` and `links` are the
    drawing's grouping and merging of them, for tools that lay the graph out themselves."""
    if spec.blocks:
        return {"name": spec.name, "kind": spec.kind.value, "blocks": list(spec.blocks)}
    from nlc.levels.figure import panel as make_panel
    panel = make_panel(spec.name, spec.kind.value, spec.graph)
    return {
        "name": spec.name, "kind": spec.kind.value,
        "levels": [_level_data(lv) for lv in panel.levels],
        "edges": [{"source": e.source, "target": e.target, "mode": e.mode.value,
                   "explicit": e.explicit} for e in spec.graph.edges],
        "bands": [{"frequency": b.label, "unit": b.unit, "period": b.period,
                   "levels": [lv.name for lv in b.levels]} for b in panel.bands],
        "links": [{"source": link.source, "target": link.target,
                   "modes": [m.value for m in link.modes],
                   "stated": [m.value for m in link.stated], "two_way": link.two_way}
                  for link in panel.links],
    }


def to_json(specs) -> str:
    """One document: an object, or a list of them for several specs."""
    docs = [json_data(s) for s in specs]
    return json.dumps(docs[0] if len(docs) == 1 else docs, indent=2) + "\n"


PRINTERS = {"text": to_text, "dot": to_dot, "mermaid": to_mermaid}


def draw(specs, fmt: str) -> str:
    """`nlc graph`'s output for the checked specs of one file."""
    if fmt == "json":
        return to_json(specs)
    return PRINTERS[fmt](figures(specs))
