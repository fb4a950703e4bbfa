#!/bin/bash
# GPU work waiting for a device (none was lent to the session that wrote it): the first GPU run
# of the dual chunk form's Triton kernels (runtime/library/dual_triton.py, docs/triton.md).
# Run from the repository root with OUT set (the device tool's output folder):
#   1. the kernel tests on the GPU (tests/test_dual_triton.py with NLC_TRITON_TEST_DEVICE=cuda:
#      float32 kernels against float64 references, < 1e-5), if pytest is there;
#   2. Titans' memory op forward + backward (benchmarks/titans_dual.py --triton: the kernels
#      against the PyTorch dual form, output and every gradient compared first), at the shapes
#      of docs/perf.md's table (B = 64, T = 256 and B = 8, T = 2048), with peak memory.
set -u
source benchmarks/gpu_common.sh
install_nlc
export TRITON_CACHE_DIR=/tmp/tc
mkdir -p $TRITON_CACHE_DIR
cd /tmp  # not the repository root: its nlc/ lacks nlc.runtime, the installed one has it
if python3 -c "import pytest" 2>/dev/null; then
  NLC_TRITON_TEST_DEVICE=cuda timeout 300 python3 -m pytest -q -p no:cacheprovider \
    "$REPO/tests/test_dual_triton.py" > "$OUT/tests.log" 2>&1
  tail -5 "$OUT/tests.log"
else
  echo "no pytest on this machine: tests skipped"
fi
timeout 240 python3 "$REPO/benchmarks/titans_dual.py" --B 64 --T 256 --repeat 5 --triton \
  --skip-recurrent | tee "$OUT/titans_dual_64x256.md"
timeout 300 python3 "$REPO/benchmarks/titans_dual.py" --B 8 --T 2048 --repeat 3 --triton \
  --skip-recurrent | tee "$OUT/titans_dual_8x2048.md"
