#!/bin/bash
# GPU work of session 39 (issue 17). One mode per device call (each under 10 minutes; run from
# the repository root with OUT set and the wheels carried, see benchmarks/gpu_common.sh):
#   a: Titans' fastest LM row profiled, with every kernel of the step in launch order
#      ($OUT/ROW_kernels.tsv: where the forward ends, what repeats per chunk), then the same
#      row with the compiled chunks' activations kept instead of recomputed (speed, peak).
set -u
MODE=${1:-a}
source benchmarks/gpu_common.sh
start_session

TITANS=titans_graphed_compiled_kernels_tf32
if [ "$MODE" = a ]; then
  lm_rows 150 "$TITANS" profile
  cp "$OUT/lm_rows.md" "$OUT/lm_titans.md"
  head -60 "$OUT/${TITANS}_profile.txt" | cut -c1-220
  lm_rows 150 "${TITANS}_kept"
fi
#   b: the same row after the coefficient scan left the chunk loop (one scan for every chunk),
#      profiled
if [ "$MODE" = b ]; then
  lm_rows 150 "$TITANS" profile
  head -40 "$OUT/${TITANS}_profile.txt" | cut -c1-160
fi
#   c: the dual reads' tiles and warps at Titans' LM shapes (benchmarks/dual_read_sweep.py),
#      then titans-pytorch against our Titans layer (as gpu_session33.sh f; needs
#      .carry/whl_titans) after the scan left the chunk loop
if [ "$MODE" = c ]; then
  timeout 200 python3 "$REPO/benchmarks/dual_read_sweep.py" 2>&1 | grep -v -i warn
  install_titans_pytorch
  timeout 300 python3 "$REPO/benchmarks/titans_pytorch.py" --B 4 --T 2048 --dim 512 --heads 4 \
    --dim-heads 128 --repeat 5 --device cuda --fast --out "$OUT/titans_pytorch_fast.md"
fi
#   d: Titans' row after the reads took the stacked start states and the TF32 tiles changed,
#      profiled
if [ "$MODE" = d ]; then
  lm_rows 150 "$TITANS" profile
fi
#   e: Titans' row after the pairs kernel split its pieces (tiles back at 64 x 64), profiled;
#      TTT-MLP's row
if [ "$MODE" = e ]; then
  lm_rows 150 "$TITANS" profile
  cp "$OUT/lm_rows.md" "$OUT/lm_titans.md"
  lm_rows 150 ttt_mlp_graphed_compiled_chunks
fi
#   f: Titans' row after the chunk end became a kernel, profiled
if [ "$MODE" = f ]; then
  lm_rows 150 "$TITANS" profile
fi
#   g: the session's last tree: Titans' row profiled, TTT-MLP's and Hope's rows, then
#      titans-pytorch against our layer (needs .carry/whl_titans)
if [ "$MODE" = g ]; then
  lm_rows 150 "$TITANS" profile
  cp "$OUT/lm_rows.md" "$OUT/lm_titans.md"
  lm_rows 120 ttt_mlp_graphed_compiled_chunks
  cp "$OUT/lm_rows.md" "$OUT/lm_ttt_mlp.md"
  lm_rows 200 hope_graphed_compiled_chunks_tf32
  titans_pytorch_fast 200
fi
#   h: Titans' row after the chunks kept only the coefficients they read
if [ "$MODE" = h ]; then
  lm_rows 150 "$TITANS"
fi
