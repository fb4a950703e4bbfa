#!/bin/bash
# Why Gated DeltaNet stays at chance on MQAR (256, 16) (docs/results.md): three variants of
# examples/gated_deltanet.nl on one card at once, 150 s each, the MQAR setting of
# gpu_session.sh: (a) without the output gate, (b) without decay (A ~ 1e-4: alpha ~ 1),
# (c) DeltaNet with Gated DeltaNet's output gate.
set -u
REPO=$(pwd)
MQAR="--task mqar --seq-len 256 --mqar-num-kv-pairs 16 --d-model 128 --n-layers 2 \
  --batch-size 64 --warmup 100 --eval-interval 500 --checkpoint-interval 0 --steps 3000 \
  --lr 2e-3 --mqar-vocab-size 1024 --quiet --time-budget 150"
GDN="$REPO/examples/gated_deltanet.nl"
sed 's/output (rmsnorm(memory) \* silu(x @ W_g)) @ W_o/output rmsnorm(memory) @ W_o/' "$GDN" \
  > /tmp/gdn_no_gate.nl
sed 's/log_uniform(1, 16)/log_uniform(0.0001, 0.0002)/' "$GDN" > /tmp/gdn_no_decay.nl
sed -e 's/output rmsnorm(memory) @ W_o/output (rmsnorm(memory) * silu(x @ W_g)) @ W_o/' \
  -e 's/  param W_o : \[d_v, d_model\]/  param W_g : [d_model, d_v]\n  param W_o : [d_v, d_model]/' \
  "$REPO/examples/deltanet.nl" > /tmp/dn_gate.nl
grep -c "W_g" /tmp/gdn_no_gate.nl /tmp/dn_gate.nl
cd /tmp
for v in gdn_no_gate gdn_no_decay dn_gate; do
  timeout 230 python -m nlc train /tmp/$v.nl $MQAR --out "$OUT/runs/$v" > "$OUT/$v.log" 2>&1 &
done
wait
rm -rf "$OUT"/runs/*/checkpoints
for v in gdn_no_gate gdn_no_decay dn_gate; do
  echo "== $v"; grep '"eval"' "$OUT/runs/$v/metrics.jsonl" | cut -c1-120; tail -2 "$OUT/$v.log"
done
