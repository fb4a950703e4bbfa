"""`nlc bench`: benchmark protocols over specs, each a table and a plot in a folder.

    nlc bench recall SPEC... [--quick] [-o DIR]   Zoology's MQAR protocol (nlc/bench/recall.py)
    nlc bench niah SPEC... [--quick] [-o DIR]     S-NIAH across lengths (nlc/bench/niah.py)

Both sweep models x widths x learning rates x seeds, one `nlc train` process per point
(nlc/bench/runs.py), and report the best learning rate per model and width.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from nlc.errors import NlcError


def register(subparsers) -> None:
    from nlc.bench.niah import QUICK as NIAH_QUICK
    from nlc.bench.niah import NiahSettings
    from nlc.bench.recall import QUICK as RECALL_QUICK
    from nlc.bench.recall import RecallSettings
    bench = subparsers.add_parser("bench", help="benchmark protocols over specs")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)

    p = kinds.add_parser(
        "recall", help="Zoology's MQAR recall protocol: a learning-rate sweep per model and "
        "width, the best run reported, a table and a plot",
        description="Train each SPEC (a layer .nl, or 'attention' for the builtin softmax "
        "attention) on MQAR at each width and learning rate, and report the best run per "
        "model and width (Arora et al. 2023, Zoology). Defaults are the protocol's; --quick "
        "is a few minutes on a CPU.")
    recall = RecallSettings()
    _sweep_options(p, recall, "recall", RECALL_QUICK, {
        "steps": "optimizer steps per run", "batch_size": "sequences per step",
        "seq_len": "tokens per sequence", "pairs": "key-value pairs",
        "vocab": "MQAR vocabulary", "n_layers": "layers", "eval_examples": "test sequences",
        "eval_interval": "steps between evaluations"})
    p.add_argument("--stop-accuracy", type=float, metavar="A",
                   help=f"end a run once its accuracy reaches A; 0 = never "
                        f"(default: {recall.stop_accuracy:g})")
    p.set_defaults(func=cmd_recall, protocol=RecallSettings, quick_preset=RECALL_QUICK)

    p = kinds.add_parser(
        "niah", help="single needle in a haystack across context lengths (Titans, Table 2): "
        "train at one length, evaluate at several, a table and a plot",
        description="Train each SPEC (a layer .nl, or 'attention' for the builtin softmax "
        "attention) on S-NIAH (RULER's single needle, on bytes) at --seq-len, evaluate it "
        "at every --eval-lengths in --depth-bands needle depths, and report per model and "
        "width the learning rate with the best mean accuracy over the lengths. Defaults are "
        "a run on one GPU (--jobs 8 runs the 8 runs of 4 models at once); --quick is a few "
        "minutes per model on a CPU.")
    niah = NiahSettings()
    _sweep_options(p, niah, "niah", NIAH_QUICK, {
        "steps": "optimizer steps per run", "batch_size": "sequences per step",
        "seq_len": "the training length (bytes per sequence)",
        "digits": "digits of the needle's value", "n_layers": "layers",
        "eval_examples": "needles per evaluation length",
        "depth_bands": "depth bands the needles of each length are spread over",
        "eval_interval": "steps between evaluations at the training length"})
    p.add_argument("--eval-lengths", nargs="+", type=_positive_int, metavar="N",
                   help="context lengths to evaluate at, in bytes (default: "
                        f"{' '.join(map(str, niah.eval_lengths))})")
    p.add_argument("--carry-state", type=_whole(0, "0 (off) or a segment length"), metavar="S",
                   help="train and evaluate the specs in segments of S tokens, their states "
                        "carried (nlc train --carry-state); attention reads whole sequences "
                        "(default: 0, off; at evaluation the specs' segments are then the "
                        "training length)")
    p.add_argument("--cuda-graphs", action="store_true", default=None,
                   help="train with nlc train --cuda-graphs (one CUDA device per run): the "
                        "step replays as one graph, 2.5x faster for Titans in docs/perf.md; "
                        "evaluation runs eagerly")
    p.set_defaults(func=cmd_niah, protocol=NiahSettings, quick_preset=NIAH_QUICK)


def _sweep_options(p, defaults, name: str, quick, counts: dict[str, str]) -> None:
    """The options every sweep takes, and one positive whole number per `counts` entry."""
    p.add_argument("specs", nargs="+", metavar="SPEC", help="layer specs (.nl) or 'attention'")
    p.add_argument("-o", "--out", default=f"runs/{name}", metavar="DIR",
                   help=f"where the runs, {name}.md/.csv/.json and {name}.png go "
                        f"(default: runs/{name})")
    shown = ", ".join(f"{f.name.replace('_', ' ')} {_shown(getattr(quick, f.name))}"
                      for f in dataclasses.fields(quick)
                      if getattr(quick, f.name) != getattr(defaults, f.name))
    p.add_argument("--quick", action="store_true", help=f"a small preset for a CPU: {shown}")
    p.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE",
                   help="override a dim or hyper of every spec (repeatable)")
    p.add_argument("--scale", action="append", default=[], metavar="DIM",
                   help="keep this dim at its ratio to d_model in the spec at every width "
                        "(e.g. --scale d_k --scale d_v: the state grows with the width, as in "
                        "Zoology); specs that do not declare it are left as they are")
    numbers = {"widths": (_positive_int, "d_model values"), "lrs": (_positive_float,
               "learning rates"), "seeds": (_seed, "seeds, one run each")}
    for field, (kind, text) in numbers.items():
        p.add_argument(f"--{field}", nargs="+", type=kind, metavar="N",
                       help=f"{text} (default: {_shown(getattr(defaults, field))})")
    for field, text in counts.items():
        p.add_argument("--" + field.replace("_", "-"), type=_positive_int, metavar="N",
                       help=f"{text} (default: {getattr(defaults, field)})")
    p.add_argument("--device", metavar="NAME[,NAME...]",
                   help="auto, cpu, cuda or cuda:N; several, comma-separated, take the runs in "
                        "turn (default: auto)")
    p.add_argument("--jobs", type=_positive_int, metavar="N",
                   help="runs at once, as separate processes (default: 1)")


def _shown(value) -> str:
    if isinstance(value, tuple):
        return " ".join(_shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_from_args(args):
    """The protocol's defaults (or its --quick preset), with what the command line gives."""
    settings = args.quick_preset if args.quick else args.protocol()
    given = {}
    for f in dataclasses.fields(args.protocol):
        value = getattr(args, f.name, None)
        if value is not None:
            given[f.name] = tuple(value) if isinstance(value, list) else value
    if args.device is not None:
        given["devices"] = tuple(d.strip() for d in args.device.split(","))
        if not all(given["devices"]):
            raise NlcError(f"--device {args.device!r}: an empty device name")
    stop = given.get("stop_accuracy")
    if stop is not None and not (math.isfinite(stop) and 0 <= stop <= 1):
        raise NlcError(f"--stop-accuracy must be in [0, 1], got {stop:g}")
    return dataclasses.replace(settings, **given)


def run_sweep(args, protocol, name: str):
    """Check the specs and every run's config, then run the points; return (settings, out,
    models, runs)."""
    from nlc.bench import runs
    from nlc.fileio import writable_folder
    from nlc.levels import parse_overrides
    settings = settings_from_args(args)
    protocol.check_settings(settings)
    out = Path(args.out)
    models = runs.models_for(args.specs, parse_overrides(args.defines), tuple(args.scale))
    points = runs.points_for(models, settings)
    runs.check_widths(points)
    for point in points:  # every run's config and folder are valid before the first starts
        config = protocol.config_for(point, settings, out, settings.devices[0])
        runs.read_summary(Path(config.out), config)
    from nlc.runtime.trainer.distributed import pick_device
    for device in settings.devices:  # 'tpu', or cuda on a machine without one
        pick_device(device)
    for folder in (out, out / "runs"):  # found out now, not after the first run
        writable_folder(folder)
    print(f"nlc bench {name}: {len(points)} runs ({len(models)} models x "
          f"{len(settings.widths)} widths x {len(settings.lrs)} lrs x {len(settings.seeds)} "
          f"seeds), {settings.jobs} at a time; {out}", flush=True)
    done = runs.Runner(settings, out, protocol.config_for).run_all(points)
    return settings, out, models, done


def show_report(out: Path, name: str, files: dict, done: list[dict]) -> int:
    print((out / f"{name}.md").read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 1 if any(r["status"] == "failed" for r in done) else 0


def cmd_recall(args) -> int:
    from nlc.bench import recall
    from nlc.bench.report import write_report
    settings, out, models, done = run_sweep(args, recall, "recall")
    states = {(m.name, w): recall.state_floats(m, w, settings)
              for m in models for w in settings.widths}
    return show_report(out, "recall", write_report(out, done, states, settings), done)


def cmd_niah(args) -> int:
    from nlc.bench import niah
    from nlc.bench.niah_report import write_report
    settings, out, _, done = run_sweep(args, niah, "niah")
    return show_report(out, "niah", write_report(out, done, settings), done)


def _whole(least: int, what: str):
    """An argparse type: a whole number of at least `least`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


_positive_int = _whole(1, "a positive number")
_seed = _whole(0, "a seed of 0 or more")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value
