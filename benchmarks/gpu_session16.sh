#!/bin/bash
# Where the DeltaNet backward loses to fla (per-kernel times), where a Titans LM step goes,
# and the LM step table (ours eager and compiled, fla's layers, fla's GDN layer on our kernel).
set -u
REPO=$(pwd)
source benchmarks/gpu_common.sh
install_nlc
cd /tmp
timeout 150 python3 "$REPO/benchmarks/kernel_profile.py" 2>&1 | grep -v Warning | head -80
timeout 120 python3 "$REPO/benchmarks/lm_step_profile.py" "$REPO/examples/titans.nl" \
  --dims d_head=64 --steps 2 2>&1 | head -60
timeout 300 python3 "$REPO/benchmarks/lm_throughput.py" --steps 8 --out "$OUT/lm_throughput.md" \
  --rows deltanet,gated_deltanet,fla_hand_deltanet,fla_deltanet,fla_gated_deltanet,fla_gdn_our_kernel,deltanet_compiled,titans
