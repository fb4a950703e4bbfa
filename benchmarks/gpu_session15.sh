#!/bin/bash
# After the chunked kernels take autocast's dtype (runtime/library/chunk_triton.py's
# compute_dtype): one LM step profiled, then the LM throughput against fla's chunk_delta_rule.
set -u
REPO=$(pwd)
source benchmarks/gpu_common.sh
install_nlc
cd /tmp && timeout 120 python3 "$REPO/benchmarks/lm_step_profile.py" "$REPO/examples/deltanet.nl" \
  2>&1 | head -30
timeout 400 python3 "$REPO/benchmarks/gpu_train.py" --parts throughput \
  --steps '{"throughput": 10}' --out "$OUT"
