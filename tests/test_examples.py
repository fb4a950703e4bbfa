"""Every example spec parses to its golden AST dump and checks without error."""

from __future__ import annotations

import pytest

from conftest import EXAMPLES, GOLDENS, ROOT, example_ids, example_paths
from nlc import pipeline
from nlc.syntax import parse
from nlc.syntax.dump import dump_ast

AST_GOLDENS = GOLDENS / "ast"


def test_examples_exist():
    assert example_paths(), f"no specs in {EXAMPLES.relative_to(ROOT)}/*.nl"


@pytest.mark.parametrize("name", example_ids())
def test_ast_golden(name, golden):
    path = EXAMPLES / f"{name}.nl"
    module = parse(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    text = dump_ast(module)
    assert text.startswith("Module")
    golden(AST_GOLDENS / f"{name}.txt", text)


def test_no_stale_ast_goldens(update_goldens):
    names = set(example_ids())
    stale = sorted(p for p in AST_GOLDENS.glob("*.txt") if p.stem not in names)
    if update_goldens:
        for p in stale:
            p.unlink()
        return
    assert not stale, f"goldens without an example: {[p.name for p in stale]}"


@pytest.mark.parametrize("name", example_ids())
def test_example_checks(name):
    path = EXAMPLES / f"{name}.nl"
    specs = pipeline.run(str(path), "check")
    assert specs, f"{name}: no declaration"
    for spec in specs:
        assert spec.name
        if spec.kind.value == "model":
            assert spec.blocks
        elif spec.kind.value == "layer":
            assert spec.levels, f"{spec.name} has no level"
            assert spec.output is not None


@pytest.mark.parametrize("name", example_ids())
def test_example_derives(name):
    """Every example derives and classifies, with text, LaTeX and JSON forms (hope.nl reads
    l2norm(K(h)) and sigmoid(total(E(h)) / d_head))."""
    items = pipeline.run(str(EXAMPLES / f"{name}.nl"), "classify")
    for _, classified in items:
        for c in classified:
            assert c.rule.to_text() and c.rule.to_latex() and c.rule.to_json()
            assert c.family.to_text() and c.execution.to_text()
