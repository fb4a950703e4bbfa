#!/bin/bash
# GPU work left by session 31, one mode per device call (each under 10 minutes; run from the
# repository root with OUT set and the wheels carried, see benchmarks/gpu_common.sh). Every
# change it times was checked only under the Triton interpreter and compiled for sm_90:
#   a: issue 16: the chunked kernels' tests on the GPU; the delta forward's fused prepare
#      kernel (kkt + solve, chunk_inverse_triton.py) and the state passes that find their
#      chunks by arithmetic, side by side with fla's chunk kernels at both shapes
#      (gpu_chunked.py, the recurrent rows left out), and per kernel (kernel_profile.py);
#   b: issue 16: the slow families (KDA, RWKV-7, row-decay and momentum delta) after the
#      state passes' change, against the table of docs/perf.md's sixth batch; the forward
#      launch sweep of Gated DeltaNet (prepare_warps), and the batched diagonal inverse;
#   c: issue 17: Titans' LM step at batch 16: CUDA graphs alone, with --tf32, and with
#      compiled chunks that call the dual kernels (NLC_COMPILE_DUAL_KERNELS=1) and --tf32,
#      in one call; the dual kernels' tests on the GPU; one tl.dot per precision launched as
#      the reads launch (8 warps, an operand transposed), after the reads' fault;
#   d: issue 16: GLA's forward beside fla's chunk_gla (gpu_session31.sh h);
#   e: issue 16: after `b` found the fused prepare kernel fastest at one warp: Gated DeltaNet
#      and DeltaNet beside fla at both shapes (what `a` ran out of time for), then `d`.
set -u
MODE=${1:-a}
REPO=$(pwd)
if [ "$MODE" = d ]; then
  exec bash "$REPO/benchmarks/gpu_session31.sh" h
fi
source benchmarks/gpu_common.sh
start_session
R="ours recurrent"; F="fla fused recurrent"
if [ "$MODE" = a ]; then
  NLC_TRITON_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -x -p no:cacheprovider \
    "$REPO/tests/test_chunk_triton.py" > "$OUT/chunk_tests.log" 2>&1
  tail -3 "$OUT/chunk_tests.log"
  M="simple GLA / Mamba2,Gated DeltaNet,DeltaNet"
  skip=""
  for m in "simple GLA / Mamba2" "Gated DeltaNet" DeltaNet; do skip="$skip,$m:$R,$m:$F"; done
  timeout 240 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold --check "ours chunked" \
    --models "$M" --out "$OUT/chunked.md" --skip "${skip#,}" > /dev/null 2>&1
  cat "$OUT/chunked.md"
  timeout 90 python3 "$REPO/benchmarks/kernel_profile.py" --shape 8,2048,16,128 \
    --models gdn,deltanet,sgla --forward > "$OUT/forward_profile.txt" 2>&1
  grep -A6 "ms of kernel" "$OUT/forward_profile.txt"
elif [ "$MODE" = b ]; then
  time_slow_chunked "$OUT/slow.md"
  grep "ours\|fla" "$OUT/slow.md"
  timeout 150 python3 "$REPO/benchmarks/kernel_profile.py" --shape 8,2048,16,128 \
    --models gdn --sweep-forward --forward --no-profile 2>&1 | grep -v Warn | tail -30
  NLC_FORWARD='{"batched_inverse": true}' timeout 60 python3 \
    "$REPO/benchmarks/kernel_profile.py" --shape 8,2048,16,128 --models gdn --forward \
    2>&1 | grep -A6 "ours.*ms of kernel"
elif [ "$MODE" = c ]; then
  timeout 420 python3 "$REPO/benchmarks/lm_throughput.py" --steps 3 --batch 16 \
    --rows titans_graphed,titans_graphed_tf32,titans_graphed_compiled_kernels_tf32 \
    --out "$OUT/lm_titans.md"
  NLC_TRITON_TEST_DEVICE=cuda timeout 120 python3 -m pytest -q -p no:cacheprovider \
    "$REPO/tests/test_dual_triton.py" > "$OUT/dual_tests.log" 2>&1
  tail -3 "$OUT/dual_tests.log"
  # one tl.dot launched as the dual reads launch (8 warps, transposed operand): is the
  # reads' fault at heads of 8 Triton's (docs/perf.md, "seventh batch")
  timeout 100 python3 "$REPO/benchmarks/dot_precision_check.py" --warps 8 --trans \
    --shapes "32,16,16;64,16,16;64,32,16;64,16,32" | tee "$OUT/dot_precision_8warps.md"
elif [ "$MODE" = e ]; then
  skip=""
  for m in "Gated DeltaNet" DeltaNet; do skip="$skip,$m:$R,$m:$F"; done
  timeout 330 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold --check "ours chunked" \
    --models "Gated DeltaNet,DeltaNet" --out "$OUT/chunked_delta.md" --skip "${skip#,}" \
    > /dev/null 2>&1
  cat "$OUT/chunked_delta.md"
  bash "$REPO/benchmarks/gpu_session31.sh" h
fi
