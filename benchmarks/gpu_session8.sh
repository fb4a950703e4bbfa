#!/bin/bash
# Titans stays at chance on MQAR (256, 16) with theta <= 0.01 and diverges with theta <= 0.1
# (gpu_session6.sh, gpu_session7.sh). A chunk's gradients are all taken at its start, so the
# stable inner rate shrinks with the chunk. At once on one card, the MQAR setting of
# gpu_session6.sh with gradients at chunks of 16: (a) theta <= 0.01, (b) theta <= 0.05; and
# the byte-level LM of (b).
set -u
source benchmarks/gpu_common.sh
sed 's/gradients at chunk(64)/gradients at chunk(16)/' "$REPO/examples/titans.nl" > /tmp/titans_c16.nl
sed 's/theta = 0.01 \* sigmoid/theta = 0.05 * sigmoid/' /tmp/titans_c16.nl > /tmp/titans_c16_theta.nl
grep -c "chunk(16)" /tmp/titans_c16.nl /tmp/titans_c16_theta.nl; grep -c "0.05 \* sigmoid" /tmp/titans_c16_theta.nl
launch mqar_titans_c16 /tmp/titans_c16.nl "$MQAR"
launch mqar_titans_c16_theta /tmp/titans_c16_theta.nl "$MQAR"
launch lm_titans_c16_theta /tmp/titans_c16_theta.nl "$LM"
report mqar_titans_c16 mqar_titans_c16_theta lm_titans_c16_theta
