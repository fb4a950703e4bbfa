#!/bin/bash
# Does each per-token or chunked MLP-memory example take training steps at T = 2048 (issue 17)?
# One-layer byte-level LM, d_model 128, batch 1, STEPS steps (default 2), chunks recomputed as
# on CUDA, on the CPU; each example as written (examples/moneta.nl, yaad.nl and memora.nl carry
# the gate and initialization choices that docs/results.md, "At T = 2048", explains).
# Prints each run's first and last metrics lines: "train"/"eval" lines mean it trained, a
# "diverged" one carries the loss and, when only the gradients overflowed, their parameters.
#   bash benchmarks/mlp_memories_t2048.sh [OUT] [STEPS] [NAMES]   (docs/results.md; about 15
#   minutes on a free core; NAMES defaults to "ttt_mlp moneta yaad memora")
set -u
OUT=${1:-runs/mlp_t2048}
STEPS=${2:-2}
NAMES=${3:-ttt_mlp moneta yaad memora}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
train() {  # train NAME SPEC
  rm -rf "$OUT/$1"
  # no time limit on the derivation: on shared cores Yaad's took longer than the default 120 s
  NLC_DERIVE_SECONDS=0 NLC_RECOMPUTE_CHUNKS=1 OMP_NUM_THREADS=1 timeout 1800 python -m nlc train \
    "$2" --task lm \
    --seq-len 2048 --batch-size 1 --n-layers 1 --d-model 128 --steps "$STEPS" \
    --eval-interval 0 --checkpoint-interval 0 --warmup 0 --quiet --out "$OUT/$1" \
    > "$OUT/$1.log" 2>&1
  local first last
  first=$(head -1 "$OUT/$1/metrics.jsonl" 2>/dev/null | cut -c1-160)
  last=$(tail -1 "$OUT/$1/metrics.jsonl" 2>/dev/null | cut -c1-160)
  echo "| $1 | $first | $last |"
}
echo "torch $(python -c 'import torch; print(torch.__version__)'), $(date -u +%F)"
echo "| run | first metrics line | last metrics line |"
echo "|---|---|---|"
for m in $NAMES; do
  train "$m" "$REPO/examples/$m.nl"
done
