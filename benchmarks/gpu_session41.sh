#!/bin/bash
# GPU work of session 41 (issue 17): the table on one card, in one call. One mode per
# device call (each under 10 minutes; run from the repository root with OUT set and the
# wheels carried, see benchmarks/gpu_common.sh):
#   a: the LM rows the issue names (DeltaNet, Titans' default row, Hope's fastest row), Titans
#      with every read kept, then titans-pytorch against our Titans layer (needs
#      .carry/whl_titans)
#   b: Titans' default row beside the same with Inductor settings for the compiled chunks
#      (NLC_CHUNK_INDUCTOR): independent kernels as one launch, kernels' launch settings
#      tuned, products' kernels chosen by timing
set -u
MODE=${1:-a}
source benchmarks/gpu_common.sh
start_session

TITANS=titans_graphed_compiled_kernels_tf32
HOPE=hope_graphed_compiled_chunks_tf32
if [ "$MODE" = a ]; then
  lm_rows_each 150 deltanet "$TITANS" "${TITANS}_saved_reads" "$HOPE"
  titans_pytorch_fast 150
fi
if [ "$MODE" = b ]; then
  lm_rows_each 110 "$TITANS" "${TITANS}_combo" "${TITANS}_tuned"
  lm_rows_each 200 "${TITANS}_autotuned"
fi
#   c: Titans' default row with combo kernels and the products' kernels chosen by timing
#      together (NLC_CHUNK_INDUCTOR set around the row), then the launch-settings tuning alone
#      with more time to compile
if [ "$MODE" = c ]; then
  NLC_CHUNK_INDUCTOR="combo_kernels=1 max_autotune=1 max_autotune_gemm_backends=TRITON,ATEN" \
    lm_rows 220 "$TITANS"
  cp "$OUT/lm_rows.md" "$OUT/lm_titans_combo_autotuned.md"
  lm_rows_each 250 "${TITANS}_tuned"
fi
#   d: Hope's fastest row and the same with combo kernels
if [ "$MODE" = d ]; then
  lm_rows_each 170 "$HOPE" "${HOPE}_combo"
fi
#   e: issue 17's table at this tree (combo kernels the default): DeltaNet, Titans' default
#      row and the same with Inductor's defaults, titans-pytorch against our Titans layer
#      (Hope's row is mode d's)
if [ "$MODE" = e ]; then
  lm_rows_each 100 deltanet "$TITANS" "${TITANS}_plain"
  titans_pytorch_fast 150
fi
#   f: Titans' default row (combo kernels) and the same with Inductor's defaults, side by side
if [ "$MODE" = f ]; then
  lm_rows_each 120 "$TITANS" "${TITANS}_plain"
fi
#   g: what Titans' layer keeps for its backward pass on the GPU's path (the fused context
#      kernels, the dual kernels, bf16 autocast, compiled chunks), by kind
if [ "$MODE" = g ]; then
  NLC_COMPILE_CHUNKS=1 NLC_COMPILE_DUAL_KERNELS=1 timeout 300 python3 \
    "$REPO/benchmarks/saved_activations.py" --specs titans --B 4 --T 2048 --device cuda \
    --bf16 --breakdown | tee "$OUT/saved_titans_cuda.md"
fi
