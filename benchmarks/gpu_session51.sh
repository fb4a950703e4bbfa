#!/bin/bash
# GPU work planned in session 51 (issue 17), for the next session lent a device (session 51
# had none). Run from the repository root with OUT set and the wheels carried
# (benchmarks/gpu_common.sh).
#   w: benchmarks/hope_walk_kernel.py: Hope's main memory on the walk kernels against its
#      PyTorch chunked form (eager, then compiled chunks), correctness then time
#   l: Hope's LM row with the group kernels alone (_group), with the walk kernels too
#      (_walk) and with neither (_nogroup), each in a fresh process, one call: the baseline
#      the twenty-second batch lacked
#   p: the `_walk` LM row with one step profiled (kernel time by name: what the rest of the
#      step is)
set -u
source benchmarks/gpu_common.sh
start_session
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
case "${1:-w}" in
  w)
    timeout 250 python3 "$REPO/benchmarks/hope_walk_kernel.py" --out "$OUT/walk.md"
    timeout 250 python3 "$REPO/benchmarks/hope_walk_kernel.py" --compile-chunks --out "$OUT/walk.md"
    ;;
  l)
    lm_rows_each 180 hope_graphed_compiled_chunks_tf32_group hope_graphed_compiled_chunks_tf32_walk \
      hope_graphed_compiled_chunks_tf32_nogroup
    cat "$OUT"/lm_hope*.md
    ;;
  p)
    lm_rows 400 hope_graphed_compiled_chunks_tf32_walk profile
    ;;
esac
