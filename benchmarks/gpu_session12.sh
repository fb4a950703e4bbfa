#!/bin/bash
# Chunked kernels side by side with fla at both shapes after the blocked inverse
# (benchmarks/gpu_chunked.py; fla's chunk_gla is not timed: it autotunes longer than a call).
# Usage: bash benchmarks/gpu_session12.sh "MODELS" (from the repository root, OUT set).
set -u
REPO=$(pwd)
source benchmarks/gpu_common.sh
install_nlc
cd /tmp && timeout 520 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold --models "$1" \
  --skip "GLA:fla chunk" --out "$OUT/perf.md"
tail -60 "$OUT/perf.md"
