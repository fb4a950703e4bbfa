"""`nlc graph`: every format draws every transfer edge of every example, merged and grouped
legibly; DOT and Mermaid are well formed; docs/graph.md shows the real output for Hope."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from conftest import EXAMPLES, ROOT, example_paths
from nlc.cli import main
from nlc.levels import check
from nlc.levels.draw import draw
from nlc.levels.figure import figures, links
from nlc.levels.graph import Edge
from nlc.levels.vocab import TransferMode as M
from nlc.syntax import parse

HOPE = EXAMPLES / "hope.nl"

# All five modes, a model that repeats a layer, and a level named like a Mermaid keyword.
MODES_SPEC = """layer Mixer {
  dims d_model = 8, d_k = 4
  param W_q, W_k, W_v : [d_model, d_k]
  param W_o : [d_k, d_model]
  context from x {
    q = x @ W_q
    k = x @ W_k
    v = x @ W_v
  }
  level slow every 4 tokens {
    state S : matrix[d_k, d_k] = learned
    objective l2(S(k), v)
    algorithm gd(lr = 0.5)
    read S(q)
  }
  level fast every 1 token {
    state F : matrix[d_k, d_k] = zeros
    objective l2(F(k), slow)
    algorithm gd(lr = 0.5)
    read F(q)
  }
  transfer slow -> fast : generate
  transfer slow -> fast : direct
  transfer train -> fast : backprop
  output fast @ W_o
}

layer Other {
  dims d_model = 8
  param W : [d_model, d_model]
  level end every 1 token {
    state M : matrix[d_model, d_model] = zeros
    objective l2(M(x), x @ W)
    algorithm gd(lr = 0.1)
    read M(x)
  }
  output end
}

model Stack {
  block Mixer -> Other
  block Mixer
}
"""


def specs_of(text: str):
    return check(parse(text, "spec.nl"))


def graph(path, fmt: str, capsys) -> str:
    assert main(["graph", str(path), "--format", fmt]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    return out.out


def edge_set(specs) -> set[tuple[str, str, str, str, bool]]:
    """(spec, source, target, mode, explicit) of every transfer edge the checker made."""
    return {(s.name, e.source, e.target, e.mode.value, e.explicit)
            for s in specs if not s.blocks for e in s.graph.edges}


# ------------------------------------------------------------------ text
ROW = re.compile(r"^ +(?P<src>[\w, ]+?) +(?P<arrow><->|->) (?P<dst>[\w, ]+?) +\[(?P<modes>[^]]+)]$")
TITLE = re.compile(r"^ *(?:block \d+: )?(?:layer|optimizer) (\w+): \d+ levels?, \d+ edges?$")


def text_edges(out: str) -> set[tuple[str, str, str, str, bool]]:
    """Read the edges back out of the text form: `a, b <-> c [context, init*]`."""
    found, spec = set(), None
    for line in out.splitlines():
        if m := TITLE.match(line):
            spec = m.group(1)
        elif m := ROW.match(line):
            for src in m["src"].split(", "):
                for dst in m["dst"].split(", "):
                    for mode in m["modes"].split(", "):
                        explicit = mode.endswith("*")
                        pairs = [(src, dst), (dst, src)] if m["arrow"] == "<->" else [(src, dst)]
                        found |= {(spec, a, b, mode.rstrip("*"), explicit) for a, b in pairs}
    return found


@pytest.mark.parametrize("path", example_paths() + ["modes"], ids=lambda p: getattr(p, "stem", p))
def test_text_keeps_every_edge(path, tmp_path, capsys):
    if path == "modes":
        path = tmp_path / "modes.nl"
        path.write_text(MODES_SPEC)
    specs = check(parse(path.read_text(), str(path)))
    assert text_edges(graph(path, "text", capsys)) == edge_set(specs)


def test_hope_text_is_a_tree(capsys):
    out = graph(HOPE, "text", capsys)
    lines = out.splitlines()
    assert lines[0] == "model Hope: SelfModifyingTitans -> ContinuumMemory"
    assert lines[1] == "  block 1: layer SelfModifyingTitans: 6 levels, 26 edges"
    block2 = lines.index("  block 2: layer ContinuumMemory: 5 levels, 11 edges")
    # bands slowest first; train leads; the rest keep the spec's order
    assert lines[2:10] == ["    every 1 step",
                           "      train   parameters",
                           "    every 1 token",
                           "      k       K: mlp, gradients at chunk(16)",
                           "      v       V: mlp, gradients at chunk(16)",
                           "      eta     E: mlp, gradients at chunk(16)",
                           "      alpha   A: mlp, gradients at chunk(16)",
                           "      memory  M: mlp, gradients at chunk(64)"]
    # 26 edges in 5 rows: train's on one line, mutual pairs once, shared targets merged
    rows = [" ".join(line.split()) for line in lines[10:block2]]
    assert rows == ["edges (<-> both ways)",
                    "train -> k, v, eta, alpha, memory [context, init]",
                    "k <-> v, eta, alpha [context]",
                    "k, v, eta, alpha -> memory [context]",
                    "v <-> eta, alpha [context]",
                    "eta <-> alpha [context]"]
    bands = [line.strip() for line in lines[block2:] if line.startswith("    every")]
    assert bands == ["every 1 step", "every 32768 tokens", "every 8192 tokens",
                     "every 2048 tokens", "every 512 tokens"]
    assert ("      train    -> cms_slowest, cms_slow, cms_mid, cms_fast  [context, init]"
            in lines)


def test_text_marks_stated_edges():
    out = draw(specs_of(MODES_SPEC), "text")
    assert out.startswith("model Stack: Mixer -> Other -> Mixer\n  block 1: layer Mixer")
    assert "  block 3: layer Mixer: 3 levels, 7 edges" in out
    assert "    edges (* stated by 'transfer')" in out
    assert "      train -> fast  [context, backprop*]" in out
    assert "      train -> slow  [context, init]" in out
    assert "      slow  -> fast  [context, direct*, generate*]" in out
    # a layer that a model uses is drawn inside it, not again alone
    assert out.count("layer Other") == 1


def test_check_dump_is_the_text_graph(capsys):
    assert main(["check", "--dump", str(HOPE)]) == 0
    assert capsys.readouterr().out == graph(HOPE, "text", capsys)


# ------------------------------------------------------------------ merging
def test_links_merge_parallel_and_mutual_edges():
    e = [Edge("a", "b", M.CONTEXT, False), Edge("b", "a", M.CONTEXT, False),
         Edge("a", "b", M.INIT, False), Edge("c", "a", M.CONTEXT, False),
         Edge("a", "c", M.CONTEXT, False), Edge("c", "b", M.DIRECT, True),
         Edge("b", "c", M.DIRECT, False)]
    drawn = {(x.source, x.target): (x.label, x.two_way) for x in links(tuple(e), ["a", "b", "c"])}
    assert drawn == {("a", "b"): ("context, init", False),   # modes differ: both drawn
                     ("b", "a"): ("context", False),
                     ("a", "c"): ("context", True),          # once, from the first level
                     ("b", "c"): ("direct", False),          # stated one way only
                     ("c", "b"): ("direct*", False)}


def test_figures_order_bands_slowest_first():
    (fig,) = figures(specs_of(MODES_SPEC))
    assert [p.name for p in fig.panels] == ["Mixer", "Other", "Mixer"]
    assert [b.label for b in fig.panels[0].bands] == ["every 1 step", "every 4 tokens",
                                                      "every 1 token"]
    assert sum(x.edges for x in fig.panels[0].links) == fig.panels[0].edge_count == 7


# ------------------------------------------------------------------ JSON
@pytest.mark.parametrize("path", example_paths(), ids=lambda p: p.stem)
def test_json_is_complete(path, capsys):
    data = json.loads(graph(path, "json", capsys))
    docs = data if isinstance(data, list) else [data]
    specs = check(parse(path.read_text(), str(path)))
    assert [d["name"] for d in docs] == [s.name for s in specs]
    edges, from_links = set(), set()
    for doc in docs:
        assert doc["kind"] in ("layer", "optimizer", "model")
        if doc["kind"] == "model":
            assert doc["blocks"]
            continue
        edges |= {(doc["name"], e["source"], e["target"], e["mode"], e["explicit"])
                  for e in doc["edges"]}
        for link in doc["links"]:
            ends = [(link["source"], link["target"])]
            ends += [(link["target"], link["source"])] if link["two_way"] else []
            from_links |= {(doc["name"], a, b, m, m in link["stated"])
                           for a, b in ends for m in link["modes"]}
        assert [lv for b in doc["bands"] for lv in b["levels"]] == [
            lv["name"] for lv in doc["levels"]]
        assert all(lv["frequency"].startswith(f"every {lv['period']} {lv['unit']}")
                   for lv in doc["levels"])
    assert edges == from_links == edge_set(specs)


# ------------------------------------------------------------------ DOT
def check_dot(out: str) -> None:
    """Balanced braces outside strings, closed strings, one statement per line."""
    depth = 0
    for line in out.splitlines():
        outside = re.sub(r'"(?:[^"\\]|\\.)*"', '""', line)
        assert '"' not in outside.replace('""', ""), line
        depth += outside.count("{") - outside.count("}")
        assert depth >= 0, line
        assert outside.rstrip().endswith(("{", "}", ";")) or "//" in outside, line
    assert depth == 0


@pytest.mark.parametrize("path", example_paths() + ["modes"], ids=lambda p: getattr(p, "stem", p))
def test_dot_is_valid(path, tmp_path, capsys):
    if path == "modes":
        path = tmp_path / "modes.nl"
        path.write_text(MODES_SPEC)
    out = graph(path, "dot", capsys)
    check_dot(out)
    if shutil.which("dot"):
        proc = subprocess.run(["dot", "-Tsvg"], check=False, input=out, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0 and not proc.stderr, proc.stderr


def test_hope_dot_clusters_and_styles(capsys):
    out = graph(HOPE, "dot", capsys)
    assert out.startswith('digraph "Hope" {\n')
    assert 'subgraph "cluster_b1" {\n    label="block 1: layer SelfModifyingTitans";' in out
    assert 'subgraph "cluster_b2" {\n    label="block 2: layer ContinuumMemory";' in out
    for band in ("every 1 step", "every 1 token", "every 32768 tokens", "every 512 tokens"):
        assert f'label="{band}";' in out
    edge = re.compile(r'^  "([\w.]+)" -> "([\w.]+)" \[(.*)\];$', re.MULTILINE)
    drawn = {(a, b): attrs for a, b, attrs in edge.findall(out) if "invis" not in attrs}
    assert len(drawn) == 15 + 7 + 1  # Titans' links, CMS' links, the block edge
    assert drawn["b1.train", "b1.k"] == 'label="context, init", style="dashed"'
    assert drawn["b1.k", "b1.v"] == 'label="context", dir="both"'
    assert ("b1.v", "b1.k") not in drawn
    assert drawn["b1.k", "b1.memory"] == 'label="context"'
    assert 'constraint="false"' in drawn["b2.cms_fast", "b2.cms_mid"]
    assert 'ltail="cluster_b1", lhead="cluster_b2"' in drawn["b1.memory", "b2.train"]
    assert 'subgraph "cluster_legend"' in out and 'label="both ways"' in out


def test_dot_styles_every_mode():
    out = draw(specs_of(MODES_SPEC), "dot")
    assert '"b1.train" -> "b1.slow" [label="context, init", style="dashed"];' in out
    assert ('"b1.train" -> "b1.fast" [label="context, backprop*", color="firebrick", '
            'fontcolor="firebrick"];') in out
    assert ('"b1.slow" -> "b1.fast" [label="context, direct*, generate*", style="dotted", '
            'penwidth="2.5"];') in out
    for label in ("context", "init", "backprop", "direct", "generate", "next block",
                  "* stated by 'transfer'"):
        assert f'label="{label}"' in out


# ------------------------------------------------------------------ Mermaid
NODE = re.compile(r'^ *(\w+)\["[^"]*"\]$')
BOX = r'(?:\["[^"]*"\])?'  # a node may be defined where a link first uses it
LINK = re.compile(rf'^ *(\w+){BOX} (<?)(-->|-\.->|==>)\|([^|"]+)\| (\w+){BOX}$')
SUBGRAPH = re.compile(r'^ *subgraph (\w+)\["[^"]*"\]$')
STYLE = re.compile(r"^  linkStyle (\d+(?:,\d+)*) [\w-]+:[^,]+(?:,[\w-]+:[^,]+)*$")
KEYWORDS = {"end", "graph", "flowchart", "subgraph", "style", "class", "classDef", "click",
            "linkStyle", "direction", "default"}


def check_mermaid(out: str) -> list[tuple[str, str, str, str]]:
    """Every line one known statement; subgraphs closed; ids defined before use, unique and
    no keyword; linkStyle indices in range. Returns the links (source, arrow, label, target)."""
    diagrams = out.split("flowchart TB\n")
    assert diagrams[0] == "" and len(diagrams) > 1
    found = []
    for body in diagrams[1:]:
        ids, depth, n_links, styled = set(), 0, 0, []
        for line in body.splitlines():
            if m := SUBGRAPH.match(line):
                assert m[1] not in ids and m[1] not in KEYWORDS, line
                ids.add(m[1])
                depth += 1
            elif line.strip() == "end":
                depth -= 1
                assert depth >= 0
            elif m := NODE.match(line):
                assert m[1] not in ids and m[1] not in KEYWORDS, line
                ids.add(m[1])
            elif m := LINK.match(line):
                source, two_way, arrow, label, target = m.groups()
                ids |= {source, target} if source.startswith("legend") else set()
                assert {source, target} <= ids, line
                n_links += 1
                found.append((source, two_way + arrow, label, target))
            elif m := STYLE.match(line):
                styled += [int(i) for i in m[1].split(",")]
            else:
                assert re.match(r"^  (classDef \w+ [\w:,-]+|class [\w,]+ \w+)$", line), line
        assert depth == 0
        assert sorted(styled) == sorted(set(styled)) and all(i < n_links for i in styled)
    return found


@pytest.mark.parametrize("path", example_paths() + ["modes"], ids=lambda p: getattr(p, "stem", p))
def test_mermaid_is_well_formed(path, tmp_path, capsys):
    if path == "modes":
        path = tmp_path / "modes.nl"
        path.write_text(MODES_SPEC)
    check_mermaid(graph(path, "mermaid", capsys))


def test_hope_mermaid_links(capsys):
    found = check_mermaid(graph(HOPE, "mermaid", capsys))
    assert ("b1_train", "-.->", "context, init", "b1_k") in found
    assert ("b1_k", "<-->", "context", "b1_v") in found
    assert ("b1_k", "-->", "context", "b1_memory") in found
    assert ("b1", "==>", "output", "b2") in found
    assert len([f for f in found if not f[0].startswith("legend")]) == 15 + 7 + 1


def test_mermaid_styles_every_mode():
    out = draw(specs_of(MODES_SPEC), "mermaid")
    assert "b2_end[" in out  # a level called `end` gets a prefixed id
    assert "  b1_slow -.->|context, direct*, generate*| b1_fast" in out
    assert "  b1_train -.->|context, init| b1_slow" in out
    assert "  linkStyle 0,4,10 stroke-dasharray:8 4" in out
    assert "  linkStyle 1,5,11 stroke:firebrick,color:firebrick" in out
    assert "  linkStyle 2,6 stroke-dasharray:2 3,stroke-width:3px" in out


# ------------------------------------------------------------------ docs
def fenced(markdown: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", markdown, re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("fmt, lang", [("text", "text"), ("mermaid", "mermaid")])
def test_docs_show_the_hope_graph(fmt, lang, capsys):
    doc = (ROOT / "docs" / "graph.md").read_text(encoding="utf-8")
    assert graph(HOPE, fmt, capsys) in fenced(doc, lang)


def test_language_reference_shows_real_output(capsys):
    doc = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    shown = "$ nlc graph examples/titans.nl\n" + graph(EXAMPLES / "titans.nl", "text", capsys)
    assert shown in fenced(doc, "")


LOOP_WITH_A_SLOW_LEVEL = """layer LoopDiag {
  dims d_model = 8, heads = 2, d_k = 4
  param W_q, W_k, W_v : [d_model, d_k]
  param W_o : [d_k, d_model]
  context from x {
    q = l2norm(x @ W_q)
    k = l2norm(x @ W_k)
    v = x @ W_v
  }
  level amem every 1 token {
    state S : matrix[d_k, d_k] = zeros
    objective l2(S(k), v * gmem)
    algorithm gd(lr = 0.5)
    read before S(q)
  }
  level gmem every PERIOD tokens {
    state D : diagonal[d_k] = learned(std = 0.5)
    objective l2(D(amem), v)
    algorithm gd(lr = 0.1)
    read sigmoid(D(q))
  }
  output (amem * gmem) @ W_o
}
"""


@pytest.mark.parametrize("period, ok", [(8, True), (1, False)])
def test_a_loop_takes_a_slow_levels_plain_read_as_its_chunk_start(tmp_path, capsys, period, ok):
    """In a loop of outputs every level reads before any writes. A level every 8 tokens reads
    its chunk-start state with a plain `read` (as `read start`): it compiles; the same level
    every token reads after its write, which check refuses (compile used to, after check and
    derive had passed)."""
    path = tmp_path / "loop.nl"
    path.write_text(LOOP_WITH_A_SLOW_LEVEL.replace("PERIOD", str(period)))
    assert main(["check", str(path)]) == (0 if ok else 2)
    err = capsys.readouterr().err
    if ok:
        assert main(["compile", str(path), "-o", str(tmp_path / "out")]) == 0
    else:
        assert "level 'gmem' reads after its write, but it is in a loop" in err, err
