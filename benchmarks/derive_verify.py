"""Time `nlc derive` + `nlc verify` on every example (issue: derivation performance).

Each example runs in its own process (cold imports included, as a user sees it) with a
time cap; then `nlc verify examples/` runs once in one process. Wall and CPU seconds are
recorded (on a shared machine the wall time grows with the load). The table goes to
stdout and, with --write, into docs/perf.md's derive section.

    python benchmarks/derive_verify.py [--cap SECONDS] [--repeat N] [--write]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(args: list[str], cap: float) -> tuple[float | None, int | None, float]:
    """Wall seconds (None past the cap), exit code, and CPU seconds of one command."""
    start, cpu = time.perf_counter(), _child_cpu()
    try:
        proc = subprocess.run([sys.executable, "-m", "nlc", *args], capture_output=True,
                              text=True, timeout=cap, cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
        return None, None, _child_cpu() - cpu
    return time.perf_counter() - start, proc.returncode, _child_cpu() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=float, default=60.0, help="seconds per command")
    parser.add_argument("--repeat", type=int, default=1, help="runs per command; the best counts")
    parser.add_argument("--write", action="store_true", help="update docs/perf.md")
    args = parser.parse_args()
    rows, total, first_total, cpu_total = [], 0.0, 0.0, 0.0
    examples = sorted((ROOT / "examples").glob("*.nl"))
    load_before = os.getloadavg()[0]
    for i, path in enumerate(examples, 1):
        rel = str(path.relative_to(ROOT))
        print(f"[{i}/{len(examples)}] {rel}", file=sys.stderr, flush=True)
        row = [path.stem]
        for command in ("derive", "verify"):
            runs = [timed([command, rel], args.cap) for _ in range(args.repeat)]
            capped = [t if t is not None else args.cap for t, _, _ in runs]
            best = min(range(len(runs)), key=lambda j: capped[j])
            t, rc, cpu = runs[best]
            total += capped[best]
            first_total += capped[0]
            cpu_total += cpu
            row += [t, rc]
        rows.append(tuple(row))
    print("nlc verify examples/ (one process)", file=sys.stderr, flush=True)
    one, one_rc, one_cpu = timed(["verify", "examples/"], args.cap * len(examples))
    load_after = os.getloadavg()[0]
    fmt = lambda t, rc: (f"> {args.cap:.0f} s (stopped)" if t is None
                         else f"{t:.2f} s" + ("" if rc == 0 else f" (exit {rc})"))
    versions = ", ".join(f"{m} {metadata.version(m)}" for m in ("sympy", "numpy", "networkx",
                                                                 "lark"))
    machine = (f"Machine: {platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores, Python {platform.python_version()} ({versions}); "
               f"{date.today().isoformat()}; each command a fresh process (imports included), "
               f"best of {args.repeat}; load average {load_before:.1f} before, "
               f"{load_after:.1f} after (other jobs share the machine).")
    lines = [machine, "", "| example | nlc derive | nlc verify |", "|---|---|---|"]
    lines += [f"| {name} | {fmt(d, drc)} | {fmt(v, vrc)} |" for name, d, drc, v, vrc in rows]
    totals = (f"Total (stopped commands counted at the cap): {total:.1f} s wall "
              f"({cpu_total:.1f} s CPU); the first of the {args.repeat} runs: "
              f"{first_total:.1f} s wall.")
    single = (f"`nlc verify examples/` in one process: {fmt(one, one_rc)} wall, "
              f"{one_cpu:.1f} s CPU.")
    lines += ["", totals, single]
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
