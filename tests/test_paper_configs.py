"""configs/paper/*.yaml carry the paper's hyperparameters and load; MATH train is complete and its conversion is
reproducible; the accelerate configs say what the README says they do."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from conftest import load_repo_module

from rlif.config import Config, load_config
from rlif.data.prompts import prepare_prompts
from rlif.models.load import load_tokenizer
from rlif.rl.train import total_steps

REPO = Path(__file__).resolve().parents[1]
PAPER = {  # size: (lr, prompts per step, G, beta) from arXiv 2505.19590 (PAPER.md)
    "1.5b": (3e-6, 128, 7, 0.005),
    "3b": (3e-6, 128, 7, 0.005),
    "7b": (1e-6, 64, 14, 0.01),
    "14b": (1e-6, 64, 14, 0.01),
}
REWARDS = {"intuitor": "self_certainty", "grpo": "correctness"}


def paper_configs():
    return sorted((REPO / "configs" / "paper").glob("*.yaml"))


def test_every_method_and_size_has_a_config():
    assert {p.stem for p in paper_configs()} == {f"{m}-qwen2.5-{s}" for m in REWARDS for s in PAPER}


@pytest.mark.parametrize("path", paper_configs(), ids=lambda p: p.stem)
def test_paper_config_loads_with_the_papers_values(path, monkeypatch):
    monkeypatch.chdir(REPO)  # data paths are relative to the repository root, where the README's commands run
    config = load_config(path)
    method, _, size = path.stem.partition("-qwen2.5-")
    lr, prompts, group_size, beta = PAPER[size]
    assert (config.train.lr, config.train.prompts_per_step, config.rollout.group_size, config.train.kl_coef) == (lr, prompts, group_size, beta)
    assert config.reward.name == REWARDS[method]
    assert config.model.path == f"Qwen/Qwen2.5-{size.upper()}"
    assert (config.rollout.temperature, config.rollout.max_new_tokens, config.data.max_prompt_tokens) == (0.9, 3072, 512)
    assert (config.train.lr_schedule, config.train.warmup_ratio, config.train.epochs, config.train.steps) == ("cosine", 0.1, 1.0, 0)
    assert (config.train.clip_eps, config.train.max_grad_norm) == (0.2, 1.0)
    assert (config.model.dtype, config.model.mixed_precision, config.model.gradient_checkpointing) == ("float32", "bf16", True)
    assert Path(config.data.path).is_file() and config.data.label_field == "answer"
    for processes in (1, 8, 16):  # 1 GPU, 8 GPUs, 2 nodes x 8 GPUs
        assert config.train.prompts_per_step % processes == 0


def qwen_tokenizer_dir():
    return load_repo_module("bench/common.py").tokenizer_dir()


def test_paper_prompts_and_step_counts(monkeypatch):
    """With the Qwen2.5 tokenizer and the chat template, 70 MATH prompts exceed 512 tokens: 58 and 116 steps per epoch."""
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "configs" / "paper" / "intuitor-qwen2.5-1.5b.yaml")
    prompts = prepare_prompts(config.data, load_tokenizer(str(qwen_tokenizer_dir())), config.data.path)
    assert (len(prompts.records), prompts.dropped) == (7428, 70)
    assert "put your final answer within \\boxed{}" in prompts.rendered[0] and prompts.rendered[0].endswith("<|im_start|>assistant\n")
    assert total_steps(config, len(prompts.records)) == 58
    assert total_steps(load_config(REPO / "configs" / "paper" / "intuitor-qwen2.5-7b.yaml"), len(prompts.records)) == 116


def load_converter():
    return load_repo_module("scripts/convert_math.py")


def test_math_answer_extraction_by_hand(tmp_path):
    convert = load_converter()
    assert convert.boxed_answer(r"so $x=\boxed{\frac{1}{2}}$ and then \boxed{3}") == "3"
    assert convert.boxed_answer(r"it is $\boxed{\{1,2\}}$") == r"\{1,2\}"
    assert convert.boxed_answer(r"our answer is $\boxed 2$.") == "2"  # LaTeX: the argument is the next token
    assert convert.boxed_answer(r"$\boxed \pi$") == r"\pi"
    assert convert.boxed_answer("no box here") is None
    source = tmp_path / "math.jsonl"
    row = {"problem": "1+1?", "solution": "It is \\boxed{2}.", "level": "Level 1", "type": "Algebra", "unique_id": "a"}
    source.write_text(json.dumps(row) + "\n" + json.dumps({**row, "solution": "no answer", "unique_id": "b"}) + "\n")
    empty = {**row, "solution": "so $\\boxed{}$", "unique_id": "c"}
    source.write_text(json.dumps(row) + "\n" + json.dumps(empty) + "\n")
    assert convert.convert(source, tmp_path / "out.jsonl")["left_out_empty_boxed"] == ["c"]
    assert [json.loads(line)["answer"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["2"]
    source.write_text(json.dumps(row) + "\n" + json.dumps({**row, "solution": "no answer", "unique_id": "b"}) + "\n")
    with pytest.raises(SystemExit, match="math.jsonl:2: no boxed answer in the solution of b"):
        convert.convert(source, tmp_path / "out.jsonl")


def test_math_train_data_is_complete():
    path = REPO / "data" / "math" / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 7498 and len({r["unique_id"] for r in rows}) == 7498  # 2 solutions box nothing
    assert all(r["prompt"] and r["answer"] for r in rows)
    assert not {"train/number_theory/7115.json", "train/number_theory/7117.json"} & {r["unique_id"] for r in rows}
    by_id = {r["unique_id"]: r["answer"] for r in rows}
    assert (by_id["train/algebra/0.json"], by_id["train/algebra/24014.json"], by_id["train/algebra/25040.json"]) == ("0", "2", "9")
    readme = (REPO / "data" / "math" / "README.md").read_text()
    assert hashlib.sha256(path.read_bytes()).hexdigest() in readme  # the documented conversion output
    assert (REPO / "data" / "math" / "LICENSE").read_text().startswith("MIT License")


def test_conversion_reproduces_the_committed_file(tmp_path):
    source = Path("/work/shared/data/math/train.jsonl")  # the project's shared copy of hendrycks MATH
    if not source.is_file():
        pytest.skip(f"{source} is not on this machine (the committed file's sha256 is checked above)")
    load_converter().convert(source, tmp_path / "train.jsonl")
    assert (tmp_path / "train.jsonl").read_bytes() == (REPO / "data" / "math" / "train.jsonl").read_bytes()


def test_accelerate_configs():
    folder = REPO / "configs" / "accelerate"
    ddp, fsdp = (yaml.safe_load((folder / f"{name}.yaml").read_text()) for name in ("ddp", "fsdp2"))
    assert ddp["distributed_type"] == "MULTI_GPU" and ddp["num_processes"] == 8
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_version"] == 2
    assert fsdp["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    zero2 = yaml.safe_load((folder / "deepspeed_zero2.yaml").read_text())
    assert zero2["distributed_type"] == "DEEPSPEED"
    deepspeed = json.loads((REPO / zero2["deepspeed_config"]["deepspeed_config_file"]).read_text())
    assert deepspeed["zero_optimization"]["stage"] == 2 and deepspeed["gradient_accumulation_steps"] == 1
    assert deepspeed["gradient_clipping"] == Config().train.max_grad_norm  # rlif refuses a mismatch at start-up
