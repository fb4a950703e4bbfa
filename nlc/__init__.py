"""nlc: a compiler for nested-learning architectures.

A spec walks through a flat list of named stages (nlc/pipeline.py):

1. parse (nlc/syntax, grammar/nl.lark): text -> `Module`, frozen records with source spans.
       level memory every 1 token { state S : matrix[d_v, d_k] = zeros
                                    objective l2(S(k), v)  ... }
   becomes `Level(name='memory', every=Every(1, token), body=(State(...), Clause(...)))`.
2. check (nlc/levels): `Module` -> one `Spec` per declaration. Dims resolve to integers,
   every call is validated against the vocabulary tables (nlc/levels/vocab.py), shapes are
   inferred per head and token, and the levels go into a `LevelGraph` (networkx): the implicit
   `train` level (every optimizer step) feeds `memory` by context generation.
3. derive (nlc/derive): each level -> `UpdateRule`, its next state as SymPy expressions:
   `S' = alpha S (I - beta k k^T) + beta v k^T` for Gated DeltaNet.
4. classify: `UpdateRule` -> kernel family (decay, delta, dplr, product, elementwise,
   joint, frozen-gradient, nonparametric, solve) and its parameters.
5. verify (nlc/verify, nlc/catalog): derived rule == the published formula, symbolically and
   numerically.
6. emit (nlc/emit, templates/): PyTorch modules and Triton kernels; nlc/factories.py hands
   them to nlc.runtime's trainer as module factories (the trainer never compiles).

Every stage raises `NlcError` (nlc/errors.py) for bad input; the CLI renders it as
``file:line:col: error: message`` with a caret.
"""

__version__ = "0.1.0"
