#!/bin/bash
# Does each per-token or chunked MLP-memory example take training steps at T = 2048 (issue 17)?
# One-layer byte-level LM, d_model 128, batch 1, two steps, chunks recomputed as on CUDA, on
# the CPU; each spec as written and with Titans' gate biases (b_eta = -4, b_alpha = 5 inside
# the sigmoids of eta and alpha, as examples/titans.nl and examples/hope.nl have them).
# Prints each run's last metrics line: a "train"/"eval" line means it trained, a "diverged" one
# carries the loss and, when only the gradients overflowed, their parameters.
#   bash benchmarks/mlp_memories_t2048.sh [OUT]   (docs/results.md; about 20 minutes)
set -u
OUT=${1:-runs/mlp_t2048}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT/specs"
train() {  # train NAME SPEC
  rm -rf "$OUT/$1"
  NLC_RECOMPUTE_CHUNKS=1 OMP_NUM_THREADS=1 timeout 1200 python -m nlc train "$2" --task lm \
    --seq-len 2048 --batch-size 1 --n-layers 1 --d-model 128 --steps 2 --eval-interval 0 \
    --checkpoint-interval 0 --warmup 0 --quiet --out "$OUT/$1" > "$OUT/$1.log" 2>&1
  echo "| $1 | $(tail -1 "$OUT/$1/metrics.jsonl" 2>/dev/null | cut -c1-200) |"
}
echo "| run | last metrics line |"
echo "|---|---|"
train ttt_mlp "$REPO/examples/ttt_mlp.nl"
for m in moneta yaad memora; do
  train "$m" "$REPO/examples/$m.nl"
  sed -e 's/  param w_eta, w_alpha\(.*\) : \[d_model\]/  param w_eta, w_alpha\1 : [d_model]\n  param b_eta : [] = constant(-4)\n  param b_alpha : [] = constant(5)/' \
      -e 's/eta = sigmoid(x @ w_eta)/eta = sigmoid(x @ w_eta + b_eta)/' \
      -e 's/alpha = sigmoid(x @ w_alpha)/alpha = sigmoid(x @ w_alpha + b_alpha)/' \
      "$REPO/examples/$m.nl" > "$OUT/specs/${m}_biased.nl"
  train "${m}_biased" "$OUT/specs/${m}_biased.nl"
done
