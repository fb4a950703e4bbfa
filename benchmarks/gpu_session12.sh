#!/bin/bash
# Chunked kernels side by side with fla at both shapes after the blocked inverse
# (benchmarks/gpu_chunked.py; fla's chunk_gla is not timed: it autotunes longer than a call).
# Usage: bash benchmarks/gpu_session12.sh "MODELS" (from the repository root, OUT set).
set -u
REPO=$(pwd)
python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/nlc .
export PYTHONPATH=/tmp/nlc:/tmp/site PATH=/tmp/site/bin:$PATH
cd /tmp && timeout 520 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold --models "$1" \
  --skip "GLA:fla chunk" --out "$OUT/perf.md"
tail -60 "$OUT/perf.md"
