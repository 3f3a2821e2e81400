#!/usr/bin/env bash
# Every GPU path of rlif checked against its reference, every benchmark timed, and real training steps on the
# Qwen2.5-1.5B architecture with the largest micro-batch that fits, on a lent GPU machine (H100/H200; torch 2.11,
# transformers 5.17, accelerate 1.15, no internet).
#
# Before the call, where PyPI is reachable:   bash bench/fetch_wheels.sh        (TRL 1.16.0, math-verify + deps into .whl/)
# The stages take more than one 10-minute device call together, and a lease is 15 minutes including the machine's
# start (about 1.5 minutes), so run them as calls on the warm machine, issued at once one after the other (the machine
# goes back after 30 s idle), in this order of importance (device tool, carry [".whl"]):
#     TESTS="tests/test_gpu.py tests/test_triton_signals.py" bash bench/gpu_check.sh tests signals   # about 100 + 120 s
#     bash bench/gpu_check.sh step              # timeout_s 560; about 5 x ~70 s
#     bash bench/gpu_check.sh profile           # with what is left (about 200 s)
#     bash bench/gpu_check.sh rollout           # next (about 150-200 s)
#     bash bench/gpu_check.sh train             # at most 200 s: 1.5B steps and the micro-batch probe
# No argument runs every stage. Results: printed, and written under $OUT (or bench/out): device.txt, tests.txt,
# signals.txt/json, rollout.txt, step.txt/json, profile.txt, train.txt/json. Each stage has its own time limit, so one
# stage that hangs does not cost the others; a stage killed at its limit loses its table (2026-11-26: signals with 13
# variants ran past 150 s on an H100), so keep the lists short. Stages run in this file's order.
set -uo pipefail
STAGES=" ${*:-tests signals step profile rollout train} "
want() { [[ "$STAGES" == *" $1 "* ]]; }
for name in $STAGES; do
  case $name in tests|signals|train|rollout|step|profile) ;; *) echo "unknown stage '$name': expected tests, signals, train, rollout, step, profile" >&2; exit 2;; esac
done

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

# tests: the GPU paths (Triton kernels compiled, not interpreted, the compiled decode) against the references.
#   41 s on an H200 before the compiled-decode test was added.
#   TESTS=... narrows the files (tests/test_gpu.py tests/test_triton_signals.py: the CUDA-only tests and the kernels).
TESTS=${TESTS:-tests/test_gpu.py tests/test_triton_signals.py tests/test_signals.py tests/test_sampling.py}
want tests && stage tests 180 python3 -m pytest -p no:cacheprovider $TESTS
# signals: the issue's shape, 16,384 tokens, Qwen2.5-1.5B head (d 1536, V 151,936), bf16; Triton (fused) with 2,048-row
#   chunks (train.chunk_tokens' default) at the default forward launch (FORWARD_LAUNCH) and three others; the backward
#   with the head trained (+bwd) and frozen (+hbwd: LoRA, rlif's forward prepares the hidden-state gradient).
#   8 variants took 118 s on an H100.
want signals && stage signals 200 python3 bench/signals.py --preset issue --rounds 1 --repeats 3 --json "$OUT/signals.json" \
  --variants matmul,naive,fused@2048,fused@2048#2048x4,fused@2048#2048x8,fused@2048#4096x8,naive+bwd,fused+bwd@2048,fused+hbwd
# train: the largest update micro-batch, then real INTUITOR steps (train() itself) on Qwen2.5-1.5B, bf16 autocast,
#   1,024-token responses. About 190 s (the first step warms up: 83 s, the second 41 s).
want train && stage train 200 python3 bench/gpu_check.py --prompts 8 --steps 2 --time-budget 90 --output "$OUT/train.json"
# rollout: random-init Qwen2.5-0.5B, 16 prompts x G=8 x 256 tokens; HF generate dynamic and static cache, rlif's
#   dynamic, static and compiled decode (both static-cache variants compile in their warm-up); then one compiled
#   rollout under torch.profiler: ms per decode step, GPU busy share, top kernels (where the step's generate phase of
#   2.4-3.1 s goes: the weights and KV cache read per step need about 1.5 ms of it).
want rollout && stage rollout 240 python3 bench/rollout.py --gpu-shape --rounds 1 --static --profile rlif-compiled
# step: one training step vs TRL's GRPOTrainer at the same shape (TRL runs need the carried wheels). About 60-85 s a run,
#   in this order (a stage cut short keeps the finished runs' lines, not the table). rlif runs with the compiled decode
#   (rollout.decode: compiled; step 1, not timed, compiles) and the reference in pinned CPU memory between its passes
#   (model.reference_device: offload), micro-batches of 16 or 32 rows (update and reference pass), and once the
#   update's layers compiled (model.compile_layers). A rough sum, not measured (weights, gradients and AdamW state
#   7.36 GiB, the static KV cache 0.75, checkpointed hidden states, one layer's recompute): 9-10 GiB at 32 rows,
#   about 9 at 16, against TRL's 10.46. The H100 run of 2026-11-26 had rlif@compiled
#   (micro-batch 8, reference on the GPU, foreach AdamW): 1.66x TRL at 1.21x its memory.
#   32 rows come first: the host issues 6,636 operators per micro-batch at 0.5B (forward, recompute, backward; on CPU
#   without autocast: bench/profile_update.py's base variant with --model qwen2.5-0.5b --rows 16 --prompt 20
#   --tokens 16), so the update's 16 micro-batches of 8 rows (5.6 s on the H100) are likely bound by
#   the host issuing them, not by the GPU, and fewer, larger ones should gain most.
#   TRL at rlif's micro-batch (trl+mb32) and TRL's self-certainty-by-extra-forward run (trl+sc, first lease): RUNS=...
RLIF_RUNS=rlif@compiled+mb32+offload,rlif@compiled+mb16+offload,rlif-length@compiled+mb16+offload,rlif@compiled+layers+mb16+offload
if [ "$HAVE_TRL" = 1 ]; then DEFAULT_RUNS=trl,$RLIF_RUNS; else DEFAULT_RUNS=$RLIF_RUNS; echo "trl not importable: TRL runs skipped"; fi
RUNS=${RUNS:-$DEFAULT_RUNS}
want step && stage step 480 python3 bench/step.py --gpu-shape --rounds 1 --steps 2 --runs "$RUNS" --json "$OUT/step.json"
# profile: where the update's time goes (5.6 of 9.8 s per step on an H100): micro-batch sizes, checkpointing, bf16
#   weights, compiled layers, autocast's cache of weight casts on (cached-casts), foreach vs fused AdamW, GPU busy share
#   and top kernels of one update under torch.profiler. About 230 s (not yet run; the compiled variant compiles in its
#   warm-up).
want profile && stage profile 270 python3 bench/profile_update.py --gpu-shape --repeats 2
exit 0
