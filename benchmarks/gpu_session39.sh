#!/bin/bash
# GPU work of session 39 (issue 17). One mode per device call (each under 10 minutes; run from
# the repository root with OUT set and the wheels carried, see benchmarks/gpu_common.sh):
#   a: Titans' fastest LM row profiled, with every kernel of the step in launch order
#      ($OUT/ROW_kernels.tsv: where the forward ends, what repeats per chunk), then the same
#      row with the compiled chunks' activations kept instead of recomputed (speed, peak).
set -u
MODE=${1:-a}
REPO=$(pwd)
source benchmarks/gpu_common.sh
start_session

TITANS=titans_graphed_compiled_kernels_tf32
if [ "$MODE" = a ]; then
  lm_rows 150 "$TITANS" profile
  cp "$OUT/lm_rows.md" "$OUT/lm_titans.md"
  head -60 "$OUT/${TITANS}_profile.txt" | cut -c1-220
  lm_rows 150 "${TITANS}_kept"
fi
#   b: the same row after the coefficient scan left the chunk loop (one scan for every chunk),
#      profiled
if [ "$MODE" = b ]; then
  lm_rows 150 "$TITANS" profile
  head -40 "$OUT/${TITANS}_profile.txt" | cut -c1-160
fi
