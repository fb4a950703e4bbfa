#!/bin/bash
# LM training throughput with the chunked kernels dispatched (benchmarks/gpu_train.py's
# throughput part: d_model 512, 4 layers, batch 16 x 2048, bf16), ours against fla's
# chunk_delta_rule in one process. From the repository root, OUT set.
set -u
REPO=$(pwd)
source benchmarks/gpu_common.sh
install_nlc
cd /tmp && timeout 540 python3 "$REPO/benchmarks/gpu_train.py" --parts throughput \
  --steps '{"throughput": 10}' --out "$OUT"
