#!/bin/bash
# 1. The first GPU run of the chunked dplr kernels (RWKV-7): bf16 against float32 and timings at
#    (8, 2048, 16, 128), with GLA and KDA (whose kernels the dplr merge changed), ours only.
# 2. Hope (examples/hope.nl) as an LM mixer at T = 2048, batch 2: eager and as CUDA graphs.
# 3. torch.compile on both sides of the LM comparison: our layers and fla's (the hand layer on
#    chunk_delta_rule, fla's GatedDeltaNet layer with our kernel), in one run.
# 4. With the time left, fla's chunk_gla autotunes; its results are saved to $OUT/autotune.tgz
#    for a later call (.carry/autotune.tgz), as gpu_session19.sh does.
set -u
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
timeout 150 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold --models "RWKV-7,GLA,KDA" \
  --shapes "8,2048,16,128" --check "ours chunked" \
  --skip "RWKV-7:fla chunk,RWKV-7:fla fused recurrent,GLA:fla chunk,GLA:fla fused recurrent,KDA:fla chunk,KDA:fla fused recurrent" \
  --out "$OUT/perf.md"
timeout 150 python3 "$REPO/benchmarks/lm_throughput.py" --steps 5 --batch 2 \
  --rows hope_graphed,hope --out "$OUT/lm_hope.md"
timeout 200 python3 "$REPO/benchmarks/lm_throughput.py" --steps 8 --out "$OUT/lm_compiled.md" \
  --rows fla_hand_deltanet_compiled,deltanet_compiled,fla_gdn_our_kernel_compiled,gated_deltanet_compiled
save_autotune
timeout 60 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold --models "GLA" \
  --shapes "8,2048,16,128" --check "" --skip "GLA:ours chunked,GLA:ours recurrent,GLA:fla fused recurrent" \
  --out "$OUT/perf_gla.md"
save_autotune
