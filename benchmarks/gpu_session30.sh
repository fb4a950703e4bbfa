#!/bin/bash
# GPU work of session 30, one mode per device call (each under 10 minutes; run from the
# repository root with OUT set and the wheels carried, see benchmarks/gpu_common.sh):
#   a: issue 17: the affine combine kernels' tests and the outer-kernel tests on the GPU,
#      without -x (last session's W_x gradient miss of 4.8e-4 in Hope's forced layer);
#      one Titans layer's forward + backward under the profiler (device time by kernel);
#      issue 16: the timing table of momentum delta, row-decay delta, RWKV-7 and KDA at
#      (8, 2048, 16, 128) after the pair and key-side split changes, checked against fp32;
#   b: issue 17: gpu_session29.sh b (the Titans and Hope LM steps with compiled chunks).
set -u
MODE=${1:-a}
REPO=$(pwd)
if [ "$MODE" = b ]; then
  exec bash "$REPO/benchmarks/gpu_session29.sh" b
fi
source benchmarks/gpu_common.sh
install_nlc
export TRITON_CACHE_DIR=/tmp/tc
mkdir -p $TRITON_CACHE_DIR
cd /tmp
NLC_TRITON_TEST_DEVICE=cuda timeout 130 python3 -m pytest -q -p no:cacheprovider -rf \
  "$REPO/tests/test_affine_triton.py" "$REPO/tests/test_outer_kernel.py" \
  > "$OUT/affine_tests.log" 2>&1
grep -E "passed|failed|FAILED|rel" "$OUT/affine_tests.log" | tail -25
timeout 90 python3 "$REPO/benchmarks/launch_count.py" "$REPO/examples/titans.nl" \
  --device cuda --bf16 --T 2048 --batch 16 > "$OUT/launch_titans.md" 2>&1
tail -30 "$OUT/launch_titans.md"
SKIP="RWKV-7:fla chunk,RWKV-7:fla fused recurrent,KDA:fla chunk,KDA:fla fused recurrent"
for m in "row-decay delta" "momentum delta"; do
  SKIP="$SKIP,$m:fla chunk,$m:fla fused recurrent"
done
timeout 240 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold \
  --models "momentum delta,row-decay delta,RWKV-7,KDA" --shapes "8,2048,16,128" \
  --check "ours chunked" --skip "$SKIP" --out "$OUT/perf.md"
tail -12 "$OUT/perf.md"
