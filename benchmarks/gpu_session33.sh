#!/bin/bash
# GPU work left by session 32, one mode per device call (each under 10 minutes; run from the
# repository root with OUT set and the wheels carried, see benchmarks/gpu_common.sh). What
# it times was checked under the Triton interpreter and compiled for sm_90 only:
#   a: issue 16: `torch.compile` of the LM (it failed in session 32's call: the kernels'
#      launches made AOT autograd's partition fail, fixed since, tests/test_compile_trace.py):
#      DeltaNet and Gated DeltaNet compiled, beside fla's chunk kernels, in one call;
#   b: issue 16: the forward profile after the one-warp prepare kernel, and the chunked
#      kernels' tests on the GPU with time to finish;
#   c: issue 17: Titans' compiled chunks with --tf32 tracing the PyTorch forms
#      (NLC_COMPILE_DUAL_KERNELS=0) and calling the dual kernels (the default), on one card,
#      and Hope's compiled chunks; then the dual kernels' custom-op tests on the GPU;
#   d: issue 16: where GLA's forward loses to fla's chunk_gla (1.61x, session 32), kernel by
#      kernel at both shapes, and its forward launch sweep (chunk_decay_triton.FORWARD: the
#      scores kernel's 16-wide blocks may, like the delta prepare kernel's, want one warp);
#   e: issue 17: where Titans' fastest LM step (CUDA graphs, compiled chunks through the dual
#      kernels, --tf32: 123.5k tokens/s in session 32, 250k asked) spends its time, by
#      kernel; and Hope's with compiled chunks;
#   f: issue 17: titans-pytorch beside our Titans layer (B 4, T 2048, dim 512, 4 heads of
#      128), now with --fast: both with TF32, ours with compiled chunks and CUDA graphs as the
#      LM's fastest setting (needs .carry/whl_titans, see gpu_session26.sh).
# All six take about 3,200 s, more than a session's 1,800: run a, c and d first (the
# compile fix, the dual custom ops' share, GLA's sweep), then e, f and b.
set -u
MODE=${1:-a}
REPO=$(pwd)
source benchmarks/gpu_common.sh
start_session
if [ "$MODE" = a ]; then
  timeout 560 python3 "$REPO/benchmarks/lm_throughput.py" --steps 3 --batch 16 \
    --rows deltanet_compiled,gated_deltanet_compiled,fla_hand_deltanet,deltanet \
    --out "$OUT/lm_compiled.md"
elif [ "$MODE" = b ]; then
  timeout 120 python3 "$REPO/benchmarks/kernel_profile.py" --shape 8,2048,16,128 \
    --models gdn,deltanet --forward > "$OUT/forward_profile.txt" 2>&1
  grep -A6 "ms of kernel" "$OUT/forward_profile.txt"
  NLC_TRITON_TEST_DEVICE=cuda timeout 400 python3 -m pytest -q -x -p no:cacheprovider \
    "$REPO/tests/test_chunk_triton.py" > "$OUT/chunk_tests.log" 2>&1
  tail -3 "$OUT/chunk_tests.log"
elif [ "$MODE" = c ]; then
  timeout 500 python3 "$REPO/benchmarks/lm_throughput.py" --steps 3 --batch 16 \
    --rows titans_graphed_compiled_tf32,titans_graphed_compiled_kernels_tf32,hope_graphed_compiled_chunks \
    --out "$OUT/lm_compiled_chunks.md"
  NLC_TRITON_TEST_DEVICE=cuda timeout 80 python3 -m pytest -q -p no:cacheprovider \
    "$REPO/tests/test_dual_triton.py" -k "custom_ops or compile" 2>&1 | tail -3
elif [ "$MODE" = d ]; then
  timeout 240 python3 "$REPO/benchmarks/kernel_profile.py" --shape 8,2048,16,128 --models gla \
    --sweep-forward --no-profile 2>&1 | grep -v Warn | tail -22
  for shape in 8,2048,16,128 1,16384,16,128; do
    timeout 150 python3 "$REPO/benchmarks/kernel_profile.py" --shape $shape --models gla \
      --forward 2>&1 | grep -v Warn | tail -20
  done
elif [ "$MODE" = e ]; then
  timeout 560 python3 "$REPO/benchmarks/lm_throughput.py" --steps 3 --batch 16 \
    --rows titans_graphed_compiled_kernels_tf32,hope_graphed_compiled_chunks \
    --profile-to "$OUT" --out "$OUT/lm_profiled.md"
  head -40 "$OUT"/titans_graphed_compiled_kernels_tf32_profile.txt
elif [ "$MODE" = f ]; then
  WHEELS=$(ls "$REPO"/.carry/whl_titans/*.whl | grep -v '/numpy-')
  python3 -c 'import numpy' 2>/dev/null || WHEELS="$WHEELS $(ls "$REPO"/.carry/whl_titans/numpy-*.whl)"
  python3 -m pip install -q --no-index --no-deps --target /tmp/site $WHEELS 2>&1 \
    | grep -v 'already exists' || true
  timeout 500 python3 "$REPO/benchmarks/titans_pytorch.py" --B 4 --T 2048 --dim 512 --heads 4 \
    --dim-heads 128 --repeat 5 --device cuda --fast --out "$OUT/titans_pytorch_fast.md"
fi
