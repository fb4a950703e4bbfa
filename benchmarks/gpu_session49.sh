#!/bin/bash
# GPU work of session 49 (issue 17). Run from the repository root with OUT set and the wheels
# carried (benchmarks/gpu_common.sh).
#   g: benchmarks/hope_group_kernel.py: Hope's generating memories on the fused group kernels
#      against the PyTorch chunked form (eager), correctness then time
#   l: the Hope LM row with the group on the fused kernels (NLC_GROUP_KERNEL=1) and without (=0),
#      each in a fresh process
#   t: the issue's whole table in one run (as session 48's `t`)
#   s: benchmarks/hope_group_launch.py: the group kernels' launch shapes, timed
set -u
source benchmarks/gpu_common.sh
start_session
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
case "${1:-g}" in
  g)
    timeout 500 python3 "$REPO/benchmarks/hope_group_kernel.py" --out "$OUT/group.md"
    ;;
  l)
    lm_rows_each 200 hope_graphed_compiled_chunks_tf32_group hope_graphed_compiled_chunks_tf32_nogroup
    cat "$OUT"/lm_hope*.md
    ;;
  s)
    timeout 420 python3 "$REPO/benchmarks/hope_group_launch.py"
    ;;
  t)
    titans_pytorch_fast 150
    lm_rows_each 110 titans_graphed_compiled_kernels_tf32
    lm_rows_each 90 deltanet
    lm_rows_each 170 hope_graphed_compiled_chunks_tf32_group
    ;;
esac
