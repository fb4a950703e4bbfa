"""`nlc`: the command line. Every user error prints ``file:line:col: error: ...`` with the
source line and a caret and exits 2; ``NLC_DEBUG=1`` re-raises the raw exception instead."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nlc import __version__
from nlc.errors import NlcError

EXIT_OK, EXIT_USER = 0, 2  # and 3 for a bug: nlc.errors.report_unexpected


def _add_spec_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE",
                   help="override a dim or hyper of the spec (repeatable)")


def _overrides(args) -> dict:
    from nlc.levels import parse_overrides
    return parse_overrides(args.defines)


def _each_file(files: list[str], work) -> int:
    """`work(path)` for every file, a refused one reported (located) without stopping the
    others: EXIT_USER if any was refused, else the worst status `work` returned."""
    status = EXIT_OK
    for path in files:
        try:
            status = max(status, work(path) or EXIT_OK)
        except NlcError as err:
            if os.environ.get("NLC_DEBUG") == "1" or len(files) == 1:
                raise  # one file: main() reports it, as for every command
            print(err.located(path, None).render(), file=sys.stderr)
            status = EXIT_USER
    return status


def _contents(spec) -> str:
    """What `nlc check` says a checked declaration holds: a model its blocks, else levels."""
    if spec.kind.value == "model":
        return " -> ".join(spec.blocks)
    return f"{len(spec.levels)} level{'' if len(spec.levels) == 1 else 's'}"


def cmd_check(args) -> int:
    from nlc import pipeline
    options = {"overrides": _overrides(args)}

    def check_one(path: str) -> int:
        if args.stop_after:
            out = pipeline.run(path, args.stop_after, options)
            if args.dump:
                sys.stdout.write(pipeline.STAGES[args.stop_after].dump(out))
            else:
                print(f"{path}: ok up to {args.stop_after}")
            return EXIT_OK
        specs = pipeline.run(path, "check", options)
        summary = ", ".join(f"{s.kind.value} {s.name} ({_contents(s)})" for s in specs)
        print(f"{path}: ok: {summary}")
        return EXIT_OK
    return _each_file(args.files, check_one)


def cmd_fmt(args) -> int:
    from nlc.pipeline import read_spec
    from nlc.syntax import format_module, parse

    def fmt_one(path: str) -> int:
        text = read_spec(path)
        comments: list = []
        try:
            formatted = format_module(parse(text, path, comments), comments)
        except NlcError as err:
            raise err.located(path, text) from None
        if args.check:
            if formatted != text:
                print(f"{path}: would reformat")
                return 1
        elif args.write:
            if formatted != text:
                from nlc.fileio import write_atomic
                write_atomic(path, formatted)
                print(f"{path}: reformatted")
        else:
            sys.stdout.write(formatted)
        return EXIT_OK
    return _each_file(args.files, fmt_one)


def cmd_graph(args) -> int:
    from nlc import pipeline
    from nlc.levels.draw import draw
    specs = pipeline.run(args.file, "check", {"overrides": _overrides(args)})
    sys.stdout.write(draw(specs, args.format))
    return EXIT_OK


def cmd_derive(args) -> int:
    from nlc import pipeline
    from nlc.derive.execution import FrozenSplit
    classified = pipeline.run(args.file, "classify", {"overrides": _overrides(args)})
    planned = _planned_executions(classified, args.file)
    items = [(c.rule, c.family, planned.get((spec.name, c.rule.level), c.execution))
             for spec, found in classified for c in found]
    if args.format == "json":
        import json
        data = [rule.to_json_data() | {"family": c.family.value} for rule, c, _ in items]
        print(json.dumps(data, indent=2))
        return EXIT_OK
    for rule, c, ex in items:
        sys.stdout.write(rule.to_latex() if args.format == "latex" else rule.to_text())
        if args.format == "text":  # the family, and the form the chunked mode runs
            print(f"  family: {c.to_text()}")
            # a frozen split's drives are the rule's terms printed above
            print(f"  runs as {ex.kind_text if isinstance(ex, FrozenSplit) else ex.to_text()}")
    return EXIT_OK


def _planned_executions(classified, path: str) -> dict:
    """(layer, level) -> the form the plan runs the level as: a level in a loop of outputs
    runs with its group (token by token, or the group's chunks), whatever its own rule
    allows. Empty where planning refuses the file (derive still prints each rule)."""
    from nlc import pipeline
    from nlc.errors import NlcError
    try:
        plans = pipeline.STAGES["plan"].run(classified, {"path": path})
    except NlcError:
        return {}
    return {(layer.name, lp.name): lp.execution for layer in plans.layers
            for lp in layer.levels}


def _spec_files(paths: list[str]) -> list[str]:
    from pathlib import Path
    files = []
    for p in paths:
        path = Path(p)
        files.extend(sorted(str(f) for f in path.glob("*.nl")) if path.is_dir() else [p])
    return files


def _verify_files(paths: list[str], progress: bool):
    from nlc.pipeline import read_spec
    from nlc.pipeline import run as run_stages
    from nlc.syntax import parse
    from nlc.verify.verify import verify_module
    reports, errors = [], []
    files = _spec_files(paths)
    for i, path in enumerate(files, 1):
        if progress:
            print(f"[{i}/{len(files)}] {path}", file=sys.stderr, flush=True)
        try:
            text = read_spec(path)
            run_stages(path, "check", text=text)  # check's refusals (an unknown claim) first
            reports += verify_module(parse(text, path), path)
        except NlcError as err:
            if os.environ.get("NLC_DEBUG") == "1":
                raise
            err = err.located(path, text) if "text" in locals() and err.path is None else err
            errors.append(err.render())
            print(err.render(), file=sys.stderr)
    return reports, errors


def cmd_verify(args) -> int:
    from nlc.verify.report import verify_json, verify_table
    reports, errors = _verify_files(args.paths, progress=args.format == "table")
    render = verify_json if args.format == "json" else verify_table
    sys.stdout.write(render(reports, errors))
    if errors:
        return EXIT_USER
    return EXIT_OK if all(r.claim_holds for r in reports) else 1


def cmd_identify(args) -> int:
    from nlc.verify.report import identify_text
    reports, errors = _verify_files(args.files, progress=False)
    sys.stdout.write(identify_text(reports))
    return EXIT_USER if errors else EXIT_OK


def cmd_compile(args) -> int:
    """Compile every spec first, refuse two specs that map to one module name (a-b.nl and
    a_b.nl), and only then write: a refused command writes nothing. A kernel module several
    specs share is written once (nlc.emit.merge_outputs)."""
    import time

    from nlc.emit import compile_outputs, merge_outputs, refuse_overwriting_by_hand
    from nlc.fileio import write_atomic
    if not args.output.strip():  # '' would write into the current folder
        raise NlcError("-o is empty; it names the folder to write the modules into",
                       hint="pass -o generated (or -o . for the current folder)")
    compiled = []
    for path in args.files:
        start = time.perf_counter()
        try:
            outputs = compile_outputs(path, _overrides(args))
        except NlcError as err:
            if len(args.files) > 1:  # the others compiled, or were not reached: say so
                unwritten = "nothing was written (a refused compile writes no file)"
                err.hint = f"{err.hint}; {unwritten}" if err.hint else unwritten
            raise
        compiled.append((path, outputs, time.perf_counter() - start))
    files = merge_outputs([(path, outputs) for path, outputs, _ in compiled])
    out = Path(args.output)
    for module in files:  # all looked at before any is written
        refuse_overwriting_by_hand(out / f"{module}.py")
    if out.exists() and not out.is_dir():
        raise NlcError(f"-o {args.output} names a file, not a folder",
                       hint="pass a folder for the generated modules")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NlcError(f"cannot create output directory: {err.strerror}",
                       path=args.output) from None
    for path, outputs, seconds in compiled:
        targets = []
        for module in outputs:
            target = out / f"{module}.py"
            if module in files:
                try:
                    write_atomic(target, files.pop(module))
                except OSError as err:
                    raise NlcError(f"cannot write: {err.strerror}", path=str(target)) from None
            targets.append(target)
        shown = ", ".join(str(t) for t in targets)
        print(f"{path} -> {shown} ({seconds:.2f} s)")
    return EXIT_OK


def cmd_demo(args) -> int:
    from nlc.demo import run_demo
    return run_demo(args.examples, args.quick, args.out, args.steps, args.toy)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that lists its option strings (`options`), for the did-you-mean of
    an unknown option, and its commands' parsers by name (`commands`)."""

    def __init__(self, *args, **kwargs):
        self.options: list[str] = []
        self.commands: dict[str, _Parser] = {}
        kwargs.setdefault("allow_abbrev", False)  # `--step 10` was taken as --steps, silently
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        self.options.extend(o for o in action.option_strings if o not in ("-h", "--help"))
        return action

    def add_subparsers(self, **kwargs):
        action = super().add_subparsers(**kwargs)
        self.commands = action.choices  # name -> parser, filled by add_parser
        return action


def build_parser() -> argparse.ArgumentParser:
    from nlc.pipeline import STAGES
    parser = _Parser(prog="nlc", description="nested-learning architecture compiler")
    parser.add_argument("--version", action="version", version=f"nlc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("check", help="parse and validate specs; located errors")
    p.add_argument("files", nargs="+", metavar="FILE")
    _add_spec_options(p)
    p.add_argument("--stop-after", choices=list(STAGES), help="stop after this stage")
    p.add_argument("--dump", action="store_true", help="print the last stage's text form")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("fmt", help="print specs in canonical layout")
    p.add_argument("files", nargs="+", metavar="FILE")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="exit 1 if a file would change")
    group.add_argument("--write", action="store_true", help="rewrite files in place")
    p.set_defaults(func=cmd_fmt)

    p = sub.add_parser("graph", help="print the level graph")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", choices=["text", "dot", "json", "mermaid"], default="text")
    _add_spec_options(p)
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("derive", help="derive each level's update rule")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", choices=["text", "latex", "json"], default="text")
    _add_spec_options(p)
    p.set_defaults(func=cmd_derive)

    p = sub.add_parser("verify", help="check derived rules against the published models")
    p.add_argument("paths", nargs="+", metavar="PATH", help="spec files or folders of them")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("compile", help="generate a PyTorch module (layer or optimizer) per spec")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-o", "--output", metavar="DIR", required=True,
                   help="folder for the generated <spec>.py files")
    _add_spec_options(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("demo", help="the main job: check, derive, verify, compile and train "
                       "the examples")
    p.add_argument("--examples", metavar="DIR", help="folder of specs (default: examples/)")
    p.add_argument("--quick", action="store_true", help="a reduced training budget (CI)")
    p.add_argument("--steps", type=int, help="training steps per model (default 800)")
    p.add_argument("--toy", action="store_true",
                   help="only the delta-momentum toy (a few seconds, a plot)")
    p.add_argument("--out", default="runs/demo", metavar="DIR",
                   help="where compiled modules, runs and the plot go (default runs/demo)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("identify", help="name the published models a spec's levels equal")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_identify)

    from nlc import bench, train_cli
    train_cli.register(sub)
    bench.register(sub)
    return parser


def _parse(argv: list[str] | None):
    """The command line, with an unknown option refused by its command's own parser (its
    usage line, and the option it nearly spells): argparse left it to the top-level one."""
    from nlc.errors import did_you_mean
    parser = build_parser()
    words = sys.argv[1:] if argv is None else argv
    if words and not words[0].startswith("-") and words[0] not in parser.commands:
        near = did_you_mean(words[0], list(parser.commands))
        parser.error(f"unknown command '{words[0]}'" + (f"; {near}" if near else "")
                     + f" (commands: {', '.join(parser.commands)})")
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    sub = parser.commands.get(getattr(args, "command", None), parser)
    near = [did_you_mean(x.split("=")[0], sub.options) for x in extra if x.startswith("--")]
    hints = "".join(f"; {h}" for h in near if h)
    sub.error(f"unrecognized arguments: {' '.join(extra)}{hints}")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.command == "check" and args.dump and not args.stop_after:
        args.stop_after = "check"
    try:
        return args.func(args)
    except NlcError as err:
        if os.environ.get("NLC_DEBUG") == "1":
            raise
        err.located("nlc", None)  # not tied to a file: a bad command line (-D)
        print(err.render(), file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt as err:
        from nlc.train_cli import say_interrupted
        say_interrupted(err, args.command)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as err:  # a bug, not a user error, unless the machine failed
        from nlc.errors import report_unexpected
        return report_unexpected(err)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
