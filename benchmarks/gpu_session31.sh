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
#      fla's chunk forward, both shapes;
#   e: one tl.dot per input precision against float64 (dot_precision_check.py: is Triton's
#      tf32x3 what faults or loses precision); Titans' layer precision with each setting in
#      its own process, at heads of 8 (where `a` faulted, CUDA_LAUNCH_BLOCKING=1 to name the
#      kernel) and of 64 (the LM's); it ran with the commands of `g` in it, and its 400 s
#      limit stopped it inside them (they are `g` now);
#   g: issue 16: the forward state pass split along keys (simple GLA) and the fused kkt +
#      solve forward (delta rule), side by side with fla's chunk kernels (gpu_chunked.py) and
#      as per-kernel forward times (kernel_profile.py);
#   h: issue 16: GLA's forward beside fla's chunk_gla (forward only: its backward's autotune
#      outlasted a call), keeping fla's autotune results in $OUT/fla_autotune;
#   f: issue 17: Titans' LM step with every fast setting together (CUDA graphs, compiled
#      chunks, --tf32) beside the plain graphed row, batch 16; TTT-MLP as CUDA graphs with
#      compiled chunks at T = 2048 (batch 2, as `b`'s eager row).
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
elif [ "$MODE" = e ]; then
  timeout 150 python3 "$REPO/benchmarks/dot_precision_check.py" | tee "$OUT/dot_precision.md"
  P="$REPO/benchmarks/layer_precision.py --model titans --device cuda --T 130"
  for r in 2 3; do
    CUDA_LAUNCH_BLOCKING=1 timeout 60 python3 $P --rows $r --no-header
  done 2>&1 | tail -4 | tee "$OUT/titans_precision8.md"
  W="--d-head 64 --d-model 128"
  (timeout 60 python3 $P $W --rows 0
   for r in 1 2 3 4; do timeout 60 python3 $P $W --rows $r --no-header; done) 2>&1 \
    | grep -v Warn | tee "$OUT/titans_precision64.md"
elif [ "$MODE" = g ]; then
  R="ours recurrent"; F="fla fused recurrent"
  timeout 240 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold --check "ours chunked" \
    --models "simple GLA / Mamba2,Gated DeltaNet,DeltaNet" --out "$OUT/chunked.md" \
    --skip "simple GLA / Mamba2:$R,simple GLA / Mamba2:$F,Gated DeltaNet:$R,Gated DeltaNet:$F,DeltaNet:$R,DeltaNet:$F" \
    > /dev/null 2>&1
  cat "$OUT/chunked.md"
  for shape in 8,2048,16,128 1,16384,16,128; do
    timeout 90 python3 "$REPO/benchmarks/kernel_profile.py" --shape $shape \
      --models sgla,gdn,deltanet --forward
  done > "$OUT/forward_profile.txt" 2>&1
  grep -A4 "ms of kernel" "$OUT/forward_profile.txt"
elif [ "$MODE" = h ]; then
  R="ours recurrent"; F="fla fused recurrent"
  # GLA's forward beside fla's chunk_gla, whose backward autotune outlasted a call
  timeout 150 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold --check "ours chunked" \
    --models GLA --forward-only --out "$OUT/gla_forward.md" \
    --skip "GLA:$R,GLA:$F" > /dev/null 2>&1
  cat "$OUT/gla_forward.md" 2>/dev/null | grep "GLA"
  mkdir -p "$OUT/fla_autotune" && cp "$TRITON_CACHE_DIR"/*/*.autotune.json "$OUT/fla_autotune/" \
    2>/dev/null || true
elif [ "$MODE" = f ]; then
  timeout 330 python3 "$LM" --steps 3 --batch 16 \
    --rows titans_graphed,titans_graphed_compiled_tf32 --out "$OUT/lm_titans_best.md"
  timeout 200 python3 "$LM" --steps 3 --batch 2 --rows ttt_mlp_graphed_compiled_chunks \
    --out "$OUT/lm_ttt_mlp_graphed.md"
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
