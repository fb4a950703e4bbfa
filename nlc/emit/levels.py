"""One level's rule and kernel family -> the pieces of code its functional op is made of.

A `LevelPlan` holds, already printed: the one-token `step` (the reference; decoding), and
the chunk-parallel form the family allows (the exact chunked decay / delta algorithms, the
frozen-gradient split, or attention for the non-parametric family). Everything comes from
the derived `UpdateRule` and its `Classification`; nothing is re-derived here."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from nlc.derive.classify import ERROR_ARGS, Classification, KernelFamily, _split
from nlc.derive.matfuncs import Dot
from nlc.derive.rule import UpdateRule
from nlc.emit.names import local
from nlc.emit.torch_printer import TorchPrinter, free_names
from nlc.errors import NlcError

@dataclass
class Input:
    name: str
    kind: str          # vector | scalar | param | number
    code: str = ""     # for numbers: the literal
    size: int | None = None  # a vector's length per head


@dataclass
class StateTensor:
    name: str
    rows: int
    cols: int
    init: str          # zeros | identity | learned | param


@dataclass
class LevelPlan:
    name: str
    line: int
    family: str
    reason: str
    tokens: list[Input]
    params: list[str]
    numbers: dict[str, str]
    states: list[StateTensor]
    anchors: list[tuple[str, str]]            # (anchor name, state name)
    anchor_every: int | None
    read_kind: str                            # vector | scalar
    step: list[str]
    chunked: list[str] = field(default_factory=list)   # body of `<level>_chunked(tokens, state)`
    frozen: dict[str, list[str]] = field(default_factory=dict)  # drive / combine / read bodies
    attention: dict | None = None
    # RecurrentKernelPlan for CUDA tensors, if the family has one (rendered on its own)
    triton: object | None = field(default=None, metadata={"template": False})
    kernels: str = ""                 # the module the kernels are generated into
    notes: list[str] = field(default_factory=list)
    group: bool = False               # runs in a coupled group (no op of its own)
    additive: bool = False            # `every C tokens`: a chunk adds the sum of its terms
    read_token: list[str] = field(default_factory=list)  # body of `<level>_read_token`


def _shape(sym) -> tuple[int, int]:
    return tuple(int(d) for d in sym.shape)


def _unpack(names: list[str], source: str) -> list[str]:
    return [f"{local(n)} = {source}[{n!r}]" for n in names]


def _used(lines: list[str]) -> list[str]:
    """Drop the unpacking lines (`name = source[...]`) whose name the code never reads."""
    import re
    body = "\n".join(ln for ln in lines if not re.fullmatch(r"\w+ = \w+\['\w+'\]", ln))
    return [ln for ln in lines
            if not re.fullmatch(r"\w+ = \w+\['\w+'\]", ln)
            or re.search(rf"\b{ln.split(' = ')[0]}\b", body)]


class LevelEmitter:
    def __init__(self, rule: UpdateRule, family: Classification, numbers: dict[str, str],
                 params: set[str], line: int, init: str, kernels: bool = False, prefix: str = ""):
        self.rule, self.family, self.line, self.init = rule, family, line, init
        self.kernels, self.prefix = kernels, prefix or rule.level
        self.triton = None
        self.state_names = [n for n, _ in rule.states]
        self.anchor_names = [a.name for _, a in rule.anchors]
        exprs = [e for _, e in rule.next_state] + ([rule.read] if rule.read is not None else [])
        used = free_names(exprs)
        nexts = {f"{n}_next" for n in self.state_names}
        self.numbers = {n: v for n, v in numbers.items() if n in used}
        self.params = sorted(n for n in used if n in params)
        known = set(self.state_names) | nexts | set(self.anchor_names) | set(self.numbers) \
            | set(self.params)
        symbols = {s.name: s for e in exprs for s in e.atoms(sp.Symbol, sp.MatrixSymbol)}
        roles = [rule.role(r) for r in ("query", "key", "value")]
        first = [r.name for r in roles if isinstance(r, (sp.Symbol, sp.MatrixSymbol))]
        order = sorted(used - known, key=lambda n: (first.index(n) if n in first else 3, n))
        self.tokens = [Input(n, "vector", size=int(symbols[n].shape[0]))
                       if isinstance(symbols[n], sp.MatrixSymbol) else Input(n, "scalar")
                       for n in order]
        self.read = rule.read

    # ------------------------------------------------------------ naming
    def names(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        names = {n: local(n) for n in self.state_names + self.anchor_names}
        names |= {f"{n}_next": f"{local(n)}_next" for n in self.state_names}
        names |= {i.name: local(i.name) for i in self.tokens}
        names |= {p: local(p) for p in self.params}
        names |= self.numbers
        return names | (extra or {})

    def _inputs_unpack(self, source="inputs", anchors=True) -> list[str]:
        names = [i.name for i in self.tokens] + self.params
        if anchors:
            names += self.anchor_names
        return _unpack(names, source)

    def _chunk_unpack(self) -> list[str]:
        return _unpack([i.name for i in self.tokens], "tokens") + _unpack(self.params, "consts")

    @staticmethod
    def _bind(printer: TorchPrinter, outputs) -> tuple[list[str], dict[str, str]]:
        """Lines that compute each (name, expression), and name -> the code holding it: a bare
        value keeps its own name instead of an alias line (`query = q`)."""
        held = {n: printer.names[e.name] for n, e in outputs
                if isinstance(e, (sp.Symbol, sp.MatrixSymbol)) and e.name in printer.names}
        lines = printer.assign([(n, e) for n, e in outputs if n not in held])
        return lines, {n: held.get(n, n) for n, _ in outputs}

    # ------------------------------------------------------------ step
    def step(self) -> list[str]:
        lines = _unpack(self.state_names, "state") + self._inputs_unpack()
        printer = TorchPrinter(self.names())
        outputs = [(f"{local(n)}_next", e) for n, e in self.rule.next_state]
        if self.read is not None:
            outputs.append(("o", self.read))
        lines += printer.assign(outputs)
        new = ", ".join(f"{n!r}: {local(n)}_next" for n in self.state_names)
        lines.append(f"return {{{new}}}, o")
        return _used(lines)

    def read_token(self) -> list[str]:
        """The read of one token before any write (a coupled group's members read first)."""
        if self.read is None or any(self.read.has(sp.MatrixSymbol(f"{n}_next", *S.shape))
                                    for n, S in self.rule.states):
            raise NlcError(f"level '{self.rule.level}' reads after its write, but it is in a "
                           "loop of levels that use each other's outputs: make it read before")
        lines = _unpack(self.state_names, "state") + self._inputs_unpack()
        lines += TorchPrinter(self.names(), chunk=True).assign([("o", self.read)])
        lines.append("return o")
        return _used(lines)

    # ------------------------------------------------------------ families
    def plan(self) -> LevelPlan:
        rule, fam = self.rule, self.family
        states = [StateTensor(n, *_shape(S), self.init) for n, S in rule.states]
        if rule.read is not None and fam.family is not KernelFamily.NONPARAMETRIC:
            read_kind = "scalar" if not isinstance(self.read, sp.MatrixExpr) else "vector"
        else:
            read_kind = "vector"
        plan = LevelPlan(rule.level, self.line, fam.family.value, fam.reason, self.tokens,
                         self.params, self.numbers, states, list(zip(self.anchor_names, [
                             s for s, _ in rule.anchors])), rule.grad_chunk or (
                             rule.period if rule.anchors else None), read_kind,
                         [] if fam.family is KernelFamily.NONPARAMETRIC else self.step())
        if fam.family is KernelFamily.NONPARAMETRIC:
            plan.attention = self.attention()
            return plan
        if rule.read is None:
            raise NlcError(f"level '{rule.level}' has no read; emission needs one")
        if fam.param("transition"):  # n delta steps with one key: one delta / dplr transition
            fam = self.family = replace(fam, family=KernelFamily(fam.param("transition")))
        try:
            if fam.family in (KernelFamily.DECAY, KernelFamily.DELTA):
                plan.chunked = self.affine_chunked()
                plan.triton = self.triton
                plan.kernels = self.triton.module if self.triton else ""
            elif fam.family in (KernelFamily.DPLR, KernelFamily.ELEMENTWISE) \
                    and self.rule.form.kind == "matrix":
                plan.chunked = self.recurrent_kernel()
                plan.triton = self.triton
                plan.kernels = self.triton.module if self.triton else ""
                if plan.chunked:
                    plan.notes.append("no chunk-parallel PyTorch form: CPU tensors run token by "
                                      "token, CUDA tensors go to the fused recurrent Triton kernel")
                else:
                    plan.notes.append("no chunk-parallel form: the rule is affine in the state "
                                      "only per token")
            elif self.anchor_names:
                plan.frozen = self.frozen_split()
                # `every C tokens`: the state plus chunk-start terms only, so a chunk's terms
                # can be summed before they are combined
                plan.additive = rule.period > 1 and not (
                    self._combine_uses & {i.name for i in self.tokens})
                if plan.additive:
                    plan.frozen["drive"] = self.summed_drive()
                elif self.dual_form():
                    plan.frozen["outer"] = self.outer_drive()
            else:
                plan.notes.append("no chunk-parallel form: the rule is not affine in the state "
                                  "and its gradients are not frozen per chunk")
        except _NoChunkedForm as why:
            plan.notes.append(f"no chunk-parallel form: {why}")
        return plan

    def _read_query(self):
        """read = c * S_next q (matrix) or <z_next, q> (vector) -> (c * q, state name)."""
        (name, S), = self.rule.states
        target = sp.MatrixSymbol(f"{name}_next" if not self.rule.read_before else name, *S.shape)
        read = self.read
        if isinstance(read, Dot) and target in read.args:
            other = read.args[1] if read.args[0] == target else read.args[0]
            return other
        coef, mats = _split(read)
        if len(mats) == 2 and mats[0] == target and not mats[1].has(target):
            return coef * mats[1] if coef != 1 else mats[1]
        raise _NoChunkedForm("the read is not the state applied to a query")

    def _bias_terms(self, bias, vector: bool):
        terms = bias.args if isinstance(bias, sp.MatAdd) else (bias,)
        out = []
        for term in terms:
            coef, mats = _split(term)
            if vector and len(mats) == 1:
                out.append((coef, mats[0]))
            elif len(mats) == 2 and isinstance(mats[1], sp.Transpose):
                left = coef * mats[0] if coef != 1 else mats[0]
                out.append((left, mats[1].arg))
            else:
                raise _NoChunkedForm(f"the input term {sp.sstr(term)[:60]} is not an outer "
                                     "product")
        return out

    def affine_chunked(self) -> list[str]:
        fam = self.family
        bias = fam.param("bias")
        if isinstance(bias, sp.ZeroMatrix):
            raise _NoChunkedForm("the state has no input term")
        terms = self._bias_terms(bias, vector=self.rule.form.kind == "vector")
        gate = fam.param("decay")
        query = self._read_query()
        printer = TorchPrinter(self.names())
        outputs = [("query", query)]
        log_decay = None
        if gate != 1:
            log_decay = "log_decay"
        for i, (u, w) in enumerate(terms):
            outputs += [(f"value{i}", u), (f"key{i}", w)]
        if fam.family is KernelFamily.DELTA:
            if len(terms) != 1 or terms[0][1] != fam.param("key"):
                raise _NoChunkedForm("the input term's key is not the delta rule's key")
            if fam.param("decay_kind") != "scalar":
                raise _NoChunkedForm("the chunked delta form takes a scalar decay")
            outputs.append(("rate", fam.param("beta")))
        lines = self._chunk_unpack() + ["ref = nl.reference(tokens)"]
        computed, v = self._bind(printer, outputs)
        lines += computed
        if log_decay:  # log of the gate, finite (with a zero gradient) where the gate is 0
            lines.append(f"log_decay = nl.log_gate({printer.expr(gate)})")
            v[log_decay] = log_decay
        (name, _), = self.rule.states
        state = f"state[{name!r}]"
        is_vec = self.rule.form.kind == "vector"
        if is_vec:  # a vector memory z is the one-row matrix z^T
            lines.append(f"S = {state}.mT")
            state = "S"
        kind = "flat" if fam.param("decay_kind") == "scalar" else "vec"
        decay = f"nl.{kind}({v[log_decay]}, ref)" if log_decay else "None"
        rb = self.rule.read_before
        kernel = self._kernel_plan(fam, terms, is_vec)
        if kernel is not None:
            beta = f", beta=nl.flat({v['rate']}, ref)" if fam.family is KernelFamily.DELTA else ""
            g = f", g={decay}" if log_decay else ""
            # training-length inputs skip the recurrent kernel where chunked kernels exist
            form = "" if rb else (f", chunked=\"{fam.family.value}/"
                                  f"{'none' if gate == 1 else fam.param('decay_kind')}\"")
            lines += [
                f"if nl.use_triton(ref{form}):  # CUDA: the fused recurrent Triton kernel",
                f"    kernels = nl.kernels(__file__, {kernel.module!r})",
                f"    o, S = kernels.fused_recurrent(nl.vec({v['query']}, ref), "
                f"nl.vec({v['key0']}, ref), nl.vec({v['value0']}, ref){g}{beta}, "
                f"initial_state={state}, output_final_state=True)",
                f"    return o.unsqueeze(-1).to(ref.dtype), {{{name!r}: S}}"]
            self.triton = kernel
        if fam.family is KernelFamily.DELTA:
            lines.append(f"o, S = nl.delta_chunked(nl.vec({v['query']}, ref), "
                         f"nl.vec({v['key0']}, ref), nl.vec({v['value0']}, ref), "
                         f"nl.flat({v['rate']}, ref), {decay}, "
                         f"initial_state={state}, read_before={rb}, chunk_size=chunk_size)")
        else:
            lines.append("o = 0")
            for i in range(len(terms)):
                value = f"nl.vec({v[f'value{i}']}, ref)"
                lines.append(f"o_i, S = nl.decay_chunked(nl.vec({v['query']}, ref), "
                             f"nl.vec({v[f'key{i}']}, ref), {value}, "
                             f"{decay}, initial_state={state}, read_before={rb}, "
                             "chunk_size=chunk_size)")
                lines.append("o = o + o_i")
                state = "S"
        final = "S.mT" if is_vec else "S"
        lines.append(f"return o.unsqueeze(-1), {{{name!r}: {final}}}")
        return _used(lines)

    def _kernel_plan(self, fam, terms, is_vec):
        """The Triton recurrent kernel for this level, when the family and form have one."""
        if not self.kernels or is_vec or len(terms) != 1:
            return None
        (_, S), = self.rule.states
        if S.shape[1] > 256:  # the kernels hold the key axis in one tile (docs/triton.md)
            return None
        from nlc.emit.triton_render import RecurrentKernelPlan
        decay = "none" if fam.param("decay") == 1 else fam.param("decay_kind")
        if fam.family is KernelFamily.ELEMENTWISE:
            error = fam.param("error")
            if error.free_symbols - set(ERROR_ARGS):  # the kernels take numbers only
                return None
            error = error.xreplace(dict(zip(ERROR_ARGS, sp.symbols("p y"))))
            return RecurrentKernelPlan("elementwise", decay, read_before=self.rule.read_before,
                                       error=error, order=fam.param("order"))
        return RecurrentKernelPlan(fam.family.value, decay, read_before=self.rule.read_before)

    def recurrent_kernel(self) -> list[str]:
        """Families with a fused recurrent kernel but no chunked PyTorch algorithm (dplr, an
        elementwise error): CUDA tensors go to the kernel, others to the token loop."""
        fam = self.family
        if fam.family is KernelFamily.DPLR:
            bias = fam.param("bias")
            if isinstance(bias, sp.ZeroMatrix):
                raise _NoChunkedForm("the state has no input term")
            terms = self._bias_terms(bias, vector=False)
            outputs = [("a", fam.param("a")), ("b", fam.param("b"))]
        else:
            terms = [(fam.param("target"), fam.param("key"))]
            outputs = [("rate", fam.param("rate"))]
        kernel = self._kernel_plan(fam, terms, False)
        if kernel is None:
            return []
        gate = fam.param("decay")
        outputs = [("query", self._read_query()), ("value0", terms[0][0]),
                   ("key0", terms[0][1])] + outputs
        if gate != 1:
            outputs.append(("log_decay", sp.log(gate)))
        kind = "flat" if fam.param("decay_kind") == "scalar" else "vec"
        fused, v = self._bind(TorchPrinter(self.names()), outputs)
        args = [f"nl.vec({v['query']}, ref)", f"nl.vec({v['key0']}, ref)",
                f"nl.vec({v['value0']}, ref)"]
        if gate != 1:
            args.append(f"g=nl.{kind}({v['log_decay']}, ref)")
        if fam.family is KernelFamily.DPLR:
            args += [f"a=nl.vec({v['a']}, ref)", f"b=nl.vec({v['b']}, ref)"]
        else:
            args.append(f"beta=nl.flat({v['rate']}, ref)")
        (name, _), = self.rule.states
        self.triton = kernel
        lines = self._chunk_unpack() + ["ref = nl.reference(tokens)"]
        lines.append("if nl.use_triton(ref):  # CUDA tensors: the fused recurrent Triton kernel")
        args += [f"initial_state=state[{name!r}]", "output_final_state=True"]
        lines += [f"    {line}" for line in fused] + [
            f"    kernels = nl.kernels(__file__, {kernel.module!r})",
            f"    o, S = kernels.fused_recurrent({', '.join(args)})",
            f"    return o.unsqueeze(-1).to(ref.dtype), {{{name!r}: S}}",
            f"return nl.recurrent({self.prefix}_step, tokens, state, consts=consts)"]
        return _used(lines)

    def frozen_split(self) -> dict[str, list[str]]:
        """Hoist every subterm that depends on the anchors but not on the running state: it
        is computed for all tokens of a chunk at once (`drive`); the rest runs per token."""
        current = set(self.state_names) | {f"{n}_next" for n in self.state_names}
        anchors = set(self.anchor_names)
        table: dict = {}
        memo: dict = {}

        def names_of(e):
            if e not in memo:
                memo[e] = free_names([e])
            return memo[e]

        def hoist(e):
            if isinstance(e, (sp.Symbol, sp.MatrixSymbol)) or e.is_number:
                return e
            used = names_of(e)
            if used & anchors and not used & current:
                if e not in table:
                    name = f"drive{len(table)}"
                    table[e] = (sp.MatrixSymbol(name, *e.shape)
                                if isinstance(e, sp.MatrixExpr) else sp.Symbol(name))
                return table[e]
            if isinstance(e, ElementwiseApplyFunction):
                return ElementwiseApplyFunction(e.function, hoist(e.expr))
            if not e.args:
                return e
            return e.func(*[hoist(a) for a in e.args])

        combined = [(n, hoist(e)) for n, e in self.rule.next_state]
        if not table:
            raise _NoChunkedForm("nothing depends on the chunk-start state")
        self._table, self._combined = table, combined
        self._combine_uses = free_names([e for _, e in combined])
        drive_names = {sym.name: sym.name for sym in table.values()}
        drive = self._inputs_unpack() + TorchPrinter(self.names(), chunk=True).assign(
            [(sym.name, e) for e, sym in table.items()])
        drive.append("return {" + ", ".join(f"{s.name!r}: {s.name}" for s in table.values())
                     + "}")
        combine = _unpack(self.state_names, "state") + self._inputs_unpack(anchors=False)
        combine += [f"{n} = inputs[{n!r}]" for n in drive_names]  # the compiler's names
        combine += TorchPrinter(self.names(drive_names)).assign(
            [(f"{local(n)}_next", e) for n, e in combined])
        combine.append("return {" + ", ".join(f"{n!r}: {local(n)}_next"
                                              for n in self.state_names) + "}")
        read_names = self.names({f"{n}_next": local(n) for n in self.state_names})
        read = _unpack(self.state_names, "states") + self._inputs_unpack()
        read += TorchPrinter(read_names, chunk=True).assign([("o", self.read)])
        read.append("return o")
        return {"drive": _used(drive), "combine": _used(combine), "read": _used(read)}

    def _outer_terms(self):
        """Each chunk-start term as a sum of per-token outer products: (term name, [(column
        name, column expr, row name, row expr) or (name, expr) for a term that is none])."""
        for e, sym in self._table.items():
            terms = []
            for i, term in enumerate(e.args if isinstance(e, sp.MatAdd) else (e,)):
                split = _outer(term)
                name = f"{sym.name}_{i}"
                terms.append((name, term) if split is None else
                             (f"{name}_col", split[0], f"{name}_row", split[1]))
            yield sym.name, terms

    def summed_drive(self) -> list[str]:
        """`every C tokens`: the chunk-start terms summed over a piece of the chunk (axis 1).
        A term that is a column times a row per token (a gradient's outer product) is summed
        as one matrix product over the tokens (`nl.outer_sum`) instead of materializing
        every token's matrix."""
        parts, sums = [], {}
        for name, terms in self._outer_terms():
            codes = []
            for term in terms:
                parts += [term[:2], term[2:]] if len(term) == 4 else [term]
                codes.append(f"nl.outer_sum({term[0]}, {term[2]})" if len(term) == 4
                             else f"{term[0]}.sum(1)")
            sums[name] = " + ".join(codes)
        lines = self._inputs_unpack() + TorchPrinter(self.names(), chunk=True).assign(parts)
        lines += [f"{name} = {code}" for name, code in sums.items()]
        lines.append("return {" + ", ".join(f"{n!r}: {n}" for n in sums) + "}")
        return _used(lines)

    def dual_form(self) -> bool:
        """Whether the chunk has the dual form (`nl.dual_chunked`): every chunk-start term is
        a sum of per-token outer products, the combine is linear in the state and those
        terms with scalar coefficients, and the read meets the state only as `S @ column`.
        Then every token's state is a weighted sum of the chunk-start state and the chunk's
        outer products, and the read needs no per-token matrices."""
        if any(len(t) != 4 for _, terms in self._outer_terms() for t in terms):
            return False
        names = set(self.state_names) | {sym.name for sym in self._table.values()}
        if not all(_linear_in(e, names) for _, e in self._combined):
            return False
        suffix = "" if self.rule.read_before else "_next"
        return _only_left_factor(self.read, {f"{n}{suffix}" for n in self.state_names})

    def outer_drive(self) -> list[str]:
        """The chunk-start terms of every token as lists of (column, row) pairs."""
        parts, pairs = [], {}
        for name, terms in self._outer_terms():
            parts += [p for t in terms for p in (t[:2], t[2:])]
            pairs[name] = ", ".join(f"({t[0]}, {t[2]})" for t in terms)
        lines = self._inputs_unpack() + TorchPrinter(self.names(), chunk=True).assign(parts)
        lines.append("return {" + ", ".join(f"{n!r}: [{code}]" for n, code in pairs.items())
                     + "}")
        return _used(lines)

    def attention(self) -> dict:
        """The non-parametric family: softmax attention when the kernel is exp(c <q, k>)."""
        kernel, window = self.rule.role("kernel"), self.rule.role("window")
        scale = None
        if isinstance(kernel, sp.exp):
            arg = kernel.args[0]
            dots = list(arg.atoms(Dot))
            if len(dots) == 1:
                coef = sp.simplify(arg / dots[0])
                if coef.is_number:
                    scale = float(coef)
        if scale is None:
            raise NlcError(f"level '{self.rule.level}': only exponential dot-product kernels "
                           f"exp(c <q, k>) are emitted, not {sp.sstr(kernel)}")
        return {"scale": repr(scale), "window": int(window) if window else None}


def _outer(term):
    """(column, row) with term == column @ row, a scalar coefficient folded into the column;
    None when the term is not such a product."""
    coef, mats = _split(term)
    if not mats:
        return None
    product = sp.MatMul(*mats) if len(mats) > 1 else mats[0]
    factors = _factors(product)
    coef *= sp.Mul(*[f for f in factors if not isinstance(f, sp.MatrixExpr)])
    factors = [f for f in factors if isinstance(f, sp.MatrixExpr)]
    for i in range(1, len(factors)):
        # test the split on the shapes first: building every product is quadratic in depth
        if factors[i - 1].shape[1] == 1 and factors[i].shape[0] == 1:
            col, row = sp.MatMul(*factors[:i]), sp.MatMul(*factors[i:])
            col = col.doit() if len(factors[:i]) == 1 else col
            row = row.doit() if len(factors[i:]) == 1 else row
            return (coef * col if coef != 1 else col), row
    return None


def _linear_in(expr, names: set[str]) -> bool:
    """expr is a sum of scalar coefficients (free of `names`) times one of `names` each."""
    for term in _summands(expr):
        coef, mats = _split(term)
        if len(mats) != 1 or not isinstance(mats[0], sp.MatrixSymbol) \
                or mats[0].name not in names or free_names([coef]) & names:
            return False
    return True


def _factors(product) -> list:
    """The factors of a (nested) product, in order."""
    if not isinstance(product, sp.MatMul):
        return [product]
    return [f for a in product.args for f in _factors(a)]


def _summands(expr) -> list:
    """The terms of a (nested) matrix sum, scalar factors distributed over inner sums."""
    if isinstance(expr, sp.MatAdd):
        return [t for a in expr.args for t in _summands(a)]
    if isinstance(expr, sp.MatMul):
        mats = [a for a in expr.args if isinstance(a, sp.MatrixExpr)]
        if len(mats) == 1 and isinstance(mats[0], sp.MatAdd):
            coef = sp.Mul(*[a for a in expr.args if a is not mats[0]])
            return [coef * t for t in _summands(mats[0])]
    return [expr]


def _only_left_factor(expr, names: set[str]) -> bool:
    """Every symbol of `names` in expr is the left factor of a product with one column."""
    if isinstance(expr, sp.MatrixSymbol):
        return expr.name not in names
    if isinstance(expr, sp.MatMul):
        mats = [a for a in expr.args if isinstance(a, sp.MatrixExpr)]
        if mats and isinstance(mats[0], sp.MatrixSymbol) and mats[0].name in names:
            return len(mats) == 2 and mats[1].shape[1] == 1 \
                and not isinstance(mats[1], sp.DiagMatrix) \
                and _only_left_factor(mats[1], names) \
                and not free_names([a for a in expr.args if a not in mats]) & names
    if isinstance(expr, ElementwiseApplyFunction):
        return _only_left_factor(expr.expr, names)
    return all(_only_left_factor(a, names) for a in expr.args
               if isinstance(a, sp.Basic))


class _NoChunkedForm(Exception):
    pass
