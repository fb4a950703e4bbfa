#!/bin/bash
# GPU work of session 42 (issue 17): the table on one card, in calls back to back on
# one machine. One mode per device call (each under 10 minutes; run from the repository root
# with OUT set and the wheels carried, see benchmarks/gpu_common.sh):
#   a: Titans' default row on this tree; then on the tree before this session's changes (x's
#      projections as one product, the dual form's tokens cast by chunk; .carry/base_b520c0f.tar,
#      made by `git archive -o .carry/base_b520c0f.tar b520c0f`); then on this tree with every
#      read kept (the rows most needed first: the device time left may end the call)
#   b: DeltaNet's and Hope's rows, then titans-pytorch against our Titans layer (needs
#      .carry/whl_titans)
#   c: what Titans' layer keeps for its backward pass on the GPU's path (the fused context
#      kernels, the dual kernels, bf16 autocast, compiled chunks), by kind
set -u
MODE=${1:-a}
source benchmarks/gpu_common.sh
start_session

TITANS=titans_graphed_compiled_kernels_tf32
HOPE=hope_graphed_compiled_chunks_tf32
if [ "$MODE" = a ]; then
  lm_rows_each 110 "$TITANS"
  lm_rows_at base_b520c0f.tar 110 "$TITANS"
  lm_rows_each 110 "${TITANS}_saved_reads"
fi
if [ "$MODE" = b ]; then
  lm_rows_each 90 deltanet
  lm_rows_each 170 "$HOPE"
  titans_pytorch_fast 150
fi
if [ "$MODE" = c ]; then
  NLC_COMPILE_CHUNKS=1 NLC_COMPILE_DUAL_KERNELS=1 timeout 300 python3 \
    "$REPO/benchmarks/saved_activations.py" --specs titans --B 4 --T 2048 --device cuda \
    --bf16 --breakdown | tee "$OUT/saved_titans_cuda.md"
fi
