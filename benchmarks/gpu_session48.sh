#!/bin/bash
# GPU work of session 48 (issue 17). Run from the repository root with OUT set and the wheels
# carried (benchmarks/gpu_common.sh).
#   s: benchmarks/gpu_spellings.py (float32 CUDA against float64 CPU, chunked time next to
#      the token loop's); the diagonal l2 spelling now sends CUDA tensors to its fused step
#      kernel instead of the entrywise scan
#   c: the diagonal l2 spelling's CUDA time on its step kernel and on the entrywise scan
#      (NLC_TRITON=0), twice each, on one machine
#   t: the whole table in one run: titans-pytorch against our Titans layer, then the
#      Titans, DeltaNet and Hope LM rows, each in a fresh process
set -u
source benchmarks/gpu_common.sh
start_session
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
case "${1:-t}" in
  s)
    timeout 500 python3 "$REPO/benchmarks/gpu_spellings.py" --out "$OUT/spellings.md"
    ;;
  c)
    for i in 1 2; do
      echo "step kernel:"; timeout 120 python3 "$REPO/benchmarks/gpu_spellings.py" --time-only diagonal_l2
      echo "entrywise scan (NLC_TRITON=0):"
      NLC_TRITON=0 timeout 120 python3 "$REPO/benchmarks/gpu_spellings.py" --time-only diagonal_l2
    done
    ;;
  t)
    titans_pytorch_fast 150
    lm_rows_each 110 titans_graphed_compiled_kernels_tf32
    lm_rows_each 90 deltanet
    lm_rows_each 170 hope_graphed_compiled_chunks_tf32
    ;;
esac
