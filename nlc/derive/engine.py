"""Stage `derive`: a checked level -> its `UpdateRule`.

The rule is assembled from tables: the objective's elementwise loss (losses.py, SymPy
differentiates it), the memory form's chain rule (forms.py), the retention's gate or
closed form (retention.py) and the algorithm's step (`ALGORITHMS` below). Nothing here
knows a model by name."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace

import sympy as sp

from nlc.derive import retention as ret
from nlc.derive.budget import check_size, clause
from nlc.derive.forms import FORM_RULES, tensor_names, tensor_shapes
from nlc.derive.losses import P, T, error_signal, loss_derivative, loss_of
from nlc.derive.matfuncs import NewtonSchulz, RowSoftmax, free_names
from nlc.derive.printing import sstr
from nlc.derive.rule import UpdateRule
from nlc.derive.steps import delta_step_parts, repeat_delta_step
from nlc.derive.symbols import (
    Lowering,
    SymbolTable,
    add,
    elementwise,
    internal,
    is_matrix,
    matmul,
    per_channel,
    scaled,
    shifted_name,
)
from nlc.errors import NlcError
from nlc.levels.records import LevelRecord, Term
from nlc.levels.vocab import MAX_WINDOW  # also refused at check; plan reads it from here
from nlc.syntax import ast


def _scale(factor, tensor):
    return factor * tensor if not is_matrix(factor) else sp.HadamardProduct(factor, tensor)


class LevelDerivation:
    """The pieces of one level's derivation at one choice of dimensions."""

    def __init__(self, spec, level: LevelRecord, table: SymbolTable,
                 gradient: Callable | None = None):
        self.spec, self.level, self.table = spec, level, table
        self.gradient_override = gradient
        self.state = level.state
        self.form = self.state.form
        self.names = tensor_names(self.state.name, self.form)
        shapes = tensor_shapes(self.form, table)
        self.tensors = tuple(sp.MatrixSymbol(n, *s) for n, s in zip(self.names, shapes))
        kind = "matrix" if self.form.is_matrix else self.form.kind  # like(param) with inputs
        self.rule = FORM_RULES.get(kind)
        self.roles: dict[str, object] = {"objective": self.loss_term().kind}
        self.notes: list[str] = []
        self.retentions = {t.kind: t for t in level.retentions}
        self.memory_map: Callable = lambda tensors: tensors
        self.steps: tuple = ()         # `objective a then b` (`_later_steps`)
        self.step_state = None
        self.window_terms: tuple = ()  # an omega window's earlier tokens' gradients
        if "lq" in self.retentions:
            q = self.value(self.retentions["lq"].get("q"), None)
            self.memory_map = lambda tensors: tuple(ret.lq_normalize(w, q) for w in tensors)

    # ------------------------------------------------------------ lowering
    def lowering(self, tensors, shift: int = 0) -> Lowering:
        """Lower expressions with the memory applied at `tensors`; `shift` j > 0 renames the
        context to the token j steps back (omega windows)."""
        names: dict[str, object] = {}
        if shift:
            for var in self.spec.context:
                names[var.name] = self.table.symbol(shifted_name(var.name, shift), var.shape)
        lower = Lowering(self.table, names, None)
        state_name = self.state.name

        def apply_memory(call: ast.Call):
            x = lower(call.args[0])
            return self.rule.apply(self.form, self.memory_map(tensors), x)

        lower.apply_memory = apply_memory
        lower.memories = (state_name,)
        if self.form.kind in ("vector", "diagonal", "matrix", "like"):
            names[state_name] = self.memory_map(tensors)[0]
            if self.level.read is None:  # an optimizer level without `read` reads its state
                names.setdefault(self.level.name, names[state_name])
        return lower

    def value(self, v, lower: Lowering):
        if isinstance(v, ast.Expr):
            return lower(v)
        if isinstance(v, float):  # exact decimals: 0.1 stays 1/10
            return sp.Integer(int(v)) if v.is_integer() else sp.Rational(repr(v))
        return sp.sympify(v)

    # ------------------------------------------------------------ gradients
    def loss_term(self) -> Term:
        obj = self.level.objective
        return obj.get("loss") if obj.kind == "omega" else obj

    def gradient(self, tensors) -> tuple:
        """d objective / d tensors at `tensors` (a sum over the window for omega)."""
        obj = self.level.objective
        window, decay = 1, sp.Integer(1)
        if obj.kind == "omega":
            window = obj.get("window")
            if window > MAX_WINDOW:
                raise NlcError(f"omega windows longer than {MAX_WINDOW} tokens are not derived "
                               "symbolically yet", obj.span)
            decay = self.value(obj.get("decay"), self.lowering(tensors))
        total = self._gradient_at(tensors, self.lowering(tensors), record_roles=True)
        earlier = []
        for j in range(1, window):
            g = self._gradient_at(tensors, self.lowering(tensors, shift=j), record_roles=False)
            earlier.append(g)
            total = tuple(add(a, scaled(decay ** j, x)) for a, x in zip(total, g))
        if earlier:
            self.window_terms = tuple(earlier)
        return total

    def _gradient_at(self, tensors, lower: Lowering, record_roles: bool) -> tuple:
        term = self.loss_term()
        pred_ast, target_ast = term.get("prediction"), term.get("target")
        key = self._key(pred_ast, lower)
        target = lower(target_ast)
        args = self.loss_args(term, lower)
        mapped = self.memory_map(tensors)
        pred = self.rule.apply(self.form, mapped, key)
        e = error_signal(term.kind, args, pred, target)
        weight = dict(term.args).get("weight")
        if weight is not None:
            e = _scale(lower(weight), e)
        if record_roles:
            self.roles.update(key=key, value=target)
            if "delta" in args:
                self.roles["delta"] = args["delta"]
            if self.level.over:
                self.roles["grad"] = self.table.values[self.level.over]
        if self.gradient_override is not None:
            return self.gradient_override(mapped)
        return self.rule.grad(self.form, mapped, key, e)

    def loss_args(self, term: Term, lower: Lowering) -> dict:
        """The objective's arguments that shape its loss, lowered (the switch stays a word)."""
        args = {name: self.value(v, lower) for name, v in term.args
                if name in ("scale", "p", "delta")}
        if "switch" in dict(term.args):
            args["switch"] = term.get("switch")
        return args

    def _key(self, pred_ast, lower: Lowering):
        """The memory's input in the prediction: the prediction must be `M(x)` (or the bare
        state, for optimizer memories)."""
        name = self.state.name
        if isinstance(pred_ast, ast.Call) and pred_ast.func == name:
            return lower(pred_ast.args[0])
        if isinstance(pred_ast, ast.Name) and pred_ast.id == name:
            if self.form.kind != "like":
                raise NlcError(f"apply the memory to its input: {name}(k)", pred_ast.span)
            return sp.Integer(1)
        raise NlcError(f"the prediction must be the memory applied to an input, e.g. {name}(k)",
                       pred_ast.span)

    # ------------------------------------------------------------ retention + algorithm
    def gates(self) -> list[ret.Gate]:
        lower = self.lowering(self.tensors)
        gates = []
        for kind in ("decay", "weight_decay"):
            if kind in self.retentions:
                t = self.retentions[kind]
                factor = ret.gate_of(kind, self.value(t.get("alpha"), lower))
                # the role is the factor the state keeps (weight_decay(alpha): 1 - alpha), so
                # that one catalog entry answers to either spelling of a retention
                self.roles.setdefault("gate", factor)
                gates.append(ret.Gate(factor, t.get("order"), kind,
                                      rows=self.level.gate_rows))
        return gates

    def gate_all(self, tensors, gates, order):
        out = tensors
        for g in gates:
            if g.order == order:
                out = tuple(ret.apply_gate(g.factor, w, self.form.kind, g.rows) for w in out)
        return out

    def lr(self, lower):
        alg = self.level.algorithm
        rate = self.value(alg.get("lr"), lower)
        self.roles["lr"] = rate
        if "proximal" in self.retentions:
            term = self.retentions["proximal"]
            strength = self.value(term.get("strength"), lower)
            if is_matrix(strength) and strength.shape != self.channel_shape():
                raise NlcError("the proximal strength must be a scalar or one value per input "
                               "channel of a vector, diagonal or matrix memory", term.span)
            try:
                rate = ret.proximal_lr(rate, strength)
            except NlcError as err:
                raise NlcError(err.message, term.span, hint=err.hint) from None
        return rate

    def channel_shape(self):
        """The shape of a per-channel gate or rate (the memory's input side), or None."""
        if self.form.kind == "matrix":
            return (self.tensors[0].shape[1], 1)
        if self.form.kind in ("vector", "diagonal"):
            return self.tensors[0].shape
        return None

    def step(self, tensors, rate, grads):
        out = []
        for w, g in zip(tensors, grads):
            if is_matrix(rate) and self.level.rate_rows:  # one rate per row: Diag(r) grad
                out.append(add(w, scaled(-1, matmul(sp.DiagMatrix(rate), g))))
            elif is_matrix(rate):  # a per-channel rate scales the input side
                out.append(add(w, scaled(-1, _rate_times(rate, g, self))))
            else:
                out.append(add(w, scaled(-rate, g)))
        return tuple(out)

    def anchor(self):
        """The tensors that gradients are taken at: chunk-start copies when frozen."""
        if self.level.grad_chunk or self.level.period > 1:
            return tuple(sp.MatrixSymbol(f"{n}_0", *w.shape) for n, w in
                         zip(self.names, self.tensors))
        return None


# ---------------------------------------------------------------- algorithms
def _post(d: LevelDerivation, tensors, lower):
    """Maps applied after the step: elastic-net shrinkage, KL (softmax) retention."""
    if "elastic_net" in d.retentions:
        t = d.retentions["elastic_net"]  # check refused it with a per-channel rate
        rate = d.roles["lr"]
        shrink = ret.elastic_net_map(rate, d.value(t.get("l1"), lower), d.value(t.get("l2"), lower))
        tensors = tuple(shrink(w) for w in tensors)
    return tensors


def _gd_like(d: LevelDerivation, implicit: bool) -> dict:
    lower = d.lowering(d.tensors)
    gates = d.gates()
    rate = d.lr(lower)
    anchor = d.anchor()
    before = d.gate_all(d.tensors, gates, "before")
    at = d.gate_all(anchor, gates, "before") if anchor else before
    with clause(f"the objective's gradient through the {d.form.kind} memory '{d.state.name}'",
                d.state.span if d.form.kind == "mlp" else d.level.objective.span):
        grads = d.gradient(at)
    if implicit:
        rate = _implicit_rate(d, at, rate, lower)
    if "kl" in d.retentions:
        alpha = d.value(d.retentions["kl"].get("alpha"), lower)
        d.roles.setdefault("gate", alpha)
        new = tuple(RowSoftmax(add(scaled(alpha, elementwise(sp.log, w)), scaled(-rate, g)))
                    for w, g in zip(before, grads))
    else:
        new = d.step(d.gate_all(before, gates, "parallel"), rate, grads)
        new = _erase(d, before, new, lower)
        new = d.gate_all(new, gates, "proximal") if gates else new
        if any(g.order == "proximal" for g in gates):
            gamma = ret.proximal_order_factor()
            d.notes.append(f"proximal ordering: SymPy solved the proximal step to {sstr(gamma)} * "
                           "(S - lr grad)")
    new = _post(d, new, lower)
    return dict(zip(d.names, new))


def _erase(d: LevelDerivation, before, new, lower):
    """erase(k, rate): the map that first takes the memory's input (a matrix memory itself,
    an MLP's first layer) also moves by -rate (W k) k^T, W its state before the step, so that
    with a parallel decay alpha it becomes W (alpha I - rate k k^T) (delta gradient descent).
    A rate `a` with one entry per channel of k moves it by -(W k) (a * k)^T = -W k k^T Diag(a):
    the rate scales the columns of the erased outer product, the input side, so that with a
    channel decay w it becomes W (Diag(w) - k (a * k)^T) (Peng et al., RWKV-7,
    arXiv:2503.14456, eq. 17, kappa^T (a * kappa) in its row-vector notation)."""
    if "erase" not in d.retentions:
        return new
    term = d.retentions["erase"]
    key = d.value(term.get("key"), lower)
    rate = d.value(term.get("rate"), lower)
    d.roles.update(erase_key=key, erase_rate=rate)
    first = before[0]
    if is_matrix(rate):
        erased = add(new[0], scaled(-1, matmul(first, key, sp.HadamardProduct(rate, key).T)))
        d.notes.append("erase: the first map also moves by -(W k) (a * k)^T, a per channel")
    else:
        erased = add(new[0], scaled(-rate, first * key * key.T))
        d.notes.append("erase: the first map also moves by -rate (W k) k^T (the DGD factor)")
    return (erased, *new[1:])


def _implicit_rate(d: LevelDerivation, tensors, rate, lower):
    """Solve the implicit step W = argmin l(W) + ||W - S||^2 / (2 lr) along the gradient:
    W = S - eps grad(S), with eps from the optimality condition (SymPy's solve)."""
    if d.rule.kappa is None:
        raise NlcError(f"the implicit step is solved for matrix, vector and optimizer memories "
                       f"with a scalar rate, not {d.form.kind}", d.level.algorithm.span)
    if is_matrix(rate) and not d.level.rate_rows:
        raise NlcError("the implicit step is solved with a scalar rate or, on a matrix memory, "
                       "one per output channel; a rate per input channel couples the "
                       "channels of the step", d.level.algorithm.span,
                       hint="use gd for a rate per input channel")
    term = d.loss_term()
    args = d.loss_args(term, lower)
    if loss_of(term.kind, args).threshold is not None:
        raise NlcError(f"the implicit step has no closed form for objective '{term.kind}' with "
                       "switch = norm", d.level.algorithm.span, hint="use gd")
    closed = _implicit_step_size(term.kind, tuple(sorted(args.items())))
    if closed is None:
        raise NlcError(f"the implicit step has no closed form for objective '{term.kind}'",
                       d.level.algorithm.span, hint="use gd")
    kappa_value = d.rule.kappa(d.roles["key"])
    if is_matrix(rate):  # one rate per row: the rows' proximal problems are independent
        d.notes.append("implicit step per output channel: the l2 and dot losses are sums over "
                       "the rows, each solved with its own rate")
        return elementwise(sp.Lambda(LR, closed.subs(KAPPA, kappa_value)), rate)
    return closed.subs({KAPPA: kappa_value, LR: rate}, simultaneous=True)


KAPPA, LR = (sp.Symbol(internal(n), real=True) for n in ("kappa", "lr"))


@functools.cache
def _implicit_step_size(kind: str, args: tuple):
    """eps with W = S - eps grad(S) optimal for l + ||W - S||^2 / (2 lr), where a step
    along the gradient moves the prediction by -eps kappa dl/dp; None without a closed form
    (cached: SymPy's solve is the slow part of deriving Longhorn or DGD)."""
    p, t, eps = (sp.Symbol(internal(n), real=True) for n in ("p", "t", "epsilon"))
    dl = loss_derivative(kind, dict(args))
    e_old = dl.subs({P: p, T: t}, simultaneous=True)
    e_new = dl.subs({P: p - eps * KAPPA * e_old, T: t}, simultaneous=True)
    closed = [s for s in ret.solve(sp.Eq(e_new - eps * e_old / LR, 0), eps) if not s.has(p, t)]
    return closed[0] if closed else None


def _gd(d):
    new = _gd_like(d, implicit=False)
    steps = d.level.algorithm.get("steps")
    if steps > 1:
        new = _more_steps(d, new, steps)
    if d.level.later_steps:
        new = _later_steps(d, new)
    return new, {}


def _later_steps(d: LevelDerivation, first: dict) -> dict:
    """`objective a then b` with `algorithm gd(lr = r) then gd(lr = s)`: after the first
    step (with the retention), one plain gradient step on each later objective with its
    rate, at the state the step before it left. With l2 on a matrix memory each step is
    S (I - r k k^T) + r v k^T, and a token's update their product (Siems et al.,
    DeltaProduct, arXiv:2502.10297, 2025, one (k, v, beta) per Householder factor)."""
    (name,), (S,) = d.names, d.tensors  # the checker admits matrix memories only
    fresh = sp.MatrixSymbol(f"{name}_step", *S.shape)
    pairs = [(d.roles["key"], d.roles["value"], d.roles["lr"])]
    steps, current = [first[name]], first[name]
    span, what = d.level.algorithm.span, f"{len(d.level.later_steps) + 1} steps per token"
    with clause(what, span):
        for objective, algorithm in d.level.later_steps:
            sub = LevelDerivation(d.spec, replace(d.level, objective=objective,
                                                  algorithm=algorithm),
                                  d.table, d.gradient_override)
            lower = sub.lowering((fresh,))
            sub.roles["lr"] = rate = sub.value(algorithm.get("lr"), lower)  # no proximal rescaling
            (step,) = _post(sub, sub.step((fresh,), rate, sub.gradient((fresh,))), lower)
            pairs.append((sub.roles["key"], sub.roles["value"], rate))
            steps.append(step)
            current = step.xreplace({fresh: current})
            check_size(current, what, span)  # the state twice per step: 2^n terms
    d.steps, d.step_state = tuple(steps), fresh
    d.roles["steps"] = tuple(pairs)
    d.notes.append(f"{len(steps)} steps per token, one per objective: the retention's gate "
                   "with the first, then a plain gradient step on each later objective at the "
                   "state the step before it left")
    return {name: current}


def _more_steps(d: LevelDerivation, first: dict, steps: int) -> dict:
    """`gd(steps = n)`: after the first step (with the retention), n - 1 further gradient
    steps on the same token's objective, each at the state the previous one left."""
    if d.anchor() is not None or "kl" in d.retentions:
        raise NlcError("several gradient steps per token are derived for gradients at the "
                       "current state and retentions other than kl", d.level.algorithm.span,
                       hint="drop `gradients at chunk(...)` / `every C tokens`, or use steps = 1")
    lower = d.lowering(d.tensors)
    term = d.loss_term()
    if loss_of(term.kind, d.loss_args(term, lower)).threshold is not None:
        raise NlcError("several gradient steps per token are not derived for a switch on the "
                       "norm of the error", d.level.algorithm.span,
                       hint="use switch = entries, or steps = 1")
    rate = d.value(d.level.algorithm.get("lr"), lower)  # plain steps: no proximal rescaling
    current = tuple(first[n] for n in d.names)
    d.notes.append(f"{steps} gradient steps per token: the retention with the first, then "
                   f"{steps - 1} plain step{'s' if steps > 2 else ''} at the updated state")
    fresh = tuple(sp.MatrixSymbol(f"{n}_step", *w.shape) for n, w in zip(d.names, d.tensors))
    plain = _post(d, d.step(fresh, rate, d.gradient(fresh)), lower)
    parts = delta_step_parts(plain[0], fresh[0]) if len(fresh) == 1 else None
    if parts is not None:  # one key: a closed form, polynomial in steps (steps.py)
        d.notes.append("the plain steps in closed form: S - c S k k^T + s u k^T with "
                       "s = sum_{j<m} (1 - b ||k||^2)^j, c = b s")
        return {d.names[0]: repeat_delta_step(parts, current[0], steps - 1)}
    what, span = f"gd(steps = {steps}), unrolled (no closed form)", d.level.algorithm.span
    with clause(what, span):
        for _ in range(steps - 1):
            current = _post(d, d.step(current, rate, d.gradient(current)), lower)
            for w in current:
                check_size(w, what, span)
    return dict(zip(d.names, current))


def _implicit(d):
    return _gd_like(d, implicit=True), {}


def _momentum(d: LevelDerivation, orthogonalize: bool = False):
    lower = d.lowering(d.tensors)
    gates = d.gates()
    rate = d.lr(lower)
    mom = d.value(d.level.algorithm.get("momentum"), lower)
    d.roles["momentum"] = mom
    anchor = d.anchor()
    before = d.gate_all(d.tensors, gates, "before")
    grads = d.gradient(d.gate_all(anchor, gates, "before") if anchor else before)
    buffers = tuple(sp.MatrixSymbol(f"{n}_mom", *w.shape) for n, w in zip(d.names, d.tensors))
    d.roles["momentum_state"] = buffers
    new_buffers, new = [], []
    kept = d.gate_all(before, gates, "parallel")
    for w, u, g in zip(kept, buffers, grads):
        if orthogonalize:  # Muon / Atlas: orthogonalize the accumulated gradient
            u_new = add(_rate_times(mom, u, d), g)
            w_new = add(w, scaled(-rate, NewtonSchulz(u_new, d.level.algorithm.get("steps"))))
        else:  # Titans' surprise: U = eta U - theta grad, M = gate M + U
            u_new = add(_rate_times(mom, u, d), scaled(-1, _rate_times(rate, g, d)))
            w_new = add(w, u_new)
        new_buffers.append(u_new)
        new.append(w_new)
    new = d.gate_all(tuple(new), gates, "proximal")
    out = dict(zip(d.names, _post(d, tuple(new), lower)))
    extra = {b.name: nb for b, nb in zip(buffers, new_buffers)}
    return out, extra


def _rate_times(rate, g, d):
    if is_matrix(rate):
        return per_channel(rate, g, d.form.kind)
    return scaled(rate, g)


def _newton_schulz(d):
    return _momentum(d, orthogonalize=True)


ALGORITHMS: dict[str, Callable] = {
    "gd": _gd,
    "implicit": _implicit,
    "momentum": _momentum,
    "newton_schulz": _newton_schulz,
}


# ---------------------------------------------------------------- whole levels
def _read(d: LevelDerivation, tensors_after: dict):
    lv = d.level
    if lv.read is None:
        return None
    # after the write the read sees the new tensors, named S_next (not inlined: the rule
    # states next_state[S] once, and the read refers to it)
    use = d.tensors if lv.read_before else tuple(
        sp.MatrixSymbol(f"{n}_next", *w.shape) for n, w in zip(d.names, d.tensors))
    if lv.read_start:  # `read start`: the chunk-start state (the gradients' anchor)
        use = d.anchor()
    lower = d.lowering(use)
    value = lower(lv.read)
    q = _query(lv.read, d.state.name, lower)
    if q is not None:
        d.roles["query"] = q
    return value


def _query(expr, state_name, lower):
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Call) and node.func == state_name:
            return lower(node.args[0])
        if isinstance(node, ast.BinOp):
            stack += [node.left, node.right]
        elif isinstance(node, ast.Neg):
            stack.append(node.operand)
        elif isinstance(node, ast.Call):
            stack += list(node.positional)
    return None


def _exact(d: LevelDerivation) -> UpdateRule:
    """Ridge regression over the whole history, solved exactly (Mesa): the per-token gradient
    is split into its state-linear part (accumulated in H) and its constant part (in G), so
    S = G (H + reg I)^-1 (von Oswald et al. 2023, the Mesa layer; MesaNet, arXiv:2506.05233,
    with a decay of both statistics). The read applies that S: after the write it names the
    new statistics `S_G_next`, `S_H_next`, as every rule's read does."""
    lv = d.level
    lower = d.lowering(d.tensors)
    gates = d.gates()
    (S,) = d.tensors
    term = lv.objective
    key = d._key(term.get("prediction"), lower)
    value = lower(term.get("target"))
    d.roles.update(key=key, value=value)
    (grad,) = d.rule.grad(d.form, d.tensors, key, error_signal("l2", {"scale": 1},
                                                               d.rule.apply(d.form, d.tensors, key), value))
    expanded = sp.expand(grad)
    terms = expanded.args if isinstance(expanded, sp.MatAdd) else (expanded,)
    linear = [t for t in terms if t.has(S)]
    constant = [t for t in terms if not t.has(S)]
    H = sp.MatrixSymbol(f"{d.state.name}_H", key.shape[0], key.shape[0])
    G = sp.MatrixSymbol(f"{d.state.name}_G", S.shape[0], S.shape[1])
    h_step = sp.MatAdd(*[_strip_left(t, S) for t in linear]).doit()
    g_step = -sp.MatAdd(*constant).doit()
    gamma = gates[0].factor if gates else sp.Integer(1)
    reg = d.value(term.get("reg"), lower)
    d.roles.update(reg=reg, cg_steps=sp.Integer(lv.algorithm.get("cg_steps")))
    eye = sp.Identity(H.shape[0])
    solved = G * sp.Inverse(H + reg * eye)
    new_h, new_g = gamma * H + h_step, gamma * G + g_step
    if lv.read_before:
        g_read, h_read = G, H
    else:
        g_read, h_read = (sp.MatrixSymbol(f"{m.name}_next", *m.shape) for m in (G, H))
    read = d.lowering((g_read * sp.Inverse(h_read + reg * eye),))(lv.read) \
        if lv.read is not None else None
    q = _query(lv.read, d.state.name, lower) if lv.read is not None else None
    if q is not None:
        d.roles["query"] = q
    d.notes.append(f"{d.state.name} = {sp.sstr(solved)}: the stationarity condition "
                   f"{d.state.name} ({H.name} + reg I) = {G.name} solved for {d.state.name}")
    return _rule(d, "solve", {G.name: new_g, H.name: new_h}, read, states=(G, H))


def _strip_left(term, S):
    """For a term S * X (times scalars), return X."""
    coeff, mat = term.as_coeff_mmul()
    factors = list(mat.args) if isinstance(mat, sp.MatMul) else [mat]
    scalars = [f for f in factors if not is_matrix(f)]
    mats = [f for f in factors if is_matrix(f)]
    if not mats or mats[0] != S:
        raise NlcError("the ridge objective's gradient is not of the form S H - G")
    rest = sp.MatMul(*mats[1:]) if len(mats) > 2 else mats[1]
    return sp.Mul(coeff, *scalars) * rest


def _nonparametric(d: LevelDerivation) -> UpdateRule:
    """o = argmin_o sum_i w(q, k_i) ||o - v_i||^2 over the cached tokens, solved by SymPy on
    a symbolic cache of three entries: the weighted mean (Nadaraya-Watson)."""
    lv = d.level
    term = lv.objective
    solution = _weighted_mean()
    lower = d.lowering(d.tensors)
    weight_ast = dict(term.args).get("weight")
    kernel = lower(weight_ast) if weight_ast is not None else sp.Integer(1)
    query = _query(lv.read, d.state.name, lower) if lv.read is not None else None
    # the key is the cached token's vector in the kernel: the one that is not the query
    others = [s for s in sp.sympify(kernel).atoms(sp.MatrixSymbol) if s != query]
    key = others[0] if len(others) == 1 else None
    value = lower(term.get("target"))
    d.roles.update(kernel=kernel, value=value, key=key, query=query,
                   window=lv.algorithm.get("window"))
    gates = d.gates()  # decay(f): the role "gate" is f
    gate = gates[0].factor if gates else None
    cached = [sstr(x) for x in (key, value) if x is not None]
    reader = [sstr(x) for x in (query,) if x is not None]
    constants = {n for n, _ in (*d.spec.dims, *d.spec.hypers)}
    others = sorted(n for n in free_names([kernel])
                    if n not in {*cached, *reader, *constants})
    whose = (f"{', '.join(cached)} the cached token's" if cached else "") \
        + (f" and {reader[0]} the reading token's" if reader else "") \
        + (f"; {', '.join(others)} in w: not per cached token (compile takes w = "
           "exp(c <q, k>) only)" if others else "")
    forget = "" if gate is None else \
        f", times the decay {sstr(gate)} of every later token up to the reading one"
    d.notes.append("read = sum_i w_i v_i / sum_i w_i over the cached tokens (SymPy solved "
                   f"the weighted least squares to {sstr(solution)}); w_i = {sstr(kernel)}"
                   f"{forget}, with {whose}"
                   + (f"; window {lv.algorithm.get('window')}" if lv.algorithm.get("window") else ""))
    return _rule(d, "nonparametric", {}, None, states=())


@functools.cache
def _weighted_mean():
    """argmin_o sum_i w_i (o - v_i)^2 on a cache of three tokens, by SymPy's solve; checked
    to be sum_i w_i v_i / sum_i w_i."""
    o = sp.Symbol(internal("o"), real=True)
    n = 3
    w = [sp.Symbol(internal(f"w{i}"), positive=True) for i in range(n)]
    v = [sp.Symbol(internal(f"v{i}"), real=True) for i in range(n)]
    (solution,) = map(sp.factor, ret.solve(sp.diff(sum(w[i] * (o - v[i]) ** 2 for i in range(n)), o), o))
    weights = [sp.cancel(solution.diff(v[i])) for i in range(n)]
    assert all(sp.cancel(weights[i] * sum(w) - w[i]) == 0 for i in range(n))
    return solution


def _rule(d: LevelDerivation, kind: str, next_state: dict, read, states=None, anchors=()):
    lv = d.level
    states = tuple((s.name, s) for s in (states if states is not None else d.tensors))
    return UpdateRule(d.spec.name, lv.name, d.form, kind, states, tuple(next_state.items()),
                      read, lv.read_before, tuple(d.roles.items()), lv.unit, lv.period,
                      lv.grad_chunk, anchors, tuple(d.notes), lv.span, d.steps, d.step_state,
                      d.window_terms)


def derive_level(spec, level: LevelRecord, table: SymbolTable,
                 gradient: Callable | None = None) -> UpdateRule:
    """`gradient` (verification only) replaces the objective's gradient through the memory
    form: a function of the tensors it is taken at, returning one gradient per tensor."""
    d = LevelDerivation(spec, level, table, gradient)
    alg = level.algorithm.kind
    if alg == "exact":
        return _exact(d)
    if alg == "nonparametric":
        return _nonparametric(d)
    if alg not in ALGORITHMS:
        raise NlcError(f"algorithm '{alg}' has no derivation yet", level.algorithm.span)
    new, extra = ALGORITHMS[alg](d)
    states = list(d.tensors) + [sp.MatrixSymbol(n, *e.shape) for n, e in extra.items()]
    anchor = d.anchor()
    anchors = tuple((w.name, a) for w, a in zip(d.tensors, anchor)) if anchor else ()
    read = _read(d, new)
    if level.period > 1 and anchor:
        new, read = _every_chunk(d, new, read, anchor)
    return _rule(d, "update", {**new, **extra}, read, states=states, anchors=anchors)


def _every_chunk(d: LevelDerivation, new: dict, read, anchor):
    """`every C tokens` (docs/design.md): each token's update is the per-token rule taken at the
    chunk-start state S_0, S <- S + (rule(S_0) - S_0), so the state changes at the chunk's
    end by the sum of its C updates; reads inside the chunk see S_0."""
    at_start = {w: a for w, a in zip(d.tensors, anchor)}
    at_start |= {sp.MatrixSymbol(f"{w.name}_next", *w.shape): a for w, a in zip(d.tensors, anchor)}
    summed = {}
    for w, a in zip(d.tensors, anchor):
        update = new[w.name].xreplace(at_start)
        change = sp.MatAdd(update, -a).doit() if isinstance(a, sp.MatrixExpr) else update - a
        summed[w.name] = add(w, change)
    unit = "step" if d.level.unit == "step" else "token"
    d.notes.append(f"every C {unit}s: each {unit} adds rule(S_0) - S_0 to the state; reads see "
                   "S_0")
    return {**new, **summed}, read.xreplace(at_start) if read is not None else None
