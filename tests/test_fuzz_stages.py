"""Mutation fuzzing past the checker: each case mutates a layer example (dims, hypers, gate
expressions, objectives, retentions, frequencies, algorithms), then runs every stage at tiny
dims and T <= 16: check, compile, import, forward, step. A case ends in one of

- ok: every stage ran and the properties hold (float64): the chunked forward equals the
  recurrent one, token-by-token `step()` equals the forward, outputs are finite at default
  initialization;
- clean: a stage refused the case with a located `NlcError` (or, for forward, a clear
  `ValueError` from the runtime's input checks);
- traceback: any other exception (a bug);
- hang: the case ran past its time limit (SIGALRM; a bug, not a flake);
- property: a property above failed (a bug).

The cases are fixed (seeded); NLC_FUZZ_CASES=N runs N of them instead of DEFAULT_CASES.
`python tests/test_fuzz_stages.py [N]` prints the counts per stage.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import signal
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import scratch_dir

from nlc import pipeline
from nlc.emit import compile_outputs
from nlc.emit.render import spec_module_name
from nlc.errors import NlcError

EXAMPLES = Path(__file__).parents[1] / "examples"
DEFAULT_CASES = 30
CASES = int(os.environ.get("NLC_FUZZ_CASES", DEFAULT_CASES))
SECONDS_PER_CASE = 120
SEED = 20
T = 16
RTOL = 1e-7
STAGES = ("check", "compile", "import", "forward", "step")


def layer_examples() -> list[Path]:
    return [p for p in sorted(EXAMPLES.glob("*.nl"))
            if re.search(r"^layer ", p.read_text(), re.MULTILINE)]


# ---------------------------------------------------------------- mutations (text -> text)
def _sub_one(pattern: str, text: str, rng: random.Random, make) -> str:
    """Replace one random match of `pattern` with make(match)."""
    found = list(re.finditer(pattern, text, re.MULTILINE))
    if not found:
        return text
    m = rng.choice(found)
    return text[:m.start()] + make(m) + text[m.end():]


def mutate_hyper(text, rng):
    value = rng.choice(["0", "0.5", "2", "1e-3", "100", "-1"])
    return _sub_one(r"(hyper \w+ = )([^,\n]+)", text, rng, lambda m: m.group(1) + value)


def mutate_gate(text, rng):
    def make(m):
        old = m.group(2)
        new = rng.choice(["0.9", "1", "0.5 * (OLD)", "OLD * OLD", "1 - OLD", "sqrt(OLD)"])
        return m.group(1) + new.replace("OLD", old)
    return _sub_one(r"(retention (?:decay|weight_decay)\()([^,)]+)", text, rng, make)


def mutate_objective(text, rng):
    name = rng.choice(["l2", "dot", "huber", "lp"])
    return _sub_one(r"(objective )(l2|dot|huber|lp)(\()", text, rng,
                    lambda m: m.group(1) + name + m.group(3))


def mutate_retention(text, rng):
    new = rng.choice(["retention none", "retention decay(0.9)", "retention proximal(0.1)",
                      "retention weight_decay(0.01)", "retention decay(0.9, order = parallel)",
                      "retention decay(0.9), erase(k, 0.1)"])
    return _sub_one(r"retention [^\n]+", text, rng, lambda m: new)


def mutate_frequency(text, rng):
    new = rng.choice(["every 1 token, gradients at chunk(4)", "every 2 tokens", "every 3 tokens",
                      "every 1 token, gradients at chunk(3)"])
    return _sub_one(r"every 1 token(?:, gradients at chunk\(\d+\))?", text, rng, lambda m: new)


def mutate_algorithm(text, rng):
    def make(m):
        rate = m.group(1)
        return rng.choice([f"gd(lr = {rate}, steps = 3)", f"implicit(lr = {rate})",
                           f"momentum(lr = {rate}, momentum = 0.5)", f"gd(lr = 0.1 * {rate})"])
    return _sub_one(r"gd\(lr = ([^,)]+)\)", text, rng, make)


TEXT_MUTATIONS = {"hyper": mutate_hyper, "gate": mutate_gate, "objective": mutate_objective,
                  "retention": mutate_retention, "frequency": mutate_frequency,
                  "algorithm": mutate_algorithm}


@dataclass(frozen=True)
class Case:
    index: int
    example: str
    mutations: tuple[str, ...]
    text: str
    dim_choice: int  # seeds the dims mutation

    def __str__(self) -> str:
        return f"case {self.index}: {self.example} + {', '.join(self.mutations) or 'none'}"


def make_cases(n: int, seed: int = SEED) -> list[Case]:
    rng = random.Random(seed)
    examples = layer_examples()
    cases = []
    for i in range(n):
        path = examples[i % len(examples)] if i < len(examples) // 2 else rng.choice(examples)
        text = path.read_text()
        names = rng.sample(sorted(TEXT_MUTATIONS) + ["dims"], rng.choice([1, 1, 2]))
        applied = []
        for name in names:
            if name == "dims":
                applied.append(name)
                continue
            new = TEXT_MUTATIONS[name](text, rng)
            if new != text:
                applied.append(name)
                text = new
        cases.append(Case(i, path.stem, tuple(applied), text, rng.randrange(1 << 30)))
    return cases


def tiny_dims(dims: dict[str, int], case: Case) -> dict[str, int]:
    """Every dim small (d_model 8, heads 2, the rest 4); a `dims` mutation sets one to 1..6."""
    out = {name: 8 if name == "d_model" else 2 if name == "heads" else 4 for name in dims}
    if "dims" in case.mutations and dims:
        rng = random.Random(case.dim_choice)
        out[rng.choice(sorted(dims))] = rng.choice([1, 2, 3, 5, 6])
    return out


# ---------------------------------------------------------------- running one case
class Hang(Exception):
    pass


class PropertyFailure(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


def _import(outputs: dict[str, str], stem: str):
    directory = scratch_dir("nlc-fuzz-")
    for module, source in outputs.items():
        (directory / f"{module}.py").write_text(source)
    name = f"nlc_fuzz_{stem}"
    spec = importlib.util.spec_from_file_location(name, directory / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(directory))  # kernel files sit next to the module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(directory))
    return module


def _layers(module) -> list[type]:
    return [v for v in vars(module).values() if isinstance(v, type)
            and issubclass(v, torch.nn.Module) and v.__module__ == module.__name__
            and hasattr(v, "step")]


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / (b.abs().max() + 1e-12))


def _forward(cls, d_model: int):
    """The forward properties; returns the recurrent layer and its input and output."""
    torch.manual_seed(0)
    chunked = cls(d_model=d_model, mode="chunked", chunk_size=4).double()
    recurrent = cls(d_model=d_model, mode="recurrent", chunk_size=4).double()
    recurrent.load_state_dict(chunked.state_dict())
    x = torch.randn(2, T, d_model, dtype=torch.float64)
    with torch.no_grad():
        out_c, out_r = chunked(x), recurrent(x)
    if out_c.shape != x.shape:
        raise PropertyFailure(f"forward gives shape {list(out_c.shape)}")
    if not torch.isfinite(out_r).all():
        raise PropertyFailure("the recurrent output is not finite at default init")
    if _close(out_c, out_r) > RTOL:
        raise PropertyFailure(f"chunked != recurrent (relative {_close(out_c, out_r):.2g})")
    return recurrent, x, out_r


def _step(recurrent, x, out) -> None:
    cache, steps = None, []
    with torch.no_grad():
        for t in range(T):
            o, cache = recurrent.step(x[:, t], cache)
            steps.append(o)
    stepped = torch.stack(steps, 1)
    if _close(stepped, out) > RTOL:
        raise PropertyFailure(f"step != forward (relative {_close(stepped, out):.2g})")


def run_case(case: Case) -> tuple[str, str, str]:
    """(stage, outcome, detail): the stage where the case ended and how."""
    path = scratch_dir("nlc-fuzz-") / f"{case.example}.nl"
    path.write_text(case.text)
    stage = "check"
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, SECONDS_PER_CASE)
    try:
        specs = pipeline.run(str(path), "check")
        dims = {name: value for spec in specs for name, value in spec.dims}
        overrides = tiny_dims(dims, case)
        stage = "compile"
        outputs = compile_outputs(str(path), overrides)
        stage = "import"
        module = _import(outputs, spec_module_name(str(path)))
        for cls in _layers(module):
            stage = "forward"
            ran = _forward(cls, overrides["d_model"])
            stage = "step"
            _step(*ran)
        return stage, "ok", ""
    except NlcError as err:
        return stage, "clean", err.render().splitlines()[0]
    except ValueError as err:
        if stage in ("forward", "step") and str(err).startswith("expected"):
            return stage, "clean", str(err)
        return stage, "traceback", f"{type(err).__name__}: {err}"
    except Hang:
        return stage, "hang", f"past {SECONDS_PER_CASE} s"
    except PropertyFailure as err:
        return stage, "property", str(err)
    except Exception as err:  # noqa: BLE001 - every other exception is the finding
        return stage, "traceback", f"{type(err).__name__}: {str(err)[:300]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- the tests
ALL_CASES = make_cases(CASES)


def test_mutations_change_the_examples():
    """The fuzzer is not vacuous: most cases differ from their example, and they span
    every kind of mutation."""
    changed = [c for c in ALL_CASES if c.mutations]
    assert len(changed) >= len(ALL_CASES) * 0.8
    # only the layers with a hyper can draw `hyper` (5 of 23 examples): 120 cases draw it
    kinds = {m for c in make_cases(max(CASES, 120)) for m in c.mutations}
    assert kinds == set(TEXT_MUTATIONS) | {"dims"}


# Bugs the fuzzer found that are not fixed yet (outside this suite's reach): case index ->
# what fails. Strict: a fix turns the case into an unexpected pass, and this entry goes.
# (The cases are drawn from examples/*.nl: a new example renumbers them; the table is rebuilt
# by running this file with NLC_FUZZ_CASES=140.)
KNOWN = {
    45: "memora at another frequency: the recurrent output is not finite at default init",
    112: "delta_product_2 with another objective: the recurrent output is not finite at "
         "default init (an unstable spec?)",
    121: "linear attention's normalizer every N tokens: the recurrent output is not finite",
    136: "gla with another objective: the recurrent output is not finite at default init",
}


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.xfail(reason=KNOWN[c.index], strict=True))
    if c.index in KNOWN else c for c in ALL_CASES], ids=str)
def test_every_stage(case):
    stage, outcome, detail = run_case(case)
    assert outcome in ("ok", "clean"), f"{case}: {outcome} at {stage}: {detail}\n{case.text}"


def summary(results) -> str:
    counts = {s: Counter() for s in STAGES}
    for stage, outcome, _ in results:
        for s in STAGES[:STAGES.index(stage)]:
            counts[s]["cases"] += 1
            counts[s]["passed"] += 1
        counts[stage]["cases"] += 1
        counts[stage][outcome] += 1
    header = (f"{'stage':8} {'cases':>6} {'passed':>6} {'clean':>6} {'tracebacks':>10} "
              f"{'hangs':>6} {'property':>8}")
    lines = [header]
    for s in STAGES:
        c = counts[s]
        lines.append(f"{s:8} {c['cases']:>6} {c['passed'] + c['ok']:>6} {c['clean']:>6} "
                     f"{c['traceback']:>10} {c['hang']:>6} {c['property']:>8}")
    return "\n".join(lines)


if __name__ == "__main__":
    import time
    n = int(sys.argv[1]) if len(sys.argv) > 1 else CASES
    results, start = [], time.perf_counter()
    for case in make_cases(n):
        results.append(run_case(case))
        stage, outcome, detail = results[-1]
        if outcome not in ("ok", "clean") or "-v" in sys.argv:
            print(f"{case}: {outcome} at {stage}: {detail}", flush=True)
    print(summary(results))
    print(f"{n} cases in {time.perf_counter() - start:.0f} s; "
          f"ok {sum(r[1] == 'ok' for r in results)}")
    sys.exit(0 if all(r[1] in ("ok", "clean") for r in results) else 1)
