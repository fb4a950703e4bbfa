"""Omega windows (Atlas, Behrouz et al. 2025) in generated layers: the forward gives each level
the context of earlier tokens (`k_m1`, ...; nl.earlier), zeros before a sequence's first token,
so a window sums its loss over the available last `window` tokens.

Every numeric check is against `atlas_reference` below, a float64 token loop written from the
math (context from x, a retention, then one gd step on the windowed loss by autograd), not the
generated step function."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_chunked_gradients_equal_recurrent

from nlc.cli import main
from nlc.emit import load_module

SPEC = Path(__file__).parent / "specs" / "omega_window.nl"
LR = 0.1

TEMPLATE = """layer Om {{
  dims d_model = 6, heads = 2, d_k = 3, d_v = 4
  param W_q, W_k : [d_model, d_k]
  param W_v : [d_model, d_v]
  param W_o : [d_v, d_model]
  param w_a : [d_model]
  context from x {{
    q = x @ W_q
    k = x @ W_k
    v = x @ W_v
    a = sigmoid(x @ w_a)
  }}
  level memory every 1 token {{
    state S : matrix[d_v, d_k] = zeros
    objective omega({loss}(S({key}), v), window = {window}, decay = {decay})
    retention decay(a)
    algorithm gd(lr = {lr})
    read S(q)
  }}
  output memory @ W_o
}}
"""

# (loss, key, window, decay): l2 windows are the product family (token by token); a dot
# window is the decay family with several terms, which has a chunked form
CASES = {
    "l2_w2": ("l2", "k", 2, 0.5),
    "l2_w3": ("l2", "k", 3, 0.8),
    "l2_w4": ("l2", "k", 4, 0.5),
    "tanh_w2": ("l2", "tanh(k)", 2, 0.7),
    "dot_w3": ("dot", "k", 3, 0.5),
    "diag_w3": ("l2", "k", 3, 0.6),
    "vector_w2": ("l2", "k", 2, 0.9),
}
DIAGONAL = {"diag_w3"}  # a diagonal memory (S * k): values and reads of size d_k
VECTOR = {"vector_w2"}  # a vector memory (<S, k>) learning the scalar a; the output is
                        # its read times v
KEYS = {"k": lambda k: k, "tanh(k)": torch.tanh}


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    """Each case's compiled layer class, compiled once."""
    out = {}
    root = tmp_path_factory.mktemp("omega")
    for name, (loss, key, window, decay) in CASES.items():
        path = root / f"omega_{name}.nl"
        spec = TEMPLATE.format(loss=loss, key=key, window=window, decay=decay, lr=LR)
        if name in DIAGONAL:
            for old, new in (("matrix[d_v, d_k]", "diagonal[d_k]"), ("[d_model, d_v]",
                             "[d_model, d_k]"), ("[d_v, d_model]", "[d_k, d_model]")):
                spec = spec.replace(old, new)
        if name in VECTOR:
            for old, new in (("matrix[d_v, d_k]", "vector[d_k]"), ("S(k), v)", "S(k), a)"),
                             ("output memory @ W_o", "output (memory * v) @ W_o")):
                spec = spec.replace(old, new)
        path.write_text(spec)
        out[name] = load_module(str(path)).Om
    return out


def new_layer(layers, case, **kwargs):
    torch.manual_seed(0)
    layer = layers[case](**kwargs).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    return layer


def atlas_reference(layer, x, case):
    """Atlas's rule token by token, in float64: at token t the state decays by a_t, then one
    gd step (rate LR) on sum_{j < window, j <= t} decay^j loss(S key_{t-j}, v_{t-j}) at the
    decayed state (the gradient by autograd); the read is S_t q_t (S_t * q_t for a diagonal
    memory, <S_t, q_t> v_t for a vector one), summed over the heads through W_o. `loss` is l2 (1/2 ||p - v||^2) or dot (-<p, v>)."""
    loss_kind, key_name, window, decay = CASES[case]
    feature = KEYS[key_name]
    W_q, W_k, W_v, W_o, w_a = (p.detach() for p in (layer.W_q, layer.W_k, layer.W_v,
                                                     layer.W_o, layer.w_a))
    B, T, _ = x.shape
    out = torch.zeros(B, T, x.shape[2], dtype=torch.float64)
    for b in range(B):
        for h in range(layer.heads):
            q, k, v = x[b] @ W_q[h], feature(x[b] @ W_k[h]), x[b] @ W_v[h]
            a = torch.sigmoid(x[b] @ w_a[h])
            flat = case in DIAGONAL | VECTOR
            S = torch.zeros(W_k.shape[2] if flat else (W_v.shape[2], W_k.shape[2]),
                            dtype=torch.float64)
            apply = (lambda S, x: S * x) if case in DIAGONAL else \
                (lambda S, x: S @ x)  # a vector memory's <S, x> too
            target = a if case in VECTOR else v
            for t in range(T):
                S_ret = (a[t] * S).requires_grad_(True)
                total = 0
                for j in range(min(window, t + 1)):  # the available tokens only
                    p = apply(S_ret, k[t - j])
                    term = 0.5 * ((p - target[t - j]) ** 2).sum() if loss_kind == "l2" \
                        else -(p * target[t - j]).sum()
                    total = total + decay ** j * term
                grad, = torch.autograd.grad(total, S_ret)
                S = (S_ret - LR * grad).detach()
                read = apply(S, q[t]) * (v[t] if case in VECTOR else 1)
                out[b, t] += read @ W_o[h]
    return out


@pytest.mark.parametrize("mode", ["chunked", "recurrent"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_equals_the_atlas_reference(layers, case, mode):
    layer = new_layer(layers, case, mode=mode, chunk_size=4)
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, atlas_reference(layer, x, case), rtol=1e-10, atol=1e-10)


def test_a_window_that_drops_its_earlier_tokens_differs(layers, monkeypatch):
    """The reference check can fail: a layer given no earlier tokens (its shifted inputs
    zeroed) is not the window's rule."""
    layer = new_layer(layers, "l2_w3")
    x = torch.randn(1, 7, 6, dtype=torch.float64)
    nl = sys.modules[type(layer).__module__].nl
    monkeypatch.setattr(nl, "earlier",
                        lambda t, n, *rest: tuple(torch.zeros_like(t) for _ in range(n)))
    with torch.no_grad():
        dropped = layer(x)
    assert not torch.allclose(dropped, atlas_reference(layer, x, "l2_w3"), atol=1e-6)


def test_chunked_equals_recurrent_where_a_chunked_form_exists(layers):
    """The dot window (decay family, several terms) runs chunk by chunk, forward and
    gradients equal to the recurrent form; an l2 window (product family with several keys)
    has no chunked form and the module's docstring says so."""
    layer = new_layer(layers, "dot_w3", chunk_size=4)
    x = torch.randn(2, 13, 6, dtype=torch.float64)
    module = sys.modules[type(layer).__module__]
    assert "def memory_chunked" in Path(module.__file__).read_text()
    outs = []
    for mode in ("chunked", "recurrent"):
        layer.mode = mode
        with torch.no_grad():
            outs.append(layer(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)
    assert_chunked_gradients_equal_recurrent(layer, x)
    doc = sys.modules[layers["l2_w3"].__module__].__doc__
    assert "no chunk-parallel form" in doc and "several keys" in doc


@pytest.mark.parametrize("case", ["l2_w4", "dot_w3"])
def test_packed_sequences_equal_separate_ones(layers, case):
    """cu_seqlens: a sequence's window never reaches into the one packed before it."""
    layer = new_layer(layers, case, chunk_size=4)
    lengths = [5, 2, 7]
    xs = [torch.randn(1, n, 6, dtype=torch.float64) for n in lengths]
    cu = torch.tensor([0, 5, 7, 14])
    with torch.no_grad():
        packed = layer(torch.cat(xs, dim=1), cu_seqlens=cu)
        separate = torch.cat([layer(x) for x in xs], dim=1)
    torch.testing.assert_close(packed, separate, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("splits", [(1, 2), (2, 3, 5), (6,), (1, 2, 3, 4, 7)])
@pytest.mark.parametrize("case", ["l2_w4", "dot_w3"])
def test_a_cache_continuation_equals_one_call(layers, case, splits):
    """Calls split inside the window (1, 2, 3 tokens after a split) carry the earlier
    tokens in the cache: the pieces equal one call."""
    layer = new_layer(layers, case, chunk_size=4)
    x = torch.randn(2, 10, 6, dtype=torch.float64)
    with torch.no_grad():
        whole = layer(x)
        cache, pieces, start = {}, [], 0
        for end in (*splits, 10):
            pieces.append(layer(x[:, start:end], cache=cache))
            start = end
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-10, atol=1e-10)
    assert cache["history"]["k"].shape == (2, CASES[case][2] - 1, 2, 3)


def test_packed_sequences_continue_from_a_cache(layers):
    """A packed call with a cache keeps each sequence's last tokens: the next packed call
    (same sequences, other lengths) continues each one."""
    layer = new_layer(layers, "l2_w3")
    first, second = [3, 1], [2, 4]
    xs = [torch.randn(1, a + b, 6, dtype=torch.float64) for a, b in zip(first, second)]
    with torch.no_grad():
        whole = [layer(x) for x in xs]
        cache = {}
        one = layer(torch.cat([x[:, :a] for x, a in zip(xs, first)], dim=1),
                    cu_seqlens=torch.tensor([0, 3, 4]), cache=cache)
        two = layer(torch.cat([x[:, a:] for x, a in zip(xs, first)], dim=1),
                    cu_seqlens=torch.tensor([0, 2, 6]), cache=cache)
    torch.testing.assert_close(torch.cat([one[:, :3], two[:, :2]], dim=1), whole[0],
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.cat([one[:, 3:], two[:, 2:]], dim=1), whole[1],
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", ["l2_w4", "dot_w3"])
def test_step_decoding_equals_forward(layers, case):
    layer = new_layer(layers, case, chunk_size=4)
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    with torch.no_grad():
        whole = layer(x)
        cache, outs = None, []
        for t in range(x.shape[1]):
            y, cache = layer.step(x[:, t], cache)
            outs.append(y)
    torch.testing.assert_close(torch.stack(outs, dim=1), whole, rtol=1e-10, atol=1e-10)


def test_a_cache_from_another_batch_is_refused(layers):
    layer = new_layer(layers, "l2_w2")
    cache = {}
    with torch.no_grad():
        layer(torch.randn(2, 3, 6, dtype=torch.float64), cache=cache)
        del cache["states"]  # the earlier tokens are checked, not only the states
        with pytest.raises(ValueError, match="the cache's earlier tokens 'k' are"):
            layer(torch.randn(3, 2, 6, dtype=torch.float64), cache=cache)


def test_the_spec_file_compiles(tmp_path, capsys):
    assert main(["compile", str(SPEC), "-o", str(tmp_path)]) == 0
    text = (tmp_path / "omega_window.py").read_text()
    assert 'k_m1, k_m2, k_m3 = nl.earlier(k, 3, cu_seqlens, history, "k")' in text


NOT_ZERO = "the term of the token 1 back is not zero at zero context"
UNDEFINED = "the term of the token 1 back is not defined at zero context"


@pytest.mark.parametrize("key, memory, weight, why", [
    ("sigmoid(k)", "matrix[d_v, d_k]", None, NOT_ZERO),
    ("exp(k)", "mlp(d_k -> 4 -> d_v, act = gelu)", None, NOT_ZERO),  # its key is 1 there
    ("k / a", "matrix[d_v, d_k]", None, UNDEFINED),                  # 0 / 0
    ("k", "matrix[d_v, d_k]", "1 / a", UNDEFINED),                   # 0 * (1 / 0)
])
def test_a_window_whose_terms_need_not_vanish_is_refused_at_the_objective(tmp_path, capsys,
                                                                          key, memory, weight,
                                                                          why):
    """Zeros before the first token are the sum over the available tokens only when a term
    at zero context is zero: evaluated, not guessed from the memory's form. Otherwise compile
    says why at the objective: a term that is not zero there, or one that divides by a
    context value that is zero there (the layer's output was NaN)."""
    spec = TEMPLATE.format(loss="l2", key=key, window=2, decay=0.5, lr=LR)
    spec = spec.replace("matrix[d_v, d_k]", memory).replace("retention decay(a)\n", "")
    if memory.startswith("mlp"):
        spec = spec.replace("= zeros", "= learned")
    if weight is not None:
        spec = spec.replace(f"S({key}), v)", f"S({key}), v, weight = {weight})")
    path = tmp_path / "refused.nl"
    path.write_text(spec)
    assert main(["derive", str(path)]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["compile", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:15:15: error: level 'memory': the omega window reads earlier tokens " \
           "(" in err, err
    assert why in err, err
    assert "Traceback" not in err and "internal error" not in err
    assert not out.exists() or list(out.iterdir()) == []


def test_a_context_value_named_like_an_earlier_token(tmp_path, capsys):
    """A spec's own `k_m1` is its value, not k one token back; under an omega window whose
    rule would read k_m1 as k one token back, the clash is refused at the objective."""
    spec = TEMPLATE.format(loss="l2", key="k_m1", window=1, decay=0.5, lr=LR)
    spec = spec.replace("    k = x @ W_k\n", "    k = x @ W_k\n    k_m1 = x @ W_k\n")
    plain = tmp_path / "own_name.nl"
    plain.write_text(spec)
    assert main(["compile", str(plain), "-o", str(tmp_path / "out")]) == 0
    assert "nl.earlier" not in (tmp_path / "out" / "own_name.py").read_text()
    clash = tmp_path / "clash.nl"
    clash.write_text(spec.replace("window = 1", "window = 2"))
    capsys.readouterr()
    assert main(["compile", str(clash), "-o", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert f"{clash}:16:15: error: level 'memory': the omega window names the context of " \
           "earlier tokens like the context value 'k_m1'" in err, err


def test_a_window_in_a_later_step_is_refused_at_its_objective(tmp_path, capsys):
    """`objective a then omega(...)`: the terms of a later step are not checked to vanish at
    zero context, so compile refuses, pointing at the window."""
    spec = TEMPLATE.format(loss="l2", key="k", window=2, decay=0.5, lr=LR)
    spec = spec.replace("objective omega(", "objective l2(S(k), v) then omega(")
    path = tmp_path / "then.nl"
    path.write_text(spec)
    assert main(["derive", str(path)]) == 0
    capsys.readouterr()
    assert main(["compile", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{path}:15:32: error: level 'memory': the omega window reads earlier tokens " \
           "(k_m1, v_m1)" in err, err
    assert "with several steps per token (`then`) the terms are not checked" in err, err
    assert "Traceback" not in err


ACCEPTED = {  # (memory, key): windows whose earlier terms vanish at zero context
    "exp_minus_one": ("matrix[d_v, d_k]", "exp(k) - 1"),
    "mlp_gelu": ("mlp(d_k -> 4 -> d_v, act = gelu)", "k"),  # M(0) = W2 gelu(0) = 0
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_a_window_whose_terms_vanish_compiles_and_sums_the_available_tokens(tmp_path, case):
    """A key of exp(k) - 1 is zero at zero context, and so is an MLP memory with gelu and no
    constant (Atlas's memory): both compile. On a sequence of T tokens, a window of 4 and a
    window of T give the same outputs and gradients (every token sees every available earlier
    token either way), so the zeros before the first token add nothing."""
    memory, key = ACCEPTED[case]
    classes = {}
    for window in (4, 3):
        spec = TEMPLATE.format(loss="l2", key=key, window=window, decay=0.5, lr=LR)
        spec = spec.replace("matrix[d_v, d_k]", memory)
        if memory.startswith("mlp"):
            spec = spec.replace("= zeros", "= learned")
        path = tmp_path / f"{case}_{window}.nl"
        path.write_text(spec)
        classes[window] = load_module(str(path)).Om
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    results = []
    for window, cls in classes.items():
        torch.manual_seed(0)
        layer = cls(mode="recurrent").double()
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_(0, 0.5)
        xi = x.clone().requires_grad_()
        y = layer(xi)
        grads = torch.autograd.grad(y.square().sum(), [xi, *layer.parameters()])
        results.append([y, *grads])
    assert torch.isfinite(results[0][0]).all()
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
