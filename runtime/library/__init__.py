"""nlc.runtime.library: what generated modules import (`from nlc.runtime.library import ops
as nl`), and nothing of the trainer's.

    ops.py                the functions generated code calls: context generation, layouts
    op_inputs.py          the shape checks every generated op makes first
    scan.py               one token at a time; frozen-gradient chunks; coupled levels
    chunked.py            the exact chunked forms of the affine families (PyTorch)
    joint.py              the chunked form of several jointly affine states (momentum delta)
    rows.py               the decay and delta families' chunked forms with a decay per row
    solve.py              the solve family's reads (Mesa, MesaNet): exact and conjugate gradient
    substeps.py           several delta steps per token as consecutive delta-rule tokens
    dual.py               the dual chunk form of frozen-gradient levels
    dual_triton.py        its Triton kernels: the coefficient scan and the masked reads
    attention.py          the non-parametric family (softmax, sliding window)
    chunk_triton.py       which chunked Triton kernel serves which family
    chunk_delta_triton.py chunked Triton kernels: delta rule and decay family, scalar decay
    chunk_decay_triton.py chunked Triton kernels: decay family, per-channel decay
    chunk_inverse_triton.py  a chunk's (I + A)^-1 by blocks of 16 (the delta rule's relatives)
    chunk_state_triton.py    the start of every sequential state pass of the chunked kernels
    recurrent_launch.py   the host side of the generated fused recurrent kernel modules
"""
