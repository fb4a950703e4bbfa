"""A decay per row (output channel) on the CPU: the generated Gated DeltaNet with its scalar gate
against the same layer with a gate per value channel (`decay(alpha)`, alpha : [d_v], Mamba2's
parameterization per channel), forward + backward, and the row-gated layer with its strong
decays' chunks run by blocks of 16 tokens (runtime/library/rows.py, `_blocked_weighted`)
against the masked `[V, C, C]` ratios every such chunk took before (`--masked`, the same
code with the blocks turned off). Checks that both paths give the same output first.

    python benchmarks/row_decay_cpu.py [--B 4 --T 256 --d-model 64 --heads 2 --repeat 5]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
import time
from pathlib import Path

import torch

from nlc.emit import load_layer
from nlc.runtime.library import rows

ROOT = Path(__file__).resolve().parents[1]


def row_gated_spec() -> Path:
    """examples/gated_deltanet.nl with its gate per value channel."""
    text = (ROOT / "examples" / "gated_deltanet.nl").read_text()
    text = text.replace("claims gated_deltanet", "")
    text = text.replace("param w_beta, w_alpha : [d_model]",
                        "param w_beta : [d_model]\n  param W_alpha : [d_model, d_v]\n"
                        "  param dt_bias_v : [d_v] = zeros")
    text = text.replace("softplus(x @ w_alpha + dt_bias)", "softplus(x @ W_alpha + dt_bias_v)")
    path = Path(tempfile.mkdtemp()) / "gated_deltanet_rows.nl"
    path.write_text(text)
    return path


def best_ms(layer, x, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        layer(x).square().sum().backward()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--B", type=int, default=4)
    parser.add_argument("--T", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dims = {"d_model": args.d_model, "heads": args.heads, "d_k": args.d_model // args.heads,
            "d_v": args.d_model // args.heads}
    x = torch.randn(args.B, args.T, args.d_model, requires_grad=True,
                    generator=torch.Generator().manual_seed(0))
    layers = {}
    for name, path in (("scalar gate", ROOT / "examples" / "gated_deltanet.nl"),
                       ("gate per row", row_gated_spec())):
        torch.manual_seed(0)
        layers[name] = load_layer(str(path))(**dims)
    blocked = rows._blocked_weighted
    with torch.no_grad():
        fast = layers["gate per row"](x)
        rows._blocked_weighted = lambda *a: None
        slow = layers["gate per row"](x)
        rows._blocked_weighted = blocked
    error = ((fast - slow).abs().max() / slow.abs().max()).item()
    print(f"row gate, blocks against masked ratios: max rel difference {error:.1e}")
    assert error < 1e-5, error
    timings = [("scalar gate", best_ms(layers["scalar gate"], x, args.repeat)),
               ("gate per row, blocks of 16", best_ms(layers["gate per row"], x, args.repeat))]
    rows._blocked_weighted = lambda *a: None
    timings.append(("gate per row, masked [V, C, C] ratios (before)",
                    best_ms(layers["gate per row"], x, args.repeat)))
    rows._blocked_weighted = blocked
    print(f"{datetime.date.today()}, {platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s); B {args.B} x T {args.T}, d_model {args.d_model}, "
          f"{args.heads} heads, chunk 64, float32, forward + backward, best of {args.repeat}")
    print("| layer | ms |\n|---|---:|")
    for name, ms in timings:
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
