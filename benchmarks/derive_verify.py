"""Time `nlc derive` + `nlc verify` on every example (issue: derivation performance).

Each example runs in its own process (cold imports included, as a user sees it) with a
time cap; the table goes to stdout and, with --write, into docs/perf.md's derive section.

    python benchmarks/derive_verify.py [--cap SECONDS] [--write]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(args: list[str], cap: float) -> tuple[float | None, int | None]:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "nlc", *args], capture_output=True,
                              text=True, timeout=cap, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, None
    return time.perf_counter() - start, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=float, default=60.0, help="seconds per command")
    parser.add_argument("--write", action="store_true", help="update docs/perf.md")
    args = parser.parse_args()
    rows, total = [], 0.0
    examples = sorted((ROOT / "examples").glob("*.nl"))
    for i, path in enumerate(examples, 1):
        rel = str(path.relative_to(ROOT))
        print(f"[{i}/{len(examples)}] {rel}", file=sys.stderr, flush=True)
        d, d_rc = timed(["derive", rel], args.cap)
        v, v_rc = timed(["verify", rel], args.cap)
        for t in (d, v):
            total += t if t is not None else args.cap
        rows.append((path.stem, d, d_rc, v, v_rc))
    fmt = lambda t, rc: (f"> {args.cap:.0f} s (stopped)" if t is None
                         else f"{t:.2f} s" + ("" if rc == 0 else f" (exit {rc})"))
    lines = [f"Machine: {platform.processor() or platform.machine()}, "
             f"{__import__('os').cpu_count()} cores, Python {platform.python_version()}; "
             f"{date.today().isoformat()}; each command a fresh process (imports included).",
             "", "| example | nlc derive | nlc verify |", "|---|---|---|"]
    lines += [f"| {name} | {fmt(d, drc)} | {fmt(v, vrc)} |" for name, d, drc, v, vrc in rows]
    lines += ["", f"Total (stopped commands counted at the cap): {total:.1f} s"]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        perf = ROOT / "docs" / "perf.md"
        text = perf.read_text() if perf.exists() else "# Performance\n"
        head = "## Derivation and verification (CPU)"
        before = text.split(head)[0].rstrip() + "\n\n" if head in text else text.rstrip() + "\n\n"
        rest = ""
        if head in text:
            after = text.split(head, 1)[1]
            rest = after[after.find("\n## "):] if "\n## " in after else ""
        perf.write_text(before + head + "\n\n" + table + rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
