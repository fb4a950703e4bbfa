"""Text and JSON forms of `nlc verify` and `nlc identify` results."""

from __future__ import annotations

import json

from nlc.verify.verify import SpecReport


def _symbolic(value) -> str:
    return {True: "equal", False: "differs", None: "numeric only"}[value]


def _rows(r: SpecReport):
    """(name, comparisons) of each level, then of an optimizer's apply lines."""
    for lv in r.levels:
        yield lv.level, lv.matches
    if r.apply is not None:
        yield "apply", r.apply.matches


def _verdict_cell(r: SpecReport) -> str:
    """The verdict, and for a failed claim which claim: the columns before it describe what
    the level equals ("equals gla, equal, 0.0e+00"), which reads as a success otherwise."""
    if r.claims and not r.claim_holds:
        return f"{r.verdict}: not {r.claims}"
    return r.verdict


def verify_table(reports: list[SpecReport], errors: list[str]) -> str:
    header = ("spec", "claims", "level", "equals", "symbolic", "max rel err", "verdict", "time")
    rows = []
    for r in reports:
        for i, (name, matches) in enumerate(_rows(r)):
            best = matches[0] if matches else None
            rows.append((
                f"{r.path}:{r.spec}" if i == 0 else "",
                (r.claims or "-") if i == 0 else "",
                name,
                ", ".join(c.entry.id for c in matches) or "new variant",
                _symbolic(best.symbolic) if best else "-",
                f"{best.numeric:.1e}" if best else "-",
                _verdict_cell(r) if i == 0 else "",
                f"{r.seconds:.2f}s" if i == 0 else "",
            ))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else \
        [len(h) for h in header]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows]
    lines += [f"{r.path}:{r.spec}.{lv.level}: not {r.claims}: {lv.differs}" for r in reports
              if r.claims and not r.claim_holds for lv in r.levels
              if lv.differs and not any(c.entry.id.startswith(r.claims) for c in lv.matches)]
    lines += [r.apply.differs for r in reports if r.claims and r.apply and r.apply.differs]
    ok = sum(1 for r in reports if r.claims and r.claim_holds)
    claimed = sum(1 for r in reports if r.claims)
    lines.append(f"{ok}/{claimed} claims verified; {len(errors)} file(s) with errors")
    return "\n".join(lines) + "\n"


def verify_json(reports: list[SpecReport], errors: list[str]) -> str:
    data = {"specs": [{
        "path": r.path, "spec": r.spec, "claims": r.claims, "verdict": r.verdict,
        "seconds": round(r.seconds, 3),
        "levels": [{"level": lv.level,
                    "equals": [{"entry": c.entry.id, "symbolic": c.symbolic,
                                "numeric_relative_error": c.numeric} for c in lv.matches],
                    "nearest": lv.nearest, "differs": lv.differs} for lv in r.levels],
        "apply": None if r.apply is None else {
            "lines": [{"line": span.line, "column": span.column, "text": text}
                      for span, text in r.apply.lines],
            "equals": [{"entry": c.entry.id, "symbolic": c.symbolic,
                        "numeric_relative_error": c.numeric} for c in r.apply.matches],
            "differs": r.apply.differs},
    } for r in reports], "errors": errors}
    return json.dumps(data, indent=2) + "\n"


def identify_text(reports: list[SpecReport]) -> str:
    lines = []
    for r in reports:
        for lv in r.levels:
            name = f"{r.spec}.{lv.level}"
            if lv.matches:
                for c in lv.matches:
                    lines.append(f"{name}: this is {c.entry.title} ({c.entry.citation})")
                    if c.entry.constants:
                        lines.append(f"  the recurrence is compared, not the paper's constants: "
                                     f"{c.entry.constants}")
            else:
                lines.append(f"{name}: new variant; nearest: {', '.join(lv.nearest) or 'none'}")
                if lv.differs:
                    lines.append(f"  {lv.differs}")
        if r.apply is not None:
            for c in r.apply.matches:
                lines.append(f"{r.spec}.apply: this is {c.entry.title} ({c.entry.citation})")
            if not r.apply.matches:
                lines.append(f"{r.spec}.apply: new variant")
            if r.apply.differs:
                lines.append(f"  {r.apply.differs}")
    return "\n".join(lines) + "\n"
