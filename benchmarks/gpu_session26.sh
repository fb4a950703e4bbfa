#!/bin/bash
# GPU work of session 26, one mode per call:
#   titans:  issue 17: the dual chunk form's Triton kernels (their tests on the GPU, then
#            benchmarks/titans_dual.py --triton at B = 8, T = 2048), the Titans LM step
#            with its chunks recomputed (the CUDA default), kept, and as CUDA graphs
#            (tokens/s, peak GiB), and titans-pytorch beside our Titans at heads of 128;
#   kernels: issue 16: the first GPU run of the chunked dplr (RWKV-7), row-decay and
#            joint-state kernels with GLA and KDA, then the Gated DeltaNet LM step with the
#            fused context kernels, without them, and fla's layer on our kernel;
#   mlp:     issue 17: the fused step kernels of Moneta, Yaad and Memora against their token
#            loop (benchmarks/gpu_step_kernel.py), the Hope LM at batch 2, and titans-pytorch
#            at its default heads of 512;
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
MODE=${1:-titans}
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
# fla has no rule for these (nor chunk kernels for RWKV-7, GLA and KDA that run its backward here)
NO_FLA="RWKV-7:fla chunk,RWKV-7:fla fused recurrent,GLA:fla chunk,GLA:fla fused recurrent"
NO_FLA="$NO_FLA,KDA:fla chunk,KDA:fla fused recurrent,row-decay delta:fla chunk"
NO_FLA="$NO_FLA,row-decay delta:fla fused recurrent,momentum delta:fla chunk"
NO_FLA="$NO_FLA,momentum delta:fla fused recurrent"
AMP=""
[ "$MODE" = amp ] && AMP="--amp"
side_by_side() {  # side_by_side DIM_HEAD TIMEOUT
  timeout "$2" python3 "$REPO/benchmarks/titans_pytorch.py" --B 4 --T 2048 --dim 512 --heads 4 \
    --dim-heads "$1" --repeat 5 --device cuda $AMP --out "$OUT/titans_pytorch_$1.md"
}
if [ "$MODE" = titans ]; then
  NLC_TRITON_TEST_DEVICE=cuda timeout 120 python3 -m pytest -q -p no:cacheprovider -x \
    "$REPO/tests/test_dual_triton.py" > "$OUT/dual_tests.log" 2>&1
  tail -3 "$OUT/dual_tests.log"
  timeout 90 python3 "$REPO/benchmarks/titans_dual.py" --B 8 --T 2048 --repeat 3 --triton \
    --skip-recurrent | tee "$OUT/titans_dual_8x2048.md"
  timeout 200 python3 "$REPO/benchmarks/lm_throughput.py" --steps 4 --out "$OUT/lm_titans.md" \
    --rows titans,titans_kept,titans_graphed
  side_by_side 128 130
elif [ "$MODE" = kernels ]; then
  timeout 240 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold \
    --models "RWKV-7,GLA,KDA,row-decay delta,momentum delta" --shapes "8,2048,16,128" \
    --check "ours chunked" \
    --skip "$NO_FLA" --out "$OUT/perf.md"
  timeout 300 python3 "$REPO/benchmarks/lm_throughput.py" --steps 6 --out "$OUT/lm_gdn.md" \
    --rows gated_deltanet,gated_deltanet_unfused,fla_gdn_our_kernel
elif [ "$MODE" = kernels2 ]; then  # the kernels' timing only, then Hope's LM at batch 2
  timeout 300 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold \
    --models "RWKV-7,GLA,KDA,row-decay delta,momentum delta" --shapes "8,2048,16,128" \
    --check "ours chunked" --skip "$NO_FLA" --out "$OUT/perf.md"
  timeout 200 python3 "$REPO/benchmarks/lm_throughput.py" --steps 4 --batch 2 \
    --rows hope,hope_graphed --out "$OUT/lm_hope.md"
elif [ "$MODE" = titans2 ]; then  # after the first titans call's fixes
  NLC_TRITON_TEST_DEVICE=cuda timeout 100 python3 -m pytest -q -p no:cacheprovider \
    "$REPO/tests/test_dual_triton.py" > "$OUT/dual_tests.log" 2>&1
  tail -3 "$OUT/dual_tests.log"
  timeout 90 python3 "$REPO/benchmarks/titans_dual.py" --B 8 --T 2048 --repeat 3 --triton \
    --skip-recurrent | tee "$OUT/titans_dual_8x2048.md"
  timeout 150 python3 "$REPO/benchmarks/lm_throughput.py" --steps 4 --out "$OUT/lm_titans.md" \
    --rows titans_graphed,titans_graphed_kept
  timeout 120 python3 "$REPO/benchmarks/gpu_step_kernel.py" --shape 4,512,4,64 --repeats 2 \
    | tee "$OUT/step_kernel.md"
elif [ "$MODE" = mlp ]; then
  [ -f "$REPO/benchmarks/gpu_step_kernel.py" ] && timeout 200 python3 \
    "$REPO/benchmarks/gpu_step_kernel.py" --out "$OUT/step_kernel.md"
  timeout 150 python3 "$REPO/benchmarks/lm_throughput.py" --steps 4 --batch 2 \
    --rows hope,hope_graphed --out "$OUT/lm_hope.md"
  side_by_side 512 200
else
  side_by_side 128 200
  side_by_side 512 330
fi
