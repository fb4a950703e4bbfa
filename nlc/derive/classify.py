"""Stage `classify`: an `UpdateRule` -> its kernel family and the family's parameters.

For one-tensor memories the next state is expanded and split into S-terms and S-free
terms, S' = S A + B (docs/design.md, "Kernel families"). The right factors of the S-terms say the
family: identity or diagonal factors only -> decay; a decay factor times (I - b k k^T) ->
delta; a decay factor plus a rank-one term -> dplr. Rules that are not affine in one
tensor (MLP memories, momentum buffers, elementwise non-quadratic losses, frozen gradients)
are frozen-gradient, except a matrix memory stepped on an elementwise loss at the current
state (lp, entrywise huber), S' = S D - r f(P k - y) k^T: family elementwise, as is an l2
step with a rate per row, S' = S D - Diag(r) (P k - y) k^T (each row its own delta rule). Several
rank-one terms with one key (n delta steps per token) are the product family, which is one
delta or dplr transition per token. The exact ridge solve and the non-parametric solution
have their own. Several states, each next state a sum of terms holding at most one state as a
plain factor (a momentum delta rule's (S, M)), are jointly affine: family joint."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from nlc.derive.budget import time_budget
from nlc.derive.expand import expand_terms
from nlc.derive.matfuncs import Dot, free_names
from nlc.derive.printing import sstr
from nlc.derive.rule import UpdateRule
from nlc.derive.symbols import internal

# the elementwise family's error e(p, y): the prediction and the target
ERROR_ARGS = (sp.Symbol(internal("p")), sp.Symbol(internal("y")))


class KernelFamily(Enum):
    DECAY = "decay"
    DELTA = "delta"
    DPLR = "dplr"
    PRODUCT = "product"
    ELEMENTWISE = "elementwise"
    JOINT = "joint"
    FROZEN_GRADIENT = "frozen-gradient"
    NONPARAMETRIC = "nonparametric"
    SOLVE = "solve"


@dataclass(frozen=True)
class Classification:
    family: KernelFamily
    params: tuple[tuple[str, object], ...]
    reason: str

    def param(self, name, default=None):
        return dict(self.params).get(name, default)

    def to_text(self) -> str:
        shown = ", ".join(f"{k}={_shown(v)}" for k, v in self.params)
        return f"{self.family.value}" + (f" ({shown})" if shown else "") + f": {self.reason}"


def _shown(value) -> str:
    """A parameter as the rule prints (⊙, named functions), not as SymPy's repr
    (HadamardProduct(Lambda(r, sqrt(r)).(v), g))."""
    if isinstance(value, sp.Basic) and not value.is_Atom:
        from nlc.derive.printing import term_text
        return term_text(value)
    return sstr(value)


def split_term(term):
    """A term -> (scalar coefficient, list of matrix factors); a row times a column inside
    the product (a^T b, as in S k k^T k k^T) moves to the coefficient as Dot(a, b)."""
    if isinstance(term, sp.MatrixSymbol):
        return sp.Integer(1), [term]
    if isinstance(term, sp.MatMul):
        scalars = [a for a in term.args if not isinstance(a, sp.MatrixExpr)]
        mats = []
        for m in (a for a in term.args if isinstance(a, sp.MatrixExpr)):
            if mats and is_column(m) and isinstance(mats[-1], sp.Transpose) \
                    and is_column(mats[-1].arg):
                scalars.append(Dot(mats.pop().arg, m))
            else:
                mats.append(m)
        return sp.Mul(*scalars), mats
    if isinstance(term, sp.MatrixExpr):
        return sp.Integer(1), [term]
    return term, []


def split_shift(matrix) -> tuple:
    """M + c I -> (M, c): the identity terms' coefficients summed (0 without one); M is None
    when nothing but identity terms is left."""
    terms = matrix.args if isinstance(matrix, sp.MatAdd) else (matrix,)
    shift, rest = sp.Integer(0), []
    for t in terms:
        coef, mats = split_term(t)
        if len(mats) == 1 and isinstance(mats[0], sp.Identity):
            shift += coef
        else:
            rest.append(t)
    if not rest:
        return None, shift
    return (sp.MatAdd(*rest) if len(rest) > 1 else rest[0]), shift


def _over(coef, gate):
    """coef / gate, term by term: the gate is a factor of each term, which SymPy cancels on
    division. (`sp.cancel` would also expand every power of a sum in the coefficient: a rate
    `((a + b + 1)/4)^64` into thousands of monomials.)"""
    return sp.Add(*[t / gate for t in sp.Add.make_args(coef)])


def _divided(coef, quotient, gate) -> bool:
    """Whether `quotient` (coef / gate) divides by the gate or a factor of it where coef did
    not: a rate written at the old state (`order = parallel`, S (a I - b k k^T)) is b / a as
    a delta rule's beta, infinite at a gate of 0, which the chunked forms then multiply by
    the gate's products (0 * inf = NaN). Such a rule is kept as what it is, a decay beside a
    rank-one term (family dplr)."""
    def divisors(expr):
        return {p.base for p in sp.sympify(expr).atoms(sp.Pow)
                if p.exp.is_negative and (p.base == gate or sp.sympify(gate).has(p.base))}
    return bool(divisors(quotient) - divisors(coef))


def row_of(m):
    """The column c of a row m = c^T, a transposed column or a product of transposed columns
    entry by entry ((a * k)^T, which SymPy writes a^T * k^T); None for any other factor."""
    if isinstance(m, sp.Transpose) and is_column(m.arg):
        return m.arg
    if isinstance(m, sp.HadamardProduct) and m.shape[0] == 1 \
            and all(isinstance(f, sp.Transpose) and is_column(f.arg) for f in m.args):
        return sp.HadamardProduct(*[f.arg for f in m.args])
    if isinstance(m, sp.HadamardProduct) and m.shape[0] == 1:  # with a function of a row
        return sp.HadamardProduct(*[_column_of(f) for f in m.args])  # (Comba's (beta/s)^T)
    if isinstance(m, (ElementwiseApplyFunction, sp.MatMul)) and m.shape[0] == 1:  # x^T W_k,
        return _column_of(m)                             # silu(x^T W_k): a key made inline
    return None


def _column_of(row):
    """A row (a transposed column, a scalar times one, an entrywise function of one) as
    the column it transposes."""
    if isinstance(row, sp.Transpose):
        return row.arg
    if isinstance(row, sp.MatMul):
        scalars = [a for a in row.args if not isinstance(a, sp.MatrixExpr)]
        mats = [a for a in row.args if isinstance(a, sp.MatrixExpr)]
        if len(mats) > 1:  # x^T W_a, a projection written inline: (W_a^T x)
            return sp.Mul(*scalars) * sp.Transpose(sp.MatMul(*mats)).doit()
        return sp.Mul(*scalars) * _column_of(mats[0])
    if isinstance(row, ElementwiseApplyFunction):
        return ElementwiseApplyFunction(row.function, _column_of(row.expr))
    if isinstance(row, sp.HadamardProduct):
        return sp.HadamardProduct(*[_column_of(f) for f in row.args])
    return sp.Transpose(row)


def is_column(m) -> bool:
    return isinstance(m, sp.MatrixExpr) and m.shape[1] == 1


def classify(rule: UpdateRule) -> Classification:
    with time_budget(f"level '{rule.level}' (classifying its rule)", rule.span):
        return _classify(rule)


def _classify(rule: UpdateRule) -> Classification:
    if rule.kind == "nonparametric":
        gate = rule.role("gate")  # decay(f): the cached weights forget (FoX)
        return Classification(KernelFamily.NONPARAMETRIC,
                              (("kernel", rule.role("kernel")), ("window", rule.role("window")),
                               *((("decay", gate),) if gate is not None else ())),
                              "solved over the cached tokens")
    if rule.kind == "solve":
        return Classification(KernelFamily.SOLVE, (), "exact ridge regression")
    if len(rule.states) != 1:
        if not rule.anchors and jointly_affine(rule):
            states = ", ".join(n for n, _ in rule.states)
            return Classification(KernelFamily.JOINT, (),
                                  f"the states ({states}) are jointly affine per token")
        return Classification(KernelFamily.FROZEN_GRADIENT, (),
                              f"{len(rule.states)} tensors carried per token")
    if rule.anchors:
        return Classification(KernelFamily.FROZEN_GRADIENT, (), "gradients at the chunk start")
    if rule.steps:
        return _steps(rule)
    name, S = rule.states[0]
    terms = expand_terms(rule.next_of(name))
    if S.shape[1] == 1 and any(_state_in_entrywise_sum(S, t) for t in terms):
        terms = expand_terms(rule.next_of(name), hadamard=True)  # (h ⊙ k - v) ⊙ k
    elementwise = _elementwise(S, terms)
    if elementwise is None:
        elementwise = _row_rate(S, terms)
    if elementwise is not None:
        return elementwise
    rowed = _row_decay(rule, S, terms)
    if rowed is not None:
        return rowed
    decay, rank_one, bias = [], [], []
    for term in map(_row_scaled, terms):
        if not term.has(S):
            bias.append(term)
            continue
        coef, mats = split_term(term)
        if len(mats) == 1 and isinstance(mats[0], sp.HadamardProduct) and S in mats[0].args:
            others = [a for a in mats[0].args if a != S]  # a vector state times columns
            if all(is_column(a) and not a.has(S) for a in others) and not coef.has(S):
                gate = others[0] if len(others) == 1 else sp.HadamardProduct(*others)
                decay.append(("channel", gate if coef == 1 else coef * gate))
                continue
        if not mats or mats[0] != S or any(m.has(S) for m in mats[1:]) or coef.has(S):
            return Classification(KernelFamily.FROZEN_GRADIENT, (), _not_affine(S, term))
        rest = mats[1:]
        diag = [m for m in rest[:1] if isinstance(m, sp.DiagMatrix)]
        tail = rest[len(diag):]
        if not tail:
            if diag:
                decay.append(("channel", coef * diag[0].args[0] if coef != 1 else diag[0].args[0]))
            else:
                decay.append(("scalar", coef))
        elif (pair := _column_row(tail)) is not None:
            rank_one.append((coef, diag[0].args[0] if diag else None, *pair))
        else:
            return Classification(KernelFamily.FROZEN_GRADIENT, (), "state factor not recognised")
    if not decay:
        return Classification(KernelFamily.FROZEN_GRADIENT, (), "no decay term")
    signed = len(decay) > 1 and any(kind == "channel" for kind, _ in decay)
    if len(decay) > 1:
        decay = [_merged(S, decay)]
    kind, gate = decay[0]
    b = sp.MatAdd(*bias).doit() if bias else sp.ZeroMatrix(*S.shape)
    base = (("decay", gate), ("decay_kind", kind), ("bias", b)) + ((("signed", True),)
                                                                   if signed else ())
    if not rank_one:
        return Classification(KernelFamily.DECAY, base, f"S' = S D + B with {kind} D")
    if len(rank_one) == 1:
        coef, diag, u, w = rank_one[0]
        gate_matches = (kind == "scalar" and diag is None) or (kind == "channel" and diag is not None
                                                              and (diag == gate or sp.simplify(diag - gate) == sp.ZeroMatrix(*gate.shape)))
        beta = _over(-coef, gate if kind == "scalar" else 1)
        if u == w and gate_matches and not _divided(-coef, beta, gate):
            return Classification(KernelFamily.DELTA, base + (("beta", beta), ("key", u)),
                                  "S' = S D (I - beta k k^T) + B")
        left = u if diag is None else sp.HadamardProduct(diag, u)
        return Classification(KernelFamily.DPLR, base + (("a", coef * left), ("b", w)),
                              "S' = S (D + a b^T) + B")
    return _product(S, kind, gate, rank_one, bias, base)


def row_turn(factors: list) -> int | None:
    """The first i where the product of `factors` turns from a column (factors[:i]) to a
    row (factors[i:]): an outer product's split; None when it never does."""
    return next((i for i in range(1, len(factors))
                 if factors[i - 1].shape[1] == 1 and factors[i].shape[0] == 1), None)


def _column_row(factors: list):
    """(u, w) with the product of `factors` == u w^T, u a column and w^T a row (k k^T, or a
    key written inline, (W_k^T x) (x^T W_k)); None for any other product."""
    i = row_turn(factors)
    if i is None:
        return None
    u = factors[0] if i == 1 else sp.MatMul(*factors[:i])
    w = row_of(factors[i] if i == len(factors) - 1 else sp.MatMul(*factors[i:]))
    return (u, w) if w is not None else None


def _merged(S, decay: list) -> tuple:
    """Several decay terms as one gate: scalars summed (c S + d S = (c + d) S); with a gate
    per channel among them, S Diag(a) + c S = S Diag(a + c 1): a vector memory's l2 step,
    h - r ⊙ (h ⊙ k - v) ⊙ k, decays h by 1 - r k^2, a gate that may be 0 or negative
    (marked `signed`: the chunked forms' log decays cannot take it)."""
    if all(kind == "scalar" for kind, _ in decay):
        return "scalar", sp.Add(*[c for _, c in decay])
    n = S.shape[0] if S.shape[1] == 1 else S.shape[1]
    gates = [g if kind == "channel" else g * sp.OneMatrix(n, 1) for kind, g in decay]
    return "channel", sp.MatAdd(*gates)


def _state_in_entrywise_sum(S, term) -> bool:
    return any(isinstance(e, sp.HadamardProduct)
               and any(isinstance(a, sp.MatAdd) and a.has(S) for a in e.args)
               for e in sp.preorder_traversal(term))


def _row_scaled(term):
    """... k^T Diag(r) -> ... (r ⊙ k)^T: a rate per input channel (`gd(lr = beta)` with a
    `[d_k]` beta) scales the key of each outer product it meets, as `erase(k, beta)` writes
    it, so both spellings are the same rank-one term."""
    coef, mats = split_term(term)
    if len(mats) < 2 or not isinstance(mats[-1], sp.DiagMatrix) \
            or not isinstance(mats[-2], sp.Transpose) or not is_column(mats[-2].arg):
        return term
    row = sp.Transpose(sp.HadamardProduct(mats[-1].args[0], mats[-2].arg))
    return sp.MatMul(coef, *mats[:-2], row) if coef != 1 else sp.MatMul(*mats[:-2], row)


def _not_affine(S, term) -> str:
    """Why a term of the state's rule is not a factor times the state."""
    if _state_in_entrywise_sum(S, term):  # distributed for vector memories only
        return "the state sits in a sum under an entrywise product"
    return "not affine in the state"


def jointly_affine(rule: UpdateRule) -> bool:
    """Every next state is a sum of terms that each hold at most one state, as a plain
    factor (X, X^T), with a coefficient free of the states: (S, M) of a momentum delta rule."""
    names = {n for n, _ in rule.states}
    for _, expr in rule.next_state:
        expanded = expr.expand()
        for term in expanded.args if isinstance(expanded, sp.MatAdd) else (expanded,):
            coef, mats = split_term(term)
            hits = [m for m in mats if free_names([m]) & names]
            plain = all(isinstance(m.arg if isinstance(m, sp.Transpose) else m,
                                   sp.MatrixSymbol) for m in hits)
            if free_names([coef]) & names or len(hits) > 1 or not plain:
                return False
    return True


def _product(S, kind, gate, rank_one, bias, base) -> Classification:
    """Several rank-one terms: n delta steps per token (`gd(steps = n)`). With one key for
    every step, (I - b k k^T)^n = I - c k k^T for a scalar c, so the product of the steps'
    transitions is one delta (or dplr) transition and their inputs one outer product v' k^T
    (Siems et al., DeltaProduct, arXiv:2502.10297, 2025, with n equal Householder factors)."""
    reason = f"{len(rank_one)} rank-one terms"
    keys = {w for *_, w in rank_one}
    bias_terms = [split_term(t) for t in bias]
    if len(keys) != 1 or any(len(m) != 2 or not isinstance(m[1], sp.Transpose)
                             or m[1].arg not in keys for _, m in bias_terms):
        return Classification(KernelFamily.PRODUCT, base + (("rank", len(rank_one)),),
                              reason + " per token with several keys, all at the state "
                              "before the token (an omega window's tokens, an erase beside "
                              "an l2 loss)")
    reason += ": a product of delta steps per token"
    (key,) = keys
    value = sp.MatAdd(*[c * m[0] if c != 1 else m[0] for c, m in bias_terms]) if bias_terms \
        else sp.ZeroMatrix(*S.shape[:1], 1)
    base = tuple((n, v) for n, v in base if n != "bias") + (("bias", value * key.T),)
    diag_ok = all((kind == "scalar" and d is None) or (kind == "channel" and d == gate)
                  for _, d, _, _ in rank_one)
    total = sp.Add(*[c for c, *_ in rank_one])
    beta = _over(-total, gate) if kind == "scalar" else -total
    if diag_ok and all(u == key for _, _, u, _ in rank_one) and not _divided(-total, beta,
                                                                             gate):
        return Classification(KernelFamily.PRODUCT, base + (("beta", beta), ("key", key),
                                                           ("rank", len(rank_one)),
                                                           ("transition", "delta")),
                               reason + ", one key: S' = S D (I - beta k k^T) + v' k^T")
    left = sp.MatAdd(*[c * (u if d is None else sp.HadamardProduct(d, u))
                       for c, d, u, _ in rank_one])
    return Classification(KernelFamily.PRODUCT, base + (("a", left), ("b", key),
                                                       ("rank", len(rank_one)),
                                                       ("transition", "dplr")),
                          reason + ", one key: S' = S (D + a k^T) + v' k^T")


def _row_decay(rule: UpdateRule, S, terms) -> Classification | None:
    """Diag(g) S A + B: a decay g per row (output channel) times the state, with the rest of
    the rule a right-multiplied transition. The row decay commutes with A, so the family is
    A's (decay or delta), with `row_decay` g folded into the values and reads by the chunked
    form (runtime/library/rows.py). None when no term is Diag(g) S."""
    def left(t):
        mats = split_term(t)[1]
        return mats[0] if len(mats) >= 2 and isinstance(mats[0], sp.DiagMatrix) \
            and mats[1] == S else None

    held = [t for t in terms if t.has(S)]
    pure = [t for t in held if left(t) is not None and len(split_term(t)[1]) == 2]
    if not pure:
        return None
    gate = left(pure[0])
    row = (("row_decay", gate.args[0]),)
    if any(left(t) != gate for t in held):
        return Classification(KernelFamily.FROZEN_GRADIENT, row,
                              "a decay per row (output channel) that multiplies only some of "
                              "the state's terms (order = parallel): each row has its own "
                              "transition, no chunked form")
    stripped = []
    for t in terms:
        coef, mats = split_term(t)
        stripped.append(coef * sp.MatMul(*mats[1:]) if t.has(S) else t)
    name = rule.states[0][0]
    inner = _classify(replace(rule, next_state=((name, sp.MatAdd(*stripped)),)))
    if inner.family not in (KernelFamily.DECAY, KernelFamily.DELTA) \
            or inner.param("decay_kind") != "scalar":
        what = f"{inner.family.value} ({inner.reason})" \
            if inner.family not in (KernelFamily.DECAY, KernelFamily.DELTA) \
            else "a transition with a decay per input channel"
        return Classification(KernelFamily.FROZEN_GRADIENT, row,
                              f"a decay per row (output channel) on {what}: no chunked form")
    scalar = inner.param("decay")
    folded = gate.args[0] if scalar == 1 else scalar * gate.args[0]
    params = tuple((n, 1 if n == "decay" else v) for n, v in inner.params)
    return Classification(inner.family, params + (("row_decay", folded),),
                          inner.reason + ", and a decay per row Diag(g) S")


def _decay_term(S, term) -> tuple[str, object] | None:
    """The retention term of a step, S (kind none), c S (scalar) or S Diag(g) (channel):
    (kind, gate); None for any other term."""
    coef, mats = split_term(term)
    if coef.has(S) or not mats or mats[0] != S:
        return None
    if len(mats) == 1:
        return ("none" if coef == 1 else "scalar"), coef
    if len(mats) == 2 and isinstance(mats[1], sp.DiagMatrix) and coef == 1:
        return "channel", mats[1].args[0]
    return None


def _steps(rule: UpdateRule) -> Classification:
    """Several steps per token (`objective a then b`): each step is classified on its own,
    as a rule of the state before it. When each is a delta step, the first with the
    retention's scalar gate and the later ones ungated, the token's transition is their
    product D (I - b_1 k_1 k_1^T) ... (I - b_n k_n k_n^T): n delta "tokens" in a row
    (Siems et al., DeltaProduct, arXiv:2502.10297, 2025, with n Householder factors)."""
    (name, S), = rule.states
    found = []
    for i, step in enumerate(rule.steps):
        one = replace(rule, next_state=((name, step.xreplace({rule.step_state: S})),),
                      steps=(), step_state=None)
        family = _classify(one)
        found.append(family)
        if family.family is not KernelFamily.DELTA or (i and family.param("decay") != 1):
            what = "a gated delta step" if family.family is KernelFamily.DELTA \
                else f"{family.family.value} ({family.reason})"
            return Classification(KernelFamily.PRODUCT, (("rank", len(rule.steps)),),
                                  f"{len(rule.steps)} steps per token; step {i + 1} is {what}, "
                                  f"not {'an ungated' if i else 'a'} delta step")
    first = found[0]
    pairs = tuple((f.param("beta"), f.param("key"), f.param("bias")) for f in found)
    params = (("decay", first.param("decay")), ("decay_kind", first.param("decay_kind")),
              ("steps", pairs), ("rank", len(pairs)), ("transition", "delta"))
    return Classification(KernelFamily.PRODUCT, params,
                          f"{len(pairs)} delta steps per token: S' = S D (I - b_1 k_1 k_1^T) "
                          f"... (I - b_{len(pairs)} k_{len(pairs)} k_{len(pairs)}^T) + B")


def _elementwise(S, terms) -> Classification | None:
    """S' = S D - r f(P k - y) k^T with f elementwise (the gradient of an elementwise loss
    such as lp or entrywise huber, Miras eqs. 11-14) and P = S D (order before) or S
    (parallel); None for any other shape. f may use no per-token value (it is compiled
    into the kernel), r is a scalar per token."""
    errors = [t for t in terms if any(e.has(S) for e in t.atoms(ElementwiseApplyFunction))]
    rest = [t for t in terms if t not in errors]
    if len(errors) != 1 or len(rest) != 1:
        return None
    found = _decay_term(S, rest[0])
    if found is None:
        return None
    kind, gate = found
    rate, mats = split_term(errors[0])
    if len(mats) != 2 or not isinstance(mats[0], ElementwiseApplyFunction) \
            or not isinstance(mats[1], sp.Transpose) or not is_column(mats[1].arg) \
            or rate.has(S) or mats[1].arg.has(S):
        return None
    error, key = mats[0], mats[1].arg
    f = error.function
    if f.free_symbols or len(f.variables) != 1:
        return None
    inner = expand_terms(error.expr)
    preds = [t for t in inner if t.has(S)]
    if len(preds) != 1:
        return None
    pc, pm = split_term(preds[0])
    at_old = pc == 1 and pm == [S, key]
    at_decayed = (kind == "scalar" and pc == gate and pm == [S, key]) or \
        (kind == "channel" and pc == 1 and pm == [S, sp.DiagMatrix(gate), key])
    if not (at_old or at_decayed):
        return None
    targets = [t for t in inner if not t.has(S)]
    target = -sp.MatAdd(*targets) if targets else sp.ZeroMatrix(*S.shape[:1], 1)
    p, y = ERROR_ARGS
    order = "before" if at_decayed or kind == "none" else "parallel"
    params = (("decay", gate), ("decay_kind", kind), ("order", order), ("rate", -rate),
              ("key", key), ("target", target), ("error", f(p - y)))
    return Classification(KernelFamily.ELEMENTWISE, params,
                          f"S' = S D - r e(p, y) k^T, e elementwise, p = "
                          f"{'S D' if order == 'before' else 'S'} k")


def _row_rate(S, terms) -> Classification | None:
    """S' = S D - Diag(r) (P k - y) k^T, an l2 (or dot) step with one rate per row (output
    channel) r, P = S D (order before) or S (parallel): each row is its own delta rule, so
    S' is not S A + B and no chunked delta form applies; it is the elementwise family with
    a rate per row and e(p, y) = p - y (Longhorn's per-channel beta, arXiv:2407.14207).
    None for any other shape."""
    def left_diag(t):
        mats = split_term(t)[1]
        return mats[0] if len(mats) > 1 and isinstance(mats[0], sp.DiagMatrix) else None

    rowed = [t for t in terms if left_diag(t) is not None]
    rest = [t for t in terms if left_diag(t) is None]
    if not rowed or len({left_diag(t) for t in rowed}) != 1 or len(rest) != 1:
        return None
    found = _decay_term(S, rest[0])
    if found is None:
        return None
    kind, gate = found
    rate = left_diag(rowed[0]).args[0]
    preds, targets = [], []
    for t in rowed:
        c, m = split_term(t)
        (preds if t.has(S) else targets).append((c, m[1:]))
    if len(preds) != 1 or any(len(m) != 2 or row_of(m[1]) is None for _, m in targets):
        return None
    c, m = preds[0]
    if len(m) < 3 or m[0] != S or row_of(m[-1]) is None or m[-2] != row_of(m[-1]) \
            or c.has(S):
        return None
    key, middle = m[-2], m[1:-2]
    if any(row_of(tm[1]) != key for _, tm in targets):
        return None
    # the step's coefficient: the targets' (y k^T, times the rate and the loss's scale);
    # the prediction's is the same at P = S and gate times it at P = gate S (order before)
    step = targets[0][0] if targets else -c
    if kind == "channel" and middle == [sp.DiagMatrix(gate)] and -c == step:
        order = "before"
    elif middle:
        return None
    elif kind == "scalar" and sp.simplify(c + gate * step) == 0:
        order = "before"
    elif sp.simplify(c + step) == 0:
        order = "parallel" if kind != "none" else "before"
    else:
        return None
    target = sp.MatAdd(*[(tc / step) * tm[0] for tc, tm in targets]).doit() if targets \
        else sp.ZeroMatrix(*S.shape[:1], 1)
    p, y = ERROR_ARGS
    params = (("decay", gate), ("decay_kind", kind), ("order", order),
              ("rate", step * rate if step != 1 else rate), ("rate_kind", "row"),
              ("key", key), ("target", target), ("error", p - y))
    return Classification(KernelFamily.ELEMENTWISE, params,
                          "S' = S D - Diag(r) (p - y) k^T, a rate per row (output channel), "
                          f"p = {'S D' if order == 'before' else 'S'} k")
