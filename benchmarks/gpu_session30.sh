#!/bin/bash
# GPU work of session 30, one mode per device call (each under 10 minutes; run from the
# repository root with OUT set and the wheels carried, see benchmarks/gpu_common.sh):
#   a: issue 17: the affine combine kernels' tests and the outer-kernel tests on the GPU,
#      without -x (last session's W_x gradient miss of 4.8e-4 in Hope's forced layer);
#      one Titans layer's forward + backward under the profiler (device time by kernel);
#      issue 16: the timing table of momentum delta, row-decay delta, RWKV-7 and KDA at
#      (8, 2048, 16, 128) after the pair and key-side split changes, checked against fp32;
#   b: issue 17: gpu_session29.sh b (the Titans and Hope LM steps with compiled chunks);
#   e: issue 17: the Titans LM step as CUDA graphs with the memory's float32 products exact,
#      as one TF32 product with TF32 GEMMs, and as three TF32 products (NLC_DUAL_PREC);
#   f: issue 17: Hope's layer in float32 under each kernel setting against float64
#      (benchmarks/layer_precision.py).
# e and f ran as the same commands typed into two short calls, the device time nearly spent;
# what was left for later is benchmarks/gpu_session31.sh.
set -u
MODE=${1:-a}
REPO=$(pwd)
if [ "$MODE" = b ]; then
  exec bash "$REPO/benchmarks/gpu_session29.sh" b
fi
source benchmarks/gpu_common.sh
start_session
if [ "$MODE" = e ]; then
  timeout 215 python3 "$REPO/benchmarks/lm_throughput.py" --steps 3 \
    --rows titans_graphed,titans_graphed_tf32,titans_graphed_dual_tf32x3 \
    --out "$OUT/lm_titans_tf32.md"
  exit 0
fi
if [ "$MODE" = f ]; then
  timeout 110 python3 "$REPO/benchmarks/layer_precision.py" --device cuda \
    | tee "$OUT/hope_precision.md"
  exit 0
fi
NLC_TRITON_TEST_DEVICE=cuda timeout 130 python3 -m pytest -q -p no:cacheprovider -rf \
  "$REPO/tests/test_affine_triton.py" "$REPO/tests/test_outer_kernel.py" \
  > "$OUT/affine_tests.log" 2>&1
grep -E "passed|failed|FAILED|rel" "$OUT/affine_tests.log" | tail -25
timeout 90 python3 "$REPO/benchmarks/launch_count.py" "$REPO/examples/titans.nl" \
  --device cuda --bf16 --T 2048 --batch 16 > "$OUT/launch_titans.md" 2>&1
tail -30 "$OUT/launch_titans.md"
time_slow_chunked "$OUT/perf.md"
tail -12 "$OUT/perf.md"
