#!/bin/bash
# The second GPU session's runs (2 GPUs; docs/results.md, docs/perf.md):
#   GPU 1: the fused recurrent kernels (benchmarks/gpu_recurrent.py);
#   GPU 0: Gated DeltaNet on MQAR with the PyTorch chunked form instead of the Triton kernel
#          (NLC_TRITON=0), Gated DeltaNet with a slower initial decay, Titans on the LM.
set -u
REPO=$(pwd)
MQAR="--task mqar --seq-len 256 --mqar-num-kv-pairs 16 --d-model 128 --n-layers 2 \
  --batch-size 64 --warmup 100 --eval-interval 500 --checkpoint-interval 0 --steps 3000 \
  --lr 2e-3 --mqar-vocab-size 1024 --quiet --time-budget 180"
LM="--task lm --seq-len 512 --d-model 128 --n-layers 2 --batch-size 32 --eval-interval 0 \
  --checkpoint-interval 0 --warmup 50 --lr 2e-3 --steps 150 --quiet --time-budget 180"
sed 's/inv_softplus_uniform(0.001, 0.1)/inv_softplus_uniform(0.0001, 0.001)/' \
  "$REPO/examples/gated_deltanet.nl" > /tmp/gdn_slow_decay.nl
cd /tmp
CUDA_VISIBLE_DEVICES=1 timeout 280 python "$REPO/benchmarks/gpu_recurrent.py" \
  --out "$OUT/triton.md" > "$OUT/triton.log" 2>&1 &
NLC_TRITON=0 CUDA_VISIBLE_DEVICES=0 timeout 260 python -m nlc train \
  "$REPO/examples/gated_deltanet.nl" $MQAR --out "$OUT/runs/mqar_gdn_torch" > "$OUT/gdn_torch.log" 2>&1 &
CUDA_VISIBLE_DEVICES=0 timeout 260 python -m nlc train /tmp/gdn_slow_decay.nl $MQAR \
  --out "$OUT/runs/mqar_gdn_slow_decay" > "$OUT/gdn_slow.log" 2>&1 &
CUDA_VISIBLE_DEVICES=0 timeout 260 python -m nlc train "$REPO/examples/titans.nl" $LM \
  --out "$OUT/runs/lm_titans" > "$OUT/lm_titans.log" 2>&1 &
wait
rm -rf "$OUT"/runs/*/checkpoints
