"""`nlc bench`: benchmark protocols over specs, each a table and a plot in a folder.

    nlc bench recall SPEC... [--quick] [-o DIR]   Zoology's MQAR protocol (nlc/bench/recall.py)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from nlc.errors import NlcError


def register(subparsers) -> None:
    from nlc.bench.recall import RecallSettings
    protocol = RecallSettings()
    bench = subparsers.add_parser("bench", help="benchmark protocols over specs")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    p = kinds.add_parser(
        "recall", help="Zoology's MQAR recall protocol: a learning-rate sweep per model and "
        "width, the best run reported, a table and a plot",
        description="Train each SPEC (a layer .nl, or 'attention' for the builtin softmax "
        "attention) on MQAR at each width and learning rate, and report the best run per "
        "model and width (Arora et al. 2023, Zoology). Defaults are the protocol's; --quick "
        "is a few minutes on a CPU.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="layer specs (.nl) or 'attention'")
    p.add_argument("-o", "--out", default="runs/recall", metavar="DIR",
                   help="where the runs, recall.md/.csv/.json and recall.png go "
                        "(default: runs/recall)")
    p.add_argument("--quick", action="store_true",
                   help="a small preset for a CPU: widths 32 64, lrs 3e-3 1e-2, 300 steps of "
                        "32 sequences of 64 tokens, 4 pairs, vocabulary 256")
    p.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE",
                   help="override a dim or hyper of every spec (repeatable)")
    p.add_argument("--scale", action="append", default=[], metavar="DIM",
                   help="keep this dim at its ratio to d_model in the spec at every width "
                        "(e.g. --scale d_k --scale d_v: the state grows with the width, as in "
                        "Zoology); specs that do not declare it are left as they are")
    numbers = {"widths": (_positive_int, "d_model values"), "lrs": (_positive_float,
               "learning rates"), "seeds": (_seed, "seeds, one run each")}
    for name, (kind, text) in numbers.items():
        p.add_argument(f"--{name}", nargs="+", type=kind, metavar="N",
                       help=f"{text} (default: {' '.join(f'{v:g}' for v in getattr(protocol, name))})")
    for name, text in (("steps", "optimizer steps per run"), ("batch_size", "sequences per step"),
                       ("seq_len", "tokens per sequence"), ("pairs", "key-value pairs"),
                       ("vocab", "MQAR vocabulary"), ("n_layers", "layers"),
                       ("eval_examples", "test sequences"),
                       ("eval_interval", "steps between evaluations")):
        p.add_argument("--" + name.replace("_", "-"), type=_positive_int, metavar="N",
                       help=f"{text} (default: {getattr(protocol, name)})")
    p.add_argument("--stop-accuracy", type=float, metavar="A",
                   help=f"end a run once its accuracy reaches A; 0 = never "
                        f"(default: {protocol.stop_accuracy:g})")
    p.add_argument("--device", metavar="NAME[,NAME...]",
                   help="auto, cpu, cuda or cuda:N; several, comma-separated, take the runs in "
                        "turn (default: auto)")
    p.add_argument("--jobs", type=_positive_int, metavar="N",
                   help="runs at once, as separate processes (default: 1)")
    p.set_defaults(func=cmd_recall)


def settings_from_args(args):
    from nlc.bench.recall import QUICK, RecallSettings
    settings = QUICK if args.quick else RecallSettings()
    given = {}
    for f in dataclasses.fields(RecallSettings):
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


def cmd_recall(args) -> int:
    from nlc.bench import recall
    from nlc.bench.report import write_report
    from nlc.levels import parse_overrides
    settings = settings_from_args(args)
    recall.check_settings(settings)
    out = Path(args.out)
    models = recall.models_for(args.specs, parse_overrides(args.defines), tuple(args.scale))
    points = recall.points_for(models, settings)
    for point in points:  # every run's config and folder are valid before the first starts
        config = recall.config_for(point, settings, out, settings.devices[0])
        recall.read_summary(Path(config.out), config)
    states = {(m.name, w): recall.state_floats(m, w, settings)
              for m in models for w in settings.widths}
    print(f"nlc bench recall: {len(points)} runs ({len(models)} models x "
          f"{len(settings.widths)} widths x {len(settings.lrs)} lrs x {len(settings.seeds)} "
          f"seeds), {settings.jobs} at a time; {out}", flush=True)
    runs = recall.Runner(settings, out).run_all(points)
    files = write_report(out, runs, states, settings)
    print((out / "recall.md").read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(f) for f in files.values()))
    failed = [r for r in runs if r["status"] == "failed"]
    return 1 if failed else 0


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
