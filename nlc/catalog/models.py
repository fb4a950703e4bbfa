"""The catalog: published update rules, written from the papers (docs/citations.md), never
produced by the derivation engine. `nlc verify` compares derived rules with these.

Each entry is a function of the paper's roles -- the memory's tensors `S`, key `k`, value
`v`, learning rate `beta`, gate `alpha`, momentum `eta`, momentum buffers `U`, chunk-start
tensors `S0` -- bound to a spec's expressions by the derivation (`UpdateRule.roles`).
MLP entries name the paper's loss (`loss`) and state their update in terms of its gradient
at a point, `r.grad(tensors)`; the verifier binds `grad` to the gradient of that loss
through the paper's forward pass (reference.py: `sympy.diff` entry by entry, or dual
numbers), independently of the engine's structured chain rule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from nlc.catalog.reference import Loss
from nlc.derive.matfuncs import Dot  # <a, b> as one node: a^T b's element is a Sum


@dataclass(frozen=True)
class Roles:
    S: tuple
    k: object = None
    v: object = None
    q: object = None
    beta: object = None
    alpha: object = None
    eta: object = None
    U: tuple = ()
    S0: tuple = ()
    form: object = None
    g: object = None
    delta: object = None
    reg: object = None        # the ridge penalty (Mesa)
    kappa: object = None      # the erased (removal) key of an erase retention
    a: object = None          # the erase rate (RWKV-7's in-context learning rate)
    grad: Callable | None = None  # tensors -> the entry's loss gradient there (MLP entries)
    pairs: tuple | None = None    # (k_i, v_i, beta_i) of each step of a token (DeltaProduct)


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    title: str
    citation: str
    form: str                 # memory form the entry is stated for
    gate: str                 # none | constant | scalar | channel | any
    needs: tuple[str, ...]    # roles that must be bound
    update: Callable[[Roles], tuple]  # next value of each carried tensor, in rule order
    family: str               # the kernel family the paper's recurrence belongs to
    objective: str | None = None  # the spec objective an MLP or solve entry is compared with
    kind: str = "layer"       # layer | optimizer
    loss: Loss | None = None  # the paper's loss, whose gradient `Roles.grad` gives
    rate: str = "scalar"      # the learning rate beta, if needed: scalar | row (per output channel)
    every: str = "any"        # the level's period: any | one (every step) | chunk (> 1)
    retention: str | None = None  # a retention the paper's update has that no gate shows (kl, lq)
    # the paper's output: the memory applied to the query after the token's write ("after")
    # or before it ("before"); None where no read is compared (`entry` says which)
    read: str | None = "after"
    # the weights the read applies, from each carried tensor (float64 arrays): Moneta's
    # W = A / ||A||_q^(q-2); None where the read applies the state itself
    read_weights: Callable | None = None
    # how the paper derives its gate from its rate, where it does (Mamba2's exp(dt A) of the
    # rate dt): a level whose gate and rate share no input is another model of the same form
    tie: str | None = None
    # constants the paper fixes that verify does not compare (it compares the recurrence):
    # said beside "this is", so a spec with other constants is not taken for the paper's
    constants: str | None = None
    # an average: the rate is 1 - the gate (Adam's moments), so a level's rate is no difference
    ema: bool = False
    # an optimizer level whose data is the gradient's square g ⊙ g (a second moment)
    squares: bool = False
    # the step the paper takes: a gradient step ("gd") or the implicit (proximal) one that
    # solves for the new state (Longhorn); identify names a level that takes the other
    step: str = "gd"


def _I(n):
    return sp.Identity(n)


def _outer(a, b):
    return a * b.T


ENTRIES: list[CatalogEntry] = []


def entry(**kw):
    """Add an entry. An optimizer's levels are read by its `apply` lines, compared on their
    own (nlc/catalog/applies.py); a solve entry's update states its read; a cache entry's
    kernel is its read: none of them has a read compared apart."""
    if kw.get("kind") == "optimizer" or kw["family"] in ("solve", "nonparametric"):
        kw.setdefault("read", None)
    ENTRIES.append(CatalogEntry(**kw))


# ---------------------------------------------------------------- affine matrix memories
entry(id="linear_attention", title="Linear attention",
      citation="Katharopoulos et al., Transformers are RNNs, ICML 2020, recurrent form (sec. 3.4)",
      form="matrix", gate="none", needs=("k", "v"), family="decay",
      update=lambda r: (r.S[0] + _outer(r.v, r.k),))
entry(id="linear_attention_normalizer", title="Linear attention normalizer z = z + k",
      citation="Katharopoulos et al., ICML 2020, sec. 3.4 (the denominator's running sum)",
      form="vector", gate="none", needs=("k",), family="decay",
      update=lambda r: (r.S[0] + r.k,))
entry(id="retnet", title="RetNet",
      citation="Sun et al., Retentive Network, arXiv:2307.08621 (2023), recurrent retention",
      form="matrix", gate="constant", needs=("k", "v", "alpha"), family="decay",
      constants="its decays per head, 1 - 2^(-5-h) for head h = 0, 1, ...",
      update=lambda r: (r.alpha * r.S[0] + _outer(r.v, r.k),))
entry(id="mamba2", title="Mamba2 (SSD)",
      citation="Dao & Gu, Transformers are SSMs, ICML 2024, the SSD recurrence "
               "h = exp(dt A) h + dt B x",
      form="matrix", gate="scalar", needs=("k", "v", "alpha", "beta"), family="decay",
      tie="its decay exp(dt A) comes from its rate dt",
      update=lambda r: (r.alpha * r.S[0] + r.beta * _outer(r.v, r.k),))
entry(id="gla", title="Gated linear attention",
      citation="Yang et al., Gated Linear Attention Transformers, ICML 2024, S = S Diag(a) + v k^T",
      form="matrix", gate="channel", needs=("k", "v", "alpha"), family="decay",
      update=lambda r: (r.S[0] * sp.DiagMatrix(r.alpha) + _outer(r.v, r.k),))
entry(id="deltanet", title="DeltaNet",
      citation="Schlag et al., ICML 2021; Yang et al., NeurIPS 2024: S = S (I - b k k^T) + b v k^T",
      form="matrix", gate="none", needs=("k", "v", "beta"), family="delta",
      update=lambda r: (r.S[0] * (_I(r.k.shape[0]) - r.beta * _outer(r.k, r.k))
                        + r.beta * _outer(r.v, r.k),))
entry(id="gated_deltanet", title="Gated DeltaNet",
      citation="Yang, Kautz, Hatamizadeh, Gated Delta Networks, ICLR 2025, eq. 10",
      form="matrix", gate="scalar", needs=("k", "v", "beta", "alpha"), family="delta",
      update=lambda r: (r.alpha * r.S[0] * (_I(r.k.shape[0]) - r.beta * _outer(r.k, r.k))
                        + r.beta * _outer(r.v, r.k),))
entry(id="kda", title="Kimi Delta Attention",
      citation="Kimi Linear (Moonshot AI, 2025): S = S Diag(a) (I - b k k^T) + b v k^T",
      form="matrix", gate="channel", needs=("k", "v", "beta", "alpha"), family="delta",
      update=lambda r: (r.S[0] * sp.DiagMatrix(r.alpha) * (_I(r.k.shape[0])
                                                           - r.beta * _outer(r.k, r.k))
                        + r.beta * _outer(r.v, r.k),))
entry(id="titans_linear", title="Titans, linear memory without momentum (ordering C)",
      citation="Behrouz, Zhong, Mirrokni, Titans, arXiv:2501.00663 (2025), eqs. 12-14 with a "
               "linear memory and no momentum: loss ||M k - v||^2, M = (1 - alpha) M - "
               "theta grad = M ((1 - alpha) I - 2 theta k k^T) + 2 theta v k^T",
      form="matrix", gate="scalar", needs=("k", "v", "beta", "alpha"), family="dplr",
      update=lambda r: (r.S[0] * (r.alpha * _I(r.k.shape[0]) - 2 * r.beta * _outer(r.k, r.k))
                        + 2 * r.beta * _outer(r.v, r.k),),
      objective="l2", loss=Loss("l2", scale=2))  # ||M k - v||^2: no 1/2, as titans

entry(id="rwkv7", title="RWKV-7",
      citation="Peng et al., RWKV-7 'Goose' with Expressive Dynamic State Evolution, "
               "arXiv:2503.14456 (2025), eq. 17: wkv = wkv (diag(w) - kh^T (a * kh)) + v^T kt",
      form="matrix", gate="channel", needs=("k", "v", "alpha", "kappa", "a"), family="dplr",
      update=lambda r: (r.S[0] * (sp.DiagMatrix(r.alpha)
                                  - _outer(r.kappa, sp.HadamardProduct(r.a, r.kappa)))
                        + _outer(r.v, r.k),))


def _householder_steps(S, pairs):
    """DeltaProduct's n_h steps of a token: S (I - b_i k_i k_i^T) + b_i v_i k_i^T, i = 1..n_h."""
    for k, v, beta in pairs:
        S = S * (_I(k.shape[0]) - beta * _outer(k, k)) + beta * _outer(v, k)
    return S


entry(id="deltaproduct", title="DeltaProduct",
      citation="Siems et al., DeltaProduct, arXiv:2502.10297 (2025): n_h Householder steps "
               "per token, each with its own (k, v, beta)",
      form="matrix", gate="none", needs=("pairs", "beta"), family="product",
      update=lambda r: (_householder_steps(r.S[0], r.pairs),))
entry(id="deltaproduct_gated", title="Gated DeltaProduct (gate before the first step)",
      citation="Siems et al., DeltaProduct, arXiv:2502.10297 (2025): the gated variant, "
               "alpha S, then the n_h Householder steps",
      form="matrix", gate="scalar", needs=("pairs", "beta", "alpha"), family="product",
      update=lambda r: (_householder_steps(r.alpha * r.S[0], r.pairs),))


def _longhorn(r):
    eps = r.beta / (1 + r.beta * Dot(r.k, r.k))
    return (r.S[0] - eps * (r.S[0] * r.k - r.v) * r.k.T,)


entry(id="longhorn", title="Longhorn",
      citation="Liu et al., Longhorn: SSMs are Amortized Online Learners, arXiv:2407.14207 "
               "(2024), closed-form implicit update",
      form="matrix", gate="none", needs=("k", "v", "beta"), family="delta", update=_longhorn,
      step="implicit")


def _mesa(r: Roles):
    """G' = a G + v k^T, H' = a H + k k^T, and the read o = G' (H' + reg I)^-1 q: the
    carried statistics in rule order, then the read (a solve entry states both)."""
    gate = r.alpha if r.alpha is not None else 1
    g = gate * r.S[0] + _outer(r.v, r.k)
    h = gate * r.S[1] + _outer(r.k, r.k)
    return g, h, g * sp.Inverse(h + r.reg * _I(r.k.shape[0])) * r.q


entry(id="mesa", title="Mesa layer",
      citation="von Oswald et al., Uncovering mesa-optimization algorithms in Transformers, "
               "arXiv:2309.05858 (2023), eqs. 6 and 8: o = (sum v k^T)(sum k k^T + I / lambda)^-1 "
               "q, with reg = 1 / lambda",
      form="matrix", gate="none", needs=("k", "v", "q", "reg"), family="solve", update=_mesa,
      objective="ridge")
entry(id="mesanet", title="MesaNet",
      citation="von Oswald et al., MesaNet, arXiv:2506.05233 (2025): H = gamma H + k k^T, "
               "G = gamma G + v k^T, o = G (H + Lambda)^-1 q (eqs. 7-8 with beta = 1 and "
               "Lambda = reg I)",
      form="matrix", gate="scalar", needs=("k", "v", "q", "reg", "alpha"), family="solve",
      update=_mesa, objective="ridge")


def _longhorn_channel(r):
    """Row i solves its own implicit regression at rate beta_i: s_i = s_i - eps_i (s_i^T k -
    v_i) k^T with eps_i = beta_i / (1 + beta_i k^T k)."""
    b = sp.Dummy("b")
    eps = ElementwiseApplyFunction(sp.Lambda(b, b / (1 + b * Dot(r.k, r.k))), r.beta)
    return (r.S[0] - sp.DiagMatrix(eps) * (r.S[0] * r.k - r.v) * r.k.T,)


entry(id="longhorn_channel", title="Longhorn with a beta per value channel",
      citation="Liu et al., Longhorn, arXiv:2407.14207 (2024): the implicit update solved per "
               "value channel, beta_t in (0, 1)^d_v (before the paper's diagonal approximation "
               "of k k^T)",
      form="matrix", gate="none", needs=("k", "v", "beta"), family="elementwise",
      update=_longhorn_channel, rate="row", step="implicit")

# ---------------------------------------------------------------- non-affine memories


def _mlp_step(r: Roles):
    """S_i - beta grad_i at the chunk-start weights."""
    grads = r.grad(r.S0 or r.S)
    return tuple(s.as_explicit() - r.beta * g for s, g in zip(r.S, grads))


entry(id="ttt_linear", title="TTT-Linear",
      citation="Sun et al., Learning to (Learn at Test Time), arXiv:2407.04620 (2024), "
               "mini-batch TTT with f(x) = x + LN(W x)",
      form="mlp1", gate="none", needs=("k", "v", "beta"), family="frozen-gradient",
      update=_mlp_step, objective="l2", loss=Loss("l2"))
entry(id="ttt_mlp", title="TTT-MLP",
      citation="Sun et al., arXiv:2407.04620 (2024), f(x) = x + LN(MLP(x))",
      form="mlp2", gate="none", needs=("k", "v", "beta"), family="frozen-gradient",
      update=_mlp_step, objective="l2", loss=Loss("l2"))


def _titans(r: Roles):
    # r.alpha is the factor the memory keeps, 1 - alpha in the paper's notation (the
    # `gate` role of either retention spelling: weight_decay(alpha) or decay(1 - alpha))
    grads = r.grad(r.S0 or r.S)
    new_u = tuple(r.eta * u.as_explicit() - r.beta * g for u, g in zip(r.U, grads))
    new_s = tuple(r.alpha * s.as_explicit() + u for s, u in zip(r.S, new_u))
    return new_s + new_u


entry(id="titans", title="Titans (MLP memory, momentum, weight decay)",
      citation="Behrouz, Zhong, Mirrokni, Titans, arXiv:2501.00663 (2025), eqs. 12-14: "
               "loss ||M(k) - v||^2, surprise U = eta U - theta grad, M = (1 - alpha) M + U",
      form="mlp", gate="scalar", needs=("k", "v", "beta", "alpha", "eta"),
      family="frozen-gradient", update=_titans, objective="l2",
      loss=Loss("l2", scale=2))  # ||M(k) - v||^2: no 1/2


def _lq_normalized(a, q: int):
    """W = A / ||A||_q^(q-2), the norm over all of A's entries."""
    a = a.as_explicit()
    return a * (sum(a.applyfunc(lambda e: sp.Abs(e) ** q)) ** sp.Rational(1, q)) ** (2 - q)


def _lq_normalized_numeric(a, q: int):
    """`_lq_normalized` of a float64 array (the read's weights)."""
    return a * float((abs(a) ** q).sum()) ** ((2 - q) / q)


def _moneta(r: Roles):
    at = r.S0 or r.S
    grads = r.grad(tuple(_lq_normalized(a, 4) for a in at))
    return tuple(r.alpha * s.as_explicit() - r.beta * g for s, g in zip(r.S, grads))


entry(id="moneta", title="Moneta",
      citation="Behrouz et al., It's All Connected (Miras), arXiv:2504.13173 (2025), eqs. "
               "24-25: l_3 attentional bias, A = alpha A - eta grad l_3(W), W = A / ||A||_4^2",
      form="mlp", gate="scalar", needs=("k", "v", "beta", "alpha"), family="frozen-gradient",
      update=_moneta, objective="lp", loss=Loss("lp", p=3), retention="lq",
      read_weights=lambda a: _lq_normalized_numeric(a, 4))


def _yaad(r: Roles):
    grads = r.grad(r.S0 or r.S)
    return tuple(r.alpha * s.as_explicit() - r.beta * g for s, g in zip(r.S, grads))


entry(id="yaad", title="Yaad",
      citation="Behrouz et al., Miras, arXiv:2504.13173 (2025), eq. 26: W = alpha W - eta "
               "grad l2 while ||M(k) - v|| <= delta, else alpha W - eta delta grad l1 (the "
               "Huber switch on the norm of the whole error, eq. 16)",
      form="mlp", gate="scalar", needs=("k", "v", "beta", "alpha", "delta"),
      family="frozen-gradient", update=_yaad, objective="huber", loss=Loss("huber_norm"))


def _memora(r: Roles):
    grads = r.grad(r.S0 or r.S)
    out = []
    for s, g in zip(r.S, grads):
        ex = (r.alpha * s.as_explicit().applyfunc(sp.log) - r.beta * g).applyfunc(sp.exp)
        rows, cols = ex.shape
        totals = [sum(ex[i, j] for j in range(cols)) for i in range(rows)]
        out.append(sp.Matrix(rows, cols, lambda i, j, ex=ex, totals=totals:
                             ex[i, j] / totals[i]))  # row softmax
    return tuple(out)


entry(id="memora", title="Memora",
      citation="Behrouz et al., Miras, arXiv:2504.13173 (2025), eq. 27: W = Softmax(alpha "
               "log W - eta grad l2)",
      form="mlp", gate="any", needs=("k", "v", "beta", "alpha"), family="frozen-gradient",
      update=_memora, objective="l2", loss=Loss("l2"), retention="kl")

# ---------------------------------------------------------------- optimizers
# (their levels; what each optimizer's `apply` makes of them is nlc/catalog/applies.py)


entry(id="sgd_momentum", kind="optimizer", title="SGD with momentum as a memory of gradients",
      citation="Behrouz et al., Nested Learning, NeurIPS 2025: m = alpha m - eta g",
      form="like", gate="any", needs=("g", "beta"), family="decay",
      update=lambda r: ((r.alpha if r.alpha is not None else 1) * r.S[0] - r.beta * r.g,))
entry(id="adam_first_moment", kind="optimizer", title="Adam's first moment",
      citation="Kingma & Ba, Adam, ICLR 2015, Algorithm 1: m = b1 m + (1 - b1) g",
      form="like", gate="constant", needs=("g", "alpha"), family="decay", ema=True,
      update=lambda r: (r.alpha * r.S[0] + (1 - r.alpha) * r.g,))
entry(id="adam_second_moment", kind="optimizer", title="Adam's second moment",
      citation="Kingma & Ba, Adam, ICLR 2015, Algorithm 1: v = b2 v + (1 - b2) g^2 (entrywise)",
      form="like", gate="constant", needs=("g", "alpha"), family="decay", squares=True, ema=True,
      update=lambda r: (r.alpha * r.S[0] + (1 - r.alpha) * sp.HadamardProduct(r.g, r.g),))


def _dgd(r: Roles):
    eps = r.beta / (1 + r.beta * Dot(r.k, r.k))
    return (r.S[0] * (_I(r.k.shape[0]) - eps * _outer(r.k, r.k)) + eps * _outer(r.v, r.k),)


entry(id="dgd", kind="optimizer", title="Delta gradient descent",
      citation="Behrouz et al., Nested Learning, NeurIPS 2025: W = W (I - eta' x x^T) + eta' "
               "t x^T with eta' = eta / (1 + eta ||x||^2) and target t (-u in the paper)",
      form="like_matrix", gate="none", needs=("k", "v", "beta"), family="delta", update=_dgd)


entry(id="muon", kind="optimizer", title="the momentum buffer B = mu B + g (Muon's, "
                                           "torch.optim.SGD's)",
      citation="Jordan et al., Muon (2024): B = mu B + g (the parameter then moves by "
               "-lr NewtonSchulz5(B), or by -lr B in torch.optim.SGD: nlc/catalog/applies.py)",
      form="like", gate="constant", needs=("g", "alpha"), family="decay",
      update=lambda r: (r.alpha * r.S[0] + r.g,))


# M3 (Nested Learning, NeurIPS 2025, Algorithm 1 of arXiv:2512.24695): three accumulators of
# the gradients, no decay. The slow one adds b3 times the sum of a chunk's f gradients once per
# chunk; as a level `every f steps` each step adds its own b3 g (the chunk's sum at its end),
# and the apply reads the chunk-start state (checked end to end against `m3_step` in
# nlc/catalog/optimizers.py by tests/test_m3.py).
entry(id="m3_fast", kind="optimizer", title="M3's fast momentum",
      citation="Behrouz et al., Nested Learning, NeurIPS 2025, Algorithm 1 (M3): "
               "M1 = M1 + b1 g every step",
      form="like", gate="none", needs=("g", "beta"), family="decay", every="one",
      update=lambda r: (r.S[0] + r.beta * r.g,))
entry(id="m3_slow", kind="optimizer", title="M3's slow momentum",
      citation="Behrouz et al., Nested Learning, NeurIPS 2025, Algorithm 1 (M3): "
               "M2 = M2 + b3 (g_1 + ... + g_f) once every f steps",
      form="like", gate="none", needs=("g", "beta"), family="decay", every="chunk",
      update=lambda r: (r.S[0] + r.beta * r.g,))
entry(id="m3_second_moment", kind="optimizer", title="M3's second moment",
      citation="Behrouz et al., Nested Learning, NeurIPS 2025, Algorithm 1 (M3): "
               "V = V + b2 g^2 every step",
      form="like", gate="none", needs=("g", "beta"), family="decay", squares=True, every="one",
      update=lambda r: (r.S[0] + r.beta * sp.HadamardProduct(r.g, r.g),))


def by_id(name: str) -> CatalogEntry | None:
    return next((e for e in ENTRIES if e.id == name), None)


# ---------------------------------------------------------------- non-parametric
def _softmax_kernel(r: Roles):
    d = r.k.shape[0]
    return (sp.exp(Dot(r.q, r.k) / sp.sqrt(d)),)


entry(id="softmax_attention", title="Softmax attention (Nadaraya-Watson)",
      citation="Vaswani et al., NeurIPS 2017; as the minimizer of sum_i exp(q k_i / sqrt(d)) "
               "||v_i - o||^2 (Miras, arXiv:2504.13173)",
      form="cache", gate="none", needs=("k", "q"), family="nonparametric",
      update=_softmax_kernel)
entry(id="forgetting_transformer", title="Forgetting Transformer (softmax attention with a "
                                          "forget gate)",
      citation="Lin, Nikishin, He, Courville, Forgetting Transformer, ICLR 2025, eq. 5: "
               "weights exp(q k_i / sqrt(d) + sum_{i<j<=t} log f_j), f a sigmoid per head",
      form="cache", gate="scalar", needs=("k", "q", "alpha"), family="nonparametric",
      update=_softmax_kernel)
entry(id="sliding_window", title="Sliding-window attention",
      citation="Beltagy et al., Longformer, arXiv:2004.05150 (2020): softmax over the last w "
               "tokens",
      form="cache", gate="none", needs=("k", "q"), family="nonparametric",
      update=_softmax_kernel)
