"""`nlc train`, `nlc eval`, `nlc plot`: the runtime's commands.

nlc/cli.py adds them with `register(subparsers)`; `python -m nlc.train_cli ...` runs them on
their own (torchrun launches ranks that way). Every field of `TrainConfig` is a flag
(`--batch-size 32`, `--mqar-num-kv-pairs 8`, `--no-bf16`); the spec's dims and hypers are
`-D NAME=VALUE`, as for the other commands. The commands compile the specs (nlc/factories.py)
and hand the trainer factories; the trainer never compiles. Handlers return an exit code and
raise `NlcError` for user errors (printed as `error: ...`, exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import sys
from pathlib import Path

from nlc.errors import NlcError

EXIT_OK = 0
EXIT_DIVERGED = 1  # the loss or the gradients stopped being finite
SPEC_FIELDS = ("spec", "spec_overrides")  # given as SPEC and -D, not as --flags
# what an interrupted `nlc train` adds to "nlc: interrupted" before its run folder is known
BEFORE_TRAINING_HINT = ("; it stopped before training began, so this call trained nothing: run "
                        "it again (a run given --resume continues from its latest checkpoint)")
# and what an interrupted `nlc demo` adds (nlc/demo.py: runs are checkpointed as they train)
DEMO_HINT = ("; `nlc demo` again with the same options and --out continues each unfinished "
             "run from its latest checkpoint")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training, with what the run folder holds then (`resume_hint`), for the
    "nlc: interrupted" line here and in nlc/cli.py."""

    def __init__(self, hint: str):
        super().__init__(hint)
        self.hint = hint


def say_interrupted(err: KeyboardInterrupt, command: str) -> None:
    """Print the "nlc: interrupted" line on stderr, except in a data-parallel rank other than
    the first: every rank of `--nproc N` gets the same Ctrl-C, and the line is said once."""
    if int(os.environ.get("RANK", "0")) > 0:
        return
    hint = err.hint if isinstance(err, Interrupted) else \
        {"train": BEFORE_TRAINING_HINT, "demo": DEMO_HINT}.get(command, "")
    print(f"nlc: interrupted{hint}", file=sys.stderr)


def register(subparsers) -> None:
    """Add the `train`, `eval` and `plot` subcommands to an argparse subparsers object."""
    from nlc.runtime.trainer.config import TrainConfig

    p = subparsers.add_parser("train", help="train a spec's layer on mqar, niah or lm",
                              description="Train a language model whose mixer is SPEC.")
    p.add_argument("spec", metavar="SPEC", nargs="?",
                   help="a layer spec (.nl), builtin:attention or builtin:mlp (with --resume and --out, "
                        "the run's own by default)")
    p.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE",
                   help="override a dim or hyper of SPEC (repeatable; --mlp and --optimizer "
                        "specs keep their own)")
    p.add_argument("--config", metavar="FILE.json", help="start from this config file")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train data-parallel on N local processes (relaunches itself as N ranks, "
                        "as torchrun --standalone would)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    for f in dataclasses.fields(TrainConfig):
        if f.name not in SPEC_FIELDS:
            _add_field_flag(p, f, getattr(TrainConfig(), f.name))
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("eval", help="evaluate a run's latest checkpoint")
    p.add_argument("run", metavar="RUN", help="a run folder written by nlc train")
    p.add_argument("--checkpoint", metavar="DIR", help="a checkpoint folder (default: latest)")
    p.add_argument("--eval-examples", type=int, metavar="N", help="size of the eval set")
    p.add_argument("--device", metavar="NAME", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--niah-eval-lengths", nargs="+", type=int, metavar="N",
                   help="a niah run: also evaluate needles at these lengths, recurrent layers "
                        "in segments of the training length with their states carried")
    p.add_argument("--niah-depth-bands", type=int, metavar="N",
                   help="depth bands of the needles at those lengths (default: the run's)")
    p.add_argument("--lm-files", nargs="+", metavar="PATH",
                   help="an lm run: its text files or folders, where they have moved since "
                        "(default: the run's; the same files, split as in training)")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("plot", help="plot runs' loss and eval curves to a PNG")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by nlc train")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png")
    p.add_argument("--title", help="a title over both panels")
    p.set_defaults(func=cmd_plot)


def _add_field_flag(p: argparse.ArgumentParser, f: dataclasses.Field, default) -> None:
    from nlc.runtime.trainer.config import TASKS
    flag = "--" + f.name.replace("_", "-")
    text = f.metadata.get("help", "")
    if "(default:" not in text:  # a help that says its default in words keeps it
        text += f" (default: {default!r})"
    if f.name == "out":  # the Python API's default differs: the CLI names the run
        text = "the run folder (default: runs/<spec name>-<task>)"
    if isinstance(default, bool):
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
    elif isinstance(default, list):
        item = f.metadata.get("item", str)
        p.add_argument(flag, nargs="+", type=item, default=None,
                       metavar="N" if item is int else "PATH", help=text)
    elif f.name == "task":
        p.add_argument(flag, choices=TASKS, default=None, help=text)
    else:
        p.add_argument(flag, type=type(default), default=None, metavar=f.name.upper(), help=text)


def _keys_in_config_file(args) -> set[str]:
    """The fields a --config file sets (none without one; config_from_args reads it first,
    refusing one that is not a JSON object)."""
    if not args.config:
        return set()
    from nlc.fileio import read_text
    return set(json.loads(read_text(args.config, "config")))


def config_from_args(args):
    """The run's config: defaults < --config file < the run's config.json (--resume) < flags."""
    from nlc.runtime.trainer.config import TrainConfig

    config = TrainConfig()
    if args.config:
        config = _read_config(Path(args.config))
    spec_in_file = "spec" in _keys_in_config_file(args)
    if args.spec is None and not spec_in_file and not (args.resume and (args.out or args.config)):
        raise NlcError("SPEC is missing: nlc train SPEC [options]",
                       hint="a layer spec (.nl) or builtin:attention; `nlc train --out RUN "
                            "--resume` continues RUN with its own spec")
    out = Path(args.out) if args.out else Path(config.out) if args.config else \
        _default_out(args.spec, args.task or config.task)
    if args.resume and not (out / "config.json").is_file():
        _refuse_missing_config(out)
    elif args.resume:
        config = _run_copies(_read_config(out / "config.json"), out, args)
        if args.task is not None and args.task != config.task:  # before any size check
            raise NlcError(f"--task {args.task}: the run in {out} trains on {config.task}, "
                           "and a resumed run keeps its task",
                           hint="drop --task to resume it, or start a new run (another --out)")
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if f.name not in SPEC_FIELDS and getattr(args, f.name) is not None}
    spec = args.spec if args.spec is not None else _run_spec(config, out)
    if "lm_files" in given:  # absolute: `nlc eval RUN` and a resume work from any folder
        given["lm_files"] = [str(Path(p).resolve()) for p in given["lm_files"]]
    config = dataclasses.replace(config, spec=spec, **given)
    if args.defines:  # on a resume, added to the run's own (they replaced them)
        from nlc.levels import parse_overrides
        base = dict(config.spec_overrides) if args.resume else {}
        config = dataclasses.replace(config, spec_overrides={**base,
                                                             **parse_overrides(args.defines)})
    if args.out is None and not args.config:
        config = dataclasses.replace(config, out=str(out))
    try:
        return config.validate()
    except NlcError as err:  # name the flags the user typed, not the config's fields
        import re
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        typed = {n for n in fields if getattr(args, n, None) is not None}
        source = out / "config.json" if args.resume else args.config

        def flag(m) -> str:  # a field's name, not the same word in prose ("its task is")
            word = m[1]
            named = "_" in word or m.start() == 0 or word in ("compile", "tf32")
            # a default's field (mqar_num_kv_pairs) by the flag that changes it
            untyped_default = "_" in word and word in fields and not source
            return f"--{word.replace('_', '-')}" if (word in typed and named) \
                or untyped_default else word
        first = re.match(r"[a-z][a-z0-9_]*", err.message)
        if source and first and first[0] in fields and first[0] not in typed:  # a value the file holds, not a flag
            err.message = f"{source}: {err.message}"
        err.message = re.sub(r"(?<![\w-])([a-z][a-z0-9_]*)\b", flag, err.message)
        raise


def _run_spec(config, out: Path) -> str:
    """A resumed run's spec when the command names none: its copy RUN/spec.nl, the text it
    was trained on (the path it was started with may have been edited since, moved, or be
    relative to another folder), else that path (a builtin mixer has no copy)."""
    from nlc.runtime.trainer.mixers import is_spec_file
    if is_spec_file(config.spec) and (out / "spec.nl").is_file():
        return str(out / "spec.nl")
    return config.spec


def _default_out(spec: str, task: str) -> Path:
    """runs/<spec name>-<task>: where a run without --out goes, and what --resume reads."""
    name = spec.split(":", 1)[1] if spec.startswith("builtin:") else Path(spec).stem
    return Path("runs") / f"{name}-{task}"


def _refuse_missing_config(out: Path) -> None:
    """A run resumes with the settings of its config.json: one with checkpoints but no
    config.json is refused, rather than resumed under the defaults (whose model shape the
    checkpoint would then refuse). Without checkpoints, train() says there is nothing to
    resume."""
    from nlc.runtime.trainer.checkpoint import latest_checkpoint
    latest = latest_checkpoint(out) if out.is_dir() else None
    if latest is not None:
        raise NlcError(f"{out / 'config.json'}: missing; --resume takes the run's settings "
                       "from it",
                       hint=f"restore it (a copy is the \"config\" of {latest / 'state.json'}), "
                            "or start a new run with another --out")


def _run_copies(config, out: Path, args):
    """The run's config with each --mlp and --optimizer spec file that no flag names and that
    cannot be found from here (a path relative to where the run started) replaced by the
    run's copy of it, RUN/mlp.nl or RUN/optimizer.nl, which the checkpoints were trained with."""
    from nlc.runtime.trainer.checkpoint import SIDE_SPECS
    from nlc.runtime.trainer.mixers import is_spec_file
    changes = {}
    for name in SIDE_SPECS:
        path, copy = getattr(config, name), out / f"{name}.nl"
        if getattr(args, name) is None and is_spec_file(path) and not Path(path).exists() \
                and copy.is_file():
            changes[name] = str(copy)
    return dataclasses.replace(config, **changes)


def _read_config(path: Path):
    from nlc.fileio import read_text
    from nlc.runtime.trainer.config import TrainConfig
    try:
        return TrainConfig.from_json(read_text(path, "config"), str(path))
    except NlcError as err:  # a run's config.json: its checkpoints keep a copy
        if path.name == "config.json" and (path.parent / "checkpoints").is_dir() \
                and not err.hint:
            err.hint = (f"each checkpoint's state.json in {path.parent / 'checkpoints'} holds "
                        f"the run's config under \"config\"; restore config.json from the "
                        f"latest one")
        raise


def cmd_train(args) -> int:
    from nlc.factories import factories_for
    from nlc.runtime.library import scan
    from nlc.runtime.trainer.mixers import is_builtin, is_spec_file
    from nlc.runtime.trainer.progress import strict_json
    from nlc.runtime.trainer.train import refuse_nothing_to_resume, train
    if args.nproc < 1:
        raise NlcError(f"--nproc must be at least 1, got {args.nproc}")
    scan.check_settings()  # the environment's settings for chunked levels
    config = config_from_args(args)
    out = Path(config.out)
    if args.resume and not (out.is_dir() and any(out.iterdir())):  # said before compiling
        refuse_nothing_to_resume(out)                                # the spec and its -D
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        if config.batch_size % args.nproc:  # refused here, not after the ranks have started
            raise NlcError(f"batch_size {config.batch_size} does not split over {args.nproc} "
                           f"ranks", hint="use a --batch-size divisible by --nproc")
        if is_spec_file(config.spec):  # its errors once, not once per rank
            from nlc import pipeline
            pipeline.run(config.spec, "check", {"overrides": {**config.spec_overrides,
                                                              "d_model": config.d_model}})
        return _relaunch(args)
    try:
        factories = factories_for(config)  # refuses a missing spec file before saying more
        config = _spec_optimizer_settings(config, factories["optimizer_class"], args)
        if not args.quiet and int(os.environ.get("RANK", "0")) == 0 \
                and not is_builtin(config.spec):  # an MLP memory compiles for 10-20 s, silently
            print(f"nlc train: compiling {config.spec} ...", file=sys.stderr, flush=True)
        summary = train(config, **factories, resume=args.resume, progress=not args.quiet)
    except KeyboardInterrupt:
        raise Interrupted(resume_hint(Path(config.out))) from None
    except NlcError as err:
        if err.message.startswith("-D ") and (is_spec_file(config.mlp)
                                              or is_spec_file(config.optimizer)):
            err.hint = ((err.hint + "; ") if err.hint else "") + (
                "-D sets SPEC's dims and hypers only: the --mlp and --optimizer specs keep "
                "their own (edit those files to change them)")
        raise
    if int(os.environ.get("RANK", "0")) == 0:  # strict JSON: a diverged loss is null
        print(strict_json({"out": config.out, "final_loss": summary["final_loss"],
                           **summary["eval"]}))
    if summary["diverged_at"] is not None:
        if args.quiet:  # else the progress output said it already
            print(f"nlc train: {summary['divergence']}", file=sys.stderr)
        print(f"nlc train: the loss or its gradients stopped being finite at step "
              f"{summary['diverged_at']}; "
              f"the run diverged (see {config.out}/metrics.jsonl)", file=sys.stderr)
        return EXIT_DIVERGED
    return EXIT_OK


ADAMW_FLAGS = (("weight_decay", "--weight-decay"), ("beta1", "--beta1"), ("beta2", "--beta2"))


def _spec_optimizer_settings(config, optimizer_class, args):
    """With an optimizer compiled from a spec: its own `lr` is the peak learning rate unless
    --lr (or a --config file's lr, or the resumed run's) sets one, and the run says which;
    --weight-decay, --beta1 and --beta2, AdamW's, are refused where no AdamW runs (they were
    ignored in silence; a spec that takes matrices only trains the rest with AdamW, which
    they set)."""
    if optimizer_class is None:
        return config
    if not getattr(optimizer_class, "matrices_only", False):
        for field, flag in ADAMW_FLAGS:
            if getattr(args, field) is not None:
                raise NlcError(f"{flag} sets AdamW's {field.replace('_', ' ')}, and "
                               f"{config.optimizer} ({optimizer_class.__name__}) trains every "
                               "parameter: no AdamW runs",
                               hint=f"its hypers are the spec's: edit {config.optimizer}")
    if args.lr is not None or "lr" in _keys_in_config_file(args) or args.resume:
        return config
    default = inspect.signature(optimizer_class.__init__).parameters.get("lr")
    if default is None or not isinstance(default.default, (int, float)) \
            or isinstance(default.default, bool):
        return config
    if not args.quiet and int(os.environ.get("RANK", "0")) == 0:
        print(f"nlc train: peak learning rate {default.default:g}, {config.optimizer}'s own lr "
              "(--lr sets another)", file=sys.stderr, flush=True)
    return dataclasses.replace(config, lr=float(default.default)).validate()


def resume_hint(out: Path) -> str:
    """What follows "nlc: interrupted" for a run into `out`: how to continue it from its
    latest checkpoint, or that none was written, so nothing is saved to resume from."""
    from nlc.runtime.trainer.checkpoint import latest_checkpoint
    if not out.exists():
        return f"; {out} was not written yet, so nothing is saved: run the command again"
    latest = latest_checkpoint(out)
    if latest is None:
        return (f"; no checkpoint was written to {out}, so nothing is saved and the run cannot "
                f"be resumed; delete {out} (or choose another --out) to start it over")
    return (f"; `nlc train --out {out} --resume` continues from its latest checkpoint, "
            f"{latest.name}")


def _relaunch(args) -> int:
    """Run the same command as `args.nproc` ranks on this machine; the first failing rank's
    exit status is the command's."""
    from nlc.runtime.trainer.config import TrainConfig
    from nlc.runtime.trainer.distributed import launch_local
    argv = ["train"] + ([args.spec] if args.spec is not None else [])
    for item in args.defines:
        argv += ["-D", item]
    if args.config:
        argv += ["--config", args.config]
    argv += ["--resume"] * args.resume + ["--quiet"] * args.quiet
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None) if f.name not in SPEC_FIELDS else None
        flag = "--" + f.name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            argv += [flag, *value]
        else:
            argv += [flag, str(value)]
    return launch_local(args.nproc, argv)


def cmd_eval(args) -> int:
    import torch

    from nlc.factories import block_mlp_factory, mixer_from_spec
    from nlc.runtime.trainer import checkpoint as ckpt
    from nlc.runtime.trainer.distributed import World, pick_device
    from nlc.runtime.trainer.lengths import evaluate_lengths
    from nlc.runtime.trainer.mixers import sha256_text, spec_text
    from nlc.runtime.trainer.model import LanguageModel
    from nlc.runtime.trainer.progress import strict_json
    from nlc.runtime.trainer.tasks import make_task
    from nlc.runtime.trainer.train import autocast_for, evaluate

    run = Path(args.run)
    if not (run / "config.json").exists():  # no run at all, not a damaged one
        what = "no such folder" if not run.exists() else \
            "a file, not a folder" if not run.is_dir() else "it has no config.json"
        raise NlcError(f"{run}: {what}; is it a run folder of nlc train?")
    config = _read_config(run / "config.json")
    changes = {k: v for k, v in (("eval_examples", args.eval_examples),
                                 ("device", args.device),
                                 ("niah_eval_lengths", args.niah_eval_lengths),
                                 ("niah_depth_bands", args.niah_depth_bands)) if v is not None}
    if args.lm_files:
        if config.task != "lm":
            raise NlcError(f"--lm-files is an option of the lm task; {run} is a {config.task} run")
        changes["lm_files"] = [str(Path(p).resolve()) for p in args.lm_files]
    config = dataclasses.replace(config, **changes).validate()
    path = Path(args.checkpoint) if args.checkpoint else ckpt.latest_checkpoint(run)
    if path is not None and not path.exists() and (run / "checkpoints" / path).is_dir():
        path = run / "checkpoints" / path  # a checkpoint named as in the run's folder
    if path is None:
        raise NlcError(f"{run}: no checkpoint to evaluate (no {run / 'checkpoints'}/step_*)")
    # the run's own copies of the specs, compiled here: the checkpoint is tied to that text
    spec = str(run / "spec.nl") if (run / "spec.nl").is_file() else config.spec
    checkpoint = ckpt.read_checkpoint(path, config, sha256_text(spec_text(spec)),
                                      optimizer=False)  # an evaluation needs no optimizer
    world = World(device=pick_device(config.device))
    mlp = str(run / "mlp.nl") if (run / "mlp.nl").is_file() else config.mlp
    model = LanguageModel(config, mixer_from_spec(spec, config.layer, **config.spec_overrides),
                          block_mlp_factory(mlp, config.mlp_ratio)).to(world.device)
    ckpt.apply_checkpoint(checkpoint, model, restore_rng=False)
    autocast = autocast_for(config, world.device)
    with torch.no_grad():
        metrics = evaluate(model, make_task(config), world, autocast)
    at_lengths = (evaluate_lengths(model, config, world, autocast)
                  if config.niah_eval_lengths else None)
    # a checkpoint from elsewhere (another run of the same spec and shape) is named as such
    own = path.resolve().parent == (run / "checkpoints").resolve()
    if args.json:
        lengths = {"eval_lengths": at_lengths} if at_lengths else {}
        where = {} if own else {"checkpoint": str(path)}
        print(strict_json({"run": str(run), "step": checkpoint.step, **where, **metrics,
                           **lengths}, sort_keys=True))
    else:
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        label = f"{run} step {checkpoint.step}" if own else \
            f"{path} (step {checkpoint.step}, in {run}'s model)"
        print(f"{label}: {shown}")
        for length, r in (at_lengths or {}).items():
            bands = " ".join("-" if a is None else f"{a:.3f}" for a in r["bands"])
            print(f"  length {length}: accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}  "
                  f"by depth band {bands}")
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:  # a model whose outputs overflow: the numbers printed are no evaluation
        print(f"nlc eval: {', '.join(bad)} not finite: the model's outputs overflow at step "
              f"{checkpoint.step} (a gate above 1 or a rate too large grows the state); "
              "nlc train's divergence report names the level", file=sys.stderr)
        return 1
    return EXIT_OK


def cmd_plot(args) -> int:
    from nlc.runtime.trainer.plot import plot_runs
    path = plot_runs(args.runs, args.output, args.title)
    print(f"wrote {path}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m nlc.train_cli train|eval|plot ...` (the same commands as `nlc`)."""
    parser = argparse.ArgumentParser(prog="nlc", description="nlc runtime commands")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except NlcError as err:
        if os.environ.get("NLC_DEBUG") == "1":
            raise
        err.located("nlc", None)
        print(err.render(), file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        say_interrupted(err, args.command)
        return 130
    except Exception as err:  # a bug, not a user error, unless the machine failed
        from nlc.errors import report_unexpected
        return report_unexpected(err)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
