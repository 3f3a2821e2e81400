#!/usr/bin/env bash
# Every GPU path of rlif checked against its reference, every benchmark timed, and real training steps on the
# Qwen2.5-1.5B architecture with the largest micro-batch that fits, in one call of at most 10 minutes on a lent GPU
# machine (H100/H200; torch 2.11, transformers 5.17, accelerate 1.15, no internet). Stage limits add up to 590 s.
#
# Before the call, where PyPI is reachable:   bash bench/fetch_wheels.sh        (TRL 1.16.0 + deps into .whl/)
# The call (device tool): command "bash bench/gpu_check.sh", carry [".whl"], timeout_s 600.
# Results: printed, and written under $OUT (or bench/out): tests.txt, signals.txt/json, rollout.txt, step.txt/json,
# train.txt/json.
# Each stage has its own time limit, so one stage that hangs does not cost the others.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # no install: pip would need the network for build tools
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/device.txt"
HAVE_TRL=1
python3 -c "import trl; print('trl', trl.__version__)" 2>&1 | tee -a "$OUT/device.txt" | grep -q '^trl ' || HAVE_TRL=0

stage() {  # name, limit (s), command...
  local name=$1 limit=$2; shift 2
  echo "==== $name (limit ${limit}s) ===="
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  echo "==== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s ===="
}

# 1. Correctness of the GPU paths against the float64 references (and the CPU suite of the signals).
stage tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_signals.py tests/test_sampling.py
# 2. Signals at the issue's shape: 16,384 tokens, Qwen2.5-1.5B head (d 1536, V 151,936), bf16.
stage signals 100 python3 bench/signals.py --preset issue --rounds 1 --repeats 5 --json "$OUT/signals.json"
# 3. Rollouts: random-init Qwen2.5-0.5B, 16 prompts x G=8 x 256 tokens; HF generate dynamic and static cache, rlif.
stage rollout 100 python3 bench/rollout.py --gpu-shape --rounds 2 --static
# 4. One training step vs TRL's GRPOTrainer at the same shape (TRL runs need the carried wheels).
if [ "$HAVE_TRL" = 1 ]; then RUNS=trl,trl+sc,rlif-length,rlif; else RUNS=rlif-length,rlif; echo "trl not importable: TRL runs skipped"; fi
stage step 150 python3 bench/step.py --gpu-shape --rounds 1 --steps 3 --runs "$RUNS" --json "$OUT/step.json"
# 5. Real INTUITOR steps (train() itself) on Qwen2.5-1.5B, bf16 autocast, 1,024-token responses; largest micro-batch.
stage train 150 python3 bench/gpu_check.py --time-budget 110 --output "$OUT/train.json"
