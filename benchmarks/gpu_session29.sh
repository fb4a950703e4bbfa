#!/bin/bash
# GPU work of session 29, one mode per device call (each under 10 minutes; run from the
# repository root with OUT set and the wheels carried, see benchmarks/gpu_common.sh):
#   a: issue 17: the chunk-start terms and affine kernels' tests on the GPU; the Titans LM
#      step as CUDA graphs (batch 16) with and without the terms kernels (NLC_TERMS_TRITON=1:
#      off by default since their first timing); the Hope LM step as CUDA graphs (batch 2)
#      with and without the affine kernels (NLC_AFFINE_TRITON=1);
#      one Titans layer's forward + backward under the profiler (kernel counts and times);
#   a2: a without the PyTorch-terms row and the profile (for a short budget);
#   b: issue 17: the same LM steps with every chunk compiled by Inductor
#      (NLC_COMPILE_CHUNKS=1: Titans' dual chunks, Hope's group and main memory chunks);
#   c: issue 16: gpu_session27.sh kernels3 (momentum delta, row-decay delta, RWKV-7, KDA).
set -u
MODE=${1:-a}
REPO=$(pwd)
if [ "$MODE" = c ]; then
  exec bash "$REPO/benchmarks/gpu_session27.sh" kernels3
fi
source benchmarks/gpu_common.sh
start_session
LM="$REPO/benchmarks/lm_throughput.py"
if [ "$MODE" = a ]; then
  NLC_TRITON_TEST_DEVICE=cuda timeout 100 python3 -m pytest -q -p no:cacheprovider \
    "$REPO/tests/test_affine_triton.py" "$REPO/tests/test_outer_kernel.py" \
    > "$OUT/terms_tests.log" 2>&1
  tail -5 "$OUT/terms_tests.log"
  timeout 170 python3 "$LM" --steps 3 --rows titans_graphed,titans_graphed_terms_kernels \
    --out "$OUT/lm_titans_terms.md"
  timeout 200 python3 "$LM" --steps 3 --batch 2 --rows hope_graphed,hope_graphed_affine_kernels \
    --out "$OUT/lm_hope.md"
  timeout 80 python3 "$REPO/benchmarks/launch_count.py" "$REPO/examples/titans.nl" \
    --device cuda --bf16 --T 2048 --batch 16 > "$OUT/launch_titans.md" 2>&1
  tail -28 "$OUT/launch_titans.md"
elif [ "$MODE" = a2 ]; then  # mode a cut to fit 400 s of device time
  NLC_TRITON_TEST_DEVICE=cuda timeout 100 python3 -m pytest -q -p no:cacheprovider -x \
    "$REPO/tests/test_outer_kernel.py" "$REPO/tests/test_affine_triton.py" \
    > "$OUT/terms_tests.log" 2>&1
  tail -5 "$OUT/terms_tests.log"
  timeout 120 python3 "$LM" --steps 3 --rows titans_graphed --out "$OUT/lm_titans.md"
  timeout 150 python3 "$LM" --steps 3 --batch 2 --rows hope_graphed --out "$OUT/lm_hope.md"
elif [ "$MODE" = b ]; then
  timeout 260 python3 "$LM" --steps 3 --rows titans_graphed_compiled_chunks \
    --out "$OUT/lm_titans_compiled.md"
  timeout 300 python3 "$LM" --steps 3 --batch 2 --rows hope_graphed_compiled_chunks \
    --out "$OUT/lm_hope_compiled.md"
fi
