"""Issue 19, one test per item: every bad input a clear one-line error, no user file deleted, no code run from a
checkpoint, damaged or moved runs resumed. Each test reproduces what failed before the fix (a traceback, a deleted
folder, a pickle that ran, a silently wrong score)."""

import errno
import json
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import load_repo_module, write_addition_data
from test_train import comparable, tiny_config

import rlif.data.prompts
import rlif.rl.checkpoint
from rlif.cli import main
from rlif.config import load_config
from rlif.data.answers import MATH, answers_match
from rlif.data.benchmarks import get_benchmark
from rlif.data.jsonl import read_log as read_jsonl
from rlif.data.prompts import load_prompts, prepare_prompts, worked_solution_warning
from rlif.errors import ConfigError, DataError, ModelLoadError, TrainingDiverged
from rlif.models.load import load_model, load_tokenizer, resolve_model_path
from rlif.rl.checkpoint import latest_checkpoint, read_trainer_state, rng_state, write_trainer_state
from rlif.rl.train import train
from rlif.testbed.tiny import tiny_causal_lm

REPO = Path(__file__).resolve().parents[1]


REWARDS = load_repo_module("scripts/bad_inputs.py").REWARDS  # the rewards that return strings, too few values, NaN: the same as the table's


class WritesAFile:
    """A pickle payload: unpickling it creates `path` (as code run from a doctored checkpoint would)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def rewards_module(tmp_path, monkeypatch):
    (tmp_path / "bad_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("bad_rewards", None)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """A complete 4-step run (checkpoints at steps 2 and 4); tests copy it before changing it."""
    root = tmp_path_factory.mktemp("finished")
    data = write_addition_data(root / "data.jsonl")
    config_path = tiny_config(root, tiny_model_dir, data, train={"steps": 4})
    train(load_config(config_path))
    return root / "run", config_path


def copy_run(finished_run, tmp_path, name="copy"):
    run, config_path = finished_run
    target = tmp_path / name
    shutil.copytree(run, target, symlinks=True)
    return target, config_path


# ---- 1. no code runs from a checkpoint ------------------------------------------------------------


def test_trainer_state_round_trips_exactly_without_pickle(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    random.random(), np.random.normal(), torch.rand(3)  # a gauss value cached in numpy's state
    state = {"step": 7, "rng": [rng_state()], "scheduler": {"base_lrs": [0.003], "lr_lambdas": [{}], "last_epoch": 7},
             "optimizer": {"state": {"model.w": {"step": torch.tensor(7.0), "exp_avg": torch.randn(2, 3, dtype=torch.bfloat16)}},
                           "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": ["model.w"]}]}}
    write_trainer_state(tmp_path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trainer_state.json", "trainer_state.safetensors"]
    loaded = read_trainer_state(tmp_path)
    assert loaded["rng"][0]["python"] == state["rng"][0]["python"]
    numpy_saved, numpy_loaded = state["rng"][0]["numpy"], loaded["rng"][0]["numpy"]
    assert numpy_loaded[0] == numpy_saved[0] and np.array_equal(numpy_loaded[1], numpy_saved[1]) and numpy_loaded[2:] == numpy_saved[2:]
    assert torch.equal(loaded["rng"][0]["torch"], state["rng"][0]["torch"])
    moments = loaded["optimizer"]["state"]["model.w"]
    assert moments["exp_avg"].dtype == torch.bfloat16 and torch.equal(moments["exp_avg"], state["optimizer"]["state"]["model.w"]["exp_avg"])
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"] and loaded["scheduler"] == state["scheduler"]


def test_a_pickle_payload_in_a_checkpoint_is_refused_and_never_run(tmp_path, finished_run, capsys):
    payload = pickle.dumps(WritesAFile(tmp_path / "ran"))
    run, config_path = copy_run(finished_run, tmp_path)
    shutil.rmtree(run / "checkpoints" / "step_000004")  # stopped after step 3: step 2 is where it resumes
    checkpoint = run / "checkpoints" / "step_000002"
    for name in ("trainer_state.json", "trainer_state.safetensors"):  # as an rlif 0.2.0 checkpoint, doctored
        (checkpoint / name).unlink()
    (checkpoint / "trainer_state.pt").write_bytes(payload)
    assert main(["train", str(config_path), f"run.output_dir={run}", "run.resume=true"]) == 2
    error = capsys.readouterr().err
    assert "trainer_state.pt, the pickle file of rlif <= 0.2.0, which rlif no longer loads" in error
    assert f"start a new run from them with model.path={checkpoint}" in error
    assert not (tmp_path / "ran").exists()

    run, _ = copy_run(finished_run, tmp_path, "copy2")  # the new files holding a pickle: they do not load
    shutil.rmtree(run / "checkpoints" / "step_000004")
    for name in ("trainer_state.json", "trainer_state.safetensors"):
        (run / "checkpoints" / "step_000002" / name).write_bytes(payload)
    assert main(["train", str(config_path), f"run.output_dir={run}", "run.resume=true"]) == 2
    captured = capsys.readouterr()
    assert "step_000002 does not load" in captured.out and "no checkpoint of" in captured.err
    assert not (tmp_path / "ran").exists()


def test_no_torch_load_without_weights_only():
    """Every torch.load in src/, tests, bench and scripts is weights_only=True (none unpickles arbitrary objects)."""
    offenders = []
    for folder in ("src", "tests", "bench", "scripts"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for match in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
                if "weights_only=True" not in match.group(0) and path.name != "test_reliability.py":
                    offenders.append(f"{path.relative_to(REPO)}: {match.group(0)}")
    assert not offenders, offenders


# ---- 2. what a config can execute -----------------------------------------------------------------


def test_docs_say_what_a_config_can_execute():
    text = (REPO / "docs" / "configuration.md").read_text()
    section = text.split("## What a config can execute", 1)[1].split("\n## ", 1)[0]
    for named in ("reward.name: package.module:function", "data.answer_format: package.module:attribute",
                  "model.trust_remote_code: true", "loading cannot run code"):
        assert named in section, named


# ---- 3. run.overwrite deletes only a folder rlif made, never through a link --------------------------


def test_overwrite_refuses_a_folder_rlif_did_not_make(tmp_path, tiny_model_dir, addition_data, capsys):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "important.txt").write_text("keep")
    (mine / "sub" / "thesis.tex").write_text("keep")
    config_path = tiny_config(tmp_path, tiny_model_dir, addition_data, train={"steps": 1})
    assert main(["train", str(config_path), f"run.output_dir={mine}", "run.overwrite=true"]) == 2
    assert "is not a run folder rlif made" in capsys.readouterr().err
    assert (mine / "important.txt").read_text() == "keep" and (mine / "sub" / "thesis.tex").read_text() == "keep"


def test_overwrite_of_a_run_never_follows_a_link_out_of_it(tmp_path, tiny_model_dir, addition_data):
    config_path = tiny_config(tmp_path, tiny_model_dir, addition_data, train={"steps": 1})
    assert main(["train", str(config_path)]) == 0
    run = tmp_path / "run"
    assert json.loads((run / ".rlif-run").read_text()) == {"rlif": rlif_version()}
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "data.bin").write_text("keep")
    (run / "link").symlink_to(outside, target_is_directory=True)
    (run / "plots" / "file_link").symlink_to(outside / "deep" / "data.bin")
    assert main(["train", str(config_path), "run.overwrite=true"]) == 0
    assert (outside / "deep" / "data.bin").read_text() == "keep"
    assert not (run / "link").is_symlink() and len(read_jsonl(run / "metrics.jsonl")) == 1


def rlif_version():
    import rlif

    return rlif.__version__


# ---- 4. a data file that is not UTF-8 ----------------------------------------------------------------


@pytest.mark.parametrize("content, line, offset", [
    ('{"prompt": "caf\xe9", "answer": "1"}\n'.encode("latin-1"), 1, 15),
    (b'{"prompt": "a", "answer": "1"}\n' + bytes(range(128, 256)), 2, 31),
])
def test_a_data_file_that_is_not_utf8_is_named_with_line_and_byte_offset(tmp_path, content, line, offset):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        load_prompts(path, "prompt", "answer")
    assert f"{path}:{line}: not UTF-8 text (byte 0x{content[offset]:02x} at byte offset {offset} of the file)" in str(error.value)
    config = tmp_path / "c.yaml"
    config.write_bytes(b"model: {path: m}\ndata: {path: d.jsonl, system_prompt: caf\xe9}\n")
    with pytest.raises(ConfigError, match=rf"config file {re.escape(str(config))}:2: not UTF-8 text \(byte 0xe9 at byte offset 57\)"):
        load_config(config)


# ---- 5. non-finite numbers ----------------------------------------------------------------------------


@pytest.mark.parametrize("override", ["train.lr=inf", "train.lr=nan", "rollout.temperature=-inf", "train.adam_betas=[0.9, .nan]",
                                      "reward.weights={self_certainty: .inf}"])
def test_every_float_field_must_be_finite(tmp_path, override):
    config = tmp_path / "c.yaml"
    config.write_text("model: {path: m}\ndata: {path: d.jsonl}\n")
    with pytest.raises(ConfigError, match="expected a finite number"):
        load_config(config, [override, "reward.name=weighted"] if "weights" in override else [override])
    config.write_text("model: {path: m}\ndata: {path: d.jsonl}\ntrain:\n  lr: .inf\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(config))}:4: config field train.lr = inf: expected a finite number"):
        load_config(config)


def test_eval_flags_must_be_finite(tmp_path, tiny_model_dir, addition_data, capsys):
    assert main(["eval", "--model", str(tiny_model_dir), "--benchmark", str(addition_data), "--output", str(tmp_path / "e"),
                 "--temperature", "inf"]) == 2
    assert "--temperature = inf: expected a positive finite number" in capsys.readouterr().err


# ---- 6. NaN/inf weights: at load, and appearing during training --------------------------------------


def test_a_model_with_nan_weights_is_refused_at_load(tmp_path, tokenizer):
    model = tiny_causal_lm(len(tokenizer), hidden_size=32)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, :3] = float("nan")
    model.save_pretrained(tmp_path / "nan_model")
    tokenizer.save_pretrained(tmp_path / "nan_model")
    with pytest.raises(ModelLoadError) as error:
        load_model(str(tmp_path / "nan_model"))
    assert f"the weights in local folder {tmp_path / 'nan_model'} hold NaN/inf: 3 of the" in str(error.value)
    assert "model.layers.1.mlp.down_proj.weight" in str(error.value)


def test_nan_weights_after_an_update_stop_before_a_checkpoint_of_them(tmp_path, tiny_model_dir, addition_data, monkeypatch):
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def step_then_corrupt(self, *args, **kwargs):  # a finite loss and gradient; the weights go bad anyway (any cause)
        result = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0][0, 0] = float("inf")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_corrupt)
    config_path = tiny_config(tmp_path, tiny_model_dir, addition_data, run={"save_every": 1})
    with pytest.raises(TrainingDiverged) as error:
        train(load_config(config_path))
    assert "step 3: the weights hold NaN/inf after the update; training stopped before writing a checkpoint of these weights" in str(error.value)
    assert "step_000002" in str(error.value)
    run = tmp_path / "run"
    assert latest_checkpoint(run)[0] == 2 and [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2]


# ---- 7, 8. the model must fit its tokenizer and be causal -------------------------------------------


def test_an_embedding_smaller_than_the_vocabulary_is_refused(tmp_path, tokenizer, addition_data, capsys):
    folder = tmp_path / "small_embedding"
    tiny_causal_lm(len(tokenizer) - 4, hidden_size=32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config_path = tiny_config(tmp_path, folder, addition_data)
    assert main(["train", str(config_path)]) == 2
    assert f"has an embedding of {len(tokenizer) - 4} tokens but its tokenizer has {len(tokenizer)}" in capsys.readouterr().err


def test_a_bidirectional_encoder_is_refused(tmp_path, tokenizer):
    from transformers import BertConfig, BertLMHeadModel

    folder = tmp_path / "bert"
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    BertLMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with pytest.raises(ModelLoadError, match="BertLMHeadModel.*is not a causal language model: its predictions depend on later tokens"):
        load_model(str(folder))


# ---- 9. the output folder: writable before the run, a full disk during it ---------------------------


def test_an_output_path_under_a_file_or_unwritable_fails_before_loading(tmp_path, tiny_model_dir, addition_data, capsys, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    config_path = tiny_config(tmp_path, tiny_model_dir, addition_data)
    assert main(["train", str(config_path), f"run.output_dir={tmp_path / 'a_file' / 'run'}"]) == 2
    assert f"{tmp_path / 'a_file'} is a file, not a folder" in capsys.readouterr().err

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    assert main(["train", str(config_path)]) == 2
    assert "run.output_dir" in (err := capsys.readouterr().err) and "cannot write there (No space left on device)" in err


def test_a_full_disk_during_a_save_stops_clearly_and_keeps_the_last_checkpoint(tmp_path, finished_run, monkeypatch, capsys):
    _, config_path = finished_run
    real = rlif.rl.checkpoint.write_trainer_state

    def full_at_step_4(folder, state):
        if "step_000004" in str(folder):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(folder, state)

    monkeypatch.setattr(rlif.rl.checkpoint, "write_trainer_state", full_at_step_4)
    run = tmp_path / "full"
    assert main(["train", str(config_path), f"run.output_dir={run}"]) == 2
    error = capsys.readouterr().err
    assert "step 4: could not write checkpoint step_000004" in error and "(No space left on device)" in error
    assert f"the last complete checkpoint is {run / 'checkpoints' / 'step_000002'} (intact)" in error
    assert latest_checkpoint(run)[0] == 2 and not (run / "checkpoints" / ".incomplete-step_000004").exists()
    read_trainer_state(run / "checkpoints" / "step_000002")
    monkeypatch.setattr(rlif.rl.checkpoint, "write_trainer_state", real)
    assert main(["train", str(config_path), f"run.output_dir={run}", "run.resume=true"]) == 0
    assert comparable(read_jsonl(run / "metrics.jsonl")) == comparable(read_jsonl(finished_run[0] / "metrics.jsonl"))


# ---- 10. a truncated checkpoint is incomplete -------------------------------------------------------


@pytest.mark.parametrize("damaged", ["trainer_state.safetensors", "model.safetensors", "trainer_state.json"])
def test_a_truncated_checkpoint_is_passed_over_for_the_one_before(tmp_path, finished_run, damaged, capsys):
    run, config_path = copy_run(finished_run, tmp_path)
    path = run / "checkpoints" / "step_000004" / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (run / "report.md").unlink()
    assert main(["train", str(config_path), f"run.output_dir={run}", "run.resume=true"]) == 0
    assert f"checkpoint {run / 'checkpoints' / 'step_000004'} does not load" in capsys.readouterr().out
    assert comparable(read_jsonl(run / "metrics.jsonl")) == comparable(read_jsonl(finished_run[0] / "metrics.jsonl"))
    read_trainer_state(run / "checkpoints" / "step_000004")  # written again, whole


# ---- 11. a custom reward that returns the wrong thing --------------------------------------------------


@pytest.mark.parametrize("reward, message", [
    ("strings", "the reward returned a list of 16 (str) starting ['good', 'good', 'good']; expected one number per response: 16"),
    ("too_few", "the reward returned 3 values for 16 responses (a torch.float32 tensor of shape (3,))"),
])
def test_a_custom_reward_returning_the_wrong_thing_is_named(tmp_path, tiny_model_dir, addition_data, rewards_module, capsys, reward, message):
    config_path = tiny_config(tmp_path, tiny_model_dir, addition_data, reward={"name": f"bad_rewards:{reward}"})
    assert main(["train", str(config_path)]) == 2
    error = capsys.readouterr().err
    assert f"config field reward.name = 'bad_rewards:{reward}': " in error and message in error


# ---- 12, 20. YAML errors name the file and line; duplicate keys are errors -----------------------------


def test_yaml_errors_name_the_file_and_line(tmp_path):
    config = tmp_path / "c.yaml"
    cases = {
        "model: {path: m}\ndata: {path: d.jsonl}\ntrain:\n  steps: 3\n  lr: fast\n": ":5: config field train.lr = 'fast': expected a number",
        "model: {path: m}\ndata: {path: d.jsonl}\ntrain:\n  clip_eps: 2\n": ":4: config field train.clip_eps = 2.0: expected a number in (0, 1)",
        "model: {path: m}\ndata:\n  path: d.jsonl\n  promt_field: q\n": ":4: unknown config key 'data.promt_field'; did you mean 'data.prompt_field'?",
        "model: {path: m}\ndata: {path: d.jsonl}\ntrain: {adam_betas: [0.9, 2]}\n": ":3: config field train.adam_betas = [0.9, 2.0]: expected two numbers",
        "model: {path: m}\ndata: {path: d.jsonl\n": ":2: not valid YAML (while parsing a flow mapping: expected ',' or '}'",
    }
    for text, message in cases.items():
        config.write_text(text)
        with pytest.raises(ConfigError) as error:
            load_config(config)
        assert f"{config}{message}" in str(error.value)
    config.write_text("model: {path: m}\ndata: {path: d.jsonl}\ntrain: {lr: fast}\n")
    with pytest.raises(ConfigError) as error:  # an override replaces the file's value: no file line for it
        load_config(config, ["train.lr=-1"])
    assert str(error.value) == "config field train.lr = -1.0: expected a positive number up to 1"


def test_duplicate_yaml_keys_are_an_error_naming_both_lines(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: {path: m}\ndata: {path: d.jsonl}\ntrain:\n  lr: 1.0e-5\n  steps: 3\n  lr: 3.0e-6\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(config))}:6: duplicate key 'train.lr' \(first at line 4\)"):
        load_config(config)
    config.write_text("model: {path: m}\ndata: {path: d.jsonl}\nmodel: {path: n}\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3: duplicate key 'model' \(first at line 1\)"):
        load_config(config)


# ---- 13. a directory as the data file ------------------------------------------------------------------


def test_a_directory_as_the_data_file_is_named_as_one(tmp_path):
    folder = tmp_path / "data.jsonl"
    folder.mkdir()
    with pytest.raises(DataError, match="is a directory; expected a .jsonl or .parquet file"):
        load_prompts(folder)
    with pytest.raises(DataError, match="benchmark file .* is a directory"):
        get_benchmark(str(folder))


# ---- 14, 15, 16. rlif score / eval messages --------------------------------------------------------------


def test_score_names_a_missing_field_with_its_line(tmp_path, tiny_model_dir, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "1+1=", "response": "2"}\n{"prompt": "2+2="}\n')
    assert main(["score", "--model", str(tiny_model_dir), "--input", str(rows), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert f"{rows}:2: missing field 'response' (fields: prompt)" in capsys.readouterr().err


def test_eval_missing_label_hint_names_the_flag(tmp_path, tiny_model_dir, capsys):
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"prompt": "1+1=", "solution": "2"}\n')
    assert main(["eval", "--model", str(tiny_model_dir), "--benchmark", str(problems), "--output", str(tmp_path / "e")]) == 2
    error = capsys.readouterr().err
    assert "missing label field 'answer' (fields: prompt, solution; name the answer field with --label-field)" in error
    assert "data.label_field" not in error


def test_a_missing_local_model_path_is_not_asked_of_the_hub(tmp_path):
    for path in (str(tmp_path / "no_model"), "./no_model", "runs/x/checkpoints/step_000002"):
        with pytest.raises(ModelLoadError, match=f"^model folder {re.escape(path)} does not exist$"):
            load_tokenizer(path)
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # owner/name: a hub id
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file; expected a model folder"):
        load_model(str(tmp_path / "a_file"))


# ---- 17. a NaN reward from the reward function itself ---------------------------------------------


def test_a_nan_from_the_reward_function_names_it_the_likely_cause(tmp_path, tiny_model_dir, addition_data, rewards_module):
    config_path = tiny_config(tmp_path, tiny_model_dir, addition_data, reward={"name": "bad_rewards:nan_reward"})
    with pytest.raises(TrainingDiverged) as error:
        train(load_config(config_path))
    message = str(error.value)
    assert "step 1: reward 'bad_rewards:nan_reward' returned non-finite values" in message
    assert "the reward function is the likely cause" in message and "Lower train.lr" not in message


# ---- 18, 19. a complete run without its report; a moved run ----------------------------------------


def test_resuming_a_complete_run_writes_its_missing_report(tmp_path, finished_run, capsys):
    run, config_path = copy_run(finished_run, tmp_path)
    (run / "report.md").unlink()
    shutil.rmtree(run / "plots")  # as if killed while writing them
    assert main(["train", str(config_path), f"run.output_dir={run}", "run.resume=true"]) == 0
    assert "is already complete (4/4 steps)" in capsys.readouterr().out
    assert (run / "report.md").read_text().startswith("# Run report") and (run / "plots" / "training.png").stat().st_size > 1000


def test_a_kill_after_the_last_save_before_pruning_is_finished_on_resume(tmp_path, finished_run):
    """Killed between publishing the last checkpoint and deleting the old ones: the resume deletes them (as the
    uninterrupted run did), keeping run.keep_checkpoints = 1."""
    run, config_path = copy_run(finished_run, tmp_path)
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step_000002", "step_000004"]  # keep 2 (default)
    assert main(["train", str(config_path), f"run.output_dir={run}", "run.resume=true", "run.keep_checkpoints=1"]) == 0
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step_000004"]


def test_a_moved_run_folder_resumes_where_it_is(tmp_path, finished_run, capsys):
    run, config_path = copy_run(finished_run, tmp_path, "moved")  # config.yaml still names the original folder
    shutil.rmtree(run / "checkpoints" / "step_000004")  # as if it had stopped after step 3
    assert main(["train", str(config_path), f"run.output_dir={run}", "run.resume=true"]) == 0
    out = capsys.readouterr().out
    assert f"note: {run} was run as {finished_run[0]}; it resumes where it is now" in out
    assert comparable(read_jsonl(run / "metrics.jsonl")) == comparable(read_jsonl(finished_run[0] / "metrics.jsonl"))
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["output_dir"] == str(run)


# ---- 21. rlif select on a responses file with only the fields it needs -----------------------------


def test_select_needs_only_the_fields_it_names(tmp_path, capsys):
    rows = [{"problem": p, "sample": s, "answer": str(p + (s % 2)), "correct": s % 2 == 0, "self_certainty": 1.0 + s,
             "mean_logprob": -1.0 - s} for p in range(3) for s in (-1, 0, 1, 2)]
    path = tmp_path / "responses.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["select", str(path)]) == 0
    assert "majority vote of 3" in capsys.readouterr().out
    path.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "correct"}) + "\n" for row in rows))
    assert main(["select", str(path)]) == 2
    assert f"{path}:1: missing field(s) correct" in capsys.readouterr().err


# ---- 22. rlif score --dtype float64 keeps float64 -----------------------------------------------------


def test_score_in_float64_keeps_float64(tmp_path, peaky_model_dir):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "12+3=", "response": "15+79=</s>"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["score", "--model", str(peaky_model_dir), "--input", str(rows), "--output", str(out), "--dtype", "float64",
                 "--no-chat-template", "--no-progress"]) == 0
    got = read_jsonl(out)[0]["mean_logprob"]
    model, tokenizer = load_model(str(peaky_model_dir), "float64").eval(), load_tokenizer(str(peaky_model_dir))
    prompt, response = (tokenizer(text, add_special_tokens=False).input_ids for text in ("12+3=", "15+79=</s>"))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).mean().item()
    assert got == pytest.approx(expected, rel=1e-12)
    assert abs(got - float(np.float32(got))) > 0  # more digits than a float32 holds


# ---- 23. plain numbers compare exactly ------------------------------------------------------------------


def test_plain_numbers_compare_exactly_at_the_precision_written():
    assert not answers_match("1000001", "1000000") and not answers_match("13535.01", "13535")
    assert not answers_match("7.000001", "7")
    assert answers_match("1,000,000", "1000000") and answers_match("0.50", "0.5") and answers_match("$13,535", "13535.00")
    assert answers_match("18.", "18") and answers_match("-3", "-3.0") and not answers_match("3", "-3")
    assert MATH.is_correct("so the answer is \\boxed{1000001}", "1000000") is False


# ---- 24. GSM8K's own file in training ---------------------------------------------------------------------


def test_gsm8k_labels_are_read_as_eval_reads_them_and_worked_solutions_warn(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "gsm8k_train.jsonl"
    data.write_text("".join(json.dumps({"question": f"{a}+{a}=", "answer": f"{a} plus {a} is <<{a}+{a}={2 * a}>>{2 * a}.\n#### {2 * a}"}) + "\n"
                            for a in range(1, 9)))
    base = {"data": {"prompt_field": "question", "max_prompt_tokens": 64}}
    config = load_config(tiny_config(tmp_path, tiny_model_dir, data, **base))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    as_is = prepare_prompts(config.data, tokenizer, config.data.path)
    assert as_is.records[0].label.endswith("#### 2")
    assert "8 of the 8 labels" in worked_solution_warning(as_is.records, config.data) and "data.label_format=gsm8k" in worked_solution_warning(as_is.records, config.data)
    config = load_config(tiny_config(tmp_path, tiny_model_dir, data, **base), ["data.label_format=gsm8k"])
    read = prepare_prompts(config.data, tokenizer, config.data.path)
    assert [r.label for r in read.records] == [str(2 * a) for a in range(1, 9)] and worked_solution_warning(read.records, config.data) is None
    assert [p.label for p in get_benchmark(str(data), prompt_field="question", label_format="gsm8k").load()] == [r.label for r in read.records]

    config_path = tiny_config(tmp_path, tiny_model_dir, data, train={"steps": 1}, **base)
    assert main(["train", str(config_path)]) == 0
    assert "warning: 8 of the 8 labels" in capsys.readouterr().err
    assert main(["train", str(config_path), "data.label_format=gsm8k", "run.overwrite=true"]) == 0
    assert "warning" not in capsys.readouterr().err
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert samples and all(re.fullmatch(r"\d+", s["label"]) for s in samples)
    bad = tmp_path / "no_marker.jsonl"
    bad.write_text(json.dumps({"question": "1+1=", "answer": "2"}) + "\n")
    with pytest.raises(DataError, match=r"no_marker.jsonl:1: label field 'answer': a GSM8K answer must end with '#### <number>'"):
        load_prompts(bad, "question", "answer", reference=rlif.data.prompts.LABEL_FORMATS["gsm8k"])


# ---- the bad-input table generator keeps working ----------------------------------------------------------


def test_bad_inputs_script_runs_its_cases(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bad_inputs.py"), "--only", "lr_inf", "overwrite_not_a_run",
                          "data_latin1", "--work", str(tmp_path)], capture_output=True, text=True, timeout=600, env=env, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 3
    for row in rows:
        _case, code, message, traceback, lost = [cell.strip() for cell in row.strip("|").split("|")]
        assert code == "2" and traceback == "no" and lost == "0" and message, row
    assert "3 of 3 cases: a clear error" in out.stdout
