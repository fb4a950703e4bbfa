#!/bin/bash
# GPU work of session 46 (issue 17): the whole table in one run on one card, each row's
# table kept in $OUT as soon as it is done: titans-pytorch against our Titans layer (needs
# .carry/whl_titans), then the LM rows (Titans, DeltaNet, Hope). Run from the repository root
# with OUT set and the wheels carried (benchmarks/gpu_common.sh).
set -u
source benchmarks/gpu_common.sh
start_session
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
titans_pytorch_fast 150
lm_rows_each 110 titans_graphed_compiled_kernels_tf32
lm_rows_each 90 deltanet
lm_rows_each 170 hope_graphed_compiled_chunks_tf32
