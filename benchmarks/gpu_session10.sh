#!/bin/bash
# After the per-head projections became one matrix product (nl.head_matmul with a shared
# input, nl.head_matmul_sum for the output projection) and the short convolutions one
# depthwise conv1d: the DeltaNet LM throughput against fla-core's chunk_delta_rule again, and
# where each step's GPU time goes. (Run twice on 2026-11-26: after the projections, then after
# the convolutions too.)
set -u
python benchmarks/gpu_train.py --out /tmp/tp --parts throughput
python benchmarks/deltanet_profile.py --rows 14
