"""The recall benchmark's results: the best run per model and width, as a markdown table,
CSV and JSON, and a PNG of accuracy against width and against state size.

    OUT/recall.md     settings, then | model | d_model | state | best lr | accuracy | runs |
    OUT/recall.csv    every run: model, width, lr, seed, status, accuracy, steps, ...
    OUT/recall.json   {"settings", "best", "runs"}
    OUT/recall.png    one line per model

A learning rate's score is the mean accuracy over the seeds; a learning rate with a
diverged or failed seed has no score, and the best is taken over the scored ones (Zoology
reports the best learning rate per model and width). A model whose every run diverged is
reported as diverged, not dropped. `best_runs`, `runs_csv`, `pyplot` and `write_files` serve
the needle benchmark too (nlc/bench/niah_report.py).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

from nlc.errors import NlcError
from nlc.fileio import write_atomic

RUN_COLUMNS = ("model", "width", "lr", "seed", "status", "accuracy", "steps", "diverged_at",
               "parameters", "elapsed_s", "run", "error")


def best_runs(runs: list[dict], states: dict | None = None, key: str = "accuracy") -> list[dict]:
    """One row per (model, width) in the order the runs came: the learning rate of the best
    mean `key` over the seeds, its score as "accuracy" (and, given `states`, the state size)."""
    rows = {}
    for r in runs:
        rows.setdefault((r["model"], r["width"]), []).append(r)
    best = []
    for (model, width), group in rows.items():
        by_lr = {}
        for r in group:
            by_lr.setdefault(r["lr"], []).append(r)
        scores = {lr: sum(r[key] for r in rs) / len(rs) for lr, rs in by_lr.items()
                  if all(r["status"] == "ok" for r in rs)}
        diverged = sum(r["status"] == "diverged" for r in group)
        failed = sum(r["status"] == "failed" for r in group)
        lr = max(scores, key=scores.get) if scores else None
        best.append({"model": model, "width": width, "lr": lr, "accuracy": scores.get(lr),
                     "seeds": [r[key] for r in by_lr[lr]] if lr is not None else [],
                     "runs": len(group), "diverged": diverged, "failed": failed,
                     "status": "ok" if scores else ("diverged" if diverged else "failed"),
                     **({"state_floats": states[(model, width)]} if states else {})})
    return best


def markdown(best: list[dict], settings, title: str) -> str:
    s = settings
    setup = (f"MQAR: {s.seq_len} tokens, {s.pairs} key-value pairs, vocabulary {s.vocab}; "
             f"{s.n_layers} layers, no MLP; {s.steps} steps of {s.batch_size} sequences "
             f"(stopping at accuracy {s.stop_accuracy:g}); learning rates "
             f"{', '.join(f'{lr:g}' for lr in s.lrs)}; seeds "
             f"{', '.join(map(str, s.seeds))}; {s.eval_examples} test examples.")
    lines = [f"# {title}", "", setup, "",
             "| model | d_model | state (floats per layer) | best lr | accuracy | runs |",
             "|---|---:|---:|---:|---:|---|"]
    for b in best:
        if b["status"] == "ok":
            spread = (f" ({', '.join(f'{a:.3f}' for a in b['seeds'])})"
                      if len(b["seeds"]) > 1 else "")
            cells = (f"{b['lr']:g}", f"{b['accuracy']:.4f}{spread}")
        else:
            cells = ("-", b["status"])
        notes = [f"{b['diverged']} diverged"] * bool(b["diverged"]) + \
            [f"{b['failed']} failed"] * bool(b["failed"])
        runs = f"{b['runs']}" + (f" ({', '.join(notes)})" if notes else "")
        lines.append(f"| {b['model']} | {b['width']} | {b['state_floats']:,} | "
                     f"{cells[0]} | {cells[1]} | {runs} |")
    return "\n".join(lines) + "\n"


def runs_csv(runs: list[dict], columns: tuple[str, ...] = RUN_COLUMNS) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(runs)
    return text.getvalue()


def pyplot(command: str):
    """matplotlib.pyplot on the Agg backend, or a clear error naming `command`."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NlcError(f"{command} draws its plot with matplotlib: "
                       "pip install matplotlib") from None
    return plt


def save(fig, output: Path) -> None:
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, format="png")


def plot(best: list[dict], output: Path, title: str) -> None:
    import matplotlib.ticker
    plt = pyplot("nlc bench recall")
    fig, (by_width, by_state) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for model in dict.fromkeys(b["model"] for b in best):
        mine = [b for b in best if b["model"] == model]
        # a diverged or failed point is drawn at 0, as its marker says
        ys = [b["accuracy"] if b["status"] == "ok" else 0.0 for b in mine]
        line, = by_width.plot([b["width"] for b in mine], ys, marker="o", label=model)
        by_state.plot([b["state_floats"] for b in mine], ys, marker="o", label=model,
                      color=line.get_color())
        for ax, key in ((by_width, "width"), (by_state, "state_floats")):
            for b in mine:
                if b["status"] != "ok":
                    ax.plot(b[key], 0.0, marker="x", color="red", markersize=9)
    widths = sorted({b["width"] for b in best})
    by_width.set_xscale("log")
    by_width.set_xticks(widths, [str(w) for w in widths])
    by_width.minorticks_off()
    by_width.set(xlabel="model width (d_model)", ylabel="MQAR accuracy (best lr)",
                 title="accuracy against width")
    by_state.set(xscale="log", xlabel="state (floats per layer)", title="accuracy against state size")
    by_state.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels overlapped
    for ax in (by_width, by_state):
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    save(fig, output)
    plt.close(fig)


def write_files(out: Path, name: str, table: str, runs_table: str, data: dict,
                draw) -> dict[str, Path]:
    """OUT/NAME.md, .csv, .json and .png (drawn by `draw(path)`); return them by kind."""
    files = {kind: out / f"{name}.{kind}" for kind in ("md", "csv", "json", "png")}
    try:
        write_atomic(files["md"], table)
        write_atomic(files["csv"], runs_table)
        write_atomic(files["json"], json.dumps(data, indent=2, sort_keys=True) + "\n")
        draw(files["png"])
    except OSError as err:
        raise NlcError(f"cannot write the report: {(err.strerror or str(err)).lower()}",
                       path=str(out)) from None
    return files


def write_report(out: Path, runs: list[dict], states: dict, settings,
                 title: str = "MQAR recall (Zoology protocol)") -> dict[str, Path]:
    """Write the four files; return them by kind."""
    best = best_runs(runs, states)
    data = {"settings": dataclasses.asdict(settings), "best": best, "runs": runs}
    return write_files(out, "recall", markdown(best, settings, title), runs_csv(runs), data,
                       lambda png: plot(best, png, title))
