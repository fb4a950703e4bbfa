#!/bin/bash
# `nlc train --cuda-graphs` end to end: Titans and DeltaNet on MQAR (the settings of
# gpu_common.sh's MQAR, 40 steps), with and without graphs; each run's last training line
# (tokens/s) and its evaluation.
set -u
REPO=$(pwd)
source benchmarks/gpu_common.sh
install_nlc
cd /tmp
SET="--task mqar --seq-len 256 --mqar-num-kv-pairs 16 --d-model 128 --n-layers 2 \
  --batch-size 64 --warmup 10 --eval-interval 0 --checkpoint-interval 0 --steps 40 \
  --lr 2e-3 --mqar-vocab-size 1024 --quiet --log-interval 10 --eval-examples 256"
for spec in titans deltanet; do
  for flag in --cuda-graphs ""; do
    name=$spec${flag:+_graphs}
    timeout 110 python3 -m nlc train "$REPO/examples/$spec.nl" $SET $flag --out "$OUT/$name" \
      > "$OUT/$name.log" 2>&1
    echo "== $name rc=$?"; grep '"train"' "$OUT/$name/metrics.jsonl" | tail -1 | cut -c1-220
    tail -2 "$OUT/$name.log" | cut -c1-300
  done
done
