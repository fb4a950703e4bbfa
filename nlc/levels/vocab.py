"""The language's vocabulary as data: every memory form, objective, retention, algorithm,
initializer, context function and transfer mode, with its arguments and their ranges.

The grammar only knows "a call"; the checker looks the call up here. Adding an objective is
adding one `Entry` (and its derivation rule in nlc/derive), nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from nlc import functions
from nlc.errors import NlcError, did_you_mean


class ArgKind(Enum):
    EXPR = "expression"          # any context expression (a gate, a rate, a number)
    NUMBER = "number"            # a constant: numbers, dims, hypers
    INT = "integer"              # a constant that must be a whole number
    CHOICE = "choice"            # one of `choices`, written as a bare name
    FLAG = "flag"                # a bare name that switches an option on
    TERM = "objective"           # a nested objective call (omega's inner loss)


REQUIRED = object()


@dataclass(frozen=True)
class Arg:
    name: str
    kind: ArgKind
    default: object = REQUIRED
    low: float = -math.inf       # inclusive bounds for NUMBER / INT constants
    high: float = math.inf
    low_open: bool = False       # True: value must be strictly above `low`
    high_open: bool = False
    choices: tuple[str, ...] = ()

    def range_text(self) -> str:
        lo = "" if self.low == -math.inf else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = "" if self.high == math.inf else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(p for p in (lo, hi) if p)

    def in_range(self, value: float) -> bool:
        if value < self.low or (self.low_open and value == self.low):
            return False
        return not (value > self.high or (self.high_open and value == self.high))


@dataclass(frozen=True)
class Entry:
    name: str
    args: tuple[Arg, ...]        # positional first, then keywords; all may be given by name
    doc: str

    def arg(self, name: str) -> Arg | None:
        return next((a for a in self.args if a.name == name), None)

    def unknown_argument(self, name: str, span) -> NlcError:
        """The error for `name(..., <name> = ...)` that this entry does not take: the nearest
        argument, or the list of them."""
        names = [a.name for a in self.args]
        return NlcError(f"{self.name}() has no argument '{name}'", span,
                        hint=did_you_mean(name, names)
                        or f"its arguments: {', '.join(names) or 'none'}")


def _e(name: str, doc: str, *args: Arg) -> tuple[str, Entry]:
    return name, Entry(name, args, doc)


POSITIVE = dict(low=0.0, low_open=True)
UNIT_INTERVAL = dict(low=0.0, high=1.0)
PRED, TARGET = Arg("prediction", ArgKind.EXPR), Arg("target", ArgKind.EXPR)
SCALE = Arg("scale", ArgKind.NUMBER, 1.0, **POSITIVE)
WEIGHT = Arg("weight", ArgKind.EXPR, None)  # per-token weight of the loss (non-parametric kernel)
MAX_WINDOW = 16  # omega windows are unrolled symbolically, a term per token (derive/engine.py)
# a gradient chunk's forms hold [C, C] products per head (the masked reads of the dual form):
# 4096 is 16M numbers per head and sequence, beyond any published mini-batch (16 to 64)
MAX_GRAD_CHUNK = 4096

# ------------------------------------------------------------------ memory forms
FORMS: dict[str, Entry] = dict([
    _e("vector", "a vector m[d]; m(k) = <m, k>", Arg("d", ArgKind.INT, low=1)),
    _e("diagonal", "a diagonal map D[d]; D(k) = D * k", Arg("d", ArgKind.INT, low=1)),
    _e("matrix", "a matrix S[d_out, d_in]; S(k) = S k", Arg("d_out", ArgKind.INT, low=1),
       Arg("d_in", ArgKind.INT, low=1)),
    _e("mlp", "an MLP d_in -> hidden... -> d_out; M(k) = [k +] [norm](W_L act(... W_1 k))",
       Arg("widths", ArgKind.EXPR), Arg("act", ArgKind.CHOICE, "gelu",
                                        choices=("gelu", "silu", "tanh", "relu", "identity")),
       Arg("residual", ArgKind.FLAG, False), Arg("norm", ArgKind.FLAG, False)),
    _e("cache", "the key-value cache itself (non-parametric); C(q) has the value's shape",
       Arg("d_key", ArgKind.INT, low=1), Arg("d_value", ArgKind.INT, low=1)),
    _e("like", "a tensor shaped like each optimized parameter (optimizers); with `inputs`, a"
       " matrix [param_out, param_in] applied as W(x) = W x",
       Arg("of", ArgKind.EXPR)),
])

INITS: dict[str, Entry] = dict([
    _e("zeros", "all zeros"),
    _e("identity", "the identity map (matrix memories)"),
    _e("learned", "a meta-learned initial state: the training level learns it (init transfer);"
       " drawn normal(std), or per weight matrix [r, c] normal(sqrt(2 / (r + c))) (xavier)",
       Arg("std", ArgKind.NUMBER, 0.02, **POSITIVE),
       Arg("scheme", ArgKind.CHOICE, "normal", choices=("normal", "xavier"))),
    _e("param", "the optimized parameter's value: the optimizer's memory is the parameter (DGD)"),
])

# ------------------------------------------------------------------ objectives
OBJECTIVES: dict[str, Entry] = dict([
    _e("dot", "-<prediction, target> (Hebbian; linear attention)", PRED, TARGET, SCALE),
    _e("l2", "scale/2 ||prediction - target||^2 (delta rule); Titans: scale = 2", PRED, TARGET,
       SCALE, WEIGHT),
    _e("lp", "scale ||prediction - target||_p^p (Moneta)", PRED, TARGET,
       Arg("p", ArgKind.NUMBER, 3.0, low=1.0), SCALE),
    _e("huber", "Huber loss with threshold delta; switch = entries: per coordinate (Miras eq. 14);"
       " switch = norm: the l2 gradient while ||prediction - target|| <= delta, else delta times"
       " the l1 gradient (Yaad, Miras eq. 16)", PRED, TARGET,
       Arg("delta", ArgKind.EXPR, 1.0, **POSITIVE), SCALE,
       Arg("switch", ArgKind.CHOICE, "entries", choices=("entries", "norm"))),
    _e("omega", "sum over the last `window` tokens of the inner loss, weighted (Atlas)",
       Arg("loss", ArgKind.TERM), Arg("window", ArgKind.INT, low=1),
       Arg("decay", ArgKind.EXPR, 1.0)),
    _e("ridge", "sum over the whole history of 1/2||prediction - target||^2 + reg/2 ||S||^2"
       " (Mesa)", PRED, TARGET, Arg("reg", ArgKind.NUMBER, 1.0, **POSITIVE)),
])

# ------------------------------------------------------------------ retention
ORDERS = ("before", "proximal", "parallel")  # docs/design.md, orderings A, B, C
RETENTIONS: dict[str, Entry] = dict([
    _e("none", "no retention term"),
    _e("decay", "multiply the state by a gate alpha (scalar or per channel)",
       Arg("alpha", ArgKind.EXPR, **UNIT_INTERVAL), Arg("order", ArgKind.CHOICE, "before", choices=ORDERS)),
    _e("weight_decay", "multiply the state by (1 - alpha) (Titans)",
       Arg("alpha", ArgKind.EXPR, **UNIT_INTERVAL),
       Arg("order", ArgKind.CHOICE, "parallel", choices=ORDERS)),
    _e("proximal", "strength/2 ||M - M_prev||^2 (stay near the previous state)",
       Arg("strength", ArgKind.EXPR, **POSITIVE)),
    _e("lq", "normalize the state by its l_q norm: W = A / ||A||_q^(q-2) (Moneta)",
       Arg("q", ArgKind.NUMBER, 4.0, low=1.0)),
    _e("kl", "KL retention: W = softmax(alpha log W_prev - lr grad) (Memora)",
       Arg("alpha", ArgKind.EXPR)),
    _e("erase", "M <- M - rate (M k) k^T on the map that first takes the memory's input: with a"
       " decay alpha at the old state, M (alpha I - rate k k^T), the delta-gradient-descent factor"
       " (Nested Learning's DGD; Hope); a rate a per channel of k: M - (M k) (a * k)^T (RWKV-7)",
       Arg("key", ArgKind.EXPR),
       Arg("rate", ArgKind.EXPR, low=0.0)),
    _e("elastic_net", "l1 and l2 penalties on the state", Arg("l1", ArgKind.EXPR, 0.0, low=0.0),
       Arg("l2", ArgKind.EXPR, 0.0, low=0.0)),
])

# ------------------------------------------------------------------ learning algorithms
LR = Arg("lr", ArgKind.EXPR, low=0.0)  # 0: the memory stays at its initial state
ALGORITHMS: dict[str, Entry] = dict([
    _e("gd", "one gradient step per token (steps > 1: several on the same objective; several "
          "objectives: `gd(...) then gd(...)`)", LR,
       Arg("steps", ArgKind.INT, 1, low=1, high=16)),
    _e("implicit", "the proximal (implicit) step, solved in closed form (Longhorn, DGD)", LR),
    _e("momentum", "gradient step through a momentum buffer: U = momentum U - lr grad,"
       " M = M + U (Titans' surprise)", LR,
       Arg("momentum", ArgKind.EXPR, low=0.0, high=1.0, high_open=True)),
    _e("newton_schulz", "momentum orthogonalized by Newton-Schulz iterations: U = momentum U +"
       " grad, M = M - lr NS(U) (Muon, Atlas)", LR,
       Arg("momentum", ArgKind.EXPR, 0.0, low=0.0, high=1.0, high_open=True), Arg("steps", ArgKind.INT, 5, low=1, high=20)),
    _e("exact", "the exact minimizer of the objective (recursive least squares, Mesa); the"
       " chunked read solves by cg_steps conjugate-gradient steps (MesaNet) when cg_steps > 0",
       Arg("cg_steps", ArgKind.INT, 0, low=0, high=256)),
    _e("nonparametric", "the minimizer over the cached tokens (Nadaraya-Watson; softmax attention)",
       Arg("window", ArgKind.INT, 0, low=0)),
])

# ------------------------------------------------------------------ context functions
# the functions of values (activations, norms) live in nlc/functions.py; these are the
# calls with structure of their own
SPECIAL_FUNCTIONS: dict[str, Entry] = dict(
    [_e("conv", "causal depthwise short convolution over time", Arg("x", ArgKind.EXPR),
          Arg("width", ArgKind.INT, 4, low=1, high=16)),
       _e("dot", "inner product over the last axis", Arg("a", ArgKind.EXPR), Arg("b", ArgKind.EXPR)),
       _e("total", "sum over the last axis", Arg("x", ArgKind.EXPR)),
       _e("detach", "stop gradients (direct conditioning)", Arg("x", ArgKind.EXPR)),
       _e("sqnorm", "squared l2 norm over all elements", Arg("x", ArgKind.EXPR)),
       _e("newton_schulz5", "orthogonalize a matrix by 5 Newton-Schulz iterations",
          Arg("x", ArgKind.EXPR))]
)
FUNCTIONS = functions.View(lambda f: Entry(f.name, (Arg("x", ArgKind.EXPR),), f.doc),
                           SPECIAL_FUNCTIONS)

# ------------------------------------------------------------------ parameter initializers
PARAM_INITS: dict[str, Entry] = dict([
    _e("normal", "normal(std)", Arg("std", ArgKind.NUMBER, 0.02, **POSITIVE)),
    _e("uniform", "uniform(low, high)", Arg("low", ArgKind.NUMBER), Arg("high", ArgKind.NUMBER)),
    _e("log_uniform", "log of a uniform draw in [low, high] (Mamba's A_log)",
       Arg("low", ArgKind.NUMBER, **POSITIVE), Arg("high", ArgKind.NUMBER, **POSITIVE)),
    _e("inv_softplus_uniform", "dt bias: softplus^-1 of a log-uniform draw in [low, high]",
       Arg("low", ArgKind.NUMBER, **POSITIVE), Arg("high", ArgKind.NUMBER, **POSITIVE)),
    _e("constant", "every entry equal to value", Arg("value", ArgKind.NUMBER)),
    _e("zeros", "all zeros"),
    _e("ones", "all ones"),
])


class TransferMode(Enum):
    """Knowledge-transfer edges between levels (Nested Learning, section 3)."""

    CONTEXT = "context"      # the source generates the target's context (q, k, v, gates)
    INIT = "init"            # the source supplies the target's initial state (meta-learning)
    BACKPROP = "backprop"    # the target's loss trains the source through the target
    DIRECT = "direct"        # the source conditions the target with no gradient between them
    GENERATE = "generate"    # the source's output is the target's weights (hypernetwork)


# Names a declaration may read without defining them.
OPTIMIZER_BUILTINS = ("param", "t")   # the parameter being optimized; the step count (from 1)
LAYER_BUILTINS = ("head",)            # the head's index, 0 .. heads - 1 (1 head if no `heads`)
