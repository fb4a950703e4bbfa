#!/bin/bash
# The first GPU run of the dplr chunked kernels (RWKV-7), after the shared decay / KDA kernels
# they reuse gained a second input term: bf16 correctness against float32 and timings at
# (8, 2048, 16, 128) for RWKV-7, GLA and KDA, ours only (fla's dplr, GLA and KDA chunk
# kernels autotune for minutes; GLA's and KDA's numbers compare with gpu_session19.sh's).
set -u
REPO=$(pwd)
source benchmarks/gpu_common.sh
install_nlc
cd /tmp
timeout 150 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold --models "RWKV-7,GLA,KDA" \
  --shapes "8,2048,16,128" --check "ours chunked" \
  --skip "RWKV-7:fla chunk,RWKV-7:fla fused recurrent,GLA:fla chunk,GLA:fla fused recurrent,KDA:fla chunk,KDA:fla fused recurrent" \
  --out "$OUT/perf.md"
