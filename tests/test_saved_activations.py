"""benchmarks/saved_activations.py's breakdown of what a layer keeps for its backward pass,
run as a user runs it (a subprocess), at a small length."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_breakdown_names_titans_kept_tensors_and_adds_up():
    """Under bf16 autocast with Titans' chunks recomputed, the kept tensors listed include
    the chunks' Psi (float32, [chunk, heads, states, chunk x terms] a chunk of tokens: 16 KiB
    a token at 8 heads of 64) and the second chunk's start states (each layer's weights and
    momentum stacked), and the listed kinds add up to no more than the table's total."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "saved_activations.py"),
                           "--specs", "titans", "--T", "128", "--bf16", "--breakdown"],
                          check=False, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if not k.startswith("NLC_")})
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    total = float(re.search(r"\| examples/titans.nl \| [\d.]+ \| ([\d.]+) \|", out).group(1))
    rows = re.findall(r"^\| (\[[^]]*\]) \| (torch\.\w+) \| (\w+) \| (\d+) \| ([\d.]+) \|$", out,
                      re.MULTILINE)
    assert rows, out
    kinds = {(shape, dtype): float(kib) for shape, dtype, _, _, kib in rows}
    assert kinds.get(("[64, 8, 4, 128]", "torch.float32")) == 16.0, rows
    # 2 x 256 x 64 floats a head, 8 heads, once in 128 tokens
    assert kinds.get(("[8, 2, 256, 64]", "torch.float32")) == 8.0, rows
    assert kinds.get(("[8, 2, 64, 256]", "torch.float32")) == 8.0, rows
    assert sum(float(r[4]) for r in rows) <= total + 0.1, (rows, total)
