#!/bin/bash
# One LM training step profiled (benchmarks/lm_step_profile.py): where examples/deltanet.nl's
# step time goes at d_model 512, 4 layers, batch 16 x 2048. From the repository root.
set -u
REPO=$(pwd)
python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/nlc .
export PYTHONPATH=/tmp/nlc:/tmp/site PATH=/tmp/site/bin:$PATH
cd /tmp && timeout 400 python3 "$REPO/benchmarks/lm_step_profile.py" "$REPO/examples/deltanet.nl"
