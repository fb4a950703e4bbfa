#!/bin/bash
# GPU work waiting for a device (none was lent in the session that wrote it). One mode per call:
#   kernels: the first GPU run of the chunked dplr (RWKV-7), row-decay and joint-state
#            (momentum delta) kernels, bf16 against float32, with GLA and KDA (whose kernels
#            those reuse), ours only at (8, 2048, 16, 128); then fla's chunk_gla autotunes with
#            the time left, its results saved to $OUT/autotune.tgz for a later call
#            (.carry/autotune.tgz), as gpu_session19.sh does;
#   lm:      the LM step: Hope (examples/hope.nl) at batch 2 eager and as CUDA graphs, then
#            Gated DeltaNet with the fused context kernels and without them, beside fla's layer
#            with our kernel, and torch.compile on both sides (our layers and fla's);
#   titans:  the Titans LM step (batch 16 x 2048) with whole chunks recomputed in the backward
#            pass (the CUDA default) and with their activations kept, eager and as CUDA
#            graphs: tokens/s and peak memory (issue: at most 12 GiB);
#   recall:  `nlc bench recall` at a reduced Zoology protocol (two widths, two rates);
#   niah:    `nlc bench niah` at its GPU defaults (docs/runtime.md).
set -u
MODE=${1:-kernels}
REPO=$(pwd)
source benchmarks/gpu_common.sh
install_nlc
export TRITON_CACHE_DIR=/tmp/tc
mkdir -p $TRITON_CACHE_DIR
[ -s .carry/autotune.tgz ] && tar xzf .carry/autotune.tgz -C $TRITON_CACHE_DIR \
  && echo "restored $(find $TRITON_CACHE_DIR -name '*.autotune.json' | wc -l) autotune results"
save_autotune() {
  (cd $TRITON_CACHE_DIR && find . -name '*.autotune.json' | tar czf "$OUT/autotune.tgz" -T -)
  echo "saved $(tar tzf "$OUT/autotune.tgz" | wc -l) autotune results"
}
cd /tmp
if [ "$MODE" = kernels ]; then
  timeout 240 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold \
    --models "RWKV-7,GLA,KDA,row-decay delta,momentum delta" --shapes "8,2048,16,128" \
    --check "ours chunked" \
    --skip "RWKV-7:fla chunk,RWKV-7:fla fused recurrent,GLA:fla chunk,GLA:fla fused recurrent,KDA:fla chunk,KDA:fla fused recurrent" \
    --out "$OUT/perf.md"
  timeout 240 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold --models "GLA" \
    --shapes "8,2048,16,128" --check "" \
    --skip "GLA:ours chunked,GLA:ours recurrent,GLA:fla fused recurrent" --out "$OUT/perf_gla.md"
  save_autotune
elif [ "$MODE" = lm ]; then
  timeout 150 python3 "$REPO/benchmarks/lm_throughput.py" --steps 5 --batch 2 \
    --rows hope_graphed,hope --out "$OUT/lm_hope.md"
  timeout 400 python3 "$REPO/benchmarks/lm_throughput.py" --steps 8 --out "$OUT/lm_compiled.md" \
    --rows gated_deltanet,gated_deltanet_unfused,fla_gdn_our_kernel,fla_hand_deltanet_compiled,deltanet_compiled,fla_gdn_our_kernel_compiled,gated_deltanet_compiled
  save_autotune
elif [ "$MODE" = titans ]; then
  timeout 560 python3 "$REPO/benchmarks/lm_throughput.py" --steps 5 --out "$OUT/lm_titans.md" \
    --rows titans,titans_kept,titans_graphed,titans_graphed_kept
elif [ "$MODE" = recall ]; then
  timeout 560 python3 -m nlc bench recall "$REPO/examples/deltanet.nl" \
    "$REPO/examples/gated_deltanet.nl" "$REPO/examples/mamba2.nl" \
    "$REPO/examples/linear_attention.nl" attention --scale d_k --scale d_v --scale d_head \
    --widths 64 128 --lrs 1e-3 3e-3 --steps 3000 --batch-size 64 --device cuda --jobs 8 \
    -o "$OUT/recall"
else
  timeout 560 python3 -m nlc bench niah "$REPO/examples/titans.nl" \
    "$REPO/examples/gated_deltanet.nl" "$REPO/examples/mamba2.nl" attention \
    --device cuda --jobs 8 -o "$OUT/niah"
fi
