"""Latency of the light commands, and of `nlc check` on large hostile specs.

    python benchmarks/cli_latency.py [--repeat 3]

Prints, per example: `nlc check` in-process (imports included, in a fresh interpreter) and
`python -m nlc check` end to end (best of --repeat). Then `nlc check` on the specs that
tests/test_limits.py checks for answers: 1500 chained levels, a loop of 1500 levels and
20,000 dims. These are timings, so they live here and not in the tests: on a loaded 2-core
machine they vary several-fold."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_IN_PROCESS = """
import sys, time
start = time.perf_counter()
from nlc.cli import main
rc = main(["check", sys.argv[1]])
print(time.perf_counter() - start)
"""

_LAYER = """layer L {
  dims d_model = 8, d_k = 4, d_v = 4
  param W_q, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param W_o : [d_v, d_model]
  context from x { q = x @ W_q; k = x @ W_k; v = x @ W_v }
LEVELS
  output m0 @ W_o
}
"""


def chained_levels(n: int, loop: bool = False) -> str:
    """n levels, each reading the next one's output (the worst order for scheduling)."""
    out = []
    for i in range(n):
        nxt = f" + m{i + 1}" if i + 1 < n else (" + m0" if loop else "")
        out.append(f"  level m{i} every 1 token {{ state S{i} : matrix[d_v, d_k] = zeros; "
                   f"objective l2(S{i}(k), v); algorithm gd(lr = 0.5); "
                   f"read before S{i}(q){nxt} }}\n")
    return _LAYER.replace("LEVELS\n", "".join(out))


def many_dims(n: int) -> str:
    return "layer A {\n" + "".join(f"  dims a{i} = {i % 7 + 1}\n" for i in range(n)) + "}\n"


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, capture_output=True, cwd=ROOT, timeout=600)
    return time.perf_counter() - start


def in_process(path: Path) -> float:
    proc = subprocess.run([sys.executable, "-c", _IN_PROCESS, str(path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    return float(proc.stdout.strip().splitlines()[-1])


def hostile(name: str, text: str) -> tuple[str, float]:
    from nlc import pipeline
    from nlc.errors import NlcError
    start = time.perf_counter()
    try:
        pipeline.run(f"{name}.nl", "check", text=text)
    except NlcError:
        pass  # the loop and the dims without d_model are refused; the time is what counts
    return name, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("| example | check in-process (s) | python -m nlc check (s) |")
    print("|---|---|---|")
    for path in sorted((ROOT / "examples").glob("*.nl")):
        cli = min(seconds([sys.executable, "-m", "nlc", "check", str(path)])
                  for _ in range(args.repeat))
        print(f"| {path.name} | {in_process(path):.2f} | {cli:.2f} |")
    print()
    print("| hostile spec | nlc check (s) |")
    print("|---|---|")
    for name, text in (("1500 chained levels", chained_levels(1500)),
                       ("a loop of 1500 levels", chained_levels(1500, loop=True)),
                       ("20000 dims", many_dims(20000))):
        print(f"| {name} | {hostile(name, text)[1]:.2f} |")


if __name__ == "__main__":
    main()
