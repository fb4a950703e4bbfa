#!/bin/bash
# The results table of docs/results.md in one run: MQAR (256, 16) at vocabulary 1024 and the
# byte-level LM for every model of the issue plus the gate-bias Gated DeltaNet, all runs at
# once on two cards, one budget (3000 steps or 300 s for MQAR, 150 steps for the LM); then the
# training throughput of a DeltaNet LM against fla-core's chunk_delta_rule on one card.
set -u
export NLC_MQAR_VOCAB=1024 NLC_MQAR_LR=2e-3 NLC_MQAR_BUDGET=300 NLC_LM_BUDGET=200
python benchmarks/gpu_train.py --out /tmp/results --parts results,throughput \
  --models linear_attention,deltanet,gated_deltanet,gated_deltanet_gate_bias,titans,softmax_attention
cp /tmp/results/*.md "$OUT/"
