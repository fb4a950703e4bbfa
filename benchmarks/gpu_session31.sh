#!/bin/bash
# GPU work left by session 30, one mode per device call (each under 10 minutes; run from the
# repository root with OUT set and the wheels carried, see benchmarks/gpu_common.sh):
#   a: issue 17: Titans' layer in float32 against float64 with the dual reads exact, tf32x3
#      and tf32 (`nlc train --tf32` uses tf32); Hope's LM step as CUDA graphs at the issue's
#      batch of 16 (5.3 GiB at batch 2 with the chunks recomputed, so about 40 GiB: it fits
#      an H100 now), with compiled and with eager chunks;
#   b: issue 17: each MLP-memory example's LM step at T = 2048 (batch 2); the per-token MLP
#      memories' step kernels with their printed backward (gpu_step_kernel.py);
#   c: issue 17: Hope's LM step as CUDA graphs with the affine kernels (exact products since
#      session 30) against without, side by side; issue 16: fla's chunk_gla at both shapes
#      next to ours (its autotune ran over 7 minutes in an earlier call: the table may stop
#      there, and the call keeps its autotune cache in $OUT/fla_autotune for a later one);
#   d: issue 16: the forward launch sweep of DeltaNet, Gated DeltaNet and simple GLA next to
#      fla's chunk forward, both shapes.
set -u
MODE=${1:-a}
REPO=$(pwd)
source benchmarks/gpu_common.sh
start_session
LM="$REPO/benchmarks/lm_throughput.py"
if [ "$MODE" = a ]; then
  timeout 60 python3 "$REPO/benchmarks/layer_precision.py" --model titans --device cuda \
    --T 130 | tee "$OUT/titans_precision.md"
  timeout 240 python3 "$LM" --steps 3 --batch 16 --rows hope_graphed_compiled_chunks \
    --out "$OUT/lm_hope16_compiled.md"
  timeout 200 python3 "$LM" --steps 3 --batch 16 --rows hope_graphed \
    --out "$OUT/lm_hope16.md"
elif [ "$MODE" = d ]; then
  for shape in 8,2048,16,128 1,16384,16,128; do
    timeout 120 python3 "$REPO/benchmarks/kernel_profile.py" --shape $shape \
      --models gdn,sgla,deltanet --sweep-forward --forward
  done > "$OUT/forward_sweep.txt" 2>&1
  grep -E "fla chunk|fastest|ms of kernel|failed" "$OUT/forward_sweep.txt"
elif [ "$MODE" = b ]; then
  timeout 330 python3 "$LM" --steps 3 --batch 2 --rows ttt_mlp,moneta,yaad,memora \
    --out "$OUT/lm_mlp.md"
  timeout 200 python3 "$REPO/benchmarks/gpu_step_kernel.py" --shape 4,512,4,64 --repeats 2 \
    | tee "$OUT/step_kernel.md"
elif [ "$MODE" = c ]; then
  timeout 230 python3 "$LM" --steps 3 --batch 2 \
    --rows hope_graphed,hope_graphed_affine_kernels --out "$OUT/lm_hope_affine.md"
  timeout 320 python3 "$REPO/benchmarks/gpu_chunked.py" --models GLA --skip-cold \
    --skip "GLA:fla fused recurrent" --out "$OUT/gla.md"
  mkdir -p "$OUT/fla_autotune" && cp "$TRITON_CACHE_DIR"/*/*.autotune.json "$OUT/fla_autotune/" \
    2>/dev/null || true
fi
