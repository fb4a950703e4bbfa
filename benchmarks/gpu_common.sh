# Shared by benchmarks/gpu_session6.sh and later: the MQAR (256, 16) and byte-level LM settings
# of docs/results.md, and how a session script launches runs and reports them. Source it from
# the repository root with OUT set (the device tool's output folder).
REPO=$(pwd)
MQAR="--task mqar --seq-len 256 --mqar-num-kv-pairs 16 --d-model 128 --n-layers 2 \
  --batch-size 64 --warmup 100 --eval-interval 500 --checkpoint-interval 0 --steps 3000 \
  --lr 2e-3 --mqar-vocab-size 1024 --quiet --time-budget 300"
LM="--task lm --seq-len 512 --d-model 128 --n-layers 2 --batch-size 32 --eval-interval 0 \
  --checkpoint-interval 0 --warmup 50 --steps 150 --lr 2e-3 --quiet --time-budget 250 \
  --log-interval 5"

# launch NAME SPEC SETTINGS: `nlc train` in the background, into $OUT/runs/NAME
launch() {
  (cd /tmp && timeout 380 python -m nlc train "$2" $3 --out "$OUT/runs/$1" > "$OUT/$1.log" 2>&1) &
}

# report NAME...: each run's evaluations, last training line and result; then drop the runs
report() {
  wait
  for r in "$@"; do
    echo "== $r"; grep '"eval"\|"diverged"' "$OUT/runs/$r/metrics.jsonl" | cut -c1-140
    grep '"train"' "$OUT/runs/$r/metrics.jsonl" | tail -1 | cut -c1-200
    tail -1 "$OUT/$r.log" | cut -c1-300
  done
  rm -rf "$OUT"/runs
}

# install_nlc: nlc in its installed layout (runtime/ as nlc.runtime) and the wheels .carry/whl
# holds (lark, fla-core, ruff; benchmarks/carry_wheels.sh fetches them), both under /tmp and
# replacing what an earlier call left there
install_nlc() {
  if ! ls .carry/whl/*.whl > /dev/null 2>&1; then
    echo "no wheels in .carry/whl: run benchmarks/carry_wheels.sh here, and pass carry=[\".carry\"]" >&2
    exit 2
  fi
  python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .carry/whl/*.whl
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target /tmp/nlc .
  export PYTHONPATH=/tmp/nlc:/tmp/site PATH=/tmp/site/bin:$PATH
}

# start_session: install_nlc, a Triton cache under /tmp (kept while the machine stays warm),
# and /tmp as the working folder (runs write there, not into the carried checkout)
start_session() {
  install_nlc
  export TRITON_CACHE_DIR=/tmp/tc
  mkdir -p $TRITON_CACHE_DIR
  cd /tmp
}

# time_slow_chunked OUTFILE: gpu_chunked.py's table of momentum delta, row-decay delta, RWKV-7
# and KDA at (8, 2048, 16, 128) against float32, fla not run for them
time_slow_chunked() {
  local skip="RWKV-7:fla chunk,RWKV-7:fla fused recurrent,KDA:fla chunk,KDA:fla fused recurrent"
  for m in "row-decay delta" "momentum delta"; do
    skip="$skip,$m:fla chunk,$m:fla fused recurrent"
  done
  timeout 240 python3 "$REPO/benchmarks/gpu_chunked.py" --skip-cold \
    --models "momentum delta,row-decay delta,RWKV-7,KDA" --shapes "8,2048,16,128" \
    --check "ours chunked" --skip "$skip" --out "$1"
}

# lm_rows SECONDS ROWS [profile]: LM rows of lm_throughput.py on this tree, into
# $OUT/lm_rows.md (profile: one more step of each row into $OUT/ROW_profile.txt)
lm_rows() {
  local extra=()
  [ "${3:-}" = profile ] && extra=(--profile-to "$OUT")
  timeout "$1" python3 "$REPO/benchmarks/lm_throughput.py" --steps 3 --batch 16 --rows "$2" \
    --out "$OUT/lm_rows.md" "${extra[@]}" | tail -4
}

# install_titans_pytorch: titans-pytorch 0.5.5 and its dependencies from .carry/whl_titans
# (benchmarks/gpu_session26.sh lists them), numpy only where the machine has none
install_titans_pytorch() {
  local wheels
  wheels=$(ls "$REPO"/.carry/whl_titans/*.whl | grep -v '/numpy-')
  python3 -c 'import numpy' 2>/dev/null || wheels="$wheels $(ls "$REPO"/.carry/whl_titans/numpy-*.whl)"
  python3 -m pip install -q --no-index --no-deps --target /tmp/site $wheels 2>&1 \
    | grep -v 'already exists' || true
}

# lm_rows_each SECONDS ROW...: each row as lm_rows does, its table kept as $OUT/lm_ROW.md
lm_rows_each() {
  local seconds=$1 row
  shift
  for row in "$@"; do
    lm_rows "$seconds" "$row"
    cp "$OUT/lm_rows.md" "$OUT/lm_$row.md"
  done
}

# lm_rows_at TAR SECONDS ROWS: the same rows on the tree a `git archive` tar in .carry holds
# (`git archive -o .carry/base_REV.tar REV`), installed beside this one, into $OUT/lm_base.md
lm_rows_at() {
  rm -rf /tmp/base /tmp/nlc_base && mkdir -p /tmp/base && tar -xf "$REPO/.carry/$1" -C /tmp/base
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/nlc_base \
    /tmp/base
  PYTHONPATH=/tmp/nlc_base:/tmp/site timeout "$2" python3 /tmp/base/benchmarks/lm_throughput.py \
    --steps 3 --batch 16 --rows "$3" --out "$OUT/lm_base.md" | tail -1
}

# titans_pytorch_fast SECONDS: titans-pytorch against our Titans layer
# (benchmarks/titans_pytorch.py --fast: dim 512, 4 heads of 128, chunk 64, B 4 x 2048) into
# $OUT/titans_pytorch_fast.md, titans-pytorch installed first (needs .carry/whl_titans)
titans_pytorch_fast() {
  install_titans_pytorch
  timeout "$1" python3 "$REPO/benchmarks/titans_pytorch.py" --B 4 --T 2048 --dim 512 --heads 4 \
    --dim-heads 128 --repeat 5 --device cuda --fast --out "$OUT/titans_pytorch_fast.md" \
    | head -12
}
