#!/bin/bash
# Titans on the byte-level LM (docs/results.md): the bf16 run diverged; the same run in fp32
# (--no-bf16), and in bf16 at half the learning rate, on one card at once.
set -u
REPO=$(pwd)
LM="--task lm --seq-len 512 --d-model 128 --n-layers 2 --batch-size 32 --eval-interval 0 \
  --checkpoint-interval 0 --warmup 50 --steps 150 --quiet --time-budget 200 --log-interval 5"
cd /tmp
timeout 260 python -m nlc train "$REPO/examples/titans.nl" $LM --lr 2e-3 --no-bf16 \
  --out "$OUT/runs/lm_titans_fp32" > "$OUT/fp32.log" 2>&1 &
timeout 260 python -m nlc train "$REPO/examples/titans.nl" $LM --lr 1e-3 \
  --out "$OUT/runs/lm_titans_bf16_lr1e-3" > "$OUT/bf16.log" 2>&1 &
wait
rm -rf "$OUT"/runs/*/checkpoints
for r in lm_titans_fp32 lm_titans_bf16_lr1e-3; do
  echo "== $r"; grep '"train"' "$OUT/runs/$r/metrics.jsonl" | awk 'NR % 4 == 0' | cut -c1-150
  grep '"eval"' "$OUT/runs/$r/metrics.jsonl" | cut -c1-150
done
