#!/bin/bash
# GPU work left by sessions 34 and 35 (Titans before and after session 34's dual-form changes
# was measured in session 35: docs/perf.md, tenth batch). One mode per device call (each under
# 10 minutes; run from the repository root with OUT set and the wheels carried, see
# benchmarks/gpu_common.sh):
#   g: Titans' fastest LM row with one step profiled (where the step goes since session 34's
#      dual-form changes; $OUT/*_profile.txt); GLA forward + backward against fla's chunk_gla
#      at (8, 2048), with most of the call for fla's autotune (our rows come first and are
#      written as they finish); benchmarks/dual_mix.py;
#   h: Hope's fastest LM row, profiled (issue 17);
#   j: GLA forward + backward against fla's chunk_gla at (8, 2048) alone (after the backward
#      state pass split along keys and dv's state part moved to the input-gradient kernel);
#   i: Titans' row profiled again (full kernel names), Hope's row profiled, then GLA's
#      forward + backward kernel by kernel against fla's at (8, 2048) (issue 16);
#   a: dual_mix.py; Titans' fastest LM row on the tree before session 34's dual-form changes
#      (.carry/base_02089ee.tar, made by `git archive -o .carry/base_02089ee.tar 02089ee`)
#      and on this tree, and Hope's row; then GLA's forward launch sweep and kernel profile
#      at (1, 16384) (the product form of the diagonal blocks against the column sums);
#   all: the channel family's GPU tests, Titans before and after, GLA against fla, dual_mix;
#   last: all's first three parts alone (about four minutes);
#   c: the channel family's and gate limits' tests on the GPU (the product form in real bf16,
#      which the interpreter cannot check), then GLA against fla.
# Autotuning results are cached on disk (TRITON_CACHE_AUTOTUNING), so a second call on a
# warm machine does not autotune fla's kernels again.
set -u
MODE=${1:-a}
REPO=$(pwd)
source benchmarks/gpu_common.sh
start_session
export TRITON_CACHE_AUTOTUNING=1

# channel_tests SECONDS: the channel family's and gate limits' Triton tests on the GPU
channel_tests() {
  NLC_TRITON_TEST_DEVICE=cuda timeout "$1" python3 -m pytest -q -p no:cacheprovider \
    "$REPO/tests/test_chunk_triton.py" -k "channel or limits or half" 2>&1 | tail -3
}

# titans_before SECONDS: Titans' fastest LM row on the tree before session 34's dual-form
# changes (.carry/base_02089ee.tar, made by `git archive -o .carry/base_02089ee.tar 02089ee`)
titans_before() {
  mkdir -p /tmp/base && tar -xf "$REPO/.carry/base_02089ee.tar" -C /tmp/base
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/nlc_base \
    /tmp/base
  PYTHONPATH=/tmp/nlc_base:/tmp/site timeout "$1" python3 /tmp/base/benchmarks/lm_throughput.py \
    --steps 3 --batch 16 --rows titans_graphed_compiled_kernels_tf32 \
    --out "$OUT/lm_titans_base.md" | tail -1
}


# gla_vs_fla SECONDS SKIP: GLA forward and forward + backward against fla's chunk_gla at
# (8, 2048); our rows come first and print as they finish
gla_vs_fla() {
  timeout "$1" python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold --models GLA \
    --shapes 8,2048,16,128 --check "ours chunked" --skip "$2" --out "$OUT/gla_fwd_bwd.md"
  cat "$OUT/gla_fwd_bwd.md"
}

mix() { timeout "$1" python3 "$REPO/benchmarks/dual_mix.py" 2>&1 | grep -v -i warn; }

TITANS=titans_graphed_compiled_kernels_tf32
if [ "$MODE" = g ]; then
  lm_rows 110 "$TITANS" profile
  head -45 "$OUT/${TITANS}_profile.txt"
  gla_vs_fla "${GLA_SECONDS:-360}" "GLA:fla fused recurrent,GLA:ours recurrent"
  mix 40
elif [ "$MODE" = j ]; then
  gla_vs_fla "${GLA_SECONDS:-330}" "GLA:fla fused recurrent,GLA:ours recurrent"
elif [ "$MODE" = i ]; then
  lm_rows 110 "$TITANS" profile
  lm_rows 200 hope_graphed_compiled_chunks_tf32 profile
  timeout 230 python3 "$REPO/benchmarks/kernel_profile.py" --shape 8,2048,16,128 --models gla \
    2>&1 | grep -v -i warn > "$OUT/gla_kernels.txt"
  cat "$OUT/gla_kernels.txt"
elif [ "$MODE" = h ]; then
  lm_rows 200 hope_graphed_compiled_chunks_tf32 profile
  head -45 "$OUT/hope_graphed_compiled_chunks_tf32_profile.txt"
elif [ "$MODE" = a ]; then
  mix 60
  titans_before 100
  lm_rows 200 "$TITANS,hope_graphed_compiled_chunks_tf32"
  timeout 170 python3 "$REPO/benchmarks/kernel_profile.py" --shape 1,16384,16,128 \
    --models gla --sweep-forward --forward 2>&1 | grep -v -i warn
elif [ "$MODE" = last ]; then  # the first three of `all`, for the last few minutes
  channel_tests 70
  titans_before 75
  lm_rows 75 "$TITANS"
elif [ "$MODE" = all ]; then  # one call for what matters most, when machines are scarce
  channel_tests 80
  titans_before 80
  lm_rows 80 "$TITANS"
  gla_vs_fla "${GLA_SECONDS:-200}" "GLA:fla fused recurrent,GLA:ours recurrent"
  mix 40
elif [ "$MODE" = c ]; then
  channel_tests 100
  gla_vs_fla 440 "GLA:fla fused recurrent"
fi
