#!/bin/bash
# GPU work of session 30, one mode per device call (each under 10 minutes; run from the
# repository root with OUT set and the wheels carried, see benchmarks/gpu_common.sh):
#   a: issue 17: the affine combine kernels' tests and the outer-kernel tests on the GPU,
#      without -x (last session's W_x gradient miss of 4.8e-4 in Hope's forced layer);
#      one Titans layer's forward + backward under the profiler (device time by kernel);
#      issue 16: the timing table of momentum delta, row-decay delta, RWKV-7 and KDA at
#      (8, 2048, 16, 128) after the pair and key-side split changes, checked against fp32;
#   b: issue 17: gpu_session29.sh b (the Titans and Hope LM steps with compiled chunks);
#   c: issue 17: Hope's layer in float32 under each kernel setting against float64
#      (benchmarks/layer_precision.py); the Titans LM step as CUDA graphs with the memory's
#      float32 products on the tensor cores (NLC_DUAL_PREC=tf32x3; tf32 with TF32 GEMMs) and
#      without, with the dual kernels' tests under tf32x3; issue 16: the forward launch sweep
#      of DeltaNet, Gated DeltaNet and simple GLA next to fla's chunk forward, both shapes;
#   e: issue 17, cut to the device time left: c's Titans rows and d's MLP-memory rows;
#   f: c's Hope precision check alone (a short call on a warm machine);
#   d: issue 17: each MLP-memory example's LM step at T = 2048 (batch 2); the per-token MLP
#      memories' step kernels with their printed backward (gpu_step_kernel.py).
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
if [ "$MODE" = c ]; then
  for dims in "" "--d-head 16 --d-model 64 --T 130"; do
    timeout 90 python3 "$REPO/benchmarks/layer_precision.py" --device cuda $dims
  done 2>&1 | tee "$OUT/hope_precision.md"
  NLC_DUAL_PREC=tf32x3 NLC_TRITON_TEST_DEVICE=cuda timeout 80 python3 -m pytest -q \
    -p no:cacheprovider "$REPO/tests/test_dual_triton.py" > "$OUT/dual_tf32x3_tests.log" 2>&1
  tail -3 "$OUT/dual_tf32x3_tests.log"
  timeout 260 python3 "$REPO/benchmarks/lm_throughput.py" --steps 3 \
    --rows titans_graphed,titans_graphed_dual_tf32x3,titans_graphed_tf32 \
    --out "$OUT/lm_titans_tf32.md"
  for shape in 8,2048,16,128 1,16384,16,128; do
    timeout 100 python3 "$REPO/benchmarks/kernel_profile.py" --shape $shape \
      --models gdn,sgla,deltanet --sweep-forward --forward
  done > "$OUT/forward_sweep.txt" 2>&1
  grep -E "fla chunk|fastest|ms of kernel|failed" "$OUT/forward_sweep.txt"
  exit 0
fi
if [ "$MODE" = e ]; then
  timeout 230 python3 "$REPO/benchmarks/lm_throughput.py" --steps 3 \
    --rows titans_graphed,titans_graphed_dual_tf32x3,titans_graphed_tf32 \
    --out "$OUT/lm_titans_tf32.md" | grep "^| nlc"
  timeout 280 python3 "$REPO/benchmarks/lm_throughput.py" --steps 3 --batch 2 \
    --rows ttt_mlp,moneta,yaad,memora --out "$OUT/lm_mlp.md" | grep "^| nlc"
  exit 0
fi
if [ "$MODE" = f ]; then
  for dims in "" "--d-head 16 --d-model 64 --T 130"; do
    timeout 80 python3 "$REPO/benchmarks/layer_precision.py" --device cuda $dims
  done 2>&1 | tee "$OUT/hope_precision.md"
  exit 0
fi
if [ "$MODE" = d ]; then
  timeout 330 python3 "$REPO/benchmarks/lm_throughput.py" --steps 3 --batch 2 \
    --rows ttt_mlp,moneta,yaad,memora --out "$OUT/lm_mlp.md"
  timeout 200 python3 "$REPO/benchmarks/gpu_step_kernel.py" --shape 4,512,4,64 --repeats 2 \
    | tee "$OUT/step_kernel.md"
  exit 0
fi
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
