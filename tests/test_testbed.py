"""The arithmetic testbed: generator, held-out split, the two answer styles, the answer format, pretraining."""

import json
import random
import subprocess
import sys

import pytest
import torch
from conftest import load_repo_module

from rlif.testbed import BASE_MODEL_DIR, DATA_DIR
from rlif.testbed.task import (
    ARITHMETIC,
    Difficulty,
    column_steps,
    direct_response,
    generate_problems,
    held_out_problems,
    noisy_response,
    prompt_text,
    step_response,
    train_problems,
)


def test_generator_is_seeded_and_respects_the_difficulty():
    first, again = generate_problems(200, seed=3), generate_problems(200, seed=3)
    assert first == again and generate_problems(200, seed=4) != first
    assert len(set(first)) == 200
    for problem in first:
        assert 2 <= len(problem) <= 3 and all(10 <= n <= 9999 for n in problem)
    hard = generate_problems(50, seed=0, difficulty=Difficulty(min_operands=3, max_operands=3, min_digits=4, max_digits=4))
    assert all(len(p) == 3 and all(1000 <= n <= 9999 for n in p) for p in hard)
    with pytest.raises(ValueError, match="operands"):
        Difficulty(min_operands=1)


def test_held_out_split_is_fixed_and_never_trained_on():
    held_out = held_out_problems()
    # Pinned: these must never change, or results before and after the change are not comparable.
    assert held_out[:3] == [(821, 999, 315), (23, 4673), (80, 6621, 440)] and len(held_out) == 500
    assert not set(train_problems(3000, seed=0)) & set(held_out)


def test_shipped_prompt_files_are_the_generator_output(tmp_path):
    from rlif.cli import main

    assert main(["testbed", "data", "--output", str(tmp_path)]) == 0  # what `rlif testbed data` writes
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_text() == (DATA_DIR / name).read_text(), name
    first = json.loads((DATA_DIR / "test.jsonl").read_text().splitlines()[0])
    assert first == {"prompt": "821+999+315", "answer": "2135"}


def test_column_steps_by_hand():
    lines, answer = column_steps((345, 678, 12))
    assert lines == ["5+8+2=15", "4+7+1+1=13", "3+6+0+1=10"] and answer == 1035
    # Dropping the tens carry: 4+7+1+0=12, the hundreds then get carry 1: 3+6+0+1=10 -> 1025.
    assert column_steps((345, 678, 12), dropped_carry=1) == (["5+8+2=15", "4+7+1+0=12", "3+6+0+1=10"], 1025)
    rng = random.Random(0)
    for problem in generate_problems(300, seed=1):
        assert column_steps(problem)[1] == sum(problem)
        assert ARITHMETIC.is_correct(step_response(problem), str(sum(problem)))
        assert ARITHMETIC.is_correct(direct_response(problem), str(sum(problem)))
        assert ARITHMETIC.is_correct(noisy_response(problem, rng, rng.random() < 0.5, noise=0.0), str(sum(problem)))
        assert not ARITHMETIC.is_correct(noisy_response(problem, rng, rng.random() < 0.5, noise=1.0), str(sum(problem)))


@pytest.mark.parametrize(
    "response, answer, step_by_step",
    [
        ("answer: 1035", "1035", False),
        ("5+8+2=15\n4+7+1+1=13\n3+6+0+1=10\nanswer: 1035", "1035", True),
        ("5+8+2=15\n4+7+1+1=13\n3+6+0+1=10\n", None, True),  # work without an answer line
        ("answer: 0042", "42", False),  # canonical form
        ("answer:77\nanswer: 78", "78", False),  # the last answer line counts
        ("5+8=13\nanswer: 13 and more", "13", True),
        ("1035", None, False),  # no answer line: no answer, whatever the digits
        ("answer: ", None, False),
    ],
)
def test_answer_extraction_in_both_styles(response, answer, step_by_step):
    assert ARITHMETIC.extract(response) == answer
    assert ARITHMETIC.describe(response) == {"step_by_step": step_by_step}


def test_equivalence_is_numeric():
    assert ARITHMETIC.equivalent("42", "042") and not ARITHMETIC.equivalent("42", "43")
    assert not ARITHMETIC.equivalent(None, "42") and not ARITHMETIC.equivalent("x", "42")


def test_answer_format_is_found_by_name_without_importing_the_testbed():
    code = "from rlif.answers import get_answer_format; print(get_answer_format('arithmetic').extract('answer: 7'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "7"


def test_prompt_text():
    assert prompt_text((345, 678, 12)) == "345+678+12"


def test_pretraining_is_reproducible(tmp_path):
    from safetensors.torch import load_file

    from rlif.testbed.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(steps=3, batch_size=4, hidden_size=32, num_layers=1, eval_problems=4)
    first = pretrain(tmp_path / "a", config, progress=False)
    second = pretrain(tmp_path / "b", config, progress=False)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first["loss_every_100_steps"] == second["loss_every_100_steps"]
    assert json.loads((tmp_path / "a" / "pretrain.json").read_text())["config"]["steps"] == 3
    from rlif.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tmp_path / "a"))
    assert tokenizer.apply_chat_template([{"role": "user", "content": "1+2"}], tokenize=False, add_generation_prompt=True) == (
        "<|user|>1+2\n<|assistant|>"
    )
    load_model(str(tmp_path / "a"))


def test_shipped_base_model_uses_both_styles_and_is_imperfect():
    from rlif.models.load import load_model, load_tokenizer
    from rlif.testbed.pretrain import evaluate_styles

    model, tokenizer = load_model(str(BASE_MODEL_DIR)), load_tokenizer(str(BASE_MODEL_DIR))
    assert 500_000 < sum(p.numel() for p in model.parameters()) < 5_000_000
    greedy = evaluate_styles(model, tokenizer, 100)
    assert 0.05 < greedy["step_by_step"] < 0.95  # both styles
    assert 0.1 < greedy["accuracy"] < 0.95  # imperfect, but not hopeless
    summary = json.loads((BASE_MODEL_DIR / "pretrain.json").read_text())
    assert summary["config"]["seed"] == 0 and summary["held_out_greedy"]["answer_rate"] > 0.9


def test_style_certainty_script_reproduces_why_direct_answers_win(capsys):
    """scripts/style_certainty.py (README, main job): under the shipped base model the correct direct answers have
    the higher sequence self-certainty although their digits are less certain than the step-by-step digits."""
    module = load_repo_module("scripts/style_certainty.py")
    direct, steps = module.main(["--model", str(BASE_MODEL_DIR), "--limit", "40"])
    assert direct["style"] == "direct" and steps["style"] == "step by step"
    assert direct["sequence_self_certainty"] > steps["sequence_self_certainty"]
    assert direct["self_certainty_digits"] < steps["self_certainty_digits"]
    assert steps["digit_share"] > direct["digit_share"]
    assert "| direct |" in capsys.readouterr().out
