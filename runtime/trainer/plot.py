"""PNG curves of one or more runs, overlaid: training loss and the eval metric against steps.

    nlc plot runs/deltanet runs/attention -o mqar.png

Left panel: the training loss of each run (metrics.jsonl "train" lines). Right panel: the
eval metric (accuracy for mqar and niah, bits per byte for lm). matplotlib is imported only
here, and only when a plot is asked for.
"""

from __future__ import annotations

from pathlib import Path

from nlc.runtime.trainer.progress import read_metrics

from nlc.errors import NlcError
from nlc.fileio import writable_folder


def load_curves(run: str | Path) -> dict:
    """{"name", "train": [(step, loss)], "eval": [(step, value)], "metric": name} of a run."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise NlcError(f"{path}: missing; is {run} a run folder of nlc train?")
    records = read_metrics(path)
    train = [(r["step"], r["loss"]) for r in records
             if r.get("kind") == "train" and _number(r.get("loss"))]
    evals = [r for r in records if r.get("kind") == "eval"]
    metric = next((m for m in ("accuracy", "bits_per_byte") if evals and m in evals[0]), "loss")
    return {"name": Path(run).name, "train": train, "metric": metric, "task": _task(run),
            "eval": [(r["step"], r[metric]) for r in evals if _number(r.get(metric))]}


def _task(run) -> str | None:
    """The run's task from its config.json, or None where it cannot be read."""
    import json
    try:
        return json.loads((Path(run) / "config.json").read_text(encoding="utf-8")).get("task")
    except (OSError, ValueError, AttributeError):
        return None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_runs(runs: list[str | Path], output: str | Path, title: str | None = None) -> Path:
    """Draw the runs' curves into `output` (PNG); return its path. A run named twice is drawn
    once; runs whose folders share a name are labelled by the paths given."""
    runs = list({Path(r).resolve(): r for r in reversed(runs)}.values())[::-1]
    curves = [load_curves(run) for run in runs]
    names = [c["name"] for c in curves]
    for run, c in zip(runs, curves, strict=True):
        if names.count(c["name"]) > 1:
            c["name"] = str(run)
    for run, c in zip(runs, curves, strict=True):
        if not c["train"] and not c["eval"]:
            raise NlcError(f"{Path(run) / 'metrics.jsonl'}: no training or eval line to plot "
                           "yet")
    if not str(output):
        raise NlcError("-o is empty; it names the PNG file to write", hint="pass -o curves.png")
    if Path(output).is_dir():  # refused before matplotlib is imported or anything is drawn
        raise NlcError(f"{output}: is a folder; -o names the PNG file to write",
                       hint=f"pass -o {Path(output) / 'curves.png'}")
    if Path(output).suffix.lower() != ".png":  # the file is a PNG whatever its name says
        raise NlcError(f"{output}: nlc plot writes a PNG image; name the file *.png",
                       hint=f"pass -o {Path(output).with_suffix('.png')}")
    folder = Path(output).parent
    if not folder.exists():  # a mistyped -o made folders wherever it pointed
        raise NlcError(f"{output}: its folder {folder} does not exist",
                       hint="create it first, or write the plot into a folder that exists")
    writable_folder(folder, "the plot's folder")  # not under a file, say
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NlcError("nlc plot needs matplotlib: pip install matplotlib") from None
    metrics = sorted({c["metric"] for c in curves if c["eval"]})
    if len(metrics) > 1:  # mqar's accuracy and lm's bits per byte on one axis mean nothing
        raise NlcError(f"the runs evaluate different metrics ({', '.join(metrics)}): their "
                       f"tasks differ", hint="plot the runs of each task separately")
    tasks = sorted({c["task"] for c in curves if c["task"]})
    if len(tasks) > 1:  # mqar's and niah's accuracies are of different tasks
        raise NlcError(f"the runs are of different tasks ({', '.join(tasks)})",
                       hint="plot the runs of each task separately")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for c in curves:
        if c["train"]:
            steps, values = zip(*c["train"])
            left.plot(steps, values, label=c["name"], linewidth=1.2)
        if c["eval"]:
            steps, values = zip(*c["eval"])
            right.plot(steps, values, marker="o", markersize=3, label=c["name"], linewidth=1.2)
    left.set(xlabel="step", ylabel="training loss (nats per target)", title="training loss")
    right.set(xlabel="step", ylabel=metrics[0] if metrics else "eval", title="evaluation")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    output = Path(output)
    try:
        fig.savefig(output, format="png")
    except OSError as err:  # a read-only or full destination
        raise NlcError(f"{output}: cannot write the plot ({err.strerror or err})") from None
    finally:
        plt.close(fig)
    return output
