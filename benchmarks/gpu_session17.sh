#!/bin/bash
# The input-gradient kernel with half-precision products: its launch sweep against the float32
# kernel's gradients, then the LM step rows the previous session's call ran out of time for.
set -u
REPO=$(pwd)
source benchmarks/gpu_common.sh
install_nlc
cd /tmp
timeout 200 python3 "$REPO/benchmarks/kernel_profile.py" --sweep 2>&1 | grep -v -i warn | head -90
timeout 330 python3 "$REPO/benchmarks/lm_throughput.py" --steps 8 --out "$OUT/lm_throughput.md" \
  --rows deltanet,fla_hand_deltanet,fla_gdn_our_kernel,gated_deltanet,deltanet_compiled,titans
