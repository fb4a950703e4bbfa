#!/bin/bash
# Side-by-side chunked kernels with fla's autotuning carried between device calls.
#   warm:  every model at both shapes (fla's chunk_gla left out: its autotune outlasts a call),
#          our cold start next to fla's, then the state passes' launch sweep at T = 16384;
#   final: the same table again in one process, fla's autotune results restored from the
#          first call (KDA against our recurrent kernel only: fla's chunk_kda autotunes long);
#   lm:    the LM step rows, then Titans eager and as CUDA graphs.
# fla caches its autotune results in TRITON_CACHE_DIR (`*.autotune.json`); the script copies
# them to $OUT/autotune.tgz, and a later call restores them from .carry/autotune.tgz.
set -u
MODE=${1:-warm}
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
MODELS="DeltaNet,Gated DeltaNet,simple GLA / Mamba2,GLA,KDA"
if [ "$MODE" = warm ]; then
  timeout 400 python3 "$REPO/benchmarks/gpu_chunked.py" --models "$MODELS" --cold DeltaNet \
    --check "ours chunked" --skip "GLA:fla chunk" --out "$OUT/perf_warm.md"
  save_autotune
  timeout 110 python3 "$REPO/benchmarks/kernel_profile.py" --shape 1,16384,16,128 \
    --models deltanet,gdn --sweep-states --no-profile
elif [ "$MODE" = final ]; then
  timeout 470 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold --models "$MODELS" \
    --check "ours chunked" --skip "GLA:fla chunk,KDA:fla chunk,KDA:fla fused recurrent" \
    --out "$OUT/perf.md"
  save_autotune
else
  timeout 520 python3 "$REPO/benchmarks/lm_throughput.py" --steps 6 --out "$OUT/lm.md" \
    --rows deltanet,fla_hand_deltanet,gated_deltanet,fla_gdn_our_kernel,deltanet_compiled,gated_deltanet_compiled,titans_graphed,titans
  save_autotune
fi
