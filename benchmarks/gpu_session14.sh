#!/bin/bash
# One LM training step profiled (benchmarks/lm_step_profile.py): where examples/deltanet.nl's
# step time goes at d_model 512, 4 layers, batch 16 x 2048. From the repository root.
set -u
REPO=$(pwd)
source benchmarks/gpu_common.sh
install_nlc
cd /tmp && timeout 400 python3 "$REPO/benchmarks/lm_step_profile.py" "$REPO/examples/deltanet.nl"
