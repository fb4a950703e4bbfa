"""Rename the user names of a spec (for the name-hygiene tests).

A spec's user names are its layer / optimizer name, params, context values, levels, states
and hypers: everything a spec author chooses. Renaming works on tokens: a NAME is renamed
wherever it appears, except as a keyword inside a call (`gd(lr = beta)`: `lr` belongs to the
vocabulary) and inside comments."""

from __future__ import annotations

import re

from nlc import pipeline

_TOKEN = re.compile(r"#[^\n]*|[A-Za-z_][A-Za-z0-9_]*|\d+\.?\d*(?:[eE][+-]?\d+)?|\s+|.")


def user_names(path: str, text: str) -> list[str]:
    """The names a spec author chose, in order of first declaration."""
    names: list[str] = []
    for spec in pipeline.run(path, "check", text=text):
        names.append(spec.name)
        names += [n for n, _ in spec.hypers]
        names += [p.name for p in spec.params]
        names += [c.name for c in spec.context]
        for level in spec.levels:
            names.append(level.name)
            if level.state is not None:
                names.append(level.state.name)
    return list(dict.fromkeys(names))


def rename(text: str, mapping: dict[str, str]) -> str:
    """`text` with every user name in `mapping` replaced, token by token."""
    out, depth = [], 0
    tokens = _TOKEN.findall(text)
    for i, tok in enumerate(tokens):
        if tok in "([":
            depth += 1
        elif tok in ")]":
            depth -= 1
        if tok in mapping:
            rest = "".join(tokens[i + 1:i + 4]).lstrip()
            keyword = depth > 0 and rest.startswith("=") and not rest.startswith("==")
            if not keyword:
                tok = mapping[tok]
        out.append(tok)
    return "".join(out)
