"""One level's plan -> the bodies of its functions, printed.

The plan (nlc/plan) has decided how the level runs (its execution record); this module
prints it: the one-token `step` (the reference; decoding), and the chunk-parallel form of
the execution: the exact chunked decay / delta / dplr algorithms, the fused recurrent
kernel, the frozen-gradient split or its dual form. A function unpacks only the inputs its printed
expressions read (`_unpack`), decided on the expressions, not on the text."""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from nlc.derive.execution import (
    READ_O,
    AffineChunk,
    Attention,
    DplrChunk,
    EntrywiseScan,
    FrozenSplit,
    FusedRecurrent,
    JointChunk,
    ProductChunk,
    SolveChunk,
    TokenLoop,
)
from nlc.derive.matfuncs import free_names
from nlc.emit.context import literal
from nlc.emit.fused_walk import mlp_walk
from nlc.emit.names import local
from nlc.emit.render import prose
from nlc.emit.torch_printer import Names, TorchPrinter

# the environment switch that sends chunk-start terms to their Triton kernels
# (runtime/library/ops.py, outer_terms)
TERMS_FLAG = "NLC_TERMS_TRITON"

READ_LAYOUT = {"vector": "[B, T, H, D]", "scalar": "[B, T, H]"}


@dataclass
class PrintedLevel:
    """What the layer template reads for one level: printed code and prose only."""

    name: str
    fn: str
    line: int
    family: str
    reason: object                  # Prose
    notes: list
    tokens: list                    # PrintedInput
    params: list                    # PrintedParam
    states: list                    # PrintedState
    learned: list                   # PrintedState of the learned initial states
    init_sizes: list[str]           # the initial-state function's size arguments
    keyword_sizes: list[str]        # the op's size keywords (code names)
    size_defaults: list[str]        # their defaults
    read_sizes: dict                # token -> the dim (code name) read from it
    unpacked_sizes: list            # the dims read from the inputs that the op uses
    consts: list                    # (key, code) passed to the steps
    anchors: str
    anchor_every: object
    read_kind: str
    read_layout: str
    read_before: bool
    group: bool
    parallel: bool
    default_init: str
    args_doc: object                # Prose
    attention: dict | None = None
    kernels: tuple | None = None    # (chunked Triton entry, fused recurrent module) names
    additive: bool = False
    lazy_read: bool = False         # the chunk's reads meet its states unbuilt (AffineStates)
    walk: str | None = None         # nl.MLPWalk(...): the walk kernels' proposal
    cores: dict = field(default_factory=dict)   # kind -> (shared function, its tensors' names)
    batched: str | None = None      # a group member's shared pairs and transition, as code
    step: list[str] = field(default_factory=list)
    chunked: list[str] = field(default_factory=list)
    after_read: list[str] = field(default_factory=list)  # the read as a function of S q
    frozen: dict[str, list[str]] = field(default_factory=dict)
    read_token: list[str] = field(default_factory=list)
    read_tail: list[str] = field(default_factory=list)  # a group member's read after its memory
    reads: str | None = None        # a group member's batched read (Member.reads), as code
    step_kernel: str | None = None  # the printed step kernel's module (a token-loop level)
    step_names: str = ""            # the op's token and state names for it, as code
    step_every: int = 0             # tokens per checkpointed segment
    step_source: str = field(default="", metadata={"template": 0})  # the module's source
    outer_kernel: str | None = None  # the chunk-start terms kernels' module (a dual-form level)
    outer_names: str = ""           # its token and anchor names and term layout, as code
    outer_source: str = field(default="", metadata={"template": 0})  # the module's source


def outer_arguments(kernel, anchors: bool) -> str:
    """The code of `nl.outer_terms`' (or, without anchors, `nl.shared_outer_terms'`)
    arguments after the function: the kernel's token names, its anchors, its term layout."""
    parts = [_tuple(repr(n) for n in kernel.tokens)]
    parts += [_tuple(repr(n) for n in kernel.anchors)] if anchors else []
    return ", ".join(parts + [_tuple(f"({n!r}, {k})" for n, k in kernel.layout)])


def _number_code(expr) -> str:
    """A number known before the op runs (the spec's numbers and dims) as Python code."""
    if expr.is_number:
        return repr(float(expr))
    return sp.pycode(expr.xreplace({s: sp.Symbol(local(s.name)) for s in expr.free_symbols}),
                     fully_qualified_modules=True)


def _tuple(items) -> str:
    """Code of a tuple of the given codes (a trailing comma only for one item)."""
    items = list(items)
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


def _unpack(names, source: str, used: set[str]) -> list[str]:
    """`name = source["name"]` for the names in `used` (in the order given)."""
    return [f"{local(n)} = {source}[{n!r}]" for n in names if n in used]


def _plus_rest(read: str, v: dict[str, str]) -> str:
    """A chunk's read with the read's terms beside the state's added (RWKV-6's bonus), where
    the level has them: computed per token from the chunk's inputs, bound as `rest`
    (`LevelPrinter._rest_output`)."""
    return f"({read} + nl.vec({v['rest']}, ref))" if "rest" in v else read


class LevelPrinter:
    def __init__(self, plan, spec_dims: dict[str, int] | None = None):
        self.plan, self.rule = plan, plan.rule
        self.spec_dims = dict(spec_dims or {})
        self.state_names = [s.name for s in plan.states]
        self.anchor_names = [a for a, _ in plan.anchors]
        self.inputs = [t.name for t in plan.tokens] + [p.name for p in plan.params] \
            + list(plan.sizes)

    def names(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        names = {n: local(n) for n in self.state_names + self.anchor_names + self.inputs}
        names |= {f"{n}_next": f"{local(n)}_next" for n in self.state_names}
        names |= {n: literal(v) for n, v in self.plan.numbers}
        out = Names(names | (extra or {}))
        out.numbers = frozenset(self.plan.sizes)  # dims the rule uses as numbers: Python ints
        return out

    def _inputs(self, used: set[str], source: str = "inputs", anchors: bool = True):
        return _unpack(self.inputs + (self.anchor_names if anchors else []), source, used)

    # ------------------------------------------------------------ the printed level
    def printed(self, view: dict) -> PrintedLevel:
        plan, ex = self.plan, self.plan.execution
        out = PrintedLevel(**view)
        if plan.kernel is not None and plan.kernel.chunked:
            out.kernels = (plan.kernel.chunked_entry(), plan.kernel.module)
        if isinstance(ex, Attention):
            out.attention = {"scale": _number_code(ex.scale),
                             "window": ex.window,
                             "query": ex.query, "key": ex.key, "value": ex.value,
                             "log_decay": self.attention_log_decay(ex)}
            return out
        out.step = self.step()
        if plan.group:
            out.read_token = self.read_token()
        if isinstance(ex, AffineChunk):
            out.chunked = self.affine_chunked(ex)
        elif isinstance(ex, ProductChunk):
            out.chunked = self.product_chunked(ex)
        elif isinstance(ex, JointChunk):
            out.chunked = self.joint_chunked(ex)
        elif isinstance(ex, DplrChunk):
            out.chunked = self.dplr_chunked(ex)
        elif isinstance(ex, FusedRecurrent):
            out.chunked = self.fused_recurrent(ex)
        elif isinstance(ex, EntrywiseScan):
            out.chunked = self.scan_chunked(ex)
            self.step_kernel(out, scan=True)  # on CUDA one kernel beats the PyTorch scan
        elif isinstance(ex, SolveChunk):
            out.chunked = self.solve_chunked(ex)
        elif isinstance(ex, FrozenSplit):
            out.frozen = self.frozen(ex)
            out.additive = ex.additive
            out.lazy_read = ex.low_rank and ex.left_read
            out.walk = mlp_walk(plan)
            if (ex.dual or ex.low_rank) and not plan.group:  # a group's members: no dual
                self.outer_kernel(out, ex)
        elif isinstance(ex, TokenLoop):
            self.step_kernel(out)
        if getattr(ex, "post", None) is not None:  # the chunked forms' read of S q
            out.after_read = self.after_read(ex.post)
        return out

    def outer_kernel(self, out: PrintedLevel, ex: FrozenSplit) -> None:
        """A dual-form level's chunk-start terms as Triton kernels (nlc/emit/outer_render.py),
        or the note saying why its PyTorch terms run on every device."""
        from nlc.emit.outer_render import outer_kernel
        from nlc.emit.tl_step_printer import StepPrintError
        try:
            kernel = outer_kernel(self.plan, ex, self.spec_dims)
        except StepPrintError as err:
            out.notes.append(prose(f"no chunk-start terms kernel: {err}; every device runs "
                                   "the PyTorch terms"))
            return
        out.outer_kernel, out.outer_source = kernel.module, kernel.source
        out.outer_names = outer_arguments(kernel, anchors=True)
        what = ("the MLP at the anchors, the error signals and the backward pass through the "
                "MLP" if self.rule.form.kind == "mlp" else "every token's terms at the chunk-start "
                "state")
        out.notes.append(prose(f"its chunk-start terms ({what}) have Triton "
                               f"kernels in {kernel.module}.py, forward and backward; they "
                               f"run on CUDA when {TERMS_FLAG}=1 asks, else the batched "
                               "PyTorch terms run"))

    def step_kernel(self, out: PrintedLevel, scan: bool = False) -> None:
        """A token-loop level's fused step kernel (nlc/emit/step_render.py), or the note
        saying why it keeps only the PyTorch loop; with `scan`, an entrywise-scan level's,
        for CUDA tensors (3.4 ms against the scan's 5.5 ms at T = 2048 on one H100,
        docs/perf.md's twentieth batch), or nothing."""
        from nlc.emit.step_render import EVERY, StepPrintError, step_kernel
        try:
            kernel = step_kernel(self.plan, self.spec_dims)
        except StepPrintError as err:
            if not scan:
                out.notes.append(prose(f"no fused step kernel: {err}; every device runs the "
                                       "PyTorch token loop"))
            return
        out.step_kernel, out.step_source, out.step_every = kernel.module, kernel.source, EVERY
        tokens = _tuple(repr(t.name) for t in self.plan.tokens)
        out.step_names = f"{tokens}, {_tuple(repr(n) for n in self.state_names)}"
        backward = ("its printed backward kernel reruns each segment and runs the step's "
                    "adjoint token by token" if not kernel.backward_note else
                    f"no printed backward ({kernel.backward_note}): the backward reruns each "
                    "segment with the PyTorch step under autograd")
        others = ("other tensors run the scan, the recurrent mode the token loop" if scan
                  else "other tensors and the recurrent mode run the token loop")
        out.notes.append(prose(f"fused step kernel {kernel.module}: the chunked mode sends CUDA "
                               "tensors (CPU ones with NLC_TRITON=force) to it, one program per "
                               "sequence and head holding the state, a checkpoint every "
                               f"{EVERY} tokens; {backward}; {others}"))

    def step(self) -> list[str]:
        outputs = [(f"{local(n)}_next", e) for n, e in self.rule.next_state]
        outputs.append(("o", self.rule.read))
        used = free_names([e for _, e in outputs])
        lines = _unpack(self.state_names, "state", used) + self._inputs(used)
        lines += TorchPrinter(self.names()).assign(outputs)
        new = ", ".join(f"{n!r}: {local(n)}_next" for n in self.state_names)
        return lines + [f"return {{{new}}}, o"]

    def after_read(self, post) -> list[str]:
        """The read of every token from the chunked form's S q (`o`, `[B, T, H, d, 1]`) and
        the chunk's inputs: a read that is a function of S q (`rmsnorm(S(q))`)."""
        lines = self._chunk_inputs([("post", post)])
        printer = TorchPrinter(self.names({READ_O: "o"}))
        return lines + printer.assign([("read", post)]) + ["return read"]

    def read_token(self) -> list[str]:
        """The read of one token before any write (a coupled group's members read first)."""
        used = free_names([self.rule.read])
        lines = _unpack(self.state_names, "state", used) + self._inputs(used)
        lines += TorchPrinter(self.names(), chunk=True).assign([("o", self.rule.read)])
        return lines + ["return o"]

    # ------------------------------------------------------------ affine families
    @staticmethod
    def _bind(printer: TorchPrinter, outputs) -> tuple[list[str], dict[str, str]]:
        """Lines that compute each (name, expression), and name -> the code holding it: a bare
        value keeps its own name instead of an alias line (`query = q`)."""
        held = {n: printer.names[e.name] for n, e in outputs
                if isinstance(e, (sp.Symbol, sp.MatrixSymbol)) and e.name in printer.names}
        lines = printer.assign([(n, e) for n, e in outputs if n not in held])
        return lines, {n: held.get(n, n) for n, _ in outputs}

    def _chunk_inputs(self, outputs) -> list[str]:
        used = free_names([e for _, e in outputs])
        tokens = [t.name for t in self.plan.tokens]
        return _unpack(tokens, "tokens", used) + _unpack(
            [p.name for p in self.plan.params] + list(self.plan.sizes), "consts", used)

    def _kernel_call(self, args: list[str], name: str, v: dict[str, str], final: str = "S",
                     read: str = "o") -> list[str]:
        kernel = self.plan.kernel
        return [f"kernels = nl.kernels(__file__, {kernel.module!r})",
                f"o, S = kernels.fused_recurrent({', '.join(args)})",
                f"return {_plus_rest(read, v)}.unsqueeze(-1).to(ref.dtype), "
                f"{{{name!r}: {final}}}"]

    def _rest_output(self) -> list:
        """("rest", the read's terms beside the state's), when the read has them."""
        rest = getattr(self.plan.execution, "rest", None)
        return [] if rest is None else [("rest", rest)]

    def _chunk_values(self, outputs, decay, also=(), log=True) -> tuple[list[str], dict[str, str]]:
        """Lines that unpack a chunk's inputs (those of `also`'s expressions too) and compute
        each (name, expression) of `outputs` and, for a gate other than 1, `log_decay` (the
        gate itself as `gate`, without `log`: a gate of any sign); name -> the code holding
        it."""
        gated = decay != 1
        printer = TorchPrinter(self.names())
        outputs = outputs + self._rest_output()
        lines = self._chunk_inputs(outputs + ([("gate", decay)] if gated else [])
                                   + [("also", e) for e in also])
        lines.append("ref = nl.reference(tokens)")
        computed, v = self._bind(printer, outputs)
        lines += computed
        if gated and not log:
            lines.append(f"gate = {printer.expr(decay)}")
        elif gated:  # log of the gate, finite (with a zero gradient) where the gate is 0
            lines.append(f"log_decay = nl.log_gate({printer.expr(decay)})")
        return lines, v

    def affine_chunked(self, ex: AffineChunk) -> list[str]:
        if ex.row_decay is not None:
            return self.row_decay_chunked(ex)
        outputs = [("query", ex.query)]
        for i, (u, w) in enumerate(ex.terms):
            outputs += [(f"value{i}", u), (f"key{i}", w)]
        if ex.beta is not None:
            outputs.append(("rate", ex.beta))
        lines, v = self._chunk_values(outputs, ex.decay)
        gated = ex.decay != 1
        (name, _), = self.rule.states
        state = f"state[{name!r}]"
        is_vec = self.rule.form.kind == "vector"
        if is_vec or ex.transposed:  # a vector memory z is the one-row matrix z^T; a state
            lines.append(f"S = {state}.mT")  # read as W^T q runs as S = W^T
            state = "S"
        final = "S.mT" if is_vec or ex.transposed else "S"
        kind = "flat" if ex.decay_kind == "scalar" else "vec"
        decay = f"nl.{kind}(log_decay, ref)" if gated else "None"
        rb = self.rule.read_before
        delta = ex.family == "delta"
        kernel = self.plan.kernel
        if kernel is not None:
            args = [f"nl.vec({v['query']}, ref)", f"nl.vec({v['key0']}, ref)",
                    f"nl.vec({v['value0']}, ref)"]
            args += [f"g={decay}"] if gated else []
            args += [f"beta=nl.flat({v['rate']}, ref)"] if delta else []
            args += [f"initial_state={state}", "output_final_state=True"]
            # training-length inputs skip the recurrent kernel where chunked kernels exist
            form = f', chunked="{kernel.chunked}"' if kernel.chunked else ""
            lines.append(f"if nl.use_triton(ref{form}, key_width={state}.shape[-1]):"
                         "  # CUDA: the fused recurrent Triton kernel")
            lines += [f"    {line}" for line in self._kernel_call(args, name, v, final)]
        if delta:
            lines.append(f"o, S = nl.delta_chunked(nl.vec({v['query']}, ref), "
                         f"nl.vec({v['key0']}, ref), nl.vec({v['value0']}, ref), "
                         f"nl.flat({v['rate']}, ref), {decay}, "
                         f"initial_state={state}, read_before={rb}, chunk_size=chunk_size)")
        else:  # linear in the inputs: the first term carries the initial state, the rest
            for i in range(len(ex.terms)):  # start from zero, and outputs and states add up
                lines.append(f"{'o, S' if i == 0 else 'o_i, S_i'} = nl.decay_chunked("
                             f"nl.vec({v['query']}, ref), nl.vec({v[f'key{i}']}, ref), "
                             f"nl.vec({v[f'value{i}']}, ref), {decay}, "
                             f"initial_state={state if i == 0 else 'None'}, "
                             f"read_before={rb}, chunk_size=chunk_size)")
                if i:
                    lines.append("o, S = o + o_i, S + S_i")
        return lines + [f"return {_plus_rest('o', v)}.unsqueeze(-1), {{{name!r}: {final}}}"]

    def attention_log_decay(self, ex: Attention) -> str:
        """The forget gate's log per token and head, as code over the op's tokens
        (`[B, T, H, 1, 1]`), or "None" without `decay(f)`."""
        if ex.decay is None:
            return "None"
        names = self.names({n: f"tokens[{n!r}]" for n in self.inputs})
        return f"nl.log_gate({TorchPrinter(names).expr(ex.decay)})"

    def scan_chunked(self, ex: EntrywiseScan) -> list[str]:
        """Every token's state by the entrywise scan (nl.scan_chunked), then every read at
        once, printed from the rule with the states in place of the state."""
        (name, _), = self.rule.states
        read = self.rule.read
        lines, v = self._chunk_values([("bias", ex.bias)], ex.decay, also=[read],
                                      log=not ex.signed)
        decay, gate = "None", "log_decay" if not ex.signed else "gate"
        if ex.decay != 1:  # a scalar gate [B, T, H, 1, 1] (or a number), or one per channel
            decay = (f"nl.flat({gate}, ref)[..., None]" if ex.decay_kind == "scalar"
                     else f"nl.vec({gate}, ref)")
        signed = ", signed=True" if ex.signed else ""
        lines.append(f"states, final = nl.scan_chunked(nl.vec({v['bias']}, ref), {decay}, "
                     f"initial_state=state[{name!r}]{signed})")
        names = self.names()
        names[f"{name}_next"] = "states"
        if self.rule.read_before:  # the read meets each token's state before its write
            lines.append(f"before = nl.states_before(states, state[{name!r}])")
            names[name] = "before"
        lines += TorchPrinter(names, chunk=True).assign([("o", read)])
        return lines + [f"return o, {{{name!r}: final}}"]

    def row_decay_chunked(self, ex: AffineChunk) -> list[str]:
        """The decay or delta family with a decay per row (output channel), folded into the
        values and reads by nl.row_decay_chunked (runtime/library/rows.py)."""
        outputs = [("query", ex.query), ("row_gate", ex.row_decay)]
        for i, (u, w) in enumerate(ex.terms):
            outputs += [(f"value{i}", u), (f"key{i}", w)]
        if ex.beta is not None:
            outputs.append(("rate", ex.beta))
        lines, v = self._chunk_values(outputs, 1)
        lines.append(f"log_rows = nl.vec(nl.log_gate({v['row_gate']}), ref)")
        (name, _), = self.rule.states
        state = f"state[{name!r}]"
        if ex.transposed:  # a state read as W^T q runs as S = W^T
            lines.append(f"S = {state}.mT")
            state = "S"
        rate = f"nl.flat({v['rate']}, ref)" if ex.beta is not None else "None"
        # the decay family is linear in its inputs: one pass per outer product, the
        # initial state with the first, the reads and end states summed
        for i in range(len(ex.terms)):
            out, end = ("o", "S") if i == 0 else ("o_i", "S_i")
            lines.append(f"{out}, {end} = nl.row_decay_chunked(nl.vec({v['query']}, ref), "
                         f"nl.vec({v[f'key{i}']}, ref), nl.vec({v[f'value{i}']}, ref), {rate}, "
                         f"log_rows, initial_state={state if i == 0 else None}, "
                         f"read_before={self.rule.read_before}, chunk_size=chunk_size)")
            if i:
                lines.append("o, S = o + o_i, S + S_i")
        final = "S.mT" if ex.transposed else "S"
        return lines + [f"return {_plus_rest('o', v)}.unsqueeze(-1), {{{name!r}: {final}}}"]

    def product_chunked(self, ex: ProductChunk) -> list[str]:
        """n delta steps per token: the delta rule's chunked form (and, on CUDA, its kernels)
        over the sequence of steps, `nl.substeps` (runtime/library/substeps.py)."""
        outputs = [("query", ex.query)]
        for i, (u, w, b) in enumerate(ex.steps):
            outputs += [(f"value{i}", u), (f"key{i}", w), (f"rate{i}", b)]
        gated = ex.decay != 1
        lines, v = self._chunk_values(outputs, ex.decay)
        steps = range(len(ex.steps))
        keys = ", ".join(f"nl.vec({v[f'key{i}']}, ref)" for i in steps)
        values = ", ".join(f"nl.vec({v[f'value{i}']}, ref)" for i in steps)
        rates = ", ".join(f"nl.flat({v[f'rate{i}']}, ref)" for i in steps)
        decay = "nl.flat(log_decay, ref)" if gated else "None"
        rb = self.rule.read_before
        lines.append(f"sub = nl.substeps(nl.vec({v['query']}, ref), ({keys}), ({values}), "
                     f"({rates}), {decay}, read_before={rb})")
        (name, _), = self.rule.states
        state = f"state[{name!r}]"
        kernel = self.plan.kernel
        if kernel is not None:
            args = ["sub.q", "sub.k", "sub.v"] + (["g=sub.g"] if gated else [])
            args += ["beta=sub.beta", f"initial_state={state}", "output_final_state=True"]
            form = f', chunked="{kernel.chunked}"' if kernel.chunked else ""
            lines.append(f"if nl.use_triton(sub.ref{form}, key_width={state}.shape[-1]):"
                         "  # CUDA: the delta rule's fused recurrent Triton kernel")
            lines += [f"    {line}"
                      for line in self._kernel_call(args, name, v, read="sub.read(o)")]
        lines.append(f"o, S = nl.delta_chunked(sub.q, sub.k, sub.v, sub.beta, sub.g, "
                     f"initial_state={state}, read_before={rb}, chunk_size=chunk_size)")
        return lines + [f"return {_plus_rest('sub.read(o)', v)}.unsqueeze(-1), {{{name!r}: S}}"]

    def joint_chunked(self, ex: JointChunk) -> list[str]:
        """Several jointly affine states: the joint chunked form over their stack
        (runtime/library/joint.py); the scalar coefficients are printed per token."""
        n = len(ex.states)
        outputs = [("query", ex.query), ("key", ex.key)]
        outputs += [(f"value{i}", u) for i, u in enumerate(ex.values) if u is not None]
        coefficients = {}
        for name, table in (("mix", ex.mix), ("rank", ex.rank)):
            for j in range(n):
                for i in range(n):
                    c = table[j][i]
                    if c.is_number:
                        coefficients[(name, j, i)] = repr(float(c))
                    else:
                        outputs.append((f"{name}{j}_{i}", c))
                        coefficients[(name, j, i)] = f"{name}{j}_{i}"
        lines, v = self._chunk_values(outputs, 1)

        def table(name):
            return f"nl.mixing({_tuple(_tuple(v.get(c, c) for c in (coefficients[(name, j, i)] for i in range(n))) for j in range(n))}, ref)"

        values = _tuple(f"nl.vec({v[f'value{i}']}, ref)" if u is not None else "None"
                        for i, u in enumerate(ex.values))
        states = _tuple(f"state[{s!r}]" for s in ex.states)
        lines.append(f"o, X = nl.joint_chunked(nl.vec({v['query']}, ref), nl.vec({v['key']}, ref), "
                     f"nl.joint_values({values}, ref), {table('mix')}, {table('rank')}, "
                     f"read={ex.read}, initial_state=torch.stack({states}, 2), "
                     f"read_before={self.rule.read_before}, chunk_size=chunk_size)")
        final = ", ".join(f"{s!r}: X[:, :, {i}]" for i, s in enumerate(ex.states))
        return lines + [f"return o.unsqueeze(-1), {{{final}}}"]

    def dplr_chunked(self, ex: DplrChunk) -> list[str]:
        """S' = S (D + a b^T) + v k^T: the chunked form, `nl.dplr_chunked` (its Triton kernels
        on CUDA at training lengths); short CUDA inputs take the fused recurrent kernel."""
        outputs = [("query", ex.query), ("value0", ex.value), ("key0", ex.key), ("a", ex.a),
                   ("b", ex.b)]
        lines, v = self._chunk_values(outputs, ex.decay)
        gated = ex.decay != 1
        decay = f"nl.{'flat' if ex.decay_kind == 'scalar' else 'vec'}(log_decay, ref)" \
            if gated else "None"
        (name, _), = self.rule.states
        state = f"state[{name!r}]"
        args = [f"nl.vec({v[n]}, ref)" for n in ("query", "key0", "value0")]
        ab = [f"nl.vec({v['a']}, ref)", f"nl.vec({v['b']}, ref)"]
        kernel = self.plan.kernel
        if kernel is not None:
            fused = args + ([f"g={decay}"] if gated else []) + [f"a={ab[0]}", f"b={ab[1]}"]
            fused += [f"initial_state={state}", "output_final_state=True"]
            form = f', chunked="{kernel.chunked}"' if kernel.chunked else ""
            lines.append(f"if nl.use_triton(ref{form}, key_width={state}.shape[-1]):"
                         "  # CUDA: the fused recurrent Triton kernel")
            lines += [f"    {line}" for line in self._kernel_call(fused, name, v)]
        lines.append(f"o, S = nl.dplr_chunked({', '.join(args + ab)}, {decay}, "
                     f"initial_state={state}, read_before={self.rule.read_before}, "
                     "chunk_size=chunk_size)")
        return lines + [f"return {_plus_rest('o', v)}.unsqueeze(-1), {{{name!r}: S}}"]

    def fused_recurrent(self, ex: FusedRecurrent) -> list[str]:
        """An elementwise error: CUDA tensors go to the fused recurrent kernel, others to the
        token loop."""
        if self.plan.kernel is None:
            return []
        gated = ex.decay != 1
        outputs = [("query", ex.query), ("value0", ex.value), ("key0", ex.key)]
        outputs += list(ex.extras) + self._rest_output()
        if gated:
            outputs.append(("log_decay", sp.log(ex.decay)))
        fused, v = self._bind(TorchPrinter(self.names()), outputs)
        args = [f"nl.vec({v['query']}, ref)", f"nl.vec({v['key0']}, ref)",
                f"nl.vec({v['value0']}, ref)"]
        if gated:
            kind = "flat" if ex.decay_kind == "scalar" else "vec"
            args.append(f"g=nl.{kind}({v['log_decay']}, ref)")
        rate = "vec" if ex.rate == "row" else "flat"  # one rate per row: [B, T, H, V]
        args.append(f"beta=nl.{rate}({v['rate']}, ref)")
        (name, _), = self.rule.states
        args += [f"initial_state=state[{name!r}]", "output_final_state=True"]
        lines = self._chunk_inputs(outputs) + ["ref = nl.reference(tokens)"]
        lines.append(f"if nl.use_triton(ref, key_width=state[{name!r}].shape[-1]):"
                     "  # CUDA tensors: the fused recurrent Triton kernel")
        lines += [f"    {line}" for line in fused + self._kernel_call(args, name, v)]
        return lines + [(f"return nl.recurrent({self.plan.fn}_step, tokens, state, "
                         "consts=consts)")]

    def solve_chunked(self, ex: SolveChunk) -> list[str]:
        """The solve family: both statistics by the chunked decay form, the read's solve
        exact or by conjugate gradient (runtime/library/solve.py)."""
        outputs = [("query", ex.query), ("key0", ex.key), ("value0", ex.value)]
        lines, v = self._chunk_values(outputs, ex.decay)
        gated = ex.decay != 1
        h, g = ex.names
        lines.append(f"o, (H, G) = nl.ridge_chunked(nl.vec({v['query']}, ref), "
                     f"nl.vec({v['key0']}, ref), nl.vec({v['value0']}, ref), "
                     f"{'nl.flat(log_decay, ref)' if gated else 'None'}, "
                     f"{TorchPrinter(self.names()).expr(ex.reg)}, initial_state=(state[{h!r}], state[{g!r}]), "
                     f"read_before={self.rule.read_before}, chunk_size=chunk_size, "
                     f"cg_steps={ex.cg_steps})")
        return lines + [f"return o.unsqueeze(-1), {{{h!r}: H, {g!r}: G}}"]

    # ------------------------------------------------------------ shared cores
    def canonical(self) -> dict[str, str] | None:
        """The level's state and anchor names without the memory's prefix (`K_W1` -> `W1`,
        `K_W1_0` -> `W1_0`): under them, levels with the same rule print the same code.
        None when the names do not come apart that way."""
        prefix = f"{self.plan.memory}_"
        names = self.state_names + self.anchor_names
        canon = {n: n[len(prefix):] for n in names if n.startswith(prefix)}
        if len(canon) != len(names) or len(set(canon.values())) != len(canon) \
                or not all(c.isidentifier() for c in canon.values()):
            return None
        return canon

    def core(self, kind: str):
        """The drive or combine of a frozen split under canonical names, as a function of
        `inputs` and the level's tensors: (parameters, body, the level's call of it given
        the shared function's name); None where the level has no plain one."""
        ex, canon = self.plan.execution, self.canonical()
        if canon is None or not isinstance(ex, FrozenSplit) or ex.additive \
                or (kind == "drive" and ex.dual and not self.plan.group):
            return None
        names = self.names() | canon | {f"{n}_next": f"{canon[n]}_next" for n in self.state_names}
        if kind == "pairs" and not ex.low_rank:
            return None
        if kind in ("drive", "pairs"):
            used, body = (self._drive if kind == "drive" else self._outer_drive)(
                ex, names, anchors=False)
            mine = [a for a in self.anchor_names if a in used]
            args = ", ".join(f"inputs[{a!r}]" for a in mine)
            return ([canon[a] for a in mine], body,
                    lambda shared: [f"return {shared}(inputs, {args})"])
        if kind == "transition":
            if not ex.transitions:
                return None
            used, body = self._transition(ex, names, keyed=False)
            keys = ", ".join(repr(n) for n in self.state_names)
            one = "," if len(self.state_names) == 1 else ""
            return [], body, lambda shared: [f"return dict(zip(({keys}{one}), {shared}(inputs)))"]
        nexts = [f"{canon[n]}_next" for n in self.state_names]
        used, body = self._combine(ex, names, nexts)
        one = "," if len(self.state_names) == 1 else ""
        body.append(f"return {', '.join(nexts)}{one}")
        args = ", ".join(f"state[{n!r}]" for n in self.state_names if n in used)
        targets = ", ".join(f"{local(n)}_next" for n in self.state_names)
        new = ", ".join(f"{n!r}: {local(n)}_next" for n in self.state_names)
        return ([canon[n] for n in self.state_names if n in used], body,
                lambda shared: [f"{targets}{one} = {shared}(inputs, {args})",
                                f"return {{{new}}}"])

    def _drive(self, ex: FrozenSplit, names: dict, anchors: bool) -> tuple[set, list[str]]:
        """The names a frozen split's drive reads, and its body; with `anchors` it unpacks
        the chunk-start states from `inputs` too (else they are the function's parameters)."""
        outputs = [(sym.name, e) for sym, e in ex.drive]
        used = free_names([e for _, e in outputs])
        body = self._inputs(used, anchors=anchors) + TorchPrinter(names, chunk=True).assign(
            outputs)
        body.append("return {" + ", ".join(f"{s.name!r}: {s.name}" for s, _ in ex.drive)
                    + "}")
        return used, body

    def _combine(self, ex: FrozenSplit, names: dict, nexts: list[str]) -> tuple[set, list[str]]:
        """The names a frozen split's combine reads, and the lines computing the new states
        into `nexts` from `inputs` and the drives (the states are the caller's to bind)."""
        outputs = list(zip(nexts, [e for _, e in ex.combine]))
        used = free_names([e for _, e in outputs])
        drives = [s.name for s, _ in ex.drive if s.name in used]
        body = self._inputs(used, anchors=False) + [f"{n} = inputs[{n!r}]" for n in drives]
        body += TorchPrinter(names | {n: n for n in drives}).assign(outputs)
        return used, body

    def _transition(self, ex: FrozenSplit, names: dict, keyed: bool) -> tuple[set, list[str]]:
        """Each state's combine as (retain, erase, left, right, input) for every token of a
        chunk at once (`FrozenSplit.transitions`, run by runtime/library/affine_chunk.py):
        keyed by state, or a tuple in the states' order (a shared function's)."""
        outputs, rows = [], []
        for name, *parts, summed in ex.transitions:
            base = names.get(name, local(name))
            row = []  # per role: None, the output holding it, or the drives' weights
            for role, e in zip(("retain", "erase", "left", "right", "input"), parts):
                if e is None:
                    row.append(None)
                elif role == "input" and ex.low_rank:  # the drives' outer products, weighted
                    outputs += [(f"{base}_{d}", coef) for d, coef in summed]
                    row.append([(d, f"{base}_{d}") for d, _ in summed])
                else:
                    outputs.append((f"{base}_{role}", e))
                    row.append(f"{base}_{role}")
            rows.append((name, row))
        used = free_names([e for _, e in outputs])
        drives = [s.name for s, _ in ex.drive if s.name in used]
        printer = TorchPrinter(names | {n: n for n in drives}, chunk=True)
        lines, held = self._bind(printer, outputs)
        body = self._inputs(used, anchors=False) + [f"{n} = inputs[{n!r}]" for n in drives]
        body += lines

        def code(item) -> str:
            if isinstance(item, list):
                return "{" + ", ".join(f"{d!r}: {held[n]}" for d, n in item) + "}"
            return "None" if item is None else held[item]
        shown = [(name, f"({', '.join(code(item) for item in row)})") for name, row in rows]
        if keyed:
            body.append("return {" + ", ".join(f"{n!r}: {r}" for n, r in shown) + "}")
        else:
            body.append(f"return {', '.join(r for _, r in shown)}" + ("," if len(shown) == 1 else ""))
        return used, body

    # ------------------------------------------------------------ shared by role
    def roles(self, kind: str) -> list[str]:
        """The names a function of `kind` may read, by role: tokens, parameters, states,
        anchors, sizes (and a combine's drives)."""
        names = [t.name for t in self.plan.tokens] + [p.name for p in self.plan.params] \
            + self.state_names + self.anchor_names + list(self.plan.sizes)
        if kind == "combine":
            names += [s.name for s, _ in self.plan.execution.drive]
        return names

    def role_core(self, kind: str, placeholders: bool = False) -> tuple[list[str], list[str]]:
        """The step, or an `every C tokens` split's drive, combine or read, as a function of
        the tensors it reads: (their names in the order of `roles`, its body and return).
        With `placeholders` every name prints as its role's position (`r0`, `r1`, ...):
        levels whose functions print the same that way compute one function of their
        tensors in role order, and share it (LayerPrinter.shared_by_role)."""
        roles = self.roles(kind)
        own = set(self.roles("step"))  # spec names; a combine's drives keep their own
        code = {n: f"r{i}" if placeholders else local(n) if n in own else n
                for i, n in enumerate(roles)}
        names = self.names() | code | {f"{n}_next": f"{code[n]}_next" for n in self.state_names}
        ex, rule = self.plan.execution, self.rule
        sums = {}
        if kind == "step":
            outputs = [(f"{code[n]}_next", e) for n, e in rule.next_state] + [("o", rule.read)]
            printer = TorchPrinter(names)
        elif kind == "combine":
            outputs = [(f"{code[n]}_next", e)
                       for n, (_, e) in zip(self.state_names, ex.combine)]
            printer = TorchPrinter(names)
        elif kind == "read":
            outputs = [("o", rule.read)]
            printer = TorchPrinter(names | {f"{n}_next": code[n] for n in self.state_names},
                                   chunk=True)
        else:
            outputs, sums = _summed_parts(ex)
            printer = TorchPrinter(names, chunk=True)
        used = free_names([e for _, e in outputs])
        if kind == "read":
            used |= {n for n in self.state_names if f"{n}_next" in used}
        body = printer.assign(outputs) + [f"{n} = {c}" for n, c in sums.items()]
        returned = ("{" + ", ".join(f"{n!r}: {n}" for n in sums) + "}" if sums
                    else ", ".join(target for target, _ in outputs))
        count = [PIECE_COUNT] if kind == "drive" else []  # the piece's token count
        return [n for n in roles if n in used] + count, [*body, f"return {returned}"]

    def role_call(self, kind: str, shared: str) -> list[str]:
        """The level's function of `kind` as a call of `shared` with its own tensors."""
        used, _ = self.role_core(kind)
        states = {"step": "state", "combine": "state", "read": "states"}.get(kind)
        args = ", ".join("inputs[nl.PIECE_TOKENS]" if n == PIECE_COUNT else
                         f"{states if n in self.state_names and states else 'inputs'}[{n!r}]"
                         for n in used)
        if kind in ("drive", "read"):
            return [f"return {shared}({args})"]
        order = [n for n, _ in self.rule.next_state] if kind == "step" else self.state_names
        targets = [f"{local(n)}_next" for n in order] + ["o"] * (kind == "step")
        new = "{" + ", ".join(f"{n!r}: {local(n)}_next" for n in self.state_names) + "}"
        return [f"{', '.join(targets)} = {shared}({args})",
                f"return {new}, o" if kind == "step" else f"return {new}"]

    # ------------------------------------------------------------ frozen gradients
    def frozen(self, ex: FrozenSplit) -> dict[str, list[str]]:
        """drive: the hoisted chunk-start terms for all tokens of a chunk at once; combine:
        the rest, per token; read: every token's read from the stacked states. `every C
        tokens` sums a chunk's terms before the combine; the dual form takes them as outer
        products."""
        names = self.names()
        drive = self.summed_drive(ex) if ex.additive else self._drive(ex, names, anchors=True)[1]
        used, combine = self._combine(ex, names, [f"{local(n)}_next" for n in self.state_names])
        combine = _unpack(self.state_names, "state", used) + combine
        combine.append("return {" + ", ".join(f"{n!r}: {local(n)}_next"
                                              for n in self.state_names) + "}")
        out = {"drive": drive, "combine": combine}
        if ex.transitions:
            out["transition"] = self._transition(ex, names, keyed=True)[1]
        if ex.low_rank:
            out["pairs"] = self.outer_drive(ex)
        if not self.plan.group:
            read_names = self.names({f"{n}_next": local(n) for n in self.state_names})
            used = free_names([self.rule.read])
            used |= {n for n in self.state_names if f"{n}_next" in used}
            read = _unpack(self.state_names, "states", used) + self._inputs(used)
            read += TorchPrinter(read_names, chunk=True).assign([("o", self.rule.read)])
            out["read"] = read + ["return o"]
        if ex.dual and not self.plan.group:  # never with `additive` (execution.py); a
            out["outer"] = self.outer_drive(ex)  # group's members run drive and combine
        return out

    def summed_drive(self, ex: FrozenSplit) -> list[str]:
        """`every C tokens`: the chunk-start terms summed over a piece of the chunk (axis 1).
        A term that is a column times a row per token (a gradient's outer product) is summed
        as one matrix product over the tokens (`nl.outer_sum`) instead of materializing
        every token's matrix."""
        parts, sums = _summed_parts(ex)
        used = free_names([e for _, e in parts])
        lines = self._inputs(used) + [f"{PIECE_COUNT} = inputs[nl.PIECE_TOKENS]"]
        lines += TorchPrinter(self.names(), chunk=True).assign(parts)
        lines += [f"{name} = {code}" for name, code in sums.items()]
        return lines + ["return {" + ", ".join(f"{n!r}: {n}" for n in sums) + "}"]

    def outer_drive(self, ex: FrozenSplit) -> list[str]:
        """The chunk-start terms of every token as lists of (column, row) pairs."""
        return self._outer_drive(ex, self.names(), anchors=True)[1]

    def _outer_drive(self, ex: FrozenSplit, names: dict, anchors: bool) -> tuple[set, list[str]]:
        """The names `outer_drive` reads, and its body; without `anchors` the chunk-start
        states are the function's parameters (a shared function's)."""
        parts, pairs = [], {}
        for name, terms in ex.outer:
            shown = []
            for i, (col, row) in enumerate(terms):
                base = f"{name}_{i}"
                parts += [(f"{base}_col", col), (f"{base}_row", row)]
                shown.append(f"({base}_col, {base}_row)")
            pairs[name] = ", ".join(shown)
        used = free_names([e for _, e in parts])
        lines = self._inputs(used, anchors=anchors) + TorchPrinter(names, chunk=True).assign(
            parts)
        return used, lines + ["return {" + ", ".join(f"{n!r}: [{code}]"
                                                     for n, code in pairs.items()) + "}"]


# an `every C tokens` drive's count of the tokens it sums over (runtime/library/scan.py puts
# it in the inputs as nl.PIECE_TOKENS); a name of the compiler's own, which spec names
# never capture (nlc/emit/names.py)
PIECE_COUNT = "piece_tokens"


def _summed_parts(ex: FrozenSplit) -> tuple[list, dict[str, str]]:
    """An `every C tokens` drive's per-token parts (name, expression) and, per drive, the
    code that sums them over the piece's tokens (their count is PIECE_COUNT, so that a term
    the same at every token counts once per token): `nl.outer_sum` for a column times a
    row, `nl.token_sum` for the rest."""
    parts, sums = [], {}
    for name, terms in ex.outer:
        codes = []
        for i, term in enumerate(terms):
            base = f"{name}_{i}"
            if len(term) == 2:
                parts += [(f"{base}_col", term[0]), (f"{base}_row", term[1])]
                codes.append(f"nl.outer_sum({base}_col, {base}_row, {PIECE_COUNT})")
            else:
                parts.append((base, term[0]))
                codes.append(f"nl.token_sum({base}, {PIECE_COUNT})")
        sums[name] = " + ".join(codes)
    return parts, sums
