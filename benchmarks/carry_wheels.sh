#!/bin/bash
# Fetch the wheels the GPU session scripts install on the device machine (it reaches no package
# index): .carry/whl for nlc's own imports there (benchmarks/gpu_common.sh `install_nlc`) and
# .carry/whl_titans for titans-pytorch and its dependencies (benchmarks/titans_pytorch.py's
# docstring lists them). .carry/ is gitignored, so a fresh checkout has none: run this once
# before the first device call, then pass carry=[".carry"] to every call.
#   bash benchmarks/carry_wheels.sh        (Python 3.12 x86_64 wheels, the device image's)
set -euo pipefail
cd "$(dirname "$0")/.."
get() {  # get FOLDER NAME==VERSION...: binary wheels for CPython 3.12 on manylinux x86_64
  local dir=$1
  shift
  mkdir -p "$dir"
  for req in "$@"; do
    pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any -d "$dir" "$req" 2>&1 \
      | grep -v '^WARNING: Location' || true
  done
}
get .carry/whl lark==1.3.1 einops==0.8.2 fla-core==0.6.0 flash-linear-attention==0.6.0 \
  ruff==0.17.6 safetensors
get .carry/whl_titans titans-pytorch==0.5.5 accelerated-scan==0.3.1 assoc-scan==0.0.6 \
  axial-positional-embedding==0.3.12 cloudpickle==3.1.3 einops==0.8.2 einx==0.4.3 \
  frozendict==2.5.1 hyper-connections==0.4.11 loguru==0.7.3 ninja==1.13.2 numpy==2.4.6 \
  packaging==26.4 pyvers==0.2.3 rotary-embedding-torch==0.9.1 tensordict==0.15.3 \
  torch-einops-utils==0.2.0 tqdm==4.70.1 x-transformers==2.31.10
ls .carry/whl .carry/whl_titans
du -sh .carry
