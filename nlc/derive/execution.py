"""How a classified level executes: the second half of stage `classify`.

The family says what the rule is; the execution record says how a chunk of tokens runs it,
with every expression the code needs already taken apart (docs/design.md, "Kernel families"):

- `AffineChunk`: S' = S D + sum_i v_i k_i^T (decay) or S D (I - beta k k^T) + v k^T
  (delta), read o = S q. Runs by the exact chunked algorithms.
- `JointChunk`: several states jointly affine per token through one key (a momentum delta
  rule's (S, M)), run by the chunked form of runtime/library/joint.py.
- `ProductChunk`: several delta steps per token (the product family), run by the delta
  rule's chunked form over the sequence of steps.
- `DplrChunk`: S' = S (D + a b^T) + v k^T, read o = S q (RWKV-7). Runs by the exact chunked
  algorithm of two decay-family input terms (runtime/library/chunked.py).
- `FusedRecurrent`: affine per token but with no chunked algorithm (an elementwise error):
  one fused recurrent kernel on CUDA, the token loop elsewhere.
- `FrozenSplit`: gradients taken at a chunk-start state. Every subterm that depends on the
  anchors but not on the running state is hoisted (`drive`) and computed for a whole chunk
  at once; `combine` is the rest, per token. `additive` when a chunk's terms can be summed
  before they are combined (`every C tokens`); `outer` when each hoisted term is a sum of
  per-token outer products and the dual form applies.
- `Attention`: the non-parametric family with an exponential dot-product kernel.
- `TokenLoop`: none of the above; `reason` says why.

Everything here is symbolic; nothing is printed. The plan stage (nlc/plan) reads these
records and the emit stage prints them."""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from nlc.derive.classify import (
    ERROR_ARGS,
    Classification,
    KernelFamily,
    classify,
    is_column,
    row_of,
    row_turn,
    split_shift,
    split_term,
)
from nlc.derive.expand import expand_terms
from nlc.derive.matfuncs import Dot, free_names
from nlc.derive.rule import UpdateRule

# the name of S q, the chunked forms' output, in a read that is a function of it (no spec
# name has a space)
READ_O = "S q"


@dataclass(frozen=True)
class EntrywiseScan:
    """h' = a * h + b entry by entry, a vector or diagonal memory with a scalar or
    per-channel decay whose input is not an outer product, or whose read is not the state
    applied to a query (HGRN's `read h`): every token's state by the blocked scan of
    runtime/library/entrywise_scan.py, then the read of each."""
    decay: object                   # a (1: none)
    decay_kind: str                 # scalar | channel
    bias: object                    # b, free of the state
    signed: bool = False            # a may be 0 or negative: products of gates, no logs

    def to_text(self) -> str:
        gate = "no decay" if self.decay == 1 else f"{self.decay_kind} decay {_s(self.decay)}"
        signed = " (of any sign)" if self.signed else ""
        return f"entrywise scan: h' = a h + {_s(self.bias)}, {gate}{signed}"


@dataclass(frozen=True)
class TokenLoop:
    reason: str

    def to_text(self) -> str:
        return f"token loop: {self.reason}"


@dataclass(frozen=True)
class AffineChunk:
    family: str                     # decay | delta
    query: object                   # o = S q (q scaled by the read's coefficient)
    terms: tuple[tuple[object, object], ...]   # (value, key) per outer product of the input
    decay: object                   # the gate D (1: none)
    decay_kind: str                 # scalar | channel
    beta: object | None = None      # the delta rule's rate
    transposed: bool = False        # the state is W = S^T, read q^T W: the math runs on S
    row_decay: object | None = None  # a decay per row (output channel), Diag(g) S
    rest: object | None = None      # the read's terms that do not meet the state, added
    post: object | None = None      # the read as a function of S q (READ_O), or None

    def to_text(self) -> str:
        gate = "no decay" if self.decay == 1 else f"{self.decay_kind} decay {_s(self.decay)}"
        terms = ", ".join(f"{_factor(v)} {_factor(k)}^T" for v, k in self.terms)
        beta = f", beta = {_s(self.beta)}" if self.beta is not None else ""
        on = " on the transposed state" if self.transposed else ""
        rows = f", row decay {_s(self.row_decay)}" if self.row_decay is not None else ""
        return (f"chunked {self.family}{on}: q = {_s(self.query)}, inputs {terms}, "
                f"{gate}{beta}{rows}{_rest(self.rest)}{_post(self.post)}")


@dataclass(frozen=True)
class ProductChunk:
    """n delta steps per token (`objective a then b`): n consecutive tokens of the delta
    rule, the gate on the first, the read after the last (runtime/library/substeps.py)."""

    query: object
    steps: tuple[tuple[object, object, object], ...]   # (value, key, beta) per step, in order
    decay: object                   # the first step's gate (1: none)
    decay_kind: str                 # scalar
    family: str = "delta"           # the family whose chunked form and kernels run it
    rest: object | None = None      # the read's terms that do not meet the state, added
    post: object | None = None      # the read as a function of S q (READ_O), or None

    def to_text(self) -> str:
        gate = "no decay" if self.decay == 1 else f"scalar decay {_s(self.decay)} on the first"
        steps = ", ".join(f"({_s(v)} {_s(k)}^T, beta = {_s(b)})" for v, k, b in self.steps)
        return (f"chunked delta over {len(self.steps)} steps per token: q = {_s(self.query)}, "
                f"steps {steps}, {gate}{_rest(self.rest)}{_post(self.post)}")


@dataclass(frozen=True)
class JointChunk:
    """n states of one shape, jointly affine per token through one key k:
    X_i' = sum_j X_j (mix[j][i] I + rank[j][i] k k^T) + values[i] k^T, read o = X_read q."""

    states: tuple[str, ...]
    query: object
    key: object
    values: tuple[object, ...]      # per state; None: no input term
    mix: tuple[tuple[object, ...], ...]
    rank: tuple[tuple[object, ...], ...]
    read: int                       # the index of the state read

    def to_text(self) -> str:
        parts = []
        for i, name in enumerate(self.states):
            terms = []
            for j, source in enumerate(self.states):
                factor = [f"{_s(c)}{m}" for c, m in ((self.mix[j][i], " I"),
                                                      (self.rank[j][i], " k k^T")) if c != 0]
                if factor:
                    terms.append(f"{source} ({' + '.join(factor)})")
            if self.values[i] is not None:
                terms.append(f"{_s(self.values[i])} k^T")
            parts.append(f"{name}' = " + " + ".join(terms))
        return (f"chunked joint ({', '.join(self.states)}): q = {_s(self.query)}, "
                f"k = {_s(self.key)}, read {self.states[self.read]}; " + "; ".join(parts))


@dataclass(frozen=True)
class DplrChunk:
    """S' = S (D + a b^T) + v k^T, the decay D beside the rank-one term (both act on the old
    state), read o = S q."""

    query: object
    value: object
    key: object
    a: object
    b: object
    decay: object                   # the gate D (1: none)
    decay_kind: str                 # none | scalar | channel
    family: str = "dplr"
    rest: object | None = None      # the read's terms that do not meet the state, added
    post: object | None = None      # the read as a function of S q (READ_O), or None

    def to_text(self) -> str:
        gate = "no decay" if self.decay == 1 else f"{self.decay_kind} decay {_s(self.decay)}"
        return (f"chunked dplr: q = {_s(self.query)}, input {_s(self.value)} {_s(self.key)}^T, "
                f"a = {_s(self.a)}, b = {_s(self.b)}, {gate}{_rest(self.rest)}"
                f"{_post(self.post)}")


@dataclass(frozen=True)
class FusedRecurrent:
    family: str                     # elementwise (dplr before it had a chunked form)
    query: object
    value: object
    key: object
    decay: object
    decay_kind: str                 # none | scalar | channel
    extras: tuple[tuple[str, object], ...]     # dplr: a, b; elementwise: rate
    error: object | None = None     # elementwise: e(p, y), in the kernel's p and y
    order: str | None = None        # elementwise: the prediction at S D (before) or S
    rate: str = "scalar"            # elementwise: the rate per token, or one per row
    rest: object | None = None      # the read's terms that do not meet the state, added

    def to_text(self) -> str:
        extras = ", ".join(f"{n} = {_s(e)}" for n, e in self.extras)
        error = f", error {_s(self.error)}" if self.error is not None else ""
        rows = ", one rate per row" if self.rate == "row" else ""
        return (f"fused recurrent {self.family}: q = {_s(self.query)}, {extras}{error}{rows}"
                f"{_rest(self.rest)}")


@dataclass(frozen=True)
class FrozenSplit:
    drive: tuple[tuple[object, object], ...]      # (symbol named drive<i>, hoisted term)
    combine: tuple[tuple[str, object], ...]       # (state, next value given the drives)
    additive: bool
    # per drive symbol: its summands, each (column, row) when an outer product, else (term,)
    outer: tuple[tuple[str, tuple[tuple, ...]], ...]
    dual: bool
    # per state, when every combine is affine in its own state with a scalar retention and at
    # most one rank-one erase: (state, retain, erase, left, right, input, drives) with
    # next = retain W + erase (W left) right + input (no erase: erase, left, right None); the
    # chunk then runs without a per-token loop (runtime/library/affine_chunk.py). `drives`:
    # the input as ((drive symbol's name, coefficient), ...) when it is such a sum
    transitions: tuple[tuple, ...] | None = None
    # every input is a sum of drives made of outer products: the chunk builds no per-token
    # matrix (affine_chunk.low_rank); `left_read`: the read meets the states only as S @ x
    low_rank: bool = False
    left_read: bool = False

    @property
    def kind_text(self) -> str:
        """Which frozen split, without its drives: `frozen split (dual form)`."""
        how = "summed per chunk" if self.additive else "dual form" if self.dual \
            else "affine per state, chunk-parallel" if self.transitions else "per token"
        return f"frozen split ({how})"

    def to_text(self) -> str:
        from nlc.derive.printing import paper_text
        texts, where = paper_text([e for _, e in self.drive])
        shown = "; ".join(f"{s.name} = {t}" for (s, _), t in zip(self.drive, texts))
        return f"{self.kind_text}: {shown}" + (f"; where {'; '.join(where)}" if where else "")


@dataclass(frozen=True)
class Attention:
    query: str
    key: str
    value: str
    scale: object                   # c, a number or an expression of dims; None: not exp(c <q, k>)
    window: int | None
    kernel: object = None
    decay: object = None            # decay(f): each cached token's weight times f at every later token

    def to_text(self) -> str:
        if self.scale is None:
            return f"attention: kernel {_s(self.kernel)} is not exp(c <q, k>)"
        forget = "" if self.decay is None else f", forget gate {_s(self.decay)}"
        return f"attention: softmax, scale {_s(self.scale)}, window {self.window}{forget}"


@dataclass(frozen=True)
class SolveChunk:
    """The solve family (Mesa, MesaNet): statistics H' = gamma H + k k^T and G' = gamma G +
    v k^T, both decay-family, read o = G (H + reg I)^-1 q; `cg_steps` > 0 solves the chunked
    read by that many conjugate-gradient steps, 0 exactly."""

    query: object
    key: object
    value: object
    decay: object                   # the scalar gate gamma (1: none)
    reg: object
    cg_steps: int
    names: tuple[str, str]          # the states holding H and G

    def to_text(self) -> str:
        gate = "no decay" if self.decay == 1 else f"scalar decay {_s(self.decay)}"
        how = f"{self.cg_steps} conjugate-gradient steps" if self.cg_steps else "exact solves"
        return (f"chunked solve: q = {_s(self.query)}, H += {_s(self.key)} {_s(self.key)}^T, "
                f"G += {_s(self.value)} {_s(self.key)}^T, reg {_s(self.reg)}, {gate}; the read "
                f"by {how}")


Execution = (AffineChunk | EntrywiseScan | JointChunk | ProductChunk | DplrChunk | FusedRecurrent | FrozenSplit
             | Attention | SolveChunk | TokenLoop)


@dataclass(frozen=True)
class Classified:
    """What stage `classify` returns for one level: its rule, family and execution."""

    rule: UpdateRule
    family: Classification
    execution: Execution

    def to_text(self) -> str:
        return (f"{self.rule.spec}.{self.rule.level}: {self.family.to_text()}\n"
                f"  runs as {self.execution.to_text()}\n")


def _s(e) -> str:
    """An expression as `nlc derive` prints a rule (⊙, functions by name), not as SymPy's
    internals (HadamardProduct, Lambda); an unnamed function's definition follows it (the
    named ones, silu or gelu, are defined under the rule above)."""
    from nlc.derive.printing import NAMED_FUNCTIONS, paper_text
    (text,), lines = paper_text([e])
    lines = [w for w in lines if not w.startswith(tuple(f"{n}(r) =" for n in NAMED_FUNCTIONS))]
    return f"{text} (where {'; '.join(lines)})" if lines else text


def _clipped(term, most: int = 100) -> str:
    """`_paper` of a term for a refusal: cut at a term boundary with "..." where long (it was
    cut at 60 characters, in the middle of an expression)."""
    text = _paper(term)
    if len(text) <= most:
        return text
    cut = max(text.rfind(" + ", 0, most), text.rfind(" - ", 0, most))
    return (text[:cut] if cut > 20 else text[:most]) + " ..."


def _factor(e) -> str:
    """`_s` of a column or row of an outer product, in parentheses where it is a sum."""
    return f"({_s(e)})" if isinstance(e, (sp.MatAdd, sp.Add)) else _s(e)


def _paper(e) -> str:
    """A term as `nlc derive` prints it, in ASCII for the generated code's docstring: the
    entrywise product as `.*` (c .* inp, not HadamardProduct(c, inp))."""
    from nlc.derive.printing import term_text
    return term_text(e, where=False).replace(" ⊙ ", " .* ").replace("⊙", ".*")


def _rest(rest) -> str:
    """The read's terms beside the state's, as the plan's text says them."""
    return "" if rest is None else f", read + {_s(rest)}"


def _post(post) -> str:
    """The read as a function of S q, as the plan's text says it."""
    return "" if post is None else f", read = {_s(post)}"


class _NoChunkedForm(Exception):
    pass


def execution(rule: UpdateRule, family: Classification,
              constants: frozenset[str] = frozenset()) -> Execution:
    """How `rule`, classified as `family`, runs over a chunk of tokens. `constants` name the
    spec's dims, hypers and params: values that do not change from token to token."""
    fam = family.family
    if fam is KernelFamily.NONPARAMETRIC:
        return _attention(rule)
    if rule.read is None:
        return TokenLoop("the level has no read")
    if fam is KernelFamily.SOLVE:
        try:
            return _solve(rule)
        except _NoChunkedForm as why:
            return TokenLoop(str(why))
    if family.param("steps"):  # several (k, v, beta) per token: a delta step each
        try:
            return _substeps(rule, family)
        except _NoChunkedForm as why:
            return TokenLoop(str(why))
    if fam is KernelFamily.PRODUCT and not family.param("transition"):
        return TokenLoop(f"no chunked form for these steps: {family.reason}")
    if family.param("transition"):  # n delta steps with one key: one delta / dplr transition
        fam = KernelFamily(family.param("transition"))
    turned = transposed_rule(rule)
    if turned is not None:  # read W^T q: the rule on S = W^T reads S q
        found = execution(turned, classify(turned), constants)
        if isinstance(found, AffineChunk):
            return replace(found, transposed=True)
    try:
        if fam in (KernelFamily.DECAY, KernelFamily.DELTA):
            return _affine_or_scan(rule, family, fam)
        if fam is KernelFamily.DPLR and rule.form.kind == "matrix":
            return _dplr(rule, family)
        if fam is KernelFamily.ELEMENTWISE and rule.form.kind == "matrix":
            return _fused(rule, family)
        if rule.anchors:
            return _frozen(rule, constants)
    except _NoChunkedForm as why:
        return TokenLoop(str(why))
    if family.param("row_decay") is not None and fam is KernelFamily.FROZEN_GRADIENT:
        return TokenLoop(family.reason)
    if fam is KernelFamily.JOINT:
        try:
            return _joint(rule)
        except _NoChunkedForm as why:
            states = ", ".join(n for n, _ in rule.states)
            return TokenLoop(f"the states ({states}) are jointly affine per token, but {why}")
    if fam is KernelFamily.FROZEN_GRADIENT and len(rule.states) == 1:  # why it is no
        # affine family's (an MLP's tensors are simply not affine in the state)
        return TokenLoop(f"{family.reason}, and its gradients are not frozen per chunk")
    return TokenLoop("the rule is not affine in the state and its gradients are not "
                     "frozen per chunk")


def _joint(rule: UpdateRule) -> JointChunk:
    """Several states X_i of one shape, each next state a sum of X_j, c X_j k k^T and u k^T
    terms with one key k and scalar coefficients (runtime/library/joint.py)."""
    names = [n for n, _ in rule.states]
    tensors = [X for _, X in rule.states]
    if rule.form.kind != "matrix" or len({X.shape for X in tensors}) != 1 \
            or rule.period != 1 or rule.steps:
        raise _NoChunkedForm("the joint chunked form takes matrix states of one shape, "
                             "updated every token")
    n = len(names)
    mix = [[sp.Integer(0)] * n for _ in range(n)]
    rank = [[sp.Integer(0)] * n for _ in range(n)]
    values: list = [[] for _ in range(n)]
    keys = set()
    for i, name in enumerate(names):
        for term in expand_terms(rule.next_of(name)):
            coef, mats = split_term(term)
            if any(coef.has(X) for X in tensors):
                raise _NoChunkedForm("a coefficient depends on a state")
            j = tensors.index(mats[0]) if mats and mats[0] in tensors else None
            rest = mats[1:] if j is not None else mats
            if j is not None and not rest:
                mix[j][i] += coef
            elif len(rest) == 2 and _key_row(rest[1]) is not None \
                    and (j is None or rest[0] == _key_row(rest[1])) \
                    and not any(m.has(X) for m in rest for X in tensors):
                keys.add(_key_row(rest[1]))
                if j is None:
                    values[i].append(coef * rest[0] if coef != 1 else rest[0])
                else:
                    rank[j][i] += coef
            elif j is None and (split := _outer(term)) is not None \
                    and (key := row_of(split[1])) is not None \
                    and not any(split[0].has(X) for X in tensors):  # (W_v^T x) k^T: inline
                keys.add(key)
                values[i].append(split[0])
            else:
                raise _NoChunkedForm(f"the term {_clipped(term)} is not X, X k k^T or "
                                     "v k^T")
    if len(keys) != 1:
        raise _NoChunkedForm("the states' terms do not share one key")
    if not any(values):
        raise _NoChunkedForm("the states have no input term")
    suffix = "" if rule.read_before else "_next"
    targets = [sp.MatrixSymbol(f"{m}{suffix}", *X.shape) for m, X in rule.states]
    coef, mats = split_term(rule.read)
    if len(mats) != 2 or mats[0] not in targets or any(mats[1].has(t) for t in targets):
        raise _NoChunkedForm("the read is not one state applied to a query")
    query = coef * mats[1] if coef != 1 else mats[1]
    summed = tuple(sp.MatAdd(*v).doit() if len(v) > 1 else v[0] if v else None
                   for v in values)
    return JointChunk(tuple(names), query, keys.pop(), summed,
                      tuple(tuple(row) for row in mix), tuple(tuple(row) for row in rank),
                      targets.index(mats[0]))


def _key_row(m):
    """The column k of a row k^T, else None."""
    if isinstance(m, sp.Transpose) and m.arg.shape[1] == 1:
        return m.arg
    return None


def transposed_rule(rule: UpdateRule) -> UpdateRule | None:
    """The rule of S = W^T when a matrix state W is read as W^T q (`read q @ W`), else None:
    the families' chunked forms read S q, and a transpose should not cost them."""
    if rule.form.kind != "matrix" or len(rule.states) != 1 or rule.anchors:
        return None
    (name, W), = rule.states
    target = sp.MatrixSymbol(f"{name}_next" if not rule.read_before else name, *W.shape)
    read = rule.read
    if not (isinstance(read, sp.MatMul) and len(read.args) == 2
            and read.args[0] == sp.Transpose(target)):
        return None
    S = sp.MatrixSymbol(name, W.shape[1], W.shape[0])
    swap = {W: S.T, sp.MatrixSymbol(f"{name}_next", *W.shape):
            sp.MatrixSymbol(f"{name}_next", *S.shape).T}
    next_state = tuple((n, sp.Transpose(e.xreplace(swap)).doit()) for n, e in rule.next_state)
    return replace(rule, states=((name, S),), next_state=next_state,
                   read=read.xreplace(swap).doit())


# ------------------------------------------------------------------ affine families
def _read_query(rule: UpdateRule, post: bool = False):
    """read = c * S_next q (matrix) or <z_next, q> (vector), plus terms that do not meet the
    state (RWKV-6's bonus <r, u * k> v) -> (c * q, the sum of those terms or None, None). The
    chunked forms read S q; the rest is added to each token's read. With `post`, a read that
    is a function of one product S q (`rmsnorm(S(q))`, GSA's `softmax(K(q))`) gives
    (q, None, the read with READ_O in place of S q): the chunked form computes S q, then the
    function of it."""
    (name, S), = rule.states
    target = sp.MatrixSymbol(f"{name}_next" if not rule.read_before else name, *S.shape)
    states = {S, target, sp.MatrixSymbol(f"{name}_next", *S.shape)}
    read = rule.read
    terms = read.args if isinstance(read, (sp.MatAdd, sp.Add)) else (read,)
    meets = [t for t in terms if any(t.has(X) for X in states)]
    rest = [t for t in terms if not any(t.has(X) for X in states)]
    query = _query_of(meets[0], target) if len(meets) == 1 else None
    if query is None:
        if post:
            return _read_of_product(read, target, states)
        raise _NoChunkedForm("the read is not the state applied to a query")
    rest = (sp.MatAdd(*rest).doit() if isinstance(read, sp.MatAdd) else sp.Add(*rest)) \
        if rest else None
    return query, rest, None


def _read_of_product(read, target, states):
    """(q, None, post) when the state meets the read only in one product `target * q` (a
    matrix state, a column q free of the state); else no chunked form."""
    products = {n for n in sp.preorder_traversal(read) if isinstance(n, sp.MatMul)
                and len(n.args) == 2 and n.args[0] == target and is_column(n.args[1])
                and not any(n.args[1].has(X) for X in states)}
    if len(products) == 1 and target.shape[1] != 1:
        (product,) = products
        out = sp.MatrixSymbol(READ_O, target.shape[0], 1)
        post = read.xreplace({product: out})
        if not any(post.has(X) for X in states):
            return product.args[1], None, post
    raise _NoChunkedForm("the read is not a function of the state applied to one query")


def _query_of(term, target):
    """c * target q or <target, q> -> c * q; None for any other term."""
    if isinstance(term, Dot) and target in term.args:
        return term.args[1] if term.args[0] == target else term.args[0]
    coef, mats = split_term(term)
    if len(mats) >= 2 and mats[0] == target and not any(m.has(target) for m in mats[1:]) \
            and not coef.has(target):  # a scale made of the state (a norm) is no query's
        query = mats[1] if len(mats) == 2 else sp.MatMul(*mats[1:])  # S (W_q^T x): inline
        return coef * query if coef != 1 else query
    return None


def _bias_terms(bias, vector: bool):
    terms = bias.args if isinstance(bias, sp.MatAdd) else (bias,)
    if not vector and any(isinstance(m, sp.OneMatrix) for t in terms for m in split_term(t)[1]):
        terms = _gather_keys(terms)
    out = []
    for term in terms:
        coef, mats = split_term(term)
        if vector and len(mats) == 1:
            out.append((coef, mats[0]))
        elif len(mats) == 2 and row_of(mats[1]) is not None:  # v k^T, v (beta ⊙ k)^T
            left = coef * mats[0] if coef != 1 else mats[0]
            out.append((left, row_of(mats[1])))
        elif len(mats) == 3 and isinstance(mats[0], sp.DiagMatrix) \
                and isinstance(mats[2], sp.Transpose):  # Diag(r) v k^T, a rate per row
            left = sp.HadamardProduct(mats[0].args[0], mats[1])
            out.append((coef * left if coef != 1 else left, mats[2].arg))
        elif (split := _outer(term)) is not None and row_of(split[1]) is not None:
            out.append((split[0], row_of(split[1])))  # (W_v^T x) k^T: a column made inline
        else:
            raise _NoChunkedForm(f"the input term {_clipped(term)} is not an outer "
                                 "product")
    return tuple(out)


def _gather_keys(terms) -> tuple:
    """A key with a constant part, `S(1 - a)`, reaches the input as v 1^T - v a^T: the row
    of ones alone is no key a chunked form takes. The terms with the same column are one
    outer product again, v (1 - a)^T."""
    keys: dict = {}
    for term in terms:
        coef, mats = split_term(term)
        if len(mats) != 2 or not isinstance(mats[1], (sp.Transpose, sp.OneMatrix)):
            return terms
        row = mats[1].T if isinstance(mats[1], sp.OneMatrix) else mats[1].arg
        keys.setdefault(mats[0], []).append(coef * row if coef != 1 else row)
    return tuple(sp.MatMul(col, sp.Transpose(sp.MatAdd(*rows))) for col, rows in keys.items())


def _merge_rows(terms) -> tuple:
    """Input terms (column, row) with the same row as one term, their columns summed: a
    target written as a difference, l2(S(k), v - u), reaches the input as beta v k^T -
    beta u k^T, one outer product with the column beta (v - u)."""
    rows: dict = {}
    for left, row in terms:
        rows.setdefault(row, []).append(left)
    return tuple((lefts[0] if len(lefts) == 1 else sp.MatAdd(*lefts), row)
                 for row, lefts in rows.items())


def _affine(rule, family: Classification, fam: KernelFamily) -> AffineChunk:
    if family.param("signed"):
        raise _NoChunkedForm("its gate per channel is a sum of decay terms (1 - r k^2 for an "
                             "l2 step), which may be 0 or negative, and the chunked forms "
                             "take log decays")
    bias = family.param("bias")
    if isinstance(bias, sp.ZeroMatrix):
        raise _NoChunkedForm("the state has no input term")
    terms = _bias_terms(bias, vector=rule.form.kind == "vector")
    query, rest, post = _read_query(rule, post=True)
    beta = None
    if fam is KernelFamily.DELTA:
        terms = _merge_rows(terms)  # l2(S(k), v - u): beta v k^T - beta u k^T, one key
        if len(terms) != 1 or terms[0][1] != family.param("key"):
            raise _NoChunkedForm("the input term's key is not the delta rule's key")
        beta = family.param("beta")
    return AffineChunk(fam.value, query, terms, family.param("decay"),
                       family.param("decay_kind"), beta, row_decay=family.param("row_decay"),
                       rest=rest, post=post)


def _affine_or_scan(rule, family: Classification, fam: KernelFamily):
    """The decay family's chunked form; for a vector or diagonal memory that it does not take
    (an entrywise input, a bare read), the entrywise scan."""
    try:
        return _affine(rule, family, fam)
    except _NoChunkedForm:
        if fam is not KernelFamily.DECAY or rule.form.kind not in ("vector", "diagonal") \
                or len(rule.states) != 1 or rule.anchors or rule.period != 1 \
                or family.param("row_decay") is not None \
                or family.param("decay_kind") not in ("scalar", "channel"):
            raise
        return EntrywiseScan(family.param("decay"), family.param("decay_kind"),
                             family.param("bias"), bool(family.param("signed")))


def _substeps(rule, family: Classification) -> ProductChunk:
    """The product family's delta steps as consecutive tokens of the delta rule."""
    if family.param("decay_kind") != "scalar":
        raise _NoChunkedForm("the chunked delta form takes a scalar decay")
    steps = []
    for i, (beta, key, bias) in enumerate(family.param("steps")):
        if isinstance(bias, sp.ZeroMatrix):
            raise _NoChunkedForm(f"step {i + 1} has no input term")
        terms = _merge_rows(_bias_terms(bias, vector=False))
        if len(terms) != 1 or terms[0][1] != key:
            raise _NoChunkedForm(f"the input term's key of step {i + 1} is not its delta key")
        steps.append((terms[0][0], key, beta))
    query, rest, post = _read_query(rule, post=True)
    return ProductChunk(query, tuple(steps), family.param("decay"), "scalar", rest=rest,
                        post=post)


def _dplr(rule, family: Classification) -> DplrChunk:
    """S' = S (D + a b^T) + v k^T with one input outer product."""
    if len(rule.states) != 1:
        raise _NoChunkedForm("no chunk-parallel PyTorch form")
    bias = family.param("bias")
    if isinstance(bias, sp.ZeroMatrix):
        raise _NoChunkedForm("the state has no input term")
    terms = _bias_terms(bias, vector=False)
    if len(terms) != 1:
        raise _NoChunkedForm("the input is several outer products: no dplr kernel")
    gate = family.param("decay")
    kind = "none" if gate == 1 else family.param("decay_kind")
    query, rest, post = _read_query(rule, post=True)
    return DplrChunk(query, terms[0][0], terms[0][1], family.param("a"), family.param("b"),
                     gate, kind, rest=rest, post=post)


def _fused(rule, family: Classification) -> FusedRecurrent:
    """An elementwise error: a fused recurrent kernel, no chunked algorithm."""
    if len(rule.states) != 1:
        raise _NoChunkedForm("no chunk-parallel PyTorch form")
    error = family.param("error")
    if error.free_symbols - set(ERROR_ARGS):  # the kernels take numbers only
        raise _NoChunkedForm("the error signal uses a per-token value: no fused kernel")
    error = error.xreplace(dict(zip(ERROR_ARGS, sp.symbols("p y"))))
    gate = family.param("decay")
    kind = "none" if gate == 1 else family.param("decay_kind")
    query, rest, _ = _read_query(rule)
    return FusedRecurrent("elementwise", query, family.param("target"), family.param("key"),
                          gate, kind, (("rate", family.param("rate")),), error,
                          family.param("order"), family.param("rate_kind") or "scalar", rest)


# ------------------------------------------------------------------ the solve family
def _statistic(rule: UpdateRule, name: str) -> tuple:
    """(gate, [(column, row)]) of one statistic of a solve rule, S' = gate S + sum col row^T,
    read off by classifying it as a rule of its own."""
    S = dict(rule.states)[name]
    alone = replace(rule, kind="update", states=((name, S),),
                    next_state=((name, rule.next_of(name)),), read=None, roles=())
    found = classify(alone)
    if found.family is not KernelFamily.DECAY or found.param("decay_kind") != "scalar":
        raise _NoChunkedForm(f"the statistic {name} is not S' = gamma S + v k^T with a scalar "
                             "gamma")
    bias = found.param("bias")
    if isinstance(bias, sp.ZeroMatrix):
        raise _NoChunkedForm(f"the statistic {name} has no input term")
    return found.param("decay"), _bias_terms(bias, vector=False)


def _solve(rule: UpdateRule) -> SolveChunk:
    (g_name, G), (h_name, H) = rule.states
    gate_h, h_terms = _statistic(rule, h_name)
    gate_g, g_terms = _statistic(rule, g_name)
    if len(h_terms) != 1 or h_terms[0][0] != h_terms[0][1]:
        raise _NoChunkedForm("H's input is not one k k^T")
    key = h_terms[0][1]
    if len(g_terms) != 1 or g_terms[0][1] != key or sp.simplify(gate_h - gate_g) != 0:
        raise _NoChunkedForm("G's input is not v k^T with H's key and gate")
    suffix = "" if rule.read_before else "_next"
    g_read, h_read = (sp.MatrixSymbol(f"{n}{suffix}", *m.shape)
                      for n, m in ((g_name, G), (h_name, H)))
    coef, mats = split_term(rule.read)
    if len(mats) != 3 or mats[0] != g_read or not isinstance(mats[1], sp.Inverse) \
            or mats[2].has(g_read) or mats[2].has(h_read):
        raise _NoChunkedForm("the read is not G (H + reg I)^-1 q")
    solved, reg = split_shift(mats[1].arg)
    if solved != h_read:
        raise _NoChunkedForm("the solved matrix is not H + reg I")
    query = coef * mats[2] if coef != 1 else mats[2]
    return SolveChunk(query, key, g_terms[0][0], gate_h, reg, int(rule.role("cg_steps", 0)),
                      (h_name, g_name))


# ------------------------------------------------------------------ frozen gradients
def _frozen(rule: UpdateRule, constants: frozenset[str]) -> FrozenSplit:
    states = [n for n, _ in rule.states]
    current = set(states) | {f"{n}_next" for n in states}
    anchors = {a.name for _, a in rule.anchors}
    tokens = free_names([e for _, e in rule.next_state]) - anchors - current - constants
    table: dict = {}
    memo: dict = {}

    def names_of(e):
        if e not in memo:
            memo[e] = free_names([e])
        return memo[e]

    def hoist(e, source=anchors):
        if isinstance(e, (sp.Symbol, sp.MatrixSymbol)) or e.is_number:
            return e
        used = names_of(e)
        if used & source and not used & current:
            if e not in table:
                name = f"drive{len(table)}"
                table[e] = (sp.MatrixSymbol(name, *e.shape)
                            if isinstance(e, sp.MatrixExpr) else sp.Symbol(name))
            return table[e]
        if isinstance(e, ElementwiseApplyFunction):
            return ElementwiseApplyFunction(e.function, hoist(e.expr, source))
        if not e.args:
            return e
        return e.func(*[hoist(a, source) for a in e.args])

    combined = tuple((n, hoist(e)) for n, e in rule.next_state)
    if not table:  # no term reads the chunk-start state (a dot objective every C tokens):
        # the terms of the tokens alone are the chunk's drives
        combined = tuple((n, hoist(e, tokens)) for n, e in rule.next_state)
    if not table:
        raise _NoChunkedForm("no term of the update depends on the tokens")
    drive = tuple((sym, e) for e, sym in table.items())
    outer = tuple((sym.name, tuple(_outer_or_term(t) for t in _terms(e))) for sym, e in drive)
    # `every C tokens`: each state plus chunk-start terms only, so a chunk's terms can be
    # summed before they are combined (a momentum that runs per token, U' = m U + drive, is
    # not: its chunk goes token by token)
    additive = rule.period > 1 and not (free_names([e for _, e in combined]) & tokens) \
        and all(_state_plus_terms(e, dict(rule.states)[n], current) for n, e in combined)
    dual = not additive and _dual(rule, drive, combined, outer)
    drives = {sym.name for sym, _ in drive}
    transitions = None if additive or dual else _transitions(combined, current, drives)
    pairs = {name for name, terms in outer if all(len(t) == 2 for t in terms)}
    # the pairs replace the drives: nothing but the inputs may read a drive
    low_rank = bool(transitions) and all(
        t[-1] is not None and all(d in pairs for d, _ in t[-1])
        and not free_names([e for e in t[1:5] if e is not None]) & drives
        for t in transitions)
    suffix = "" if rule.read_before else "_next"
    left_read = _only_left_factor(rule.read, {f"{n}{suffix}" for n in states})
    return FrozenSplit(drive, combined, additive, outer, dual, transitions, low_rank, left_read)


def _transitions(combined, current: set[str], drives: set[str]) -> tuple | None:
    """Each state's combine as retain W + erase (W left) right + input, the input free of
    every state (`FrozenSplit.transitions`); None when some combine is not of that form."""
    out = []
    for name, expr in combined:
        retain, erase, inputs = sp.Integer(0), None, []
        for term in _summands(expr):
            if not _uses(term, current):
                inputs.append(term)
                continue
            coef, mats = split_term(term)
            mats = [f for m in mats for f in _factors(m)]
            # a nested product's scalars (alpha in -eta (alpha W) k k^T: the decay taken
            # before the erase, `order = before`) join the coefficient
            coef *= sp.Mul(*[f for f in mats if not isinstance(f, sp.MatrixExpr)])
            mats = [f for f in mats if isinstance(f, sp.MatrixExpr)]
            if _uses(coef, current) or not mats \
                    or not (isinstance(mats[0], sp.MatrixSymbol) and mats[0].name == name) \
                    or _uses(sp.MatMul(*mats[1:]) if mats[1:] else sp.Integer(0), current):
                return None
            if len(mats) == 1:
                retain += coef
                continue
            split = _outer(sp.MatMul(*mats[1:]))
            if split is None or erase is not None:
                return None
            left, right = split
            erase = (coef, left, right)
        if not inputs:
            return None
        term = sp.MatAdd(*inputs) if len(inputs) > 1 else inputs[0]
        summed = []
        for t in inputs:
            coef, mats = split_term(t)
            if len(mats) != 1 or not isinstance(mats[0], sp.MatrixSymbol) \
                    or mats[0].name not in drives:
                summed = None
                break
            summed.append((mats[0].name, coef))
        out.append((name, retain, *(erase or (None, None, None)), term,
                    None if summed is None else tuple(summed)))
    return tuple(out)


def _uses(e, names: set[str]) -> bool:
    """Whether e depends on any of `names`."""
    return bool(free_names([e]) & names)


def _terms(e):
    return e.args if isinstance(e, sp.MatAdd) else (e,)


def _state_plus_terms(e, state, current: set[str]) -> bool:
    """Whether a next state `e` is `state` plus terms that read no state."""
    terms = e.args if isinstance(e, (sp.MatAdd, sp.Add)) else (e,)
    rest = [t for t in terms if t != state]
    return len(rest) == len(terms) - 1 and not free_names(rest) & current


def _outer_or_term(term) -> tuple:
    split = _outer(term)
    return (term,) if split is None else split


def _dual(rule, drive, combined, outer) -> bool:
    """Whether the chunk has the dual form (`nl.dual_chunked`): every chunk-start term is
    a sum of per-token outer products, the combine is linear in the state and those
    terms with scalar coefficients, and the read meets the state only as `S @ column`.
    Then every token's state is a weighted sum of the chunk-start state and the chunk's
    outer products, and the read needs no per-token matrices."""
    if any(len(t) != 2 for _, terms in outer for t in terms):
        return False
    states = {n for n, _ in rule.states}
    names = states | {sym.name for sym, _ in drive}
    if not all(_linear_in(e, names) for _, e in combined):
        return False
    suffix = "" if rule.read_before else "_next"
    return _only_left_factor(rule.read, {f"{n}{suffix}" for n in states})


def _outer(term):
    """(column, row) with term == column @ row, a scalar coefficient folded into the column;
    None when the term is not such a product."""
    coef, mats = split_term(term)
    if not mats:
        return None
    product = sp.MatMul(*mats) if len(mats) > 1 else mats[0]
    factors = _factors(product)
    coef *= sp.Mul(*[f for f in factors if not isinstance(f, sp.MatrixExpr)])
    factors = [f for f in factors if isinstance(f, sp.MatrixExpr)]
    # the split is found on the shapes first: building every product is quadratic in depth
    i = row_turn(factors)
    if i is None:
        return None
    col, row = sp.MatMul(*factors[:i]), sp.MatMul(*factors[i:])
    col = col.doit() if len(factors[:i]) == 1 else col
    row = row.doit() if len(factors[i:]) == 1 else row
    return (coef * col if coef != 1 else col), row


def _linear_in(expr, names: set[str]) -> bool:
    """expr is a sum of scalar coefficients (free of `names`) times one of `names` each."""
    for term in _summands(expr):
        coef, mats = split_term(term)
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


# ------------------------------------------------------------------ attention
def softmax_scale(kernel):
    """c where a cache's kernel is exp(c <q, k>) with c a number or an expression of dims
    (softmax attention), else None."""
    if isinstance(kernel, sp.exp):
        arg = kernel.args[0]
        dots = list(arg.atoms(Dot))
        if len(dots) == 1:
            coef = sp.simplify(arg / dots[0])
            if not coef.has(Dot) and not coef.atoms(sp.MatrixSymbol) \
                    and all(s.is_positive for s in coef.free_symbols):  # numbers and dims
                return coef
    return None


def _attention(rule: UpdateRule) -> Attention:
    """The non-parametric family: softmax attention when the kernel is exp(c <q, k>)."""
    kernel, window = rule.role("kernel"), rule.role("window")
    scale = softmax_scale(kernel)
    roles = [rule.role(r) for r in ("query", "key", "value")]
    names = [r.name if isinstance(r, (sp.Symbol, sp.MatrixSymbol)) else "" for r in roles]
    return Attention(*names, scale, int(window) if window else None, kernel,
                     rule.role("gate"))


__all__ = ["AffineChunk", "Attention", "Classified", "DplrChunk", "Execution", "FrozenSplit",
           "FusedRecurrent", "JointChunk", "ProductChunk", "SolveChunk", "TokenLoop", "execution"]
