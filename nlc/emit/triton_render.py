"""Emit fused recurrent Triton kernels (forward, backward, decoding step) for one matrix memory.

A `RecurrentKernelPlan` says which family of per-token rule the kernels implement
(docs/design.md, "Kernel families"); `render_recurrent` fills `templates/triton_recurrent.py.jinja`
and returns the source of a module that holds the three `@triton.jit` kernels and a
`RecurrentConfig` (which inputs they take), and gets its host side from the runtime library
(`nlc.runtime.library.recurrent_launch`: checks, launch configuration, autograd):

    fused_recurrent(q, k, v, g=None, beta=None, a=None, b=None, *, initial_state=None,
                    output_final_state=False, cu_seqlens=None) -> (o, final_state)
    step(q, k, v, g=None, beta=None, a=None, b=None, *, state) -> (o, new_state)

(error parameters, for the elementwise family, are keyword arguments of both).

The plan holds the configuration only (nothing of a spec), so the module is shared: every level
of every spec with the same configuration uses the one module named `plan.module`
(`nlc_kernel_delta_scalar`, `nlc_kernel_elementwise_scalar_before_<hash of the error>`).

Per token, with S in R^{V x K} and D_t = diag(exp(g_t)) on the key axis:

    decay        S_t = S_{t-1} D_t + v_t k_t^T
    delta        S_t = S_{t-1} D_t (I - beta_t k_t k_t^T) + v_t k_t^T
    dplr         S_t = S_{t-1} (D_t + a_t b_t^T) + v_t k_t^T
    elementwise  S_t = S_{t-1} D_t - beta_t e_t k_t^T,  e_t = error(S' k_t, v_t) entrywise,
                 S' = S_{t-1} D_t (order "before") or S_{t-1} (order "parallel"); with
                 rate "row" beta_t is one per row, (beta_t * e_t) k_t^T

and o_t = S_t q_t (or S_{t-1} q_t with read_before). The elementwise error and its partial
derivatives (SymPy's `diff`) are printed by `nlc.emit.tl_printer`; the template holds only
structure. The backward recomputes states instead of storing them (module docstring, and
docs/triton.md, say how the decay gradient is recovered without both S and dL/dS at hand).
"""

from __future__ import annotations

import hashlib
import keyword
from dataclasses import dataclass

import sympy as sp

from nlc import __version__
from nlc.emit.render import prose, render, ruff_format
from nlc.emit.tl_printer import tl_code

FAMILIES = ("decay", "delta", "dplr", "elementwise")
DECAYS = ("none", "scalar", "channel")
ORDERS = ("before", "parallel")
RATES = ("scalar", "row")
TEMPLATE = "triton_recurrent.py.jinja"

# Names the generated functions already use: an error parameter may not shadow them.
_RESERVED = frozenset({"q", "k", "v", "g", "beta", "a", "b", "p", "y", "initial_state",
                       "output_final_state", "cu_seqlens", "state", "torch", "triton", "tl",
                       "fused_recurrent", "step"})

_UPDATES = {
    "decay": "S_t = S_{t-1} D_t + v_t k_t^T   (v already scaled by the rate)",
    "delta": "S_t = S_{t-1} D_t (I - beta_t k_t k_t^T) + v_t k_t^T   (v already scaled)",
    "dplr": "S_t = S_{t-1} (D_t + a_t b_t^T) + v_t k_t^T",
    "elementwise": "S_t = S_{t-1} D_t - beta_t e_t k_t^T,  e_t = error(PRED k_t, v_t)",
}
_SUMMARIES = {"decay": "decay rule", "delta": "delta rule", "dplr": "diagonal plus low-rank rule",
              "elementwise": "elementwise-error rule"}
_SAVED = {"decay": None, "delta": "pk", "dplr": "z", "elementwise": "p"}
_SAVED_TEXT = {"decay": "none needed", "delta": "(S D) k", "dplr": "S_{t-1} a",
               "elementwise": "the prediction p"}


@dataclass(frozen=True)
class RecurrentKernelPlan:
    """What the recurrent kernels compute; see the module docstring for the four families."""

    family: str
    decay: str
    read_before: bool = False
    error: sp.Expr | None = None
    error_params: tuple[str, ...] = ()
    order: str = "before"
    rate: str = "scalar"        # elementwise: beta per token, or one per row [B, T, H, V]

    @property
    def module(self) -> str:
        """The kernel module's name, made from the validated configuration only: family,
        decay, read order and, for the elementwise family, the order and a digest of the
        error signal (with its parameters) in place of its text."""
        _validate(self)
        parts = ["nlc_kernel", self.family, self.decay] + ["read_before"] * self.read_before
        if self.family == "elementwise":
            error = sp.srepr(sp.sympify(self.error)) + repr(tuple(self.error_params))
            parts += [self.order] + ["rate_row"] * (self.rate == "row")
            parts.append(hashlib.sha256(error.encode()).hexdigest()[:8])
        return "_".join(parts)


def render_recurrent(plan: RecurrentKernelPlan, formatted: bool = True) -> str:
    """Python source of the kernel module for `plan` (deterministic, formatted
    unless `formatted` is False). Its banner and docstring name the configuration, never a
    spec: one module serves every spec that compiles to it."""
    _validate(plan)
    context = {
        "module": plan.module,
        "family": plan.family,
        "decay": plan.decay,
        "read_before": plan.read_before,
        "order": plan.order,
        "has_beta": plan.family in ("delta", "elementwise"),
        "rate_rows": plan.rate == "row",
        "saved": _SAVED[plan.family],
        "params": list(plan.error_params) if plan.family == "elementwise" else [],
        "version": prose(__version__),
        "plan_text": prose(_plan_text(plan)),
        "summary": prose(_summary(plan)),
        "decay_text": prose({"none": "I", "scalar": "exp(g_t) I",
                             "channel": "diag(exp(g_t))"}[plan.decay]),
        "update_text": prose(_UPDATES[plan.family].replace(
            "PRED", "S_{t-1} D_t" if plan.order == "before" else "S_{t-1}").replace(
            "beta_t e_t", "(beta_t * e_t)" if plan.rate == "row" else "beta_t e_t")),
        "read_text": prose("o_t = S_{t-1} q_t   (read before the write)" if plan.read_before
                           else "o_t = S_t q_t"),
        "layout_text": prose(_layout_text(plan)),
        "saved_text": prose(_SAVED_TEXT[plan.family]),
        "error": "", "error_dp": "", "error_dy": "", "error_text": prose(""),
    }
    if plan.family == "elementwise":
        context.update(_error_code(plan))
    text = render(TEMPLATE, **context)
    text = "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
    return ruff_format(text, f"{plan.module}.py") if formatted else text


def _validate(plan: RecurrentKernelPlan) -> None:
    if plan.family not in FAMILIES:
        raise ValueError(f"family {plan.family!r} is not one of {', '.join(FAMILIES)}")
    if plan.decay not in DECAYS:
        raise ValueError(f"decay {plan.decay!r} is not one of {', '.join(DECAYS)}")
    if plan.order not in ORDERS:
        raise ValueError(f"order {plan.order!r} is not one of {', '.join(ORDERS)}")
    if not isinstance(plan.read_before, bool):
        raise TypeError(f"read_before {plan.read_before!r} is not a bool")
    if plan.rate not in RATES or (plan.rate == "row" and plan.family != "elementwise"):
        raise ValueError(f"rate {plan.rate!r}: one per token, or 'row' for the elementwise "
                         "family")
    if plan.family != "elementwise":
        if plan.error is not None or plan.error_params:
            raise ValueError(f"family {plan.family!r} takes no error signal")
        return
    if plan.error is None:
        raise ValueError("family 'elementwise' needs the error signal e(p, y) = dL/dp")
    for name in plan.error_params:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) \
                or name.startswith("_") or name in _RESERVED:
            raise ValueError(f"error parameter {name!r} is not a free public identifier")
    if len(set(plan.error_params)) != len(plan.error_params):
        raise ValueError(f"error parameters repeat a name: {plan.error_params}")
    known = {"p", "y", *plan.error_params}
    unknown = sorted(s.name for s in sp.sympify(plan.error).free_symbols if s.name not in known)
    if unknown:
        raise ValueError(f"the error signal uses {', '.join(unknown)}, which are neither p, y "
                         "nor listed in error_params")


def _error_code(plan: RecurrentKernelPlan) -> dict:
    """The error and its partials de/dp, de/dy, printed for the kernels.

    Symbols are made real before differentiating (so d|x|/dx = sign(x)); DiracDelta terms
    from differentiating sign, Heaviside or Piecewise jumps are dropped: they vanish almost
    everywhere, and the kernels compute the derivative almost everywhere.
    """
    error = sp.sympify(plan.error)
    real = {s: sp.Symbol(s.name, real=True) for s in error.free_symbols}
    error = error.xreplace(real)
    p, y = sp.Symbol("p", real=True), sp.Symbol("y", real=True)

    def almost_everywhere(expr):
        return expr.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero)

    names = {"p": "b_p", "y": "b_y", **{n: f"c_{n}" for n in plan.error_params}}
    return {
        "error": tl_code(error, names),
        "error_dp": tl_code(almost_everywhere(sp.diff(error, p)), names),
        "error_dy": tl_code(almost_everywhere(sp.diff(error, y)), names),
        "error_text": prose(sp.sstr(error)),
    }


def _summary(plan: RecurrentKernelPlan) -> str:
    decay = {"none": "", "scalar": "scalar-decay ", "channel": "channel-decay "}[plan.decay]
    return f"{decay}{_SUMMARIES[plan.family]}"


def _plan_text(plan: RecurrentKernelPlan) -> str:
    text = f"family={plan.family!r}, decay={plan.decay!r}, read_before={plan.read_before}"
    if plan.family == "elementwise":
        text += f", order={plan.order!r}, error_params={tuple(plan.error_params)!r}"
    if plan.rate != "scalar":
        text += f", rate={plan.rate!r}"
    return text


def _layout_text(plan: RecurrentKernelPlan) -> str:
    parts = {"none": [], "scalar": ["g [B, T, H]"], "channel": ["g [B, T, H, K]"]}[plan.decay]
    if plan.family in ("delta", "elementwise"):
        parts.append("beta [B, T, H, V] (one per row; None: 1)" if plan.rate == "row"
                     else "beta [B, T, H] (None: 1)")
    if plan.family == "dplr":
        parts.append("a, b [B, T, H, K]")
    return "; ".join(parts) if parts else "no gates"
