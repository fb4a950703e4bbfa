#!/bin/bash
# Titans on the byte-level LM diverged at step ~40 (docs/results.md). Two variants at once on
# one card: (a) the momentum gate eta at most 0.9, (b) (a) with L2-normalized values.
set -u
REPO=$(pwd)
LM="--task lm --seq-len 512 --d-model 128 --n-layers 2 --batch-size 32 --eval-interval 0 \
  --checkpoint-interval 0 --warmup 50 --steps 150 --lr 2e-3 --quiet --time-budget 170 \
  --log-interval 5"
sed 's/    eta = sigmoid(x @ w_eta)/    eta = 0.9 * sigmoid(x @ w_eta)/' "$REPO/examples/titans.nl" \
  > /tmp/titans_eta.nl
sed 's/    v = silu(conv(x @ W_v, 4))/    v = l2norm(silu(conv(x @ W_v, 4)))/' /tmp/titans_eta.nl \
  > /tmp/titans_eta_v.nl
grep -c "0.9 \* sigmoid" /tmp/titans_eta.nl /tmp/titans_eta_v.nl; grep -c "l2norm(silu(conv(x @ W_v" /tmp/titans_eta_v.nl
cd /tmp
for v in titans_eta titans_eta_v; do
  timeout 230 python -m nlc train /tmp/$v.nl $LM --out "$OUT/runs/$v" > "$OUT/$v.log" 2>&1 &
done
wait
rm -rf "$OUT"/runs/*/checkpoints
for v in titans_eta titans_eta_v; do
  echo "== $v"; grep '"train"' "$OUT/runs/$v/metrics.jsonl" | awk 'NR % 3 == 0' | cut -c1-120
  grep '"eval"' "$OUT/runs/$v/metrics.jsonl" | cut -c1-120; tail -1 "$OUT/$v.log" | cut -c1-300
done
