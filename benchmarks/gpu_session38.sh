#!/bin/bash
# GPU work of session 38 (issues 16 and 17). One mode per device call (each under 10 minutes;
# run from the repository root with OUT set and the wheels carried, see
# benchmarks/gpu_common.sh):
#   a: GLA forward and forward + backward against fla's chunk_gla at (8, 2048) and
#      (1, 16384), after the backward's dv moved into the scores-gradient kernel and the
#      input-gradient kernel split the key axis (commit 78d8bec); then GLA's kernels one by
#      one at (8, 2048);
#   b: Titans' fastest LM row on the tree before compiled chunks packed the dual reads'
#      inputs in traced code (.carry/base_32ddf91.tar, made by
#      `git archive -o .carry/base_32ddf91.tar 32ddf91`) and on this tree, profiled; then
#      Hope's row.
# Autotuning results are cached on disk (TRITON_CACHE_AUTOTUNING), so a second call on a
# warm machine does not autotune fla's kernels again.
set -u
MODE=${1:-a}
REPO=$(pwd)
source benchmarks/gpu_common.sh
start_session
export TRITON_CACHE_AUTOTUNING=1


TITANS=titans_graphed_compiled_kernels_tf32
if [ "$MODE" = a ]; then
  timeout "${GLA_SECONDS:-420}" python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold \
    --models GLA --shapes "8,2048,16,128;1,16384,16,128" --check "ours chunked" \
    --skip "GLA:fla fused recurrent,GLA:ours recurrent" --out "$OUT/gla_fwd_bwd.md"
  cat "$OUT/gla_fwd_bwd.md"
  timeout 120 python3 "$REPO/benchmarks/kernel_profile.py" --shape 8,2048,16,128 \
    --models gla 2>&1 | grep -v -i warn > "$OUT/gla_kernels.txt"
  cat "$OUT/gla_kernels.txt"
elif [ "$MODE" = b ]; then
  lm_rows_at base_32ddf91.tar 110 "$TITANS"
  lm_rows 120 "$TITANS" profile
  head -40 "$OUT/${TITANS}_profile.txt"
  lm_rows 200 hope_graphed_compiled_chunks_tf32
fi
# c: Titans' row on this tree alone (b's was overwritten by Hope's row in lm_rows.md), then
#    GLA's backward launch sweep (chunk_decay_triton.BACKWARD) at both shapes
if [ "$MODE" = c ]; then
  lm_rows 110 "$TITANS"
  cp "$OUT/lm_rows.md" "$OUT/lm_titans.md"
  for shape in 8,2048,16,128 1,16384,16,128; do
    timeout 170 python3 "$REPO/benchmarks/kernel_profile.py" --shape $shape --models gla \
      --sweep --no-profile 2>&1 | grep -v -i warn
  done
fi
