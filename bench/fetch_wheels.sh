#!/usr/bin/env bash
# Download, on a machine with PyPI access, the wheels that bench/gpu_check.sh needs on a GPU machine without internet
# (Python 3.12 there): TRL 1.16.0 and the packages it needs that the GPU image lacks (datasets, dill, multiprocess;
# the image has torch, transformers, accelerate, pandas, pyarrow, xxhash, fsspec, huggingface-hub), and math-verify
# (with latex2sympy2_extended, antlr4) for rlif's MATH answer checking. About 2.5 MB into .whl/
# (git-ignored); carry ".whl" with the call.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
for spec in trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
    math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2; do
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .whl "$spec"
done
ls -la .whl
