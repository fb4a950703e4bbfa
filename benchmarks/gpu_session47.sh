#!/bin/bash
# GPU work of session 47 (issue 17). Run from the repository root with OUT set and the wheels
# carried (benchmarks/gpu_common.sh).
#   p: Titans' LM step (issue 17's shape) with one step profiled: ROW_profile.txt and the
#      kernel timeline ROW_kernels.tsv in $OUT, to see where its time goes
#   s: benchmarks/gpu_spellings.py, the spellings this session moved off the token loop,
#      float32 CUDA against float64 CPU, and their chunked time next to the token loop's
#   b: the diagonal l2 spec on the tree before (822cd6f, its fused step kernel) and now
#   t: the issue's whole table in one run, as benchmarks/gpu_session46.sh, then Titans' and
#      DeltaNet's LM rows on the tree before the fused RMSNorm (.carry/base_822cd6f.tar, made
#      by `git archive -o .carry/base_822cd6f.tar 822cd6f`), side by side
set -u
source benchmarks/gpu_common.sh
start_session
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
case "${1:-t}" in
  p)
    lm_rows 150 titans_graphed_compiled_kernels_tf32 profile
    ;;
  s)
    timeout 500 python3 "$REPO/benchmarks/gpu_spellings.py" --out "$OUT/spellings.md"
    ;;
  b)  # the diagonal l2 spec's CUDA time on the tree before (its fused step kernel), then now
    rm -rf /tmp/base /tmp/nlc_base && mkdir -p /tmp/base && tar -xf "$REPO/.carry/base_822cd6f.tar" -C /tmp/base
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/nlc_base /tmp/base
    echo "before (822cd6f):"
    PYTHONPATH=/tmp/nlc_base:/tmp/site timeout 200 python3 "$REPO/benchmarks/gpu_spellings.py" --time-only diagonal_l2
    echo "now:"
    timeout 200 python3 "$REPO/benchmarks/gpu_spellings.py" --time-only diagonal_l2
    ;;
  t)
    titans_pytorch_fast 150
    lm_rows_each 110 titans_graphed_compiled_kernels_tf32
    lm_rows_each 90 deltanet
    lm_rows_each 170 hope_graphed_compiled_chunks_tf32
    lm_rows_at base_822cd6f.tar 200 titans_graphed_compiled_kernels_tf32,deltanet
    ;;
esac
