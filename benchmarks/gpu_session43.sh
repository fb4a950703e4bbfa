#!/bin/bash
# GPU work of session 43 (issue 17): the table on one card, in calls back to back on
# one machine, the rows most needed first (the device time left may end a call). One mode per
# device call (each under 10 minutes; run from the repository root with OUT set and the wheels
# carried, see benchmarks/gpu_common.sh):
#   a: the LM rows of the table: Titans (x's projections as one product and the dual
#      form's tokens cast by chunk, unmeasured on a GPU so far), DeltaNet, Hope
#   t: Titans' row alone, then with every read kept (for a call with little device time left)
#   b: titans-pytorch against our Titans layer (needs .carry/whl_titans); Titans with every
#      read kept (NLC_SAVE_READS=1: the default if it fits 12 GiB and is faster); Titans on
#      b520c0f, the tree before session 42's changes (.carry/base_b520c0f.tar)
set -u
MODE=${1:-a}
source benchmarks/gpu_common.sh
start_session

TITANS=titans_graphed_compiled_kernels_tf32
HOPE=hope_graphed_compiled_chunks_tf32
if [ "$MODE" = a ]; then
  lm_rows_each 110 "$TITANS"
  lm_rows_each 90 deltanet
  lm_rows_each 170 "$HOPE"
fi
if [ "$MODE" = t ]; then
  lm_rows_each 110 "$TITANS"
  lm_rows_each 110 "${TITANS}_saved_reads"
fi
if [ "$MODE" = b ]; then
  titans_pytorch_fast 150
  lm_rows_each 110 "${TITANS}_saved_reads"
  lm_rows_at base_b520c0f.tar 110 "$TITANS"
fi
