"""Several processes train exactly like one: DDP and FSDP2 with 2 CPU processes (gloo) against a single process.

Same config, same global batch, same seed. Sampling is keyed by each prompt's place in the global batch, so
both runs draw the same responses; the loss is the step's global token mean, so the gradient (and its norm) is
the same; metrics are gathered over processes; checkpoints hold full weights and a name-keyed optimizer state,
so a run saved by 2 processes resumes on 1. Differences come only from float summation order: rewards differ
in the 7th digit, and group normalization divides them by a reward std of ~1e-3, hence the 1e-3 tolerance.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ALPHABET, free_port, write_addition_data

from rlif.config import load_config
from rlif.data.jsonl import read_log as read_jsonl
from rlif.rl.checkpoint import latest_checkpoint, read_trainer_state
from rlif.rl.train import train
from rlif.testbed.tiny import char_tokenizer, tiny_causal_lm

STEPS = 3
TESTS = Path(__file__).parent
REPO = TESTS.parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Llama with an untied, sharpened head (a wider spread of self-certainty than the random init gives)."""
    root = tmp_path_factory.mktemp("parallel")
    tokenizer = char_tokenizer(ALPHABET)
    model = tiny_causal_lm(len(tokenizer), hidden_size=32, tie_embeddings=False, seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    data = write_addition_data(root / "data.jsonl", n=32)
    raw = {
        "model": {"path": str(root / "model")},
        "data": {"path": str(data), "system_prompt": None, "max_prompt_tokens": 12},  # prompts: 8-9 tokens
        "rollout": {"group_size": 4, "max_new_tokens": 10, "temperature": 1.0, "generation_batch_size": 16},
        # micro-batches of 3 rows split one process's 16 rows and two processes' 8 rows differently
        "train": {"prompts_per_step": 4, "steps": STEPS, "lr": 3e-3, "micro_batch_size": 3, "score_batch_size": 5},
        "eval": {"path": str(data), "limit": 4, "max_new_tokens": 6},
        "run": {"save_every": 1, "keep_checkpoints": STEPS, "sample_every": 1, "num_samples": 4, "progress": False},
    }
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    # the one-process run keeps its reference in CPU memory between uses (on CPU a no-op move, but the same code path)
    single = train(load_config(config_path, [f"run.output_dir={root / 'single'}", "model.reference_device=offload"]))
    return root, config_path, single


def launch(config_path: Path, run_dir: Path, *accelerate_args: str, script: list[str], overrides: tuple[str, ...] = (),
           succeeds: bool = True) -> subprocess.CompletedProcess:
    port = free_port()  # the rendezvous
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), *accelerate_args,
               *script, "train", str(config_path), f"run.output_dir={run_dir}", *overrides]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert (result.returncode == 0) == succeeds, result.stderr[-30000:]
    return result


def assert_same_metrics(expected: list[dict], actual: list[dict]) -> None:
    assert [m["step"] for m in actual] == [m["step"] for m in expected]
    for want, got in zip(expected, actual):
        assert set(got) == set(want)
        for key in want:
            if not key.startswith("time/"):
                assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-6), (want["step"], key)


def assert_same_weights(single: Path, other: Path, step: int) -> None:
    """The two runs' weights after `step` differ by < 0.5% of how far training moved them."""
    from transformers import AutoModelForCausalLM

    def weights(run):
        return AutoModelForCausalLM.from_pretrained(run / "checkpoints" / f"step_{step:06d}").state_dict()

    initial = AutoModelForCausalLM.from_pretrained(single.parent / "model").state_dict()
    want, got = weights(single), weights(other)
    difference = sum(((got[k] - want[k]) ** 2).sum() for k in want).sqrt()
    moved = sum(((want[k] - initial[k]) ** 2).sum() for k in want).sqrt()
    assert moved > 0.1 and difference < 5e-3 * moved, (float(difference), float(moved))


def assert_same_samples(single: Path, other: Path) -> None:
    want, got = read_jsonl(single / "samples.jsonl"), read_jsonl(other / "samples.jsonl")
    assert len(got) == len(want) == STEPS * 4  # process 0 alone holds 2 groups: the records are gathered
    for a, b in zip(want, got):
        assert (a["step"], a["prompt"], a["completion"]) == (b["step"], b["prompt"], b["completion"])
        assert b["reward"] == pytest.approx(a["reward"], rel=1e-4)


def resume_on_one_process(config_path: Path, run_dir: Path) -> list[dict]:
    """Forget the last checkpoint of a 2-process run and finish it on 1 process; the metrics the resumed step logs."""
    shutil.rmtree(run_dir / "checkpoints" / f"step_{STEPS:06d}")
    train(load_config(config_path, [f"run.output_dir={run_dir}", "run.resume=true"]))
    assert latest_checkpoint(run_dir)[0] == STEPS
    return read_jsonl(run_dir / "metrics.jsonl")


def test_ddp_two_processes_match_one_process(setup):
    root, config_path, single = setup
    run_dir = root / "ddp"
    launch(config_path, run_dir, "--multi_gpu", script=["-m", "rlif.cli"])
    expected = read_jsonl(single / "metrics.jsonl")
    ddp = read_jsonl(run_dir / "metrics.jsonl")
    assert_same_metrics(expected, ddp)  # includes optim/grad_norm: with the gradient averaged over 2 processes it was halved
    assert "eval/greedy/accuracy" in ddp[0] and "eval/greedy/accuracy" in ddp[-1]
    assert_same_samples(single, run_dir)
    assert_same_weights(single, run_dir, STEPS)
    assert_same_metrics(expected, resume_on_one_process(config_path, run_dir))
    assert_same_weights(single, run_dir, STEPS)


def test_fsdp2_two_processes_match_one_process(setup):
    root, config_path, single = setup
    run_dir = root / "fsdp2"
    # micro-batches and reference batches by a token budget: the processes' answers differ in length, so their counts
    # differ, and each process splits its batches until all run as many forwards (FSDP2 gathers parameters in each)
    launch(config_path, run_dir, "--config_file", str(REPO / "configs" / "accelerate" / "fsdp2.yaml"),
           script=[str(TESTS / "fsdp_cpu_launch.py")], overrides=("train.micro_batch_tokens=30", "train.score_batch_tokens=30"))
    expected = read_jsonl(single / "metrics.jsonl")
    fsdp = read_jsonl(run_dir / "metrics.jsonl")
    assert_same_metrics(expected, fsdp)
    assert_same_samples(single, run_dir)
    assert_same_weights(single, run_dir, STEPS)
    state = read_trainer_state(run_dir / "checkpoints" / f"step_{STEPS:06d}")
    assert len(state["rng"]) == 2 and all(name.startswith("model.") for name in state["optimizer"]["state"])
    # resume on 2 FSDP2 processes (process 0's full optimizer state is broadcast and sharded; micro-batches of 3 rows
    # again), then on 1 process
    shutil.rmtree(run_dir / "checkpoints" / f"step_{STEPS:06d}")
    launch(config_path, run_dir, "--config_file", str(REPO / "configs" / "accelerate" / "fsdp2.yaml"),
           script=[str(TESTS / "fsdp_cpu_launch.py")], overrides=("run.resume=true",))
    assert_same_metrics(expected, read_jsonl(run_dir / "metrics.jsonl"))
    assert_same_weights(single, run_dir, STEPS)
    assert_same_metrics(expected, resume_on_one_process(config_path, run_dir))
    assert_same_weights(single, run_dir, STEPS)


def test_a_nan_reward_on_one_process_stops_every_process(setup):
    """Process 1 alone gets a NaN reward at step 2: both processes stop with the message (before, process 0 waited in
    a collective until the launcher killed it), and step 1's checkpoint is kept."""
    root, config_path, _ = setup
    run_dir = root / "ddp-nan"
    result = launch(config_path, run_dir, "--multi_gpu", script=["-m", "rlif.cli"], succeeds=False,
                    overrides=("reward.name=parallel_rewards:nan_on_the_second_process_at_step_2", "eval.path=null"))
    message = "step 2: reward 'parallel_rewards:nan_on_the_second_process_at_step_2' returned non-finite values"
    assert result.stderr.count(message) == 2, result.stderr[-5000:]  # from each process
    assert latest_checkpoint(run_dir)[0] == 1


def test_lora_ddp_two_processes_match_one_process(setup):
    """LoRA under DDP: the reference is each process's own policy with adapters disabled; adapters start from the seed."""
    pytest.importorskip("peft")
    root, config_path, _ = setup
    lora = ("lora.rank=4", "lora.alpha=8", "train.lr=1e-2", "eval.path=null")
    single = train(load_config(config_path, [f"run.output_dir={root / 'lora-single'}", *lora]))
    run_dir = root / "lora-ddp"
    launch(config_path, run_dir, "--multi_gpu", script=["-m", "rlif.cli"], overrides=lora)
    expected = read_jsonl(single / "metrics.jsonl")
    assert expected[0]["signals/kl_ref"] == 0.0 and expected[-1]["signals/kl_ref"] > 0
    assert_same_metrics(expected, read_jsonl(run_dir / "metrics.jsonl"))
    assert_same_samples(single, run_dir)
    assert_same_weights(single, run_dir, STEPS)  # the merged weights of the checkpoints


def offload_reference_case(device: torch.device):
    """(the on-device reference's signals, the offloaded one's, and that module's tensors before and after)."""
    from rlif.rl.reference import Reference
    from rlif.signals.model import SignalModel

    model = tiny_causal_lm(len(char_tokenizer(ALPHABET)), hidden_size=32, num_layers=2, seed=3).eval()  # tied head
    inputs = [t.to(device) for t in (torch.tensor([[0, 5, 6]]), torch.tensor([[0, 1, 1]]), torch.tensor([[7, 8, 9, 2]]),
                                     torch.tensor([[1, 1, 1, 0]]))]
    with torch.no_grad():
        expected = SignalModel(model).to(device)(*inputs)
        offloaded = Reference(SignalModel(model).to("cpu"), device=device, offload=True)
        before = [t.data for t in offloaded.signal_model.state_dict(keep_vars=True).values()]
        with offloaded.scoring(None) as ref_model:
            assert all(t.device.type == device.type for t in ref_model.state_dict().values())
            got = ref_model(*inputs)
    after = [t.data for t in offloaded.signal_model.state_dict(keep_vars=True).values()]
    return expected, got, before, after


def test_an_offloaded_reference_scores_as_before_and_keeps_its_host_copies():
    expected, got, before, after = offload_reference_case(torch.device("cpu"))
    for name in ("logprobs", "self_certainty", "entropy"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=0, atol=0)
    # after the pass the module points at the same host tensors again: the frozen weights are never copied back
    assert [t.data_ptr() for t in after] == [t.data_ptr() for t in before] and all(t.device.type == "cpu" for t in after)


def test_split_largest_splits_the_largest_batch_in_place_until_the_count():
    from rlif.rl.distributed import split_largest

    batches = [torch.tensor([4, 0, 2]), torch.tensor([1, 3, 5, 6, 7]), torch.tensor([8])]
    assert [b.tolist() for b in split_largest(batches, 3)] == [[4, 0, 2], [1, 3, 5, 6, 7], [8]]
    assert [b.tolist() for b in split_largest(batches, 5)] == [[4, 0], [2], [1, 3, 5], [6, 7], [8]]
    assert len(split_largest(batches, 9)) == 9  # one row each
