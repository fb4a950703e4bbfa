"""Stage `emit`: classified rules -> PyTorch modules, optimizers and Triton kernels.

`compile_spec` turns one spec file into the source of one Python module; `compile_files`
writes them; `load_layer` / `load_optimizer` compile in memory and import the result (what
the runtime uses to train a spec)."""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

from nlc.errors import NlcError, did_you_mean


def compile_spec(path: str, overrides: dict | None = None, text: str | None = None) -> str:
    """The generated module's source for the spec at `path` (deterministic)."""
    from nlc.emit.render import spec_module_name
    return compile_outputs(path, overrides, text)[spec_module_name(path)]


def compile_outputs(path: str, overrides: dict | None = None,
                    text: str | None = None) -> dict[str, str]:
    """Every file a spec compiles to, module name -> source: the PyTorch module and, for
    levels whose family has them, the Triton kernels (the pipeline run to stage `emit`)."""
    from nlc import pipeline
    return pipeline.run(path, "emit", {"overrides": overrides or {}}, text=text)


def emit(plans, text: str, path: str) -> dict[str, str]:
    """Stage `emit`: print the plans. Spec names get their own namespace
    (nlc/emit/names.py); text from outside (the file name) reaches the code only through
    the render step's checks (nlc/emit/render.py)."""
    import ast as python_ast

    from nlc.emit.names import Namespace, module_clashes, without_unused_imports
    from nlc.emit.render import ruff_format, source

    origin = source(path, text)
    with Namespace() as names:
        outputs = _render(plans, origin)
    outputs = names.resolve(outputs)
    outputs[plans.stem] = without_unused_imports(outputs[plans.stem])
    tree = python_ast.parse(outputs[plans.stem])
    twice = module_clashes(tree)
    for decl in plans.specs:
        if decl.name in twice:
            raise NlcError(f"'{decl.name}' is a name the generated module defines itself "
                           "(an import, a function or another class): rename it",
                           decl.span)
        _refuse_attribute_clashes(decl, tree)
    _refuse_composed_clashes(plans, twice)
    return {module: ruff_format(code, f"{module}.py") for module, code in outputs.items()}


def _refuse_composed_clashes(plans, twice: list[str]) -> None:
    """Function names composed from spec names (`<layer>_<level>_step`) that come out the
    same for two functions: layer `A` with level `b_c` and layer `A_b` with level `c`. The
    later definition would silently replace the earlier, so the spec is refused, at the
    level whose name makes the longer part of the clash."""
    for name in twice:
        owners = [(len(lv.fn), lv, layer) for layer in plans.layers for lv in layer.levels
                  if name.startswith(f"{lv.fn}_")]
        if not owners:
            raise NlcError(f"internal error: the generated module defines '{name}' twice")
        _, level, layer = max(owners, key=lambda o: o[0])
        spec = next(s for s in plans.specs if s.name == layer.name)
        where = next((lv.span for lv in spec.levels if lv.name == level.name), spec.span)
        raise NlcError(f"level '{level.name}' of {layer.name}: the generated function "
                       f"'{name}' would be defined twice, since names the compiler composes "
                       "from the layers' and levels' names meet: rename the level", where)


def _refuse_attribute_clashes(decl, tree) -> None:
    """A layer's params and dims are attributes of its nn.Module (`self.W_q`, `self.d_k`):
    one named like an attribute of nn.Module or of the generated class would replace it."""
    if decl.kind.value != "layer":
        return
    import torch

    from nlc.emit.names import attribute_clashes
    module_attributes = set(dir(torch.nn.Module()))
    clashes = attribute_clashes(tree, decl.name, module_attributes)
    for p in decl.params:
        if p.name in clashes:
            what = "of nn.Module" if p.name in module_attributes else \
                "the generated module uses itself"
            raise NlcError(f"parameter '{p.name}' would be the attribute `self.{p.name}` of "
                           f"{decl.name}, a name {what}: rename it", p.span)
    for name, span in decl.dim_spans:
        if name in clashes:
            what = "of nn.Module" if name in module_attributes else \
                "the generated module uses itself"
            raise NlcError(f"dim '{name}' would be the attribute `self.{name}` of "
                           f"{decl.name}, a name {what}: rename it", span)
    for level in decl.levels:
        for attr in clashes:
            if attr.startswith(f"{level.name}_") and attr.endswith("_init"):
                raise NlcError(f"the learned initial state of level '{level.name}' would be "
                               f"the attribute `self.{attr}`, which {decl.name} uses otherwise: "
                               "rename the level or the parameter", level.span)
    if clashes:
        raise NlcError(f"internal error: {decl.name}'s attributes clash: "
                       f"{', '.join(sorted(clashes))}", decl.span)


def _render(plans, origin) -> dict[str, str]:
    """The unformatted sources, spec names still placeholders."""
    from nlc.emit.render import render
    if plans.optimizers:
        from nlc.emit.optimizer import optimizer_plan
        printed = [optimizer_plan(spec, rules) for spec, rules in plans.optimizers]
        return {plans.stem: render("optimizer.py.jinja", source=origin, plans=printed)}
    from nlc.emit.layer import LayerPrinter
    specs = {s.name: s for s in plans.specs}
    printed = [LayerPrinter(plan, specs[plan.name]).printed() for plan in plans.layers]
    outputs = {plans.stem: render("layer.py.jinja", source=origin, plans=printed,
                                  models=list(plans.models))}
    kernels = [(s.kernel, s.kernel_source) for layer in printed for s in layer.shared]
    for level in (lv for layer in printed for lv in layer.levels):
        kernels += [(level.step_kernel, level.step_source),
                    (level.outer_kernel, level.outer_source)]
    for module, source in kernels:
        if module is None:
            continue
        if module == plans.stem:
            raise NlcError(f"the spec's module name '{plans.stem}' is the name of a "
                           "shared kernel module: rename the spec file")
        outputs[module] = source
    from nlc.emit.triton_render import render_recurrent
    for plan in plans.layers:
        for level in plan.levels:
            k = level.kernel
            if k is not None:
                if k.module == plans.stem:
                    raise NlcError(f"the spec's module name '{plans.stem}' is the name of a "
                                   "shared kernel module: rename the spec file")
                outputs[k.module] = render_recurrent(k.configuration(), formatted=False)
    return outputs


def merge_outputs(compiled: list[tuple[str, dict[str, str]]]) -> dict[str, str]:
    """The files of several specs for one folder, module name -> source, from (spec path,
    its `compile_outputs`): a kernel module that specs share (same name, same text) once.
    Two specs naming one module otherwise is refused, the spec's fault when one of them is a
    spec's own module (a-b.nl and a_b.nl), the compiler's when both are kernel modules."""
    from nlc.emit.render import spec_module_name
    merged: dict[str, tuple[str, str]] = {}  # module -> (source, first spec writing it)
    for path, outputs in compiled:
        for module, source in outputs.items():
            earlier, owner = merged.setdefault(module, (source, path))
            if owner == path:
                continue
            kernel = module not in (spec_module_name(path), spec_module_name(owner))
            if kernel and earlier == source:
                continue
            if kernel:
                raise NlcError(f"internal error: this spec and {owner} compile the shared kernel "
                               f"module {module}.py to different text; nothing was written",
                               path=path)
            raise NlcError(f"this spec and {owner} both compile to {module}.py; "
                           "nothing was written", path=path,
                           hint="rename one of the files (module names come from file "
                                "names, with '-' and other symbols made '_')")
    return {module: source for module, (source, _) in merged.items()}


GENERATED_BANNER = b"# Generated by nlc "  # the first line of every file nlc writes


def refuse_overwriting_by_hand(target: Path) -> None:
    """An existing file that nlc did not generate (no banner) is someone's work: keep it."""
    if not target.is_file():
        return
    try:
        with open(target, "rb") as f:
            head = f.read(len(GENERATED_BANNER))
    except OSError as err:
        raise NlcError(f"cannot read: {err.strerror}", path=str(target)) from None
    if head != GENERATED_BANNER:
        raise NlcError("a file not generated by nlc is there (its first line is not "
                       "'# Generated by nlc ...'); nothing was written", path=str(target),
                       hint="move it away, or pass another -o")


def compile_files(paths: list[str], out_dir: str, overrides: dict | None = None) -> list[Path]:
    """Compile every spec, then write `out_dir/<stem>.py` and the kernel modules, each once
    and atomically (see `merge_outputs`)."""
    from nlc.fileio import write_atomic
    compiled = [(path, compile_outputs(path, overrides)) for path in paths]
    files = merge_outputs(compiled)
    out = Path(out_dir)
    for module in files:  # all looked at before any is written
        refuse_overwriting_by_hand(out / f"{module}.py")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NlcError(f"cannot create output directory: {err.strerror}", path=out_dir) from None
    written = []
    for module, source in files.items():
        target = out / f"{module}.py"
        try:
            write_atomic(str(target), source)
        except OSError as err:
            raise NlcError(f"cannot write: {err.strerror}", path=str(target)) from None
        written.append(target)
    return written


def load_module(path: str, overrides: dict | None = None):
    """Compile a spec and import the generated module (from a private temporary file)."""
    from nlc.emit.render import spec_module_name
    outputs = compile_outputs(path, overrides)
    stem = spec_module_name(path)
    name = f"nlc_generated_{stem}"
    directory = Path(tempfile.mkdtemp(prefix="nlc-"))
    # kept while the process runs (Triton reads a kernel's source when its module is imported,
    # which may come later), removed at exit: each load had left a folder in the temp dir
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    for module, source in outputs.items():
        (directory / f"{module}.py").write_text(source)
    target = directory / f"{name}.py"
    (directory / f"{stem}.py").rename(target)
    spec = importlib.util.spec_from_file_location(name, target)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _only_class(module, kind: str, path: str, name: str = ""):
    """The spec's one layer (or optimizer); in a file with a `model`, the model; with `name`,
    the declaration of that name."""
    import torch
    base = torch.nn.Module if kind == "layer" else torch.optim.Optimizer
    found = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, base)
             and v.__module__ == module.__name__]
    names = ", ".join(v.__name__ for v in found)
    if name:
        for v in found:
            if v.__name__ == name:
                return v
        raise NlcError(f"no {kind} or model named '{name}' in the spec (it has {names})",
                       path=path, hint=did_you_mean(name, [v.__name__ for v in found]))
    models = [v for v in found if getattr(v, "residual", False)]
    if len(models) == 1:
        return models[0]
    if len(found) != 1 and kind == "optimizer":
        raise NlcError(f"expected one optimizer in the spec, found {len(found)} ({names})",
                       path=path, hint="an optimizer spec file holds one optimizer: put each "
                                       "in a file of its own")
    if len(found) != 1:
        what = (f"{len(models)} models ({', '.join(v.__name__ for v in models)})" if models
                else f"{len(found)} {kind}s ({names}) and no model")
        raise NlcError(f"expected one {kind} or one model in the spec, found {what}",
                       path=path, hint="pick one with --layer NAME (nlc train), or compose "
                                       "the layers in one `model`")
    return found[0]


def _refuse_other_kind(path: str, kind: str) -> None:
    """After loading a spec as `kind` failed: a spec holding no declaration of that kind (an
    optimizer given as a layer, or the reverse) is refused as such, not as the override
    meant for that kind (the layer's d_model) it does not declare. A spec that does not
    check leaves the original error to be raised."""
    from nlc import pipeline
    try:
        kinds = {s.kind.value for s in pipeline.run(path, "check", {})}
    except NlcError:
        return
    wanted = {"layer": {"layer", "model"}, "optimizer": {"optimizer"}}[kind]
    if not kinds & wanted:
        other = "the model's layer (SPEC)" if "layer" in kinds or "model" in kinds \
            else "--optimizer"
        raise NlcError(f"holds {' and '.join(sorted(kinds))} declarations, no {kind}",
                       path=path, hint=f"pass it as {other}")


def load_layer(path: str, **overrides):
    """The layer class a spec compiles to (its model class, if it declares one);
    `overrides` set dims / hypers (like -D)."""
    return _load_class(path, overrides, "layer")


def load_optimizer(path: str, **overrides):
    return _load_class(path, overrides, "optimizer")


def load_declaration(path: str, name: str, kind: str, overrides: dict):
    """The class of the layer (or model, or optimizer: `kind`) named `name` in a spec, or as
    `load_layer` picks it when `name` is empty; `overrides` set dims / hypers (like -D)."""
    return _load_class(path, overrides, kind, name)


def _load_class(path: str, overrides: dict, kind: str, name: str = ""):
    try:
        return _only_class(load_module(path, overrides), kind, path, name)
    except NlcError:
        _refuse_other_kind(path, kind)
        raise
