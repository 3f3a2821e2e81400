"""Training on code prompts: the unit-test rewards (code_tests, code_tests_all) on hand-made rollouts whose programs
really run, labels (the tests) hidden from label-free rewards, and GRPO / INTUITOR runs on a tiny model."""

from __future__ import annotations

import json
import string

import pytest
import torch
import yaml

from rlif.cli import main
from rlif.code.grading import CODE, CODE_COMPLETION, clear_cache
from rlif.data.jsonl import read_log as read_jsonl
from rlif.data.prompts import load_code_prompts
from rlif.rl.rewards import REWARDS, code_tests_all_reward, code_tests_reward, compute_reward, self_certainty_reward
from rlif.rl.rollout import LabelsHiddenError, Rollout
from rlif.signals.tokens import TokenSignals
from rlif.testbed.tiny import save_tiny_model

CODE_ALPHABET = string.printable.replace("\r", "").replace("\x0b", "").replace("\x0c", "")
MAX = {"task_id": "T/0", "prompt": 'def biggest(a, b):\n    """The larger of a and b."""\n', "entry_point": "biggest",
       "test": "def check(candidate):\n    assert candidate(1, 2) == 2\n    assert candidate(5, 3) == 5\n"}
PROBLEMS = [
    MAX,
    {"task_id": "T/1", "prompt": 'def twice(x):\n    """Return 2 * x."""\n', "entry_point": "twice",
     "test": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(0) == 0\n"},
    {"task_id": "T/2", "prompt": 'def negate(x):\n    """Return -x."""\n', "entry_point": "negate",
     "test": "def check(candidate):\n    assert candidate(2) == -2\n"},
    {"task_id": "T/3", "prompt": 'def square(x):\n    """Return x * x."""\n', "entry_point": "square",
     "test": "def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(-1) == 1\n"},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def code_rollout(completions, labels, answer_format, group_size=2):
    n = len(completions)
    mask = torch.ones(n, 3, dtype=torch.long)
    signals = TokenSignals(torch.zeros(n, 3), torch.arange(n * 3, dtype=torch.float32).view(n, 3), torch.zeros(n, 3))
    return Rollout(prompt_ids=torch.ones(n, 2, dtype=torch.long), prompt_mask=torch.ones(n, 2, dtype=torch.long),
                   response_ids=torch.ones(n, 3, dtype=torch.long), response_mask=mask, group_size=group_size,
                   prompts=[MAX["prompt"]] * n, completions=completions, truncated=torch.zeros(n, dtype=torch.bool),
                   labels=labels, answers=[answer_format.extract(c) for c in completions], answer_format=answer_format,
                   signals=signals)


@pytest.fixture
def max_label(tmp_path):
    return load_code_prompts(write_jsonl(tmp_path / "max.jsonl", [MAX]))[0].label


def test_unit_test_rewards_run_the_programs(max_label):
    clear_cache()  # every program below really runs in the sandbox
    completions = [
        "    return a if a > b else b\n",  # both tests pass
        "    return b\n",                  # (1, 2) -> 2 passes, (5, 3) -> 3 fails
        "    return min(a, b)\n",          # both fail
        "    return (a\n",                 # does not compile
    ]
    rollout = code_rollout(completions, [max_label] * 4, CODE_COMPLETION)
    assert compute_reward(code_tests_reward, rollout).tolist() == [1.0, 0.5, 0.0, 0.0]
    assert compute_reward(code_tests_all_reward, rollout).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert rollout.correct().tolist() == [1.0, 0.0, 0.0, 0.0]
    chat = code_rollout(["```python\ndef biggest(a, b):\n    return max(a, b)\n```", "no code here"], [max_label] * 2, CODE)
    assert compute_reward(code_tests_reward, chat).tolist() == [1.0, 0.0]
    assert REWARDS["code_tests"].uses_labels and REWARDS["code_tests_all"].uses_labels
    with pytest.raises(ValueError, match="needs a code answer format"):
        from rlif.data.answers import MATH

        code_tests_reward(code_rollout(completions[:2], [max_label] * 2, MATH))


def test_label_free_rewards_never_see_the_tests(max_label):
    rollout = code_rollout(["    return a\n", "    return b\n"], [max_label] * 2, CODE_COMPLETION)
    seen = []

    def spy(view):
        seen.append(view)
        return self_certainty_reward(view)

    spy.name, spy.uses_labels = "spy", False
    assert compute_reward(spy, rollout).tolist() == pytest.approx([1.0, 4.0])  # mean of 0,1,2 and of 3,4,5
    view = seen[0]
    with pytest.raises(LabelsHiddenError):
        list(view.labels)
    with pytest.raises(LabelsHiddenError):
        view.correct()
    tests = json.loads(max_label)["tests"]
    assert "candidate(5, 3)" in tests
    others = [view.prompts, view.completions, view.answers, view.answer_format]
    assert all("candidate(5, 3)" not in repr(field) for field in others)  # nothing else in the rollout holds the tests


def tiny_code_config(tmp_path, model, data_path, name, **sections):
    raw = {
        "model": {"path": str(model)},
        "data": {"path": str(data_path), "system_prompt": None, "chat_template": False, "answer_format": "code_completion",
                 "label_field": "tests"},
        "rollout": {"group_size": 4, "max_new_tokens": 16, "temperature": 1.0, "generation_batch_size": 16},
        "train": {"prompts_per_step": 2, "steps": 2, "lr": 3e-3, "micro_batch_size": 8},
        "reward": {"name": "code_tests"},
        "run": {"output_dir": str(tmp_path / name), "save_every": 2, "progress": False, "sample_every": 1,
                "num_samples": 2},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def code_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("code") / "model", CODE_ALPHABET, hidden_size=32, num_layers=2)


def test_grpo_with_unit_test_rewards_takes_steps(tmp_path, code_model):
    data = write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    assert main(["train", str(tiny_code_config(tmp_path, code_model, data, "grpo"))]) == 0
    run = tmp_path / "grpo"
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2] and all(0.0 <= m["reward/mean"] <= 1.0 for m in metrics)
    assert all("rollout/accuracy" in m for m in metrics)
    samples = read_jsonl(run / "samples.jsonl")
    assert len(samples) == 4
    clear_cache()  # the logged reward is the share of tests the sampled program passes, run again here
    shares = [outcome.tests_passed for outcome in CODE_COMPLETION.outcomes([s["completion"] for s in samples], [s["label"] for s in samples])]
    assert [s["reward"] for s in samples] == pytest.approx(shares)
    assert (run / "checkpoints" / "step_000002").is_dir()


def test_intuitor_on_code_prompts_without_tests(tmp_path, code_model, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Write a Python function that reverses a list."},
                                                       {"prompt": "Write a Python function that sums a list."}])
    config = tiny_code_config(tmp_path, code_model, prompts, "intuitor", reward={"name": "self_certainty"},
                              data={"label_field": None, "answer_format": "code", "chat_template": True})
    assert main(["train", str(config)]) == 0
    metrics = read_jsonl(tmp_path / "intuitor" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2] and all(m["reward/mean"] == m["signals/self_certainty"] for m in metrics)
    assert all("rollout/accuracy" not in m for m in metrics)
    assert all("label" not in s for s in read_jsonl(tmp_path / "intuitor" / "samples.jsonl"))
    # a code reward is refused before any model is loaded: without a code answer format, or without the tests
    data = write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    refused = tiny_code_config(tmp_path, code_model, data, "refused", data={"answer_format": "math"})
    assert main(["train", str(refused)]) == 2
    assert "reward.name = 'code_tests' runs programs against tests: it needs data.answer_format code" in capsys.readouterr().err
    assert main(["train", str(refused), "data.answer_format=code", "data.label_field=answer"]) == 2
    assert "label_field 'tests' (or null: no labels), got 'prompt' and 'answer'" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
