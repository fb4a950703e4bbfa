#!/usr/bin/env bash
# What in our training loop stalls Gated DeltaNet on MQAR (docs/results.md, "Why Gated
# DeltaNet stalls in our loop"): one change to the loop per run, at a size two CPU cores
# train in minutes (MQAR 64 tokens, 4 pairs, vocabulary 256, d_model 64, 2 layers, no MLP,
# 600 steps of 32 sequences, lr 3e-3 unless the variant changes it).
#
#     bash benchmarks/gdn_trainer_cpu.sh [OUT]          (default OUT: runs/gdn_trainer)
#
# Prints one line per run: the variant and its eval accuracy at steps 200 / 400 / 600.
set -euo pipefail
out=${1:-runs/gdn_trainer}
common=(--steps 600 --seq-len 64 --mqar-num-kv-pairs 4 --mqar-vocab-size 256 --d-model 64
        --batch-size 32 --mlp none --eval-interval 200 --eval-examples 256
        --checkpoint-interval 0 --log-interval 100 --quiet)
no_gate=$(mktemp -d)/gdn_no_gate.nl
sed 's/output (rmsnorm(memory) \* silu(x @ W_g)) @ W_o/output rmsnorm(memory) @ W_o/' \
  examples/gated_deltanet.nl > "$no_gate"

run() {
  local name=$1; shift
  rm -rf "$out/$name"
  nlc train "$@" "${common[@]}" --out "$out/$name" > /dev/null
  python - "$out/$name" "$name" <<'EOF'
import json, sys
evals = [json.loads(line) for line in open(sys.argv[1] + "/metrics.jsonl")]
print(sys.argv[2], " / ".join(f"{r['accuracy']:.3f}" for r in evals if r["kind"] == "eval"))
EOF
}

run deltanet examples/deltanet.nl --lr 3e-3
run gated_deltanet examples/gated_deltanet.nl --lr 3e-3
run gdn_no_output_gate "$no_gate" --lr 3e-3
run gdn_no_warmup examples/gated_deltanet.nl --lr 3e-3 --warmup 0
run gdn_no_weight_decay examples/gated_deltanet.nl --lr 3e-3 --weight-decay 0
run gdn_zeros_between_queries examples/gated_deltanet.nl --lr 3e-3 --no-mqar-random-non-queries
run gated_deltanet_seed1 examples/gated_deltanet.nl --lr 3e-3 --seed 1
run gdn_zeros_between_queries_seed1 examples/gated_deltanet.nl --lr 3e-3 \
  --no-mqar-random-non-queries --seed 1
