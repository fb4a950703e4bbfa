"""One chunk of a group of generating MLP memories in closed form, with a hand-derived
backward pass: the mathematics of the fused group-chunk kernel (issue 17), in PyTorch.

The group is Hope's self-modifying Titans (examples/hope.nl, docs/hope.md): M memories, each
an MLP `f(x) = x + W2 gelu(W1 x)` with `W1` `[F, d]` and `W2` `[d, F]`, read at the chunk
start (`read start`). Their reads, each squashed by its tail, are the group's key k, value v,
rate eta and retention alpha for every token of the chunk, and every member takes one gd step
per token on `l2(f(k), f(v))` with its gradient at the chunk-start weights (`gradients at
chunk(C)`), the decay alpha on both maps and the erase `W1 (alpha I - eta k k^T)` on the first:

    e_t = f0(k_t) - f0(v_t),  a_t = W1_0 k_t,  p_t = gelu'(a_t) * (W2_0^T e_t)
    W1_t = W1_{t-1} (alpha_t I - eta_t k_t k_t^T) - eta_t p_t k_t^T
    W2_t = alpha_t W2_{t-1} - eta_t e_t gelu(a_t)^T

Nothing in a chunk reads a state but the chunk-start one, so the chunk's last state is a
closed form. The transitions `M_t = alpha_t I - eta_t k_t k_t^T` are the same for every
member and row of W1 (the key, rate and retention are the group's), so one sweep over the
chunk's tokens makes `P = M_1 ... M_C` and the rows `U_t = k_t^T M_{t+1} ... M_C` for all of
them:

    W1_C = W1_0 P - sum_t eta_t p_t U_t
    W2_C = (prod_t alpha_t) W2_0 - sum_t eta_t (prod_{s>t} alpha_s) e_t gelu(a_t)^T

`chunk_forward` computes this; `chunk_backward` its vector-Jacobian product, derived by hand
(each step's adjoint is written next to it) and recomputing the chunk from its inputs rather
than keeping anything per token. A kernel that fuses a chunk keeps to these two functions;
tests/test_mlp_group.py checks them against autograd and against the group's own chunked form
(runtime/library/scan.py's `coupled_chunked`) in float64.

Layout: N independent rows (batch x heads), M members, C tokens, d = the memory's width,
F = its hidden width. `W1` `[N, M, F, d]`, `W2` `[N, M, d, F]`, `h` `[N, C, d]`. A tail is
"l2norm" (a vector read, x / sqrt(|x|^2 + eps)), "none" (a vector read as it is) or
("sigmoid_mean", bias) (a scalar read, sigmoid(mean(x) + bias)). `roles` names the members
whose reads are the group's key, value, rate and retention, by index; `biases` `[N, n]`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from nlc.runtime.library.ops import EPS

_SQRT_HALF = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def gelu_parts(x: torch.Tensor):
    """gelu(x), gelu'(x) and gelu''(x) of the exact (erf) gelu."""
    cdf = 0.5 * (1 + torch.erf(x * _SQRT_HALF))
    pdf = torch.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return x * cdf, cdf + x * pdf, pdf * (2 - x * x)


@dataclass(frozen=True)
class Group:
    """What the chunk needs to know of the group: each member's read tail and which members'
    reads are the key, value, rate and retention (indices into the members)."""
    tails: tuple  # per member: "l2norm", "none" or ("sigmoid_mean", bias index)
    key: int
    value: int
    rate: int
    retention: int


def _tail(kind, r: torch.Tensor, biases: torch.Tensor):
    if kind == "l2norm":
        return r * torch.rsqrt((r * r).sum(-1, keepdim=True) + EPS)
    if kind == "none":
        return r
    return torch.sigmoid(r.mean(-1) + biases[:, kind[1], None])


def _tail_backward(kind, r: torch.Tensor, out: torch.Tensor, d_out: torch.Tensor,
                   d_biases: list):
    """The read's gradient given its tail's output's (and the bias's, added to d_biases)."""
    if kind == "l2norm":  # y = x s, s = (|x|^2 + eps)^-1/2: dx = s (dy - y (y . dy))
        scale = torch.rsqrt((r * r).sum(-1, keepdim=True) + EPS)
        return scale * (d_out - out * (out * d_out).sum(-1, keepdim=True))
    if kind == "none":
        return d_out
    d_pre = d_out * out * (1 - out)  # y = sigmoid(mean(x) + b)
    d_biases[kind[1]] = d_biases[kind[1]] + d_pre.sum(-1)
    return (d_pre / r.shape[-1]).unsqueeze(-1).expand_as(r)


def _reads(group: Group, W1, W2, h, biases):
    """Every member's read of the chunk's tokens at the chunk-start weights, and its tail."""
    z = torch.einsum("nmfd,ncd->nmcf", W1, h)
    g, _, _ = gelu_parts(z)
    r = torch.einsum("nmdf,nmcf->nmcd", W2, g) + h[:, None]
    outs = [_tail(kind, r[:, i], biases) for i, kind in enumerate(group.tails)]
    return z, g, r, outs


def _sweep(k, eta, alpha):
    """P = M_1 ... M_C and U_t = k_t^T M_{t+1} ... M_C for M_t = alpha_t I - eta_t k_t k_t^T,
    from the last token back; also each step's right factor (the backward pass's)."""
    N, C, d = k.shape
    Q = torch.eye(d, dtype=k.dtype, device=k.device).expand(N, d, d)
    U, right = [None] * C, [None] * C
    for t in range(C - 1, -1, -1):
        right[t] = Q
        U[t] = torch.einsum("nd,nde->ne", k[:, t], Q)
        Q = alpha[:, t, None, None] * Q - eta[:, t, None, None] * k[:, t, :, None] * U[t][:, None]
    return Q, torch.stack(U, 1), right


def _decays(alpha):
    """prod_t alpha_t and, per token, prod_{s>t} alpha_s (products, no division)."""
    cols = [torch.ones_like(alpha[:, 0])]
    for t in range(alpha.shape[1] - 1, 0, -1):
        cols.append(cols[-1] * alpha[:, t])
    after = torch.stack(cols[::-1], 1)
    return after[:, 0] * alpha[:, 0], after


def _forward(group: Group, W1, W2, h, biases):
    z, gz, r, outs = _reads(group, W1, W2, h, biases)
    k, v = outs[group.key], outs[group.value]
    eta, alpha = outs[group.rate], outs[group.retention]
    a = torch.einsum("nmfd,ncd->nmcf", W1, k)
    b = torch.einsum("nmfd,ncd->nmcf", W1, v)
    g, g1, g2 = gelu_parts(a)
    gb, gb1, _ = gelu_parts(b)
    e = torch.einsum("nmdf,nmcf->nmcd", W2, g - gb) + (k - v)[:, None]
    s = torch.einsum("nmdf,nmcd->nmcf", W2, e)
    p = g1 * s
    P, U, right = _sweep(k, eta, alpha)
    A, after = _decays(alpha)
    c = eta * after
    W1_next = (torch.einsum("nmfd,nde->nmfe", W1, P)
               - torch.einsum("nmcf,nc,nce->nmfe", p, eta, U))
    W2_next = A[:, None, None, None] * W2 - torch.einsum("nmcd,nc,nmcf->nmdf", e, c, g)
    saved = {"z": z, "gz": gz, "r": r, "k": k, "v": v, "eta": eta, "alpha": alpha, "g": g,
             "g1": g1, "g2": g2, "gb": gb, "gb1": gb1, "e": e, "s": s, "p": p, "P": P, "U": U,
             "right": right, "A": A, "after": after, "c": c}
    return outs, W1_next, W2_next, saved


def chunk_forward(group: Group, W1, W2, h, biases):
    """The chunk's reads (a list, one per member, after its tail) and the members' last
    states (W1_C, W2_C)."""
    outs, W1_next, W2_next, _ = _forward(group, W1, W2, h, biases)
    return outs, W1_next, W2_next


def chunk_backward(group: Group, W1, W2, h, biases, d_outs, dW1_next, dW2_next):
    """The gradients of W1, W2, h and the biases given those of the chunk's reads (a list, one
    per member; None for a read nothing used) and of its last states. The chunk is
    recomputed from its inputs."""
    outs, _, _, sv = _forward(group, W1, W2, h, biases)
    k, v, eta, alpha, U, P = sv["k"], sv["v"], sv["eta"], sv["alpha"], sv["U"], sv["P"]
    p, e, g, gb, a1 = sv["p"], sv["e"], sv["g"], sv["gb"], sv["g1"]
    d_outs = [torch.zeros_like(o) if d is None else d for o, d in zip(outs, d_outs)]
    dk, dv = d_outs[group.key].clone(), d_outs[group.value].clone()
    deta, dalpha = d_outs[group.rate].clone(), d_outs[group.retention].clone()

    # W1_C = W1 P - sum_t eta_t p_t U_t
    dW1 = torch.einsum("nmfe,nde->nmfd", dW1_next, P)
    dP = torch.einsum("nmfd,nmfe->nde", W1, dW1_next)
    GU = torch.einsum("nmfe,nce->nmcf", dW1_next, U)      # (dW1_C U_t^T) per token
    dp = -eta[:, None, :, None] * GU
    deta = deta - (p * GU).sum((1, 3))
    dU = -torch.einsum("nmcf,nc,nmfe->nce", p, eta, dW1_next)

    # W2_C = A W2 - sum_t c_t e_t g_t^T, c_t = eta_t prod_{s>t} alpha_s
    dW2 = sv["A"][:, None, None, None] * dW2_next
    dA = (dW2_next * W2).sum((1, 2, 3))
    GE = torch.einsum("nmdf,nmcf->nmcd", dW2_next, g)     # dW2_C g_t per token
    c = sv["c"]
    de = -c[:, None, :, None] * GE
    dc = -(e * GE).sum((1, 3))
    dg = -c[:, None, :, None] * torch.einsum("nmdf,nmcd->nmcf", dW2_next, e)

    # p = gelu'(a) s, s = W2^T e
    ds = dp * a1
    da = dp * sv["s"] * sv["g2"]
    de = de + torch.einsum("nmdf,nmcf->nmcd", W2, ds)
    dW2 = dW2 + torch.einsum("nmcd,nmcf->nmdf", e, ds)

    # e = W2 (gelu(a) - gelu(b)) + k - v, a = W1 k, b = W1 v
    dW2 = dW2 + torch.einsum("nmcd,nmcf->nmdf", de, g - gb)
    dgd = torch.einsum("nmdf,nmcd->nmcf", W2, de)
    dk = dk + de.sum(1)
    dv = dv - de.sum(1)
    da = da + (dg + dgd) * a1
    db = -dgd * sv["gb1"]
    dW1 = dW1 + torch.einsum("nmcf,ncd->nmfd", da, k) + torch.einsum("nmcf,ncd->nmfd", db, v)
    dk = dk + torch.einsum("nmcf,nmfd->ncd", da, W1)
    dv = dv + torch.einsum("nmcf,nmfd->ncd", db, W1)

    # the decays: A = prod alpha, c_t = eta_t after_t
    after = sv["after"]
    deta = deta + dc * after
    acc = torch.zeros_like(dA)
    before = torch.ones_like(dA)
    dalpha_cols = []
    for t in range(alpha.shape[1]):
        dalpha_cols.append(after[:, t] * (acc + dA * before))
        acc = acc * alpha[:, t] + dc[:, t] * eta[:, t]
        before = before * alpha[:, t]
    dalpha = dalpha + torch.stack(dalpha_cols, 1)

    # the sweep, forward in t: Q_new = alpha Q - eta k U_t with U_t = k^T Q
    dQ = dP
    dk_cols, deta_cols, dalpha_cols = [], [], []
    for t in range(k.shape[1]):
        Q, kt = sv["right"][t], k[:, t]
        dQk = torch.einsum("nde,nd->ne", dQ, kt)                  # k^T dQ
        dalpha_cols.append((dQ * Q).sum((1, 2)))
        deta_cols.append(-(dQk * U[:, t]).sum(-1))
        dU_t = dU[:, t] - eta[:, t, None] * dQk
        dk_cols.append(-eta[:, t, None] * torch.einsum("nde,ne->nd", dQ, U[:, t])
                       + torch.einsum("nde,ne->nd", Q, dU_t))
        dQ = alpha[:, t, None, None] * dQ + kt[:, :, None] * dU_t[:, None]
    dk = dk + torch.stack(dk_cols, 1)
    deta = deta + torch.stack(deta_cols, 1)
    dalpha = dalpha + torch.stack(dalpha_cols, 1)

    # the tails, then the reads r = W2 gelu(W1 h) + h
    d_tails = list(d_outs)
    d_tails[group.key], d_tails[group.value] = dk, dv
    d_tails[group.rate], d_tails[group.retention] = deta, dalpha
    d_biases = [h.new_zeros(h.shape[0]) for _ in range(biases.shape[1])]
    dr = torch.stack([_tail_backward(kind, sv["r"][:, i], outs[i], d_tails[i], d_biases)
                      for i, kind in enumerate(group.tails)], 1)
    z, gz = sv["z"], sv["gz"]
    dW2 = dW2 + torch.einsum("nmcd,nmcf->nmdf", dr, gz)
    dz = torch.einsum("nmdf,nmcd->nmcf", W2, dr) * gelu_parts(z)[1]
    dW1 = dW1 + torch.einsum("nmcf,ncd->nmfd", dz, h)
    dh = dr.sum(1) + torch.einsum("nmcf,nmfd->ncd", dz, W1)
    return dW1, dW2, dh, torch.stack(d_biases, 1) if d_biases else torch.zeros_like(biases)
