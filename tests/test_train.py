"""End-to-end training on a tiny model: learning signal, resume equality, kills, NaN, bad input."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import rlif.rl.checkpoint
from rlif.cli import main
from rlif.config import load_config
from rlif.data.jsonl import read_log as read_jsonl
from rlif.errors import TrainingDiverged
from rlif.rl.checkpoint import latest_checkpoint
from rlif.rl.step import train_step, update
from rlif.rl.train import set_up, step_prompts, train

HELPERS = '''
import os, time
import torch
from rlif.rl.rewards import self_certainty_reward

def slow_self_certainty(rollout):
    time.sleep(float(os.environ.get("RLIF_TEST_SLEEP", "0")))
    return self_certainty_reward(rollout)

CALLS = {"n": 0}

def nan_at_third_call(rollout):
    CALLS["n"] += 1
    values = self_certainty_reward(rollout)
    return values * float("nan") if CALLS["n"] == 3 else values
'''


@pytest.fixture
def helpers(tmp_path, monkeypatch):
    (tmp_path / "train_helpers.py").write_text(HELPERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("train_helpers", None)
    return tmp_path


def tiny_config(tmp_path, model_dir, data_path, name="run", **sections):
    raw = {
        "model": {"path": str(model_dir)},
        "data": {"path": str(data_path), "system_prompt": None},
        "rollout": {"group_size": 4, "max_new_tokens": 12, "temperature": 1.0, "generation_batch_size": 16},
        "train": {"prompts_per_step": 4, "steps": 6, "lr": 3e-3, "micro_batch_size": 6, "score_batch_size": 5},
        "run": {"output_dir": str(tmp_path / name), "save_every": 2, "progress": False, "sample_every": 3},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def comparable(records):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def test_intuitor_run_end_to_end(tmp_path, tiny_model_dir, addition_data):
    config_path = tiny_config(tmp_path, tiny_model_dir, addition_data, train={"steps": 8})
    assert main(["train", str(config_path)]) == 0
    run = tmp_path / "run"
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 9))
    for key in ("reward/mean", "reward/std", "signals/self_certainty", "signals/entropy", "signals/kl_ref", "loss/kl",
                "optim/grad_norm", "rollout/len_mean", "rollout/len_max", "rollout/truncated",
                "rollout/accuracy", "time/step_s", "time/tokens_per_s"):
        assert all(key in m for m in metrics), key
    # One update per rollout: the PPO ratio is exactly 1, so the clip never binds.
    assert all(m["loss/clip_frac"] == 0.0 for m in metrics)
    assert all(m["reward/mean"] == m["signals/self_certainty"] for m in metrics)  # INTUITOR's reward is the logged SC
    # INTUITOR's reward is the policy's own self-certainty: it must go up.
    sc = [m["signals/self_certainty"] for m in metrics]
    assert sum(sc[-2:]) / 2 > 1.5 * sum(sc[:2]) / 2, sc
    assert metrics[0]["signals/kl_ref"] == pytest.approx(0.0, abs=1e-6) and metrics[-1]["signals/kl_ref"] > 1e-3
    # Weights changed, and the checkpoint is a normal Hugging Face folder.
    step, checkpoint = latest_checkpoint(run)
    assert step == 8
    before, after = load_file(Path(tiny_model_dir) / "model.safetensors"), load_file(checkpoint / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000006", "step_000008"]  # keep 2
    samples = read_jsonl(run / "samples.jsonl")
    assert {s["step"] for s in samples} == {1, 3, 6} and all("completion" in s and "label" in s for s in samples)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 8
    assert (run / "plots" / "training.png").stat().st_size > 1000


def test_resume_after_kill_repeats_the_uninterrupted_run(tmp_path, tiny_model_dir, addition_data, helpers):
    reward = {"name": "train_helpers:slow_self_certainty"}
    straight = tiny_config(tmp_path, tiny_model_dir, addition_data, name="straight", reward=reward)
    train(load_config(straight))
    expected = comparable(read_jsonl(tmp_path / "straight" / "metrics.jsonl"))

    killed = tiny_config(tmp_path, tiny_model_dir, addition_data, name="killed", reward=reward)
    env = {**os.environ, "RLIF_TEST_SLEEP": "0.4", "PYTHONPATH": os.pathsep.join([str(helpers), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "rlif.cli", "train", str(killed)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics_file = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if metrics_file.exists() and len(read_jsonl(metrics_file)) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # after step 3 was logged: step 2 is the last checkpoint
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    assert latest_checkpoint(tmp_path / "killed")[0] == 2
    assert len(read_jsonl(metrics_file)) >= 3  # steps after the checkpoint were logged, then lost

    assert main(["train", str(killed), "run.resume=true"]) == 0
    assert comparable(read_jsonl(metrics_file)) == expected


def test_a_run_resumes_with_other_batching_and_memory_settings(tmp_path, tiny_model_dir, addition_data, capsys):
    """A run that ran out of memory resumes with smaller micro-batches (here a token budget instead of 6 rows) and other
    memory settings; the loss is a token mean over the step, so it continues as the straight run to float rounding."""
    straight = tiny_config(tmp_path, tiny_model_dir, addition_data, name="straight", train={"steps": 4})
    train(load_config(straight))
    expected = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    config_path = tiny_config(tmp_path, tiny_model_dir, addition_data, name="other", train={"steps": 4})
    train(load_config(config_path))
    shutil.rmtree(tmp_path / "other" / "checkpoints" / "step_000004")  # as if it had stopped after step 3
    changed = ["train.micro_batch_tokens=530", "train.score_batch_size=3", "train.score_batch_tokens=600", "train.chunk_tokens=7",
               "rollout.generation_batch_size=8"]
    assert main(["train", str(config_path), "run.resume=true", *changed]) == 0
    assert "with changed settings: rollout.generation_batch_size (saved 16, now 8); train.chunk_tokens (saved 2048, now 7)" in capsys.readouterr().out
    # the run folder says what ran after checkpoint 2: config.yaml has the new settings, resumes.log the change
    saved = yaml.safe_load((tmp_path / "other" / "config.yaml").read_text())
    assert (saved["train"]["micro_batch_tokens"], saved["rollout"]["generation_batch_size"]) == (530, 8)
    log = (tmp_path / "other" / "resumes.log").read_text().splitlines()
    assert len(log) == 1 and log[0].startswith("resumed after step 2 with: rollout.generation_batch_size (saved 16, now 8)")
    resumed = read_jsonl(tmp_path / "other" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for got, want in zip(resumed[2:], expected[2:]):
        for key, value in want.items():
            if not key.startswith("time/"):
                assert got[key] == pytest.approx(value, rel=1e-3, abs=1e-6), key


WATCH_AUTOCAST = """
import json, sys
import torch
from rlif.config import load_config
from rlif.rl.step import train_step
from rlif.rl.train import set_up, step_prompts

seen = set()  # (grad enabled: the update's forward, not sampling; autocast on; its cache on)
_, run = set_up(load_config(sys.argv[1], ["model.mixed_precision=bf16"]))
run.state.accelerator.unwrap_model(run.state.signal_model).model.model.layers[0].register_forward_pre_hook(
    lambda *_: seen.add((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), torch.is_autocast_cache_enabled())))
train_step(run.state, 1, step_prompts(run.state, run.prompts, 1))
print(json.dumps(sorted(seen)))
"""


def test_autocast_caches_weight_casts_for_sampling_not_for_the_update(tmp_path, tiny_model_dir, addition_data):
    """Under bf16 autocast the update's forward (each weight used once) keeps no cache of bf16 weight copies, which
    would otherwise live until the forward ends; sampling, many forwards of the same weights, keeps it. (A process
    of its own: accelerate fixes the mixed precision of the first Accelerator a process makes.)"""
    import json

    config_path = tiny_config(tmp_path, tiny_model_dir, addition_data, train={"steps": 1})
    out = subprocess.run([sys.executable, "-c", WATCH_AUTOCAST, str(config_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = {tuple(x) for x in json.loads(out.stdout.strip().splitlines()[-1])}
    assert seen == {(True, True, False), (False, True, True)}


def test_kill_during_checkpoint_save_keeps_the_previous_one(tmp_path, tiny_model_dir, addition_data, monkeypatch):
    config_path = tiny_config(tmp_path, tiny_model_dir, addition_data)
    train(load_config(config_path))
    expected = comparable(read_jsonl(tmp_path / "run" / "metrics.jsonl"))

    real_save = rlif.rl.checkpoint.write_trainer_state

    def save_then_die(folder, state):
        real_save(folder, state)
        if "step_000004" in str(folder):
            raise KeyboardInterrupt("killed while saving step 4")

    config_path = tiny_config(tmp_path, tiny_model_dir, addition_data, name="crashed")
    monkeypatch.setattr(rlif.rl.checkpoint, "write_trainer_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(config_path))
    monkeypatch.setattr(rlif.rl.checkpoint, "write_trainer_state", real_save)
    run = tmp_path / "crashed"
    assert latest_checkpoint(run)[0] == 2  # the half-written step 4 is not a checkpoint
    assert (run / "checkpoints" / ".incomplete-step_000004").exists()
    train(load_config(config_path, ["run.resume=true"]))
    assert comparable(read_jsonl(run / "metrics.jsonl")) == expected
    assert not (run / "checkpoints" / ".incomplete-step_000004").exists()


def test_nan_reward_stops_with_a_clear_message(tmp_path, tiny_model_dir, addition_data, helpers):
    config_path = tiny_config(tmp_path, tiny_model_dir, addition_data, reward={"name": "train_helpers:nan_at_third_call"})
    with pytest.raises(TrainingDiverged) as error:
        train(load_config(config_path))
    message = str(error.value)
    assert "step 3: reward 'train_helpers:nan_at_third_call' returned non-finite values" in message
    assert "step_000002" in message
    run = tmp_path / "run"
    assert latest_checkpoint(run)[0] == 2 and len(read_jsonl(run / "metrics.jsonl")) == 2


def test_nan_loss_stops_before_the_update_with_a_clear_message(tmp_path, tiny_model_dir, addition_data):
    _, run = set_up(load_config(tiny_config(tmp_path, tiny_model_dir, addition_data)))
    state = run.state
    result = train_step(state, 1, step_prompts(state, run.prompts, 1))
    before = {name: p.detach().clone() for name, p in state.signal_model.named_parameters()}
    advantages = torch.full((result.rollout.response_ids.shape[0],), float("nan"))  # finite rewards, a loss that is not
    with pytest.raises(TrainingDiverged) as error:
        update(state, 2, result.rollout, advantages)
    assert "step 2: the loss is nan; training stopped before applying this update" in str(error.value)
    assert "no checkpoint was written yet" in str(error.value)
    assert all(torch.equal(before[name], p) for name, p in state.signal_model.named_parameters())  # no update applied


def test_bad_config_and_bad_data_fail_before_any_work(tmp_path, tiny_model_dir, addition_data, capsys):
    config_path = tiny_config(tmp_path, tiny_model_dir, addition_data)
    assert main(["train", str(config_path), "train.clip_eps=2"]) == 2
    assert "config field train.clip_eps = 2.0: expected a number in (0, 1)" in capsys.readouterr().err

    bad_data = tmp_path / "bad.jsonl"
    bad_data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"\n')
    assert main(["train", str(config_path), f"data.path={bad_data}"]) == 2
    assert f"{bad_data}:2: invalid JSON" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing was started

    assert main(["train", str(config_path), "model.path=/nonexistent/model"]) == 2
    assert "model folder /nonexistent/model does not exist" in capsys.readouterr().err

    assert main(["train", str(config_path), "reward.name=correctness", "data.label_field=null"]) == 2
    assert "needs labels, but data.label_field is null" in capsys.readouterr().err


def test_refuses_to_clobber_or_resume_a_different_run(tmp_path, tiny_model_dir, addition_data, capsys):
    config_path = tiny_config(tmp_path, tiny_model_dir, addition_data, train={"steps": 2})
    assert main(["train", str(config_path)]) == 0
    assert main(["train", str(config_path)]) == 2
    assert "the folder is not empty; pass run.resume=true" in capsys.readouterr().err
    assert main(["train", str(config_path), "run.resume=true", "train.lr=1e-4"]) == 2
    assert "train.lr (saved 0.003, now 0.0001)" in capsys.readouterr().err
    assert main(["train", str(config_path), "run.resume=true"]) == 0  # complete already: nothing to do
    assert main(["train", str(config_path), "run.overwrite=true", "train.steps=1"]) == 0
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 1


def test_evaluation_during_training(tmp_path, tiny_model_dir, addition_data):
    config_path = tiny_config(tmp_path, tiny_model_dir, addition_data, train={"steps": 4},
                              eval={"path": str(addition_data), "limit": 6, "num_samples": 2, "every": 2, "max_new_tokens": 8})
    train(load_config(config_path))
    run = tmp_path / "run"
    metrics = read_jsonl(run / "metrics.jsonl")
    evaluated = [m["step"] for m in metrics if "eval/greedy/accuracy" in m]
    assert evaluated == [0, 2, 4]
    assert metrics[0]["step"] == 0 and "reward/mean" not in metrics[0]
    records = read_jsonl(run / "eval" / "step_000004.jsonl")
    assert len(records) == 6 * 3 and sorted({r["sample"] for r in records}) == [-1, 0, 1]
    from rlif.data.answers import MATH

    for r in records:
        assert r["correct"] == MATH.is_correct(r["response"], r["label"]) and r["num_tokens"] <= 8
    greedy = [r for r in records if r["sample"] == -1]
    assert metrics[-1]["eval/greedy/accuracy"] == pytest.approx(sum(r["correct"] for r in greedy) / 6)
    assert metrics[-1]["eval/greedy/self_certainty"] == pytest.approx(sum(r["self_certainty"] for r in greedy) / 6, rel=1e-5)


def test_resume_before_the_first_checkpoint_starts_clean(tmp_path, tiny_model_dir, addition_data):
    config_path = tiny_config(tmp_path, tiny_model_dir, addition_data, train={"steps": 3}, run={"save_every": 10},
                              eval={"path": str(addition_data), "limit": 2, "max_new_tokens": 4})
    train(load_config(config_path))
    expected = comparable(read_jsonl(tmp_path / "run" / "metrics.jsonl"))
    import shutil

    shutil.rmtree(tmp_path / "run" / "checkpoints")  # as if killed after logging, before the first save
    train(load_config(config_path, ["run.resume=true"]))
    assert comparable(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == expected  # no duplicated lines


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_compiled_layers_train_the_same_run(tmp_path, tiny_model_dir, addition_data, lora_rank):
    """model.compile_layers runs the update's layers through torch.compile (activation checkpointing recomputing
    through them): the same run as eager to float rounding; sampling and evaluation stay eager."""
    if not (shutil.which("g++") or shutil.which("clang++")):
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    from rlif.models.load import decoder_layers

    runs = {}
    for compiled in (False, True):
        name = f"layers-{compiled}"
        config_path = tiny_config(tmp_path, tiny_model_dir, addition_data, name=name, train={"steps": 3},
                                  model={"gradient_checkpointing": True, "compile_layers": compiled},
                                  lora={"rank": lora_rank, "alpha": 8.0})
        _, run = set_up(load_config(config_path))
        runs[compiled] = [comparable([train_step(run.state, step, step_prompts(run.state, run.prompts, step)).metrics])[0]
                          for step in range(1, 4)]
    policies = [run.state.accelerator.unwrap_model(run.state.signal_model).model]
    assert len(runs[True]) == 3
    for record, expected in zip(runs[True], runs[False]):
        assert {k: v for k, v in record.items() if k != "loss/policy"} == pytest.approx(
            {k: v for k, v in expected.items() if k != "loss/policy"}, rel=1e-4, abs=1e-5)
        assert record["loss/policy"] == pytest.approx(expected["loss/policy"], rel=1e-3, abs=1e-5)
    layers = decoder_layers(policies[-1])
    assert layers and all("_rlif_compiled_call" in layer.__dict__ for layer in layers)  # compiled for the update
    assert all(layer._compiled_call_impl is None for layer in layers)  # and eager again outside it


@pytest.mark.parametrize("other", ["static", "compiled"])
def test_static_and_compiled_decode_train_the_same_run(tmp_path, tiny_model_dir, addition_data, other):
    """rollout.decode changes how rollouts and evaluation answers are decoded, not what is drawn; a compiled decode
    step reads the weights as each update leaves them."""
    if other == "compiled" and not (shutil.which("g++") or shutil.which("clang++")):
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    runs = {}
    for decode in ("dynamic", other):
        config_path = tiny_config(tmp_path, tiny_model_dir, addition_data, name=decode, train={"steps": 3},
                                  rollout={"decode": decode}, eval={"path": str(addition_data), "limit": 4, "num_samples": 2, "every": 3})
        train(load_config(config_path))
        runs[decode] = comparable(read_jsonl(tmp_path / decode / "metrics.jsonl"))
    assert [sorted(m) for m in runs[other]] == [sorted(m) for m in runs["dynamic"]]
    for record, expected in zip(runs[other], runs["dynamic"]):
        # kl_ref: a difference of log-probs. loss/policy: a mean of advantages, rewards over their group's std; the
        # tiny model's self-certainties differ by ~1e-4 within a group, which scales the kernels' rounding up 100x.
        # kl_ref of greedy answers is a mean of per-answer log-prob differences near 0 (-0.026 here): 1.2e-5 apart
        # between the decode loops, so it gets the absolute tolerance of loss/policy
        loose = {"loss/policy", "eval/greedy/kl_ref", "eval/sampled/kl_ref"}
        assert {k: v for k, v in record.items() if k not in loose} == pytest.approx(
            {k: v for k, v in expected.items() if k not in loose}, rel=1e-4, abs=1e-5)
        for key in loose - {"loss/policy"}:
            if key in expected:
                assert record[key] == pytest.approx(expected[key], rel=1e-3, abs=5e-5), key
        if "loss/policy" in expected:  # not in the step-0 evaluation's record
            assert record["loss/policy"] == pytest.approx(expected["loss/policy"], rel=1e-3, abs=1e-5)
    certainty = [m["signals/self_certainty"] for m in runs["dynamic"] if "signals/self_certainty" in m]
    assert len(certainty) == 3 and certainty[0] != certainty[-1]  # the weights moved between rollouts
    answers = {decode: [r["response"] for r in read_jsonl(tmp_path / decode / "eval" / "step_000003.jsonl")] for decode in runs}
    assert answers[other] == answers["dynamic"]


def test_second_ppo_epoch_clips_and_its_loss_is_the_float64_loss(tmp_path, tiny_model_dir, addition_data):
    """With two passes over a rollout, the second pass's ratio pi / pi_old moves off 1 and the clip binds; its loss is
    what a float64 computation from the same policy, pi_old (the trainer's scoring pass) and advantages gives."""
    from rlif.rl.loss import group_advantages, k3_kl
    from rlif.rl.step import mini_batches, optimizer_update, policy_signals, sample_rollout
    from rlif.signals.model import SignalModel

    config = load_config(tiny_config(tmp_path, tiny_model_dir, addition_data, train={"ppo_epochs": 2, "lr": 3e-2}))
    _, run = set_up(config)
    state = run.state
    assert state.scores_rollout and state.updates_per_rollout == 2
    rollout = sample_rollout(state, 1, step_prompts(state, run.prompts, 1))
    rollout.engine_logprobs, rollout.signals = rollout.signals.logprobs, policy_signals(state, rollout)
    rollout.ref_signals = policy_signals(state, rollout)  # the policy before any update is the reference
    advantages = group_advantages(torch.arange(len(rollout.completions), dtype=torch.float32) % 3, 4)
    pi_old = rollout.signals.logprobs
    rows = mini_batches(rollout, 1, 0)[0]
    state.signal_model.train()
    first, _ = optimizer_update(state, 1, rollout, advantages, rows, pi_old, None)
    assert first[2] == 0  # the first update's ratio is 1 to float rounding: nothing clipped
    # float64 loss of the second update, from the policy as it is now
    model64 = SignalModel(state.accelerator.unwrap_model(state.signal_model).model).double()
    with torch.no_grad():
        logp = model64(*rollout.select(slice(None)).values(), temperature=config.rollout.temperature).logprobs
    model64.float()
    mask = rollout.response_mask.double()
    ratio = torch.exp(logp - pi_old.double())
    adv = advantages.double()[:, None]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - config.train.clip_eps, 1 + config.train.clip_eps) * adv)
    kl = k3_kl(logp, rollout.ref_signals.logprobs.double())
    expected_policy = (-surrogate * mask).sum().item()
    expected_clipped = ((((ratio - 1).abs() > config.train.clip_eps) & (surrogate != ratio * adv)).double() * mask).sum().item()
    second, _ = optimizer_update(state, 1, rollout, advantages, rows, pi_old, None)
    assert second[0].item() == pytest.approx(expected_policy, rel=1e-4, abs=1e-5)
    assert second[1].item() == pytest.approx((kl * mask).sum().item(), rel=1e-3, abs=1e-6)
    assert second[2].item() == expected_clipped and expected_clipped > 0  # the clip binds


def test_ppo_epochs_and_mini_batches_train_and_resume_exactly(tmp_path, tiny_model_dir, addition_data):
    """train.ppo_epochs=2 with train.mini_batches=2 (4 updates per rollout, a keyed shuffle): clipped tokens are
    logged, pi_old's scoring pass agrees with the sampler, and a resumed run repeats the uninterrupted one."""
    settings = {"ppo_epochs": 2, "mini_batches": 2, "steps": 4, "lr": 3e-2}
    train(load_config(tiny_config(tmp_path, tiny_model_dir, addition_data, name="straight", train=settings)))
    straight = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    assert any(m["loss/clip_frac"] > 0 for m in straight)
    assert all(m["rollout/logprob_mismatch_max"] < 1e-4 for m in straight)  # the native sampler's log-probs = the trainer's
    shutil.rmtree(tmp_path / "straight" / "checkpoints" / "step_000004")  # as if killed after step 3
    train(load_config(tmp_path / "straight.yaml", ["run.resume=true"]))  # from step 2's checkpoint
    assert comparable(read_jsonl(tmp_path / "straight" / "metrics.jsonl")) == comparable(straight)
