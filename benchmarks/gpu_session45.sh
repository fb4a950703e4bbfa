#!/bin/bash
# GPU work of session 45 (issue 17), for a call with about 400 s of device time left: the LM
# rows of the table, most needed first (Titans, then DeltaNet, then Hope), each row's
# table kept as $OUT/lm_ROW.md as soon as it is done, so a call cut off by the device time
# still returns the rows it finished. Run from the repository root with OUT set and the wheels
# carried (benchmarks/gpu_common.sh).
set -u
source benchmarks/gpu_common.sh
start_session
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
lm_rows_each 110 titans_graphed_compiled_kernels_tf32
lm_rows_each 90 deltanet
lm_rows_each 170 hope_graphed_compiled_chunks_tf32
