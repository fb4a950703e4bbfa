#!/bin/bash
# GPU work written in session 27 for the next device calls, one mode per call (each about 5 to
# 9 minutes; the device's idle release is 30 s, so issue them back to back):
#   mlp:    issue 17: the per-token MLP memories' step kernels with their printed backward
#           (benchmarks/gpu_step_kernel.py, forward and forward + backward against the token
#           loop), then each MLP-memory example's LM step at T = 2048 (batch 2): does it
#           train on one GPU, how fast, how large;
#   hope:   issue 17: Hope's LM step eager and as CUDA graphs (batch 2), the Titans LM
#           step as CUDA graphs (batch 16; also with each chunk compiled by Inductor), and the op / launch / sync counts of one Hope and one
#           Titans layer on the GPU (benchmarks/launch_count.py --device cuda);
#   terms:  issue 17: the chunk-start terms kernels' tests on the GPU, and the Titans (batch
#           16) and Hope (batch 2) LM steps as CUDA graphs with and without them;
#   recall: issue 19: `nlc bench recall` at the reduced protocol of gpu_session22.sh (5
#           models x 2 widths x 2 learning rates), with the run folders' metrics copied flat
#           into $OUT (the device tool leaves out folders nested deeper);
#   niah:   issue 19: `nlc bench niah` at its GPU defaults, flattened the same way;
#   titans_pytorch: issue 17: titans-pytorch beside our Titans at heads of 512;
#   kernels3: issue 16: the chunked kernels after docs/perf.md's "Structure of the slow
#           chunked kernels" (momentum delta's n x n products and transfers kernel):
#           the joint kernels' tests on the GPU, the timing table of momentum delta,
#           row-decay delta, RWKV-7 and KDA at (8, 2048, 16, 128), and a per-kernel
#           profile of each (gpu_chunked.py --profile).
set -u
MODE=${1:-mlp}
REPO=$(pwd)
source benchmarks/gpu_common.sh
start_session
flatten() {  # flatten DIR: each run's metrics.jsonl and log as $OUT/DIR_flat/RUN.*
  mkdir -p "$OUT/$1_flat"
  for run in "$OUT/$1"/runs/*/; do
    name=$(basename "$run")
    [ -f "$run/metrics.jsonl" ] && cp "$run/metrics.jsonl" "$OUT/$1_flat/$name.jsonl"
    [ -f "$run/log.txt" ] && tail -5 "$run/log.txt" > "$OUT/$1_flat/$name.log"
  done
  rm -rf "$OUT/$1"/runs/*/checkpoints
}
if [ "$MODE" = mlp ]; then
  timeout 200 python3 "$REPO/benchmarks/gpu_step_kernel.py" --shape 4,512,4,64 --repeats 2 \
    | tee "$OUT/step_kernel.md"
  timeout 330 python3 "$REPO/benchmarks/lm_throughput.py" --steps 3 --batch 2 \
    --rows ttt_mlp,moneta,yaad,memora --out "$OUT/lm_mlp.md"
elif [ "$MODE" = hope ]; then
  timeout 90 python3 "$REPO/benchmarks/launch_count.py" "$REPO/examples/hope.nl" \
    --device cuda --bf16 --T 2048 | tee "$OUT/launch_hope.md"
  timeout 60 python3 "$REPO/benchmarks/launch_count.py" "$REPO/examples/titans.nl" \
    --device cuda --bf16 --T 2048 | tee "$OUT/launch_titans.md"
  timeout 200 python3 "$REPO/benchmarks/lm_throughput.py" --steps 4 --batch 2 \
    --rows hope,hope_graphed --out "$OUT/lm_hope.md"
  timeout 240 python3 "$REPO/benchmarks/lm_throughput.py" --steps 4 \
    --rows titans_graphed,titans_graphed_compiled_chunks --out "$OUT/lm_titans_graphed.md"
elif [ "$MODE" = terms ]; then
  NLC_TRITON_TEST_DEVICE=cuda timeout 160 python3 -m pytest -q -p no:cacheprovider -x \
    "$REPO/tests/test_outer_kernel.py" "$REPO/tests/test_affine_triton.py" \
    > "$OUT/terms_tests.log" 2>&1
  tail -5 "$OUT/terms_tests.log"
  timeout 160 python3 "$REPO/benchmarks/lm_throughput.py" --steps 3 \
    --rows titans_graphed,titans_graphed_torch_terms --out "$OUT/lm_titans_terms.md"
  timeout 260 python3 "$REPO/benchmarks/lm_throughput.py" --steps 3 --batch 2 \
    --rows hope_graphed,hope_graphed_torch_terms --out "$OUT/lm_hope_terms.md"
elif [ "$MODE" = recall ]; then
  timeout 540 python3 -m nlc bench recall "$REPO/examples/deltanet.nl" \
    "$REPO/examples/gated_deltanet.nl" "$REPO/examples/mamba2.nl" \
    "$REPO/examples/linear_attention.nl" attention --scale d_k --scale d_v --scale d_head \
    --widths 64 128 --lrs 1e-3 3e-3 --steps 3000 --batch-size 64 --device cuda --jobs 8 \
    -o "$OUT/recall"
  flatten recall
elif [ "$MODE" = niah ]; then
  timeout 540 python3 -m nlc bench niah "$REPO/examples/titans.nl" \
    "$REPO/examples/gated_deltanet.nl" "$REPO/examples/mamba2.nl" attention \
    --device cuda --jobs 8 -o "$OUT/niah"
  flatten niah
elif [ "$MODE" = kernels3 ]; then
  NLC_TRITON_TEST_DEVICE=cuda timeout 120 python3 -m pytest -q -p no:cacheprovider \
    "$REPO/tests/test_chunk_joint_triton.py" > "$OUT/joint_tests.log" 2>&1
  tail -3 "$OUT/joint_tests.log"
  time_slow_chunked "$OUT/perf.md"
  timeout 150 python3 "$REPO/benchmarks/gpu_chunked.py" --profile \
    --models "momentum delta,RWKV-7,KDA" --shapes "8,2048,16,128" --out "$OUT/unused.md" \
    | grep -v '^-' | cut -c1-200 > "$OUT/profile.txt"
else
  WHEELS=$(ls "$REPO"/.carry/whl_titans/*.whl | grep -v '/numpy-')
  python3 -c 'import numpy' 2>/dev/null || WHEELS="$WHEELS $(ls "$REPO"/.carry/whl_titans/numpy-*.whl)"
  python3 -m pip install -q --no-index --no-deps --target /tmp/site $WHEELS 2>&1 \
    | grep -v 'already exists' || true
  timeout 400 python3 "$REPO/benchmarks/titans_pytorch.py" --B 4 --T 2048 --dim 512 --heads 4 \
    --dim-heads 512 --repeat 5 --device cuda --out "$OUT/titans_pytorch_512.md"
fi
