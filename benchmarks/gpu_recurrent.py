"""GPU benchmark of nlc's generated fused recurrent kernels.

Renders the kernels for DeltaNet (delta rule, no decay) and Gated DeltaNet (delta rule,
scalar decay) with `nlc.emit.triton_render`, then on one CUDA GPU:

1. correctness in bf16 against a float32 PyTorch token loop on the GPU (forward output, final
   state and every gradient; relative error in the Frobenius norm must stay below 5e-3);
2. median times (triton.testing.do_bench) of our forward and forward + backward vs
   flash-linear-attention's fused recurrent kernels (`fused_recurrent_delta_rule`,
   `fused_recurrent_gated_delta_rule`) vs a plain PyTorch loop, at
   (B, T, H, D) = (8, 2048, 16, 128) and (1, 16384, 16, 128). The loop is timed over its first
   LOOP_TOKENS tokens and extrapolated linearly to T (marked "~" in the table);
3. decoding-step latency for B in {1, 8, 64} (H = 16, D = 128, float32 state): our step
   kernel vs fla's fused recurrent kernel at T = 1 vs one eager PyTorch step, both as GPU
   time (do_bench) and as host wall time per call (launch overhead included).

A failure of an fla kernel is recorded in the table as its error text.

Then the families fla has no fused recurrent kernel for, as `nlc compile` instantiates them
for examples/dplr_matrix.nl (dplr, channel decay), examples/lp_matrix.nl (elementwise lp
error, p = 3) and examples/huber_matrix.nl (elementwise huber error, delta = 1/2): the same
bf16 correctness check against a float32 token loop, forward and forward + backward times
against the loop, and the decoding step. (examples/delta_product.nl compiles to the delta
rule's kernels with an effective rate: the Gated DeltaNet rows measure it.)

Imports: torch and triton; from nlc only `nlc.emit.triton_render` (which needs sympy
and jinja2, both dependencies of torch, and ruff to format the kernels);
optionally `fla` (fla-core). Usage, from the repository root:

    python benchmarks/gpu_recurrent.py --out docs/gpu_recurrent.md [--sweep]
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import sympy as sp
import torch
import triton
from triton.testing import do_bench

try:  # the installed nlc (the checkout's folders are mapped into it: nlc.templates, ...)
    import nlc.templates  # noqa: F401
except ImportError:
    sys.exit("gpu_recurrent.py needs nlc installed (pip install .); run it from outside the "
             "checkout's root so that the checkout's `nlc` folder does not shadow it")
from nlc.emit.triton_render import RecurrentKernelPlan, render_recurrent

SHAPES = [(8, 2048, 16, 128), (1, 16384, 16, 128)]
DECODE_BATCHES = [1, 8, 64]
LOOP_TOKENS = 64
TOL = 5e-3
MODELS = {"DeltaNet": "none", "Gated DeltaNet": "scalar"}


# -- our kernels ------------------------------------------------------------------------------

def load_kernels(decay: str, folder: Path):
    return load_plan(RecurrentKernelPlan(family="delta", decay=decay), folder)


def make_inputs(B, T, H, D, decay, dtype, seed=0):
    """Our convention: v already multiplied by beta; state [V, K]."""
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device="cuda")

    q = randn(B, T, H, D) * D ** -0.5
    k = torch.nn.functional.normalize(randn(B, T, H, D), dim=-1)
    v = randn(B, T, H, D)
    beta = torch.rand(B, T, H, generator=gen, device="cuda")
    g = torch.nn.functional.logsigmoid(randn(B, T, H) + 4.0) if decay == "scalar" else None
    h0 = randn(B, H, D, D) * 0.1
    cast = [x.to(dtype) if x is not None else None for x in (q, k, v, g, beta)]
    return (*cast, h0)


def torch_loop(q, k, v, g, beta, h0, steps=None):
    """float32 reference: S_t = S_{t-1} a_t (I - beta_t k_t k_t^T) + v_t k_t^T, o_t = S_t q_t."""
    q, k, v, beta = (x.float() for x in (q, k, v, beta))
    S = h0.float()
    outs = []
    for t in range(q.shape[1] if steps is None else steps):
        if g is not None:
            S = S * g[:, t].float().exp()[..., None, None]
        kt = k[:, t]
        pk = torch.einsum("bhvk,bhk->bhv", S, kt)
        S = S + torch.einsum("bhv,bhk->bhvk", v[:, t] - beta[:, t, :, None] * pk, kt)
        outs.append(torch.einsum("bhvk,bhk->bhv", S, q[:, t]))
    return torch.stack(outs, 1), S


def rel(x, ref):
    return ((x.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


def check_correctness(module, decay, B=2, T=512, H=4, D=128):
    """bf16 kernels vs the float32 loop on the same (bf16-rounded) inputs; worst relative error."""
    fn = module.fused_recurrent
    q, k, v, g, beta, h0 = make_inputs(B, T, H, D, decay, torch.bfloat16)
    leaves = [x.requires_grad_() for x in (q, k, v, g, beta, h0) if x is not None]
    o, ht = fn(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    ref_leaves = [x.detach().float().requires_grad_() for x in leaves]
    rq, rk, rv, *rest = ref_leaves
    rg = rest.pop(0) if g is not None else None
    rbeta, rh0 = rest
    ref_o, ref_ht = torch_loop(rq, rk, rv, rg, rbeta, rh0)
    errors = {"o": rel(o, ref_o), "final state": rel(ht, ref_ht)}
    gen = torch.Generator(device="cuda").manual_seed(1)
    w_o = torch.randn(o.shape, generator=gen, device="cuda")
    w_h = torch.randn(ht.shape, generator=gen, device="cuda")
    grads = torch.autograd.grad((o.float() * w_o).sum() + (ht * w_h).sum(), leaves)
    ref_grads = torch.autograd.grad((ref_o * w_o).sum() + (ref_ht * w_h).sum(), ref_leaves)
    names = ["q", "k", "v"] + (["g"] if g is not None else []) + ["beta", "h0"]
    for name, dx, ref in zip(names, grads, ref_grads):
        errors[f"d{name}"] = rel(dx, ref)
    return errors


# -- families without an fla counterpart ------------------------------------------------------

P, Y = sp.symbols("p y")
OTHER = {  # title -> (plan arguments, the error signal in torch for the loop, rate scale)
    "dplr, channel decay (examples/dplr_matrix.nl)": (
        {"family": "dplr", "decay": "channel"}, None, 1.0),
    "elementwise lp, p = 3, scalar decay, order parallel (examples/lp_matrix.nl)": (
        {"family": "elementwise", "decay": "scalar", "order": "parallel",
         "error": 3 * sp.Abs(P - Y) * (P - Y)},
        lambda p, y: 3 * (p - y).abs() * (p - y), 0.1),  # e grows with r: small rates
    "elementwise huber, delta = 1/2, scalar decay, order before (examples/huber_matrix.nl)": (
        {"family": "elementwise", "decay": "scalar", "order": "before",
         "error": sp.Piecewise((P - Y, sp.Abs(P - Y) <= sp.Rational(1, 2)),
                               (sp.sign(P - Y) / 2, True))},
        lambda p, y: (p - y).clamp(-0.5, 0.5), 1.0),
}
NAMES = ("q", "k", "v", "g", "beta", "a", "b", "h0")


def load_plan(plan: RecurrentKernelPlan, folder: Path):
    path = folder / f"{plan.module}.py"
    path.write_text(render_recurrent(plan))
    spec = importlib.util.spec_from_file_location(plan.module, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def family_inputs(kind, B, T, H, D, dtype, device="cuda", seed=0):
    """(q, k, v, g, beta, a, b, h0) for `kind` = OTHER's value; None where the rule has none.
    dplr gets a = -beta k, b = k and v scaled by beta, as examples/dplr_matrix.nl."""
    plan, _, rate = kind
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    q = randn(B, T, H, D) * D ** -0.5
    k = torch.nn.functional.normalize(randn(B, T, H, D), dim=-1)
    v = randn(B, T, H, D)
    gate = (B, T, H, D) if plan["decay"] == "channel" else (B, T, H)
    g = torch.nn.functional.logsigmoid(randn(*gate) + 4.0)
    beta = torch.rand(B, T, H, generator=gen, device=device) * rate
    a = b = None
    if plan["family"] == "dplr":
        a, b, v = -beta[..., None] * k, k.clone(), beta[..., None] * v
        beta = None
    h0 = randn(B, H, D, D) * 0.1
    cast = [x.to(dtype) if x is not None else None for x in (q, k, v, g, beta, a, b)]
    return (*cast, h0)


def family_loop(kind, q, k, v, g, beta, a, b, h0, steps=None):
    """float32 token loop of OTHER's rules (nlc/emit/triton_render.py docstring)."""
    plan, error, _ = kind
    S = h0.float()
    outs = []
    for t in range(q.shape[1] if steps is None else steps):
        kt, vt = k[:, t].float(), v[:, t].float()
        gt = g[:, t].float().exp()
        decayed = S * (gt[..., None, :] if plan["decay"] == "channel" else gt[..., None, None])
        if plan["family"] == "dplr":
            z = torch.einsum("bhvk,bhk->bhv", S, a[:, t].float())
            S = decayed + z[..., None] * b[:, t].float()[..., None, :] + vt[..., None] * kt[..., None, :]
        else:
            at = decayed if plan["order"] == "before" else S
            e = error(torch.einsum("bhvk,bhk->bhv", at, kt), vt)
            S = decayed - (beta[:, t].float()[..., None] * e)[..., None] * kt[..., None, :]
        outs.append(torch.einsum("bhvk,bhk->bhv", S, q[:, t].float()))
    return torch.stack(outs, 1), S


def check_family(module, kind, B=2, T=512, H=4, D=128, dtype=torch.bfloat16,
                 device="cuda"):
    """The kernels vs the float32 loop on the same (rounded) inputs -> {name: rel. error}."""
    fn = module.fused_recurrent
    inputs = family_inputs(kind, B, T, H, D, dtype, device)
    present = [(n, x.requires_grad_()) for n, x in zip(NAMES, inputs) if x is not None]
    args = dict(present)
    o, ht = fn(*(args.get(n) for n in NAMES[:7]), initial_state=args["h0"],
               output_final_state=True)
    ref = {n: x.detach().float().requires_grad_() for n, x in present}
    ref_o, ref_ht = family_loop(kind, *(ref.get(n) for n in NAMES))
    errors = {"o": rel(o, ref_o), "final state": rel(ht, ref_ht)}
    gen = torch.Generator(device=device).manual_seed(1)
    w_o = torch.randn(o.shape, generator=gen, device=device)
    w_h = torch.randn(ht.shape, generator=gen, device=device)
    grads = torch.autograd.grad((o.float() * w_o).sum() + (ht * w_h).sum(),
                                [x for _, x in present])
    ref_grads = torch.autograd.grad((ref_o * w_o).sum() + (ref_ht * w_h).sum(),
                                    [ref[n] for n, _ in present])
    for (name, _), dx, r in zip(present, grads, ref_grads):
        errors[f"d{name}"] = rel(dx, r)
    return errors


def time_family(module, kind, shape):
    B, T, H, D = shape
    ours = module.fused_recurrent
    inputs = family_inputs(kind, B, T, H, D, torch.bfloat16)
    tensors = inputs[:7]
    row = {}
    with torch.no_grad():
        row["ours fwd"] = (median_ms(lambda: ours(*tensors)), None)
        loop = median_ms(lambda: family_loop(kind, *tensors, inputs[7].new_zeros(B, H, D, D),
                                             steps=LOOP_TOKENS))
        row["torch loop fwd"] = (loop * T / LOOP_TOKENS, None)
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in tensors]
    do = torch.randn_like(tensors[2])

    def fwd_bwd():
        o, _ = ours(*leaves)
        o.backward(do)

    row["ours fwd+bwd"] = (median_ms(fwd_bwd, grad_to_none=[x for x in leaves if x is not None]),
                           None)
    return row


def time_family_decode(module, kind, B, H=16, D=128):
    step = module.step
    inputs = family_inputs(kind, B, 1, H, D, torch.bfloat16)
    state = torch.randn(B, H, D, D, device="cuda") * 0.1
    one = [x[:, 0] if x is not None else None for x in inputs[:7]]
    calls = {"ours step": lambda: step(*one, state=state),
             "torch step": lambda: family_loop(kind, *inputs[:7], state)}
    row = {}
    with torch.no_grad():
        for name, fn in calls.items():
            row[name] = attempt(lambda fn=fn: median_ms(fn))
            row[name + " wall"] = attempt(lambda fn=fn: wall_ms(fn))
    return row


def report_families(folder: Path, skip_long: bool) -> list[str]:
    lines = ["## Families without an fla fused recurrent kernel", ""]
    for i, (title, kind) in enumerate(OTHER.items()):
        plan = RecurrentKernelPlan(**kind[0])
        module = load_plan(plan, folder)
        errors = check_family(module, kind)
        worst = max(errors.values())
        lines += [f"### {title}", "",
                  "Correctness, bf16 vs float32 torch loop, (B, T, H, D) = (2, 512, 4, 128): "
                  + ", ".join(f"{n} {e:.1e}" for n, e in errors.items())
                  + f" -> {'PASS' if worst < TOL else 'FAIL'} (< {TOL})", "",
                  "| (B, T, H, D) | ours fwd | torch loop fwd | ours fwd+bwd |",
                  "|---|---|---|---|"]
        for shape in SHAPES[:1] if skip_long else SHAPES:
            row = time_family(module, kind, shape)
            lines.append(f"| {shape} | {fmt(*row['ours fwd'])} | "
                         f"{fmt(*row['torch loop fwd'], approx=True)} | "
                         f"{fmt(*row['ours fwd+bwd'])} |")
            print(lines[-1], flush=True)
        lines += ["", "| decode B (H=16, D=128) | ours step GPU / wall | torch step GPU / wall |",
                  "|---|---|---|"]
        for B in DECODE_BATCHES:
            row = time_family_decode(module, kind, B)
            lines.append(f"| {B} | {fmt(*row['ours step'])} / {fmt(*row['ours step wall'])} | "
                         f"{fmt(*row['torch step'])} / {fmt(*row['torch step wall'])} |")
            print(lines[-1], flush=True)
        lines.append("")
    return lines


# -- flash-linear-attention -----------------------------------------------------------------

def fla_ops():
    try:
        from fla.ops.delta_rule import fused_recurrent_delta_rule
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
    except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised
        return None, f"fla not importable: {type(exc).__name__}: {exc}"
    return {"none": fused_recurrent_delta_rule,
            "scalar": fused_recurrent_gated_delta_rule}, None


def _fla_version():
    try:
        from importlib.metadata import version
        return version("fla-core")
    except Exception:  # noqa: BLE001 - a copied package has no metadata
        import fla
        return getattr(fla, "__version__", "(version unknown)")


def fla_call(op, decay, q, k, v, g, beta, h0, output_final_state=False):
    """fla's convention: v unscaled (v_fla = v / beta), q scaled by `scale` (we pass 1), state
    [K, V] (the transpose of ours)."""
    state = h0.transpose(-1, -2).contiguous() if h0 is not None else None
    kwargs = {"beta": beta, "scale": 1.0, "initial_state": state,
              "output_final_state": output_final_state}
    if decay == "scalar":
        kwargs["g"] = g
    return op(q, k, v, **kwargs)


# -- timing ---------------------------------------------------------------------------------------

def median_ms(fn, grad_to_none=None):
    return do_bench(fn, warmup=25, rep=200, grad_to_none=grad_to_none, return_mode="median")


def attempt(fn):
    """Run `fn` and return (value, None) or (None, error text) — fla failures go in the table."""
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001
        text = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")
        return None, text[:300]


def fmt(ms, err=None, approx=False):
    if err is not None:
        return f"error: {err}"
    return ("~" if approx else "") + (f"{ms:.3f}" if ms < 10 else f"{ms:.1f}")


def time_sequence(module, decay, fla, shape):
    B, T, H, D = shape
    ours = module.fused_recurrent
    q, k, v, g, beta, _ = make_inputs(B, T, H, D, decay, torch.bfloat16)
    v_fla = (v.float() / beta.float()[..., None].clamp_min(1e-3)).to(v.dtype)
    row = {}
    with torch.no_grad():
        row["ours fwd"] = (median_ms(lambda: ours(q, k, v, g, beta)), None)
        if fla is not None:
            row["fla fwd"] = attempt(lambda: median_ms(
                lambda: fla_call(fla[decay], decay, q, k, v_fla, g, beta, None)))
        loop = median_ms(lambda: torch_loop(q, k, v, g, beta, q.new_zeros(B, H, D, D).float(),
                                            steps=LOOP_TOKENS))
        row["torch loop fwd"] = (loop * T / LOOP_TOKENS, None)

    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v) if x is not None]
    gates = [x.detach().clone().requires_grad_() for x in (g, beta) if x is not None]
    lq, lk, lv = leaves
    lg, lb = (gates if g is not None else [None, *gates])
    do = torch.randn_like(v)
    params = [x for x in (lq, lk, lv, lg, lb) if x is not None]

    def ours_fwd_bwd():
        o, _ = ours(lq, lk, lv, lg, lb)
        o.backward(do)

    row["ours fwd+bwd"] = (median_ms(ours_fwd_bwd, grad_to_none=params), None)
    if fla is not None:
        lv_fla = v_fla.detach().clone().requires_grad_()
        fla_params = [x for x in (lq, lk, lv_fla, lg, lb) if x is not None]

        def fla_fwd_bwd():
            o, _ = fla_call(fla[decay], decay, lq, lk, lv_fla, lg, lb, None)
            o.backward(do)

        row["fla fwd+bwd"] = attempt(lambda: median_ms(fla_fwd_bwd, grad_to_none=fla_params))
    return row


def wall_ms(fn, calls=200):
    """Host wall time per call, launch overhead included (what a decoding loop waits for)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e3


def time_decode(module, decay, fla, B, H=16, D=128):
    step = module.step
    q, k, v, g, beta, _ = make_inputs(B, 1, H, D, decay, torch.bfloat16)
    state = torch.randn(B, H, D, D, device="cuda") * 0.1
    one = [x[:, 0] if x is not None else None for x in (q, k, v, g, beta)]
    v_fla = (v.float() / beta.float()[..., None].clamp_min(1e-3)).to(v.dtype)
    calls = {"ours step": lambda: step(*one, state=state),
             "torch step": lambda: torch_loop(q, k, v, g, beta, state)}
    if fla is not None:
        calls["fla T=1"] = lambda: fla_call(fla[decay], decay, q, k, v_fla, g, beta, state,
                                            output_final_state=True)
    row = {}
    with torch.no_grad():
        for name, fn in calls.items():
            row[name] = attempt(lambda fn=fn: median_ms(fn))
            row[name + " wall"] = attempt(lambda fn=fn: wall_ms(fn))
    return row


def sweep(module, decay, shape):
    """Forward and forward+backward times over launch configurations (tuning aid)."""
    B, T, H, D = shape
    ours = module.fused_recurrent
    q, k, v, g, beta, _ = make_inputs(B, T, H, D, decay, torch.bfloat16)
    lines = [f"sweep delta_{decay} {shape}: BLOCK_V, NUM_WARPS -> fwd ms, fwd+bwd ms"]
    for bv in (4, 8, 16, 32):
        for nw in (1, 2):
            module.BLOCK_V, module.NUM_WARPS = bv, nw
            with torch.no_grad():
                fwd = median_ms(lambda: ours(q, k, v, g, beta))
            leaves = [x.detach().clone().requires_grad_() if x is not None else None
                      for x in (q, k, v, g, beta)]

            def fb(leaves=leaves):
                o, _ = ours(*leaves)
                o.backward(torch.ones_like(o))

            params = [x for x in leaves if x is not None]
            both, err = attempt(lambda fb=fb, params=params: median_ms(fb, params))
            lines.append(f"  BV={bv:3d} warps={nw}: {fwd:.3f}  {fmt(both, err)}")
    module.BLOCK_V = module.NUM_WARPS = None
    return "\n".join(lines)


# -- report ----------------------------------------------------------------------------------

def ratio(row, ours_key, fla_key):
    ours, fla = row.get(ours_key, (None, None)), row.get(fla_key, (None, "n/a"))
    if ours[0] is None or fla[0] is None:
        return "n/a"
    return f"{ours[0] / fla[0]:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="write the markdown table here")
    parser.add_argument("--sweep", action="store_true", help="also sweep BLOCK_V x NUM_WARPS")
    parser.add_argument("--skip-long", action="store_true", help="only the first shape")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_recurrent.py needs a CUDA GPU")

    fla, fla_error = fla_ops()
    folder = Path(tempfile.mkdtemp(prefix="nlc_kernels_"))
    fla_text = f"fla-core {_fla_version()}" if fla else fla_error
    machine = (f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; triton "
               f"{triton.__version__}; Python {platform.python_version()}; {fla_text}; "
               f"{time.strftime('%Y-%m-%d')}.")
    legend = ("Times in ms: medians of triton.testing.do_bench (GPU time, L2 flushed); "
              "decode also as host wall time per call, launch overhead included. "
              "ratio = ours / fla (<= 1.0: ours no slower). Torch loop times marked ~ are "
              f"extrapolated from the first {LOOP_TOKENS} tokens. Our v is beta * fla's v; "
              "fla gets scale=1.")
    lines = ["# Fused recurrent kernels: nlc vs flash-linear-attention (bf16)", "", machine,
             legend, ""]
    sweeps = []
    for model, decay in MODELS.items():
        module = load_kernels(decay, folder)
        errors = check_correctness(module, decay)
        worst = max(errors.values())
        lines.append(f"## {model} (delta rule, decay {decay})")
        lines.append("")
        lines.append("Correctness, bf16 vs float32 torch loop, (B, T, H, D) = (2, 512, 4, 128): "
                     + ", ".join(f"{n} {e:.1e}" for n, e in errors.items())
                     + f" -> {'PASS' if worst < TOL else 'FAIL'} (< {TOL})")
        lines.append("")
        lines.append("| (B, T, H, D) | ours fwd | fla fwd | ratio | torch loop fwd | "
                     "ours fwd+bwd | fla fwd+bwd | ratio |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for shape in SHAPES[:1] if args.skip_long else SHAPES:
            row = time_sequence(module, decay, fla, shape)
            cells = [fmt(*row["ours fwd"]), fmt(*row.get("fla fwd", (None, "n/a"))),
                     ratio(row, "ours fwd", "fla fwd"), fmt(*row["torch loop fwd"], approx=True),
                     fmt(*row["ours fwd+bwd"]), fmt(*row.get("fla fwd+bwd", (None, "n/a"))),
                     ratio(row, "ours fwd+bwd", "fla fwd+bwd")]
            lines.append(f"| {shape} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
        lines.append("")
        lines.append("| decode B (H=16, D=128) | ours step GPU / wall | fla T=1 GPU / wall "
                     "| ratio GPU / wall | torch step GPU / wall |")
        lines.append("|---|---|---|---|---|")
        for B in DECODE_BATCHES:
            row = time_decode(module, decay, fla, B)
            cells = []
            for name in ("ours step", "fla T=1"):
                na = (None, "n/a")
                cells.append(f"{fmt(*row.get(name, na))} / {fmt(*row.get(name + ' wall', na))}")
            cells.append(f"{ratio(row, 'ours step', 'fla T=1')} / "
                         f"{ratio(row, 'ours step wall', 'fla T=1 wall')}")
            cells.append(f"{fmt(*row['torch step'])} / {fmt(*row['torch step wall'])}")
            lines.append(f"| {B} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
        lines.append("")
        if args.sweep:
            for shape in SHAPES[:1] if args.skip_long else SHAPES:
                sweeps.append(sweep(module, decay, shape))
                print(sweeps[-1], flush=True)
    lines += report_families(folder, args.skip_long)
    if sweeps:
        lines += ["## Launch sweeps", "", "```", *sweeps, "```", ""]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    try:
        main()
    except Exception:  # print the whole story on the remote machine before failing
        traceback.print_exc()
        raise
