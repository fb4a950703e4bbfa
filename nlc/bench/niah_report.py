"""The needle benchmark's results: per model and width, the best learning rate's accuracy at
each evaluation length and in each depth band, as markdown, CSV and JSON, and a PNG of
accuracy against length.

    OUT/niah.md     settings; | model | d_model | best lr | L_1 | ... | L_n | mean | runs |;
                    then the best runs' accuracy per depth band at each length
    OUT/niah.csv    every run: model, width, lr, seed, status, mean accuracy, one column per
                    length, steps, ...
    OUT/niah.json   {"settings", "best", "runs"}
    OUT/niah.png    accuracy against length, one line per model (and width)

The score of a learning rate is the accuracy averaged over the lengths and then over the
seeds (nlc/bench/report.py's `best_runs`); the lengths and bands of the best row are that
learning rate's, averaged over its seeds.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from nlc.bench.niah import mean_accuracy
from nlc.bench.report import RUN_COLUMNS, best_runs, pyplot, runs_csv, save, write_files

TITLE = "S-NIAH: single needle across lengths"


def best_rows(runs: list[dict], settings) -> list[dict]:
    """`best_runs` by mean accuracy over the lengths, with the best lr's accuracy per length
    ("lengths") and per depth band ("bands"), averaged over its seeds."""
    for r in runs:
        r["mean_accuracy"] = mean_accuracy(r)
    best = best_runs(runs, key="mean_accuracy")
    for b in best:
        mine = [r for r in runs if (r["model"], r["width"], r["lr"]) ==
                (b["model"], b["width"], b["lr"])] if b["status"] == "ok" else []
        b["lengths"], b["bands"] = {}, {}
        for length in map(str, settings.eval_lengths):
            at = [r["eval_lengths"][length] for r in mine]
            if at:
                b["lengths"][length] = sum(a["accuracy"] for a in at) / len(at)
                b["bands"][length] = [_mean([a["bands"][i] for a in at])
                                      for i in range(settings.depth_bands)]
    return best


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def band_names(bands: int) -> list[str]:
    """Depth bands as percentages of the haystack: 0-25%, 25-50%, ..."""
    edges = [round(100 * i / bands) for i in range(bands + 1)]
    return [f"{a}-{b}%" for a, b in itertools.pairwise(edges)]


def markdown(best: list[dict], settings) -> str:
    s = settings
    lengths = [str(n) for n in s.eval_lengths]
    setup = (f"Trained at {s.seq_len} bytes ({s.steps} steps of {s.batch_size} sequences, "
             f"needles at uniformly random depths, {s.digits}-digit values); {s.n_layers} "
             f"layers, no MLP; learning rates {', '.join(f'{lr:g}' for lr in s.lrs)}; seeds "
             f"{', '.join(map(str, s.seeds))}. Evaluated at {', '.join(lengths)} bytes, "
             f"{s.eval_examples} needles per length in {s.depth_bands} depth bands; a needle "
             "counts when every digit is the argmax. Best lr by mean accuracy over the lengths.")
    lines = [f"# {TITLE}", "", setup, "",
             "| model | d_model | best lr | " + " | ".join(lengths) + " | mean | runs |",
             "|---|---:|---:|" + "---:|" * len(lengths) + "---:|---|"]
    for b in best:
        notes = [f"{b['diverged']} diverged"] * bool(b["diverged"]) + \
            [f"{b['failed']} failed"] * bool(b["failed"])
        runs = f"{b['runs']}" + (f" ({', '.join(notes)})" if notes else "")
        if b["status"] == "ok":
            cells = [f"{b['lr']:g}", *(f"{b['lengths'][n]:.3f}" for n in lengths),
                     f"{b['accuracy']:.3f}"]
        else:
            cells = ["-", *("-" for _ in lengths), b["status"]]
        lines.append(f"| {b['model']} | {b['width']} | " + " | ".join(cells) + f" | {runs} |")
    bands = " | ".join(band_names(s.depth_bands))
    lines += ["", "Accuracy per needle depth (the share of the haystack before it), best lr:",
              "", f"| model | d_model | length | {bands} |",
              "|---|---:|---:|" + "---:|" * s.depth_bands]
    for b in best:
        for length, bands in b["bands"].items():
            shown = ("-" if a is None else f"{a:.3f}" for a in bands)
            lines.append(f"| {b['model']} | {b['width']} | {length} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def plot(best: list[dict], settings, output: Path) -> None:
    plt = pyplot("nlc bench niah")
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    widths = {b["width"] for b in best}
    for b in best:
        label = b["model"] if len(widths) == 1 else f"{b['model']} d{b['width']}"
        if b["status"] != "ok":
            label += f" ({b['status']})"
        xs = [int(n) for n in b["lengths"]]
        ax.plot(xs, list(b["lengths"].values()), marker="o", label=label)
    ax.axvline(settings.seq_len, color="grey", linestyle=":", label="training length")
    ax.set_xscale("log", base=2)
    ax.set_xticks(settings.eval_lengths, [str(n) for n in settings.eval_lengths])
    ax.minorticks_off()
    ax.set(xlabel="context length (bytes)", ylabel="needles found (best lr)", title=TITLE)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, output)
    plt.close(fig)


def write_report(out: Path, runs: list[dict], settings) -> dict[str, Path]:
    """Write OUT/niah.md, .csv, .json and .png; return them by kind."""
    best = best_rows(runs, settings)
    lengths = tuple(f"accuracy_{n}" for n in settings.eval_lengths)
    table = [{**r, **{f"accuracy_{n}": a["accuracy"]
                      for n, a in (r.get("eval_lengths") or {}).items()}} for r in runs]
    columns = RUN_COLUMNS[:6] + ("mean_accuracy", *lengths) + RUN_COLUMNS[6:]
    data = {"settings": dataclasses.asdict(settings), "best": best, "runs": runs}
    return write_files(out, "niah", markdown(best, settings), runs_csv(table, columns), data,
                       lambda png: plot(best, settings, png))
