#!/bin/bash
# GPU work waiting for a device (none was lent in the session that wrote it). One mode per call:
#   titans_pytorch: issue 17's side by side, one process per head width: titans-pytorch's
#            NeuralMemory at its defaults (dim 512, 4 heads, chunk 64) and our Titans layer
#            (examples/titans.nl) at the same sizes, B = 4, T = 2048, fp32, forward +
#            backward: tokens/s and peak memory (benchmarks/titans_pytorch.py). Heads of 128
#            (dim / heads) first, then of 512 (titans-pytorch's default dim_head = dim);
#   amp:     the same under bf16 autocast.
# titans-pytorch and its dependencies come from the wheels in .carry/whl_titans (listed in
# benchmarks/titans_pytorch.py), installed beside nlc's under /tmp/site; numpy only when the
# machine has none, so that the preinstalled one is not shadowed.
set -u
MODE=${1:-titans_pytorch}
REPO=$(pwd)
source benchmarks/gpu_common.sh
install_nlc
export TRITON_CACHE_DIR=/tmp/tc
mkdir -p $TRITON_CACHE_DIR
WHEELS=$(ls .carry/whl_titans/*.whl | grep -v '/numpy-')
python3 -c 'import numpy' 2>/dev/null || WHEELS="$WHEELS $(ls .carry/whl_titans/numpy-*.whl)"
# no --upgrade: that would replace /tmp/site/bin (ruff) with these wheels' scripts
python3 -m pip install -q --no-index --no-deps --target /tmp/site $WHEELS 2>&1 \
  | grep -v 'already exists' || true
python3 -c 'import titans_pytorch, tensordict; print("titans_pytorch", titans_pytorch.__file__)'
cd /tmp
AMP=""
[ "$MODE" = amp ] && AMP="--amp"
timeout 200 python3 "$REPO/benchmarks/titans_pytorch.py" --B 4 --T 2048 --dim 512 --heads 4 \
  --dim-heads 128 --repeat 5 --device cuda $AMP --out "$OUT/titans_pytorch_128.md"
timeout 330 python3 "$REPO/benchmarks/titans_pytorch.py" --B 4 --T 2048 --dim 512 --heads 4 \
  --dim-heads 512 --repeat 5 --device cuda $AMP --out "$OUT/titans_pytorch_512.md"
