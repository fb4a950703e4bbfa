#!/bin/bash
# GPU work of session 40 (issue 17): compiled chunks recomputed through a checkpoint inside the
# compiled code (scan.chunk_runner), against the checkpoint around it (NLC_CHECKPOINT_OUTSIDE=1),
# side by side in one call. One mode per device call (each under 10 minutes; run from the
# repository root with OUT set and the wheels carried, see benchmarks/gpu_common.sh):
#   a: Titans' fastest LM row profiled, the same with the checkpoint outside, the same with
#      the reads' outputs kept (NLC_SAVE_READS=1), TTT-MLP's row
#   b: Hope's fastest LM row, the same with the checkpoint outside, then titans-pytorch
#      against our Titans layer (needs .carry/whl_titans)
set -u
MODE=${1:-a}
source benchmarks/gpu_common.sh
start_session

TITANS=titans_graphed_compiled_kernels_tf32
HOPE=hope_graphed_compiled_chunks_tf32
if [ "$MODE" = a ]; then
  lm_rows 150 "$TITANS" profile
  cp "$OUT/lm_rows.md" "$OUT/lm_titans.md"
  lm_rows 120 "${TITANS}_outside"
  cp "$OUT/lm_rows.md" "$OUT/lm_titans_outside.md"
  lm_rows 120 "${TITANS}_saved_reads"
  cp "$OUT/lm_rows.md" "$OUT/lm_titans_saved_reads.md"
  lm_rows 100 ttt_mlp_graphed_compiled_chunks
fi
#   c: Titans' rows on another card: the default, the reads kept (narrow, all), the checkpoint
#      outside
if [ "$MODE" = c ]; then
  lm_rows_each 120 "$TITANS" "${TITANS}_saved_narrow" "${TITANS}_saved_reads" "${TITANS}_outside"
fi
#   d: Titans' default row and the narrow reads kept, then Hope's row and the same with the
#      checkpoint outside
if [ "$MODE" = d ]; then
  lm_rows_each 150 "$TITANS" "${TITANS}_saved_narrow" "$HOPE" "${HOPE}_outside"
fi
#   e: Titans' default row (the narrow reads kept) and the same keeping none, then
#      titans-pytorch against our Titans layer (needs .carry/whl_titans)
if [ "$MODE" = e ]; then
  lm_rows_each 120 "$TITANS" "${TITANS}_saved_none"
  titans_pytorch_fast 150
fi
#   f: Titans' default row alone (for an H200, in what device time is left)
if [ "$MODE" = f ]; then
  lm_rows 110 "$TITANS"
fi
if [ "$MODE" = b ]; then
  lm_rows_each 180 "$HOPE" "${HOPE}_outside"
  titans_pytorch_fast 150
fi
