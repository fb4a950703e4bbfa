"""How sensitive are the per-token MLP memories to rounding, and why (docs/results.md).

For each spec, at its own dims and default initialization, on one random input of T tokens
(CPU, seed 0):
1. float32 against float64: the same weights, the same input; the relative error of the
   layer's output per token, and the first token where it exceeds 0.1;
2. float64 against float64 with the input perturbed by 1e-12: how far the outputs drift, and
   the first token where the drift exceeds 0.1 (relative to the output's size). A drift
   that grows from 1e-12 to O(1) in float64 is a property of the recurrence itself (it
   amplifies any difference, rounding included), not of how the code rounds;
3. the same two measurements with the spec's step size scaled down (`eta` -> `SCALE * eta`),
   and with its retention gate pushed toward 1 (`alpha` -> `0.9 + 0.1 * alpha`: 0.95 for a
   gate of 0.5), which tells whether the spec's choices cause it.

Usage: python benchmarks/mlp_memory_sensitivity.py [--T 256] [--specs yaad,memora,...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from nlc.emit import load_layer

ROOT = Path(__file__).resolve().parents[1]
SPECS = ["yaad", "memora", "moneta", "titans", "gated_deltanet"]
STEP = {"yaad": "eta", "memora": "eta", "moneta": "eta", "titans": "theta",
        "gated_deltanet": "beta"}  # the context value that is each spec's step size
SCALE = 0.1


def rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Relative error per token: [T]."""
    num = (a - b).double().flatten(2).norm(dim=-1).amax(0)
    return num / b.double().flatten(2).norm(dim=-1).amax(0).clamp_min(1e-30)


def first_above(err: torch.Tensor, limit: float = 0.1) -> str:
    hits = (err > limit).nonzero()
    return str(int(hits[0]) + 1) if len(hits) else f"> {len(err)}"


def measure(path: Path, T: int) -> dict:
    cls = load_layer(str(path))
    torch.manual_seed(0)
    model64 = cls(mode="recurrent").double()
    model32 = cls(mode="recurrent").float()
    model32.load_state_dict({k: v.float() for k, v in model64.state_dict().items()})
    x = torch.randn(1, T, model64.d_model, dtype=torch.float64, generator=torch.Generator()
                    .manual_seed(1))
    with torch.no_grad():
        y64 = model64(x)
        y32 = model32(x.float())
        y64p = model64(x + 1e-12 * torch.randn(x.shape, dtype=torch.float64,
                                                generator=torch.Generator().manual_seed(2)))
    e32, drift = rel(y32, y64), rel(y64p, y64)
    return {"f32": e32, "drift": drift}


def variant(path: Path, out: Path, value: str, template: str) -> Path | None:
    """The spec with the context value `value = e` rewritten as `template.format(e)` (None
    if it has no such value)."""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        name, _, expr = line.strip().partition(" = ")
        if name == value and expr:
            lines[i] = line.replace(f"{name} = {expr}", f"{name} = {template.format(expr)}")
            target = out / f"{value}_{path.name}"
            target.write_text("\n".join(lines) + "\n")
            return target
    return None


def both(path: Path, out: Path) -> Path | None:
    """The step size scaled and the retention gate near 1 together."""
    first = variant(path, out, STEP[path.stem], f"{SCALE} * ({{}})")
    if first is None:
        return None
    second = variant(first, out, "alpha", "0.9 + 0.1 * ({})")
    if second is None:
        return None
    target = out / f"both_{path.name}"
    second.rename(target)
    return target


# Yaad stays sensitive with both changes: two more, each with the step scaled (the spec's
# text replaced as written in examples/yaad.nl)
ABLATIONS = {"yaad": [
    ("l2 objective, eta x 0.1", {"objective huber(M(k), v, delta = delta, switch = norm)":
                                 "objective l2(M(k), v)"}),
    ("no norm in the memory, eta x 0.1", {"act = gelu, residual, norm)": "act = gelu, residual)"}),
]}


def ablation(path: Path, out: Path, label: str, edits: dict) -> Path:
    scaled = variant(path, out, STEP[path.stem], f"{SCALE} * ({{}})")
    text = scaled.read_text()
    for old, new in edits.items():
        if old not in text:
            raise SystemExit(f"{path.name} no longer has {old!r}")
        text = text.replace(old, new)
    target = out / f"{len(label)}_{path.name}"
    target.write_text(text)
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--T", type=int, default=256)
    parser.add_argument("--specs", default=",".join(SPECS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.specs.split(","):
            path = ROOT / "examples" / f"{name}.nl"
            for label, spec in (
                    ("as written", path),
                    (f"{STEP[name]} x {SCALE}",
                     variant(path, Path(tmp), STEP[name], f"{SCALE} * ({{}})")),
                    ("alpha near 1", variant(path, Path(tmp), "alpha", "0.9 + 0.1 * ({})")),
                    ("both", both(path, Path(tmp))),
                    *((label, ablation(path, Path(tmp), label, edits))
                      for label, edits in ABLATIONS.get(name, []))):
                if spec is None:
                    continue
                m = measure(spec, args.T)
                rows.append((name, label, first_above(m["f32"]), f"{float(m['f32'][-1]):.1e}",
                             first_above(m["drift"]), f"{float(m['drift'][-1]):.1e}"))
                print(" | ".join(rows[-1]), flush=True)
    print(f"\nT = {args.T}; float32 vs float64 and 1e-12 input drift in float64, relative "
          "error per token; 'first > 0.1' is the first token past 0.1\n")
    print("| spec | step size | f32 vs f64: first > 0.1 | at token T | 1e-12 drift: first > 0.1 "
          "| at token T |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
