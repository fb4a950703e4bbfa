#!/bin/bash
# Titans stays at chance on MQAR (256, 16) in gpu_session6.sh, as Gated DeltaNet does with
# the same bias-free output gate, which a gate bias fixed. At once on one card, the MQAR
# setting of gpu_session6.sh: Titans (a) with a gate bias (ones), (b) with a gate bias and
# theta up to 0.1, (c) without the output gate; the byte-level LM of the gate-bias Gated
# DeltaNet (benchmarks/specs/gated_deltanet_gate_bias.nl).
set -u
source benchmarks/gpu_common.sh
T="$REPO/examples/titans.nl"
sed -e 's/  param W_g : \[d_model, d_head\]/  param W_g : [d_model, d_head]\n  param b_g : [d_head] = ones/' \
  -e 's/silu(x @ W_g)/silu(x @ W_g + b_g)/' "$T" > /tmp/titans_gate_bias.nl
sed 's/theta = 0.01 \* sigmoid/theta = 0.1 * sigmoid/' /tmp/titans_gate_bias.nl > /tmp/titans_gate_bias_theta.nl
sed 's/output (rmsnorm(memory) \* silu(x @ W_g)) @ W_o/output rmsnorm(memory) @ W_o/' "$T" \
  > /tmp/titans_no_gate.nl
grep -c "b_g" /tmp/titans_gate_bias.nl /tmp/titans_gate_bias_theta.nl
grep -c "0.1 \* sigmoid" /tmp/titans_gate_bias_theta.nl; grep -c "W_g" /tmp/titans_no_gate.nl
for m in titans_gate_bias titans_gate_bias_theta titans_no_gate; do
  launch "mqar_$m" "/tmp/$m.nl" "$MQAR"
done
launch lm_gdn_gate_bias "$REPO/benchmarks/specs/gated_deltanet_gate_bias.nl" "$LM"
report mqar_titans_gate_bias mqar_titans_gate_bias_theta mqar_titans_no_gate lm_gdn_gate_bias
