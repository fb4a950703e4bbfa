#!/bin/bash
# One GPU session's runs on a 2-GPU machine (the results in docs/results.md and docs/perf.md):
#   GPU 1: the fused recurrent kernels (benchmarks/gpu_recurrent.py), then Titans on MQAR;
#   GPU 0: MQAR (256, 16) for the other four specs, LM runs, and Gated DeltaNet in fp32.
# Usage (repository root, nlc installed, OUT set): bash benchmarks/gpu_session.sh
set -u
REPO=$(pwd)
MQAR="--task mqar --seq-len 256 --mqar-num-kv-pairs 16 --d-model 128 --n-layers 2 \
  --batch-size 64 --warmup 100 --eval-interval 500 --checkpoint-interval 0 --steps 3000 \
  --lr 2e-3 --mqar-vocab-size ${NLC_MQAR_VOCAB:-1024} --quiet"
cd /tmp
(
  CUDA_VISIBLE_DEVICES=1 timeout 300 python "$REPO/benchmarks/gpu_recurrent.py" \
    --out "$OUT/triton.md" > "$OUT/triton.log" 2>&1
  CUDA_VISIBLE_DEVICES=1 timeout 200 python -m nlc train "$REPO/examples/titans.nl" $MQAR \
    --time-budget 150 --out "$OUT/runs/mqar_titans" > "$OUT/titans.log" 2>&1
) &
CUDA_VISIBLE_DEVICES=0 timeout 400 python -m nlc train "$REPO/examples/gated_deltanet.nl" $MQAR \
  --time-budget 300 --no-bf16 --out "$OUT/runs/mqar_gdn_fp32" > "$OUT/gdn_fp32.log" 2>&1 &
NLC_MQAR_BUDGET=300 NLC_MQAR_VOCAB=${NLC_MQAR_VOCAB:-1024} NLC_MQAR_LR=2e-3 NLC_LM_BUDGET=200 \
  NLC_LM_MODELS=linear_attention,softmax_attention CUDA_VISIBLE_DEVICES=0 timeout 450 \
  python "$REPO/benchmarks/gpu_train.py" --out "$OUT/res" --parts results \
  --models linear_attention,deltanet,gated_deltanet,softmax_attention > "$OUT/results.log" 2>&1
wait
rm -rf "$OUT"/res/*/checkpoints "$OUT"/runs/*/checkpoints
