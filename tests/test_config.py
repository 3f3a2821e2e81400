"""Config loading: YAML + overrides, coercion, validation messages, documentation of every field."""

import dataclasses
import typing

import pytest
from conftest import load_repo_module

from rlif.config import Config, config_reference, field_docs, load_config
from rlif.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


BASE = "model: {path: m}\ndata: {path: d.jsonl}\n"


def test_defaults_are_the_papers():
    config = Config()
    assert (config.rollout.group_size, config.train.kl_coef, config.train.clip_eps) == (7, 0.005, 0.2)
    assert (config.train.lr, config.rollout.temperature, config.train.prompts_per_step) == (3e-6, 0.9, 128)
    assert (config.train.lr_schedule, config.train.warmup_ratio, config.rollout.max_new_tokens) == ("cosine", 0.1, 3072)


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, BASE + "train: {lr: 3e-6, steps: 5}\n")
    config = load_config(path, ["train.lr=1e-5", "rollout.group_size=8", "run.resume=true", "data.label_field=null"])
    assert config.train.lr == 1e-5 and isinstance(config.train.lr, float)  # YAML 1.1 reads 3e-6 as a string
    assert config.rollout.group_size == 8 and config.run.resume is True and config.data.label_field is None
    assert load_config(path).train.lr == 3e-6


def test_string_override_is_kept_verbatim(tmp_path):
    config = load_config(write(tmp_path, BASE), ["data.system_prompt=Answer: 42", "data.prompt_template=Q: {prompt}"])
    assert config.data.system_prompt == "Answer: 42" and config.data.prompt_template == "Q: {prompt}"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=-1", "train.lr = -1.0: expected a positive number"),
        ("train.lr=fast", "train.lr = 'fast': expected a number"),
        ("rollout.group_size=1", "rollout.group_size = 1: expected an integer >= 2"),
        ("rollout.group_size=2.5", "rollout.group_size = 2.5: expected an integer"),
        ("train.lr_schedule=step", "train.lr_schedule = 'step': expected one of 'cosine', 'linear', 'constant'"),
        ("run.resume=maybe", "run.resume = 'maybe': expected true or false"),
        ("train.lrr=1", "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
        ("trian.lr=1", "unknown config key 'trian'; did you mean 'train'?"),
        ("train.lr", "expected section.field=value"),
        ("reward.name=nope", "reward.name = 'nope': unknown reward; registered: code_tests, code_tests_all, correctness"),
        ("rollout.top_p=0", "rollout.top_p = 0.0: expected a number in (0, 1]"),
        ("rollout.decode=fast", "rollout.decode = 'fast': expected one of 'dynamic', 'static', 'compiled'"),
        ("train.adam_betas=[0.9]", "train.adam_betas = [0.9]: expected two numbers in [0, 1)"),
        ("train.micro_batch_tokens=-1", "train.micro_batch_tokens = -1: expected 0 (off) or a positive integer"),
        ("train.micro_batch_tokens=3000", "train.micro_batch_tokens = 3000: expected 0 (off) or at least "
         "data.max_prompt_tokens + rollout.max_new_tokens = 3584 (one sequence's longest)"),
        ("train.score_batch_tokens=-5", "train.score_batch_tokens = -5: expected 0 (off) or a positive integer"),
        ("train.score_batch_tokens=100", "train.score_batch_tokens = 100: expected 0 (off) or at least "
         "data.max_prompt_tokens + rollout.max_new_tokens = 3584 (one sequence's longest)"),
    ],
)
def test_bad_values_name_the_field(tmp_path, override, message):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, BASE), [override])
    assert message in str(error.value)


def test_unknown_yaml_key_and_missing_required(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'model.paht'; did you mean 'model.path'"):
        load_config(write(tmp_path, "model: {paht: m}\ndata: {path: d.jsonl}\n"))
    with pytest.raises(ConfigError, match="model.path = '': expected a model folder"):
        load_config(write(tmp_path, "data: {path: d.jsonl}\n"))
    with pytest.raises(ConfigError, match="data.path = 'd.csv': expected a file ending in .jsonl or .parquet"):
        load_config(write(tmp_path, "model: {path: m}\ndata: {path: d.csv}\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: {path: m\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_every_field_is_documented():
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{section.name}.{f.name} has no docstring"
    reference = config_reference()
    assert "`train.kl_coef`" in reference and "k3" in reference


def test_configuration_doc_is_current():
    module = load_repo_module("scripts/update_docs.py")
    assert config_reference() in module.render()
    assert module.DOC.read_text() == module.render(), "docs/configuration.md is stale: run python scripts/update_docs.py"
