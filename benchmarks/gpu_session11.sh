#!/bin/bash
# The dual chunk form after its coefficient scan is recomputed in the backward pass instead
# of kept (runtime/library/dual.py): Titans' level op at the MQAR shape again, and at T = 2048, with
# peak GPU memory, against the per-token loop form.
set -u
python benchmarks/titans_dual.py --B 64 --T 256 --repeat 3 --skip-recurrent
python benchmarks/titans_dual.py --B 8 --T 2048 --repeat 3 --skip-recurrent
