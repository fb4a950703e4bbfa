#!/bin/bash
# GPU work left by session 34, one mode per device call (each under 10 minutes; run from the
# repository root with OUT set and the wheels carried, see benchmarks/gpu_common.sh). What
# it times was checked under the Triton interpreter only:
#   a: issue 17: the dual form's chunk-end mix as elementwise sums (dual.py `_mix`, session
#      34) against the matrix product it replaced (benchmarks/dual_mix.py: by launch counts
#      that product and its backward were 28% of Titans' LM step on an H100, ninth batch);
#      then Titans' fastest LM row before and after session 34's three dual-form changes
#      (that mix, the scans' loads a token ahead, the reads' packing as views), and Hope's
#      with and without --tf32, on one card;
#   b: issue 16: GLA's new forward launch (scores per row block, 2 warps, diagonal blocks on
#      the tensor cores (scores_diag_dot, against the column sums); the state launch
#      below 64 sequences x heads) at both shapes beside fla's chunk_gla, its sweep at
#      (8, 2048) that session 34's call ran out of time for, and the kernel profile;
#   c: issue 16: GLA forward + backward against fla's chunk_gla at (8, 2048) (fla's
#      backward autotunes for minutes; never timed so far);
#   d: issue 16: the chunked kernels' tests on the GPU, the channel family and the gate
#      limits first (the diagonal blocks' product form in real bf16 and tf32 products,
#      which the interpreter cannot check), then KDA's and RWKV-7's, then the rest.
set -u
MODE=${1:-a}
REPO=$(pwd)
source benchmarks/gpu_common.sh
start_session
if [ "$MODE" = a ]; then
  timeout 90 python3 "$REPO/benchmarks/dual_mix.py" 2>&1 | grep -v -i warn
  # Titans' fastest row on the tree before session 34's three dual-form changes (the mix,
  # the scan's loads a token ahead, the reads' packing as views: .carry/base_02089ee.tar,
  # made by `git archive -o .carry/base_02089ee.tar 02089ee`), then on this tree
  mkdir -p /tmp/base && tar -xf "$REPO/.carry/base_02089ee.tar" -C /tmp/base
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/nlc_base \
    /tmp/base
  PYTHONPATH=/tmp/nlc_base:/tmp/site timeout 120 python3 /tmp/base/benchmarks/lm_throughput.py \
    --steps 3 --batch 16 --rows titans_graphed_compiled_kernels_tf32 \
    --out "$OUT/lm_titans_base.md" | tail -2
  timeout 330 python3 "$REPO/benchmarks/lm_throughput.py" --steps 3 --batch 16 \
    --rows titans_graphed_compiled_kernels_tf32,hope_graphed_compiled_chunks,hope_graphed_compiled_chunks_tf32 \
    --out "$OUT/lm_mix.md" | tail -5
elif [ "$MODE" = b ]; then
  for shape in 8,2048,16,128 1,16384,16,128; do
    timeout 200 python3 "$REPO/benchmarks/kernel_profile.py" --shape $shape --models gla \
      --sweep-forward --sweep-states --forward 2>&1 | grep -v -i warn
  done
elif [ "$MODE" = c ]; then
  timeout 560 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold --models GLA \
    --shapes 8,2048,16,128 --check "ours chunked,fla chunk" \
    --skip "GLA:fla fused recurrent" --out "$OUT/gla_fwd_bwd.md"
  cat "$OUT/gla_fwd_bwd.md"
elif [ "$MODE" = d ]; then
  export NLC_TRITON_TEST_DEVICE=cuda
  timeout 150 python3 -m pytest -q -p no:cacheprovider "$REPO/tests/test_chunk_triton.py" \
    -k "channel or limits or half" 2>&1 | tail -3
  timeout 200 python3 -m pytest -q -p no:cacheprovider "$REPO/tests/test_chunk_kda_triton.py" \
    "$REPO/tests/test_chunk_dplr_triton.py" 2>&1 | tail -3
  timeout 200 python3 -m pytest -q -p no:cacheprovider "$REPO/tests/test_chunk_triton.py" \
    -k "not (channel or limits or half)" 2>&1 | tail -3
fi
