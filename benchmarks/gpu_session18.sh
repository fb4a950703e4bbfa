#!/bin/bash
# After the input-gradient kernel took half-precision products: its launch sweep (fastest
# launch kept for this call), the chunked kernels side by side with fla at both shapes
# (DeltaNet, Gated DeltaNet, and KDA's new chunk_kda against our recurrent kernel), then Titans'
# LM step with the dual chunk compiled and Gated DeltaNet's LM step under torch.compile.
set -u
REPO=$(pwd)
source benchmarks/gpu_common.sh
install_nlc
cd /tmp
timeout 110 python3 "$REPO/benchmarks/kernel_profile.py" --sweep --models deltanet \
  --best-to /tmp/best.json 2>&1 | grep -v -i warn | grep "BV\|fastest\|ms of kernel"
[ -s /tmp/best.json ] && export NLC_INPUT_GRADS=$(cat /tmp/best.json)
echo "NLC_INPUT_GRADS=${NLC_INPUT_GRADS:-default}"
timeout 330 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold \
  --models "DeltaNet,Gated DeltaNet,KDA" --skip "KDA:fla chunk" --out "$OUT/perf.md" \
  > "$OUT/chunked.log" 2>&1
tail -70 "$OUT/perf.md"
timeout 170 python3 "$REPO/benchmarks/lm_throughput.py" --steps 6 \
  --rows titans_compiled_chunks,gated_deltanet_compiled,titans
