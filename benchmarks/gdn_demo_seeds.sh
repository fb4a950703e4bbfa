#!/bin/bash
# The demo's Gated DeltaNet run (README's CPU command) at seeds 0 to 3, for docs/results.md.
# Usage: bash benchmarks/gdn_demo_seeds.sh [NLC]   NLC: the nlc command to run (default nlc;
# for an older tree: `git archive REV | tar -x -C DIR`, `pip install DIR` into a venv of its
# own, then pass that venv's bin/nlc).
NLC=${1:-nlc}
for s in 0 1 2 3; do
  out=$(mktemp -d)
  "$NLC" train examples/gated_deltanet.nl --task mqar --steps 800 --seq-len 64 --batch-size 32 \
    --mqar-vocab-size 128 --mqar-num-kv-pairs 4 --d-model 64 --lr 3e-3 \
    -D heads=2 -D d_k=16 -D d_v=16 --seed $s --out "$out/run" --quiet | tail -1
  rm -rf "$out"
done
