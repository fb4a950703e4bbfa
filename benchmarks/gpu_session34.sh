#!/bin/bash
# GPU work of session 34, one mode per device call (each under 10 minutes; run from the
# repository root with OUT set and the wheels carried, see benchmarks/gpu_common.sh):
#   a: issue 16: the chunked kernels at the gates' limits on the GPU (an H100 missed
#      test_chunked_triton_at_gate_limits[delta/scalar-decay0] at 1e-5 in session 33:
#      benchmarks/limit_precision.py prints every error, then those tests at FLOOR_TOL);
#      GLA's forward launch sweep with a scores program per row block
#      (chunk_decay_triton.FORWARD["scores_split"]) and its state pass's launch sweep, at
#      both shapes; issue 17: Hope's LM step with compiled chunks and --tf32 (about half of
#      its step was cuBLAS's float32 GEMMs on the FMA units, session 33's profile);
#   b: issue 16: the rest of tests/test_chunk_triton.py on the GPU.
set -u
MODE=${1:-a}
REPO=$(pwd)
source benchmarks/gpu_common.sh
start_session
export NLC_TRITON_TEST_DEVICE=cuda
if [ "$MODE" = a ]; then
  timeout 60 python3 "$REPO/benchmarks/limit_precision.py" 2>&1 | grep -v Warn
  timeout 60 python3 -m pytest -q -p no:cacheprovider "$REPO/tests/test_chunk_triton.py" \
    -k gate_limits 2>&1 | tail -2
  for shape in 8,2048,16,128 1,16384,16,128; do
    timeout 100 python3 "$REPO/benchmarks/kernel_profile.py" --shape $shape --models gla \
      --sweep-forward --sweep-states --no-profile 2>&1 | grep -v -i warn
  done
  timeout 200 python3 "$REPO/benchmarks/lm_throughput.py" --steps 3 --batch 16 \
    --rows hope_graphed_compiled_chunks_tf32 --out "$OUT/lm_hope_tf32.md" | tail -3
elif [ "$MODE" = b ]; then
  timeout 520 python3 -m pytest -q -p no:cacheprovider "$REPO/tests/test_chunk_triton.py" \
    -k "not gate_limits" > "$OUT/chunk_tests.log" 2>&1
  tail -5 "$OUT/chunk_tests.log"
fi
