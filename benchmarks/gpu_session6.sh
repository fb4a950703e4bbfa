#!/bin/bash
# Titans in the dual chunk form (runtime/library/dual.py) and the Gated DeltaNet gate (docs/results.md):
# the dual form's correctness and speed against the per-token loop form, then at once on one
# card: MQAR (256, 16) for Titans (examples/titans.nl: theta <= 0.01, eta <= 0.9), Gated
# DeltaNet as specified, and Gated DeltaNet with a bias in its output gate
# (benchmarks/specs/gated_deltanet_gate_bias.nl); the byte-level LM for Titans.
set -u
source benchmarks/gpu_common.sh
(cd /tmp && python "$REPO/benchmarks/titans_dual.py" --B 64 --T 256 --repeat 3 --skip-recurrent)
launch mqar_titans "$REPO/examples/titans.nl" "$MQAR"
launch mqar_gated_deltanet "$REPO/examples/gated_deltanet.nl" "$MQAR"
launch mqar_gdn_gate_bias "$REPO/benchmarks/specs/gated_deltanet_gate_bias.nl" "$MQAR"
launch lm_titans "$REPO/examples/titans.nl" "$LM"
report mqar_titans mqar_gated_deltanet mqar_gdn_gate_bias lm_titans
