"""The bad-input table: every malformed config, data file, model, output folder, reward and run folder of issue 19 (and
the cases that already passed before it), each run as a real `rlif` command in a subprocess.

    OMP_NUM_THREADS=1 python scripts/bad_inputs.py                 # every case (about 10 minutes on 2 CPU cores)
    python scripts/bad_inputs.py --only lr_inf data_latin1         # some cases
    python scripts/bad_inputs.py --list                            # the cases and what each expects

Prints one Markdown row per case: case (the issue's item), exit code, the first line of the message, whether a Python
traceback was printed, and how many of the user's own files (configs, data, models, folders given as output) were
deleted or changed. A case is *clear* when it exits as expected (2 for a bad input, 1 for a stopped run, 0 for a damaged
or moved run that rlif recovers), prints no traceback, its message contains what the case expects, and no user file is
lost. Cases that need a file system of their own (read-only, full) mount a small tmpfs and are skipped where mounting is
not allowed. Exit status: 0 when every case is clear.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this checkout's rlif, in the fixtures built here as in the commands run
ALPHABET = "0123456789+= \n"
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Case:
    name: str
    item: str  # the issue item it reproduces ("-": a case that already passed)
    expect: str  # a substring the message line must contain
    build: Callable  # (Fixtures, case folder) -> Run
    exit_code: int = 2  # 2: a bad input; 1: a run stopped (divergence); 0: rlif recovers (damaged or moved run)


@dataclass
class Run:
    argv: list[str]  # arguments of `rlif`
    user: list[Path]  # the user's files and folders: none may be deleted or changed
    check: Callable[[], str | None] | None = None  # an extra check after the run: a problem, or None
    env: dict | None = None


CASES: list[Case] = []


def case(name: str, item: str, expect: str, exit_code: int = 2):
    def register(build):
        CASES.append(Case(name, item, expect, build, exit_code))
        return build

    return register


# ---------------------------------------------------------------------------------------------
# Shared fixtures, built once when a case first needs them


class Fixtures:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @functools.cached_property
    def model(self) -> Path:
        from rlif.testbed.tiny import save_tiny_model

        return save_tiny_model(self.root / "model", ALPHABET, hidden_size=32, num_layers=2)

    @functools.cached_property
    def tokenizer(self):
        from rlif.testbed.tiny import char_tokenizer

        return char_tokenizer(ALPHABET)

    @functools.cached_property
    def data(self) -> Path:
        rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in zip(range(16), range(16, 32))]
        return write_jsonl(self.root / "data.jsonl", rows)

    @functools.cached_property
    def config(self) -> Path:
        """A two-step run of the tiny model, a checkpoint after each step."""
        import yaml

        raw = {
            "model": {"path": str(self.model)},
            "data": {"path": str(self.data), "system_prompt": None},
            "rollout": {"group_size": 2, "max_new_tokens": 4, "temperature": 1.0},
            "train": {"prompts_per_step": 2, "steps": 2, "lr": 1e-3, "micro_batch_size": 4, "score_batch_size": 4},
            "run": {"output_dir": str(self.root / "unused"), "save_every": 1, "progress": False},
        }
        path = self.root / "base.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    @functools.cached_property
    def run_config(self) -> Path:
        """The base config with an evaluation before and after training."""
        import yaml

        raw = yaml.safe_load(self.config.read_text())
        raw["eval"] = {"path": str(self.data), "limit": 4, "max_new_tokens": 4}
        path = self.root / "run.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    @functools.cached_property
    def finished_run(self) -> Path:
        """A complete run of `run_config` (two checkpoints, an evaluation before and after), made by `rlif train`."""
        run = self.root / "finished_run"
        rlif(["train", str(self.run_config), f"run.output_dir={run}"], check=True)
        return run

    @functools.cached_property
    def eval_folder(self) -> Path:
        out = self.root / "eval"
        rlif(["eval", "--model", str(self.model), "--benchmark", str(self.data), "--output", str(out), "--limit", "3",
              "--max-new-tokens", "4", "--no-progress"], check=True)
        return out

    def copy_run(self, folder: Path) -> Path:
        shutil.copytree(self.finished_run, folder, symlinks=True)
        return folder

    def model_variant(self, folder: Path, change: Callable) -> Path:
        """A copy of the tiny model with `change(model)` applied (in place, or returning another model)."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.model)
        model = change(model) or model
        model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def rlif(argv: list[str], check: bool = False, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`rlif ARGV` in a subprocess running this checkout's rlif (`env` adds variables; its PYTHONPATH is prepended)."""
    env = dict(env or {})
    path = [env.pop("PYTHONPATH", None), str(REPO / "src"), os.environ.get("PYTHONPATH")]
    environment = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    result = subprocess.run([sys.executable, "-m", "rlif.cli", *argv], capture_output=True, text=True, env=environment,
                            cwd=cwd, timeout=900, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"rlif {' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    return result


def train(fx: Fixtures, folder: Path, *overrides: str, config: Path | None = None) -> list[str]:
    return ["train", str(config or fx.config), f"run.output_dir={folder / 'run'}", *overrides]


def yaml_config(fx: Fixtures, folder: Path, text: str) -> Path:
    """A config file: the base config's model and data, then `text` (its line numbers are what the case checks)."""
    path = folder / "config.yaml"
    path.write_text(f"model: {{path: {fx.model}}}\ndata: {{path: {fx.data}, system_prompt: null}}\n{text}")
    return path


# ---------------------------------------------------------------------------------------------
# Configs


@case("config_missing", "-", "does not exist")
def _(fx, d):
    return Run(["train", str(d / "nope.yaml")], [])


@case("config_is_a_directory", "-", "is a directory")
def _(fx, d):
    (d / "conf.yaml").mkdir()
    return Run(["train", str(d / "conf.yaml")], [d / "conf.yaml"])


@case("config_invalid_yaml", "12", "config.yaml:4: not valid YAML")
def _(fx, d):
    path = yaml_config(fx, d, "train:\n  lr: [1e-3\n")
    return Run(["train", str(path)], [path])


@case("config_not_a_mapping", "-", "expected a mapping of sections")
def _(fx, d):
    (d / "config.yaml").write_text("- train\n- lr\n")
    return Run(["train", str(d / "config.yaml")], [d / "config.yaml"])


@case("config_unknown_section", "12", "config.yaml:3: unknown config key 'trian'; did you mean 'train'?")
def _(fx, d):
    path = yaml_config(fx, d, "trian: {lr: 1e-3}\n")
    return Run(["train", str(path)], [path])


@case("config_unknown_key", "12", "config.yaml:4: unknown config key 'train.lrr'; did you mean 'train.lr'?")
def _(fx, d):
    path = yaml_config(fx, d, "train:\n  lrr: 1e-3\n")
    return Run(["train", str(path)], [path])


@case("config_wrong_type", "12", "config.yaml:5: config field train.lr = 'fast': expected a number")
def _(fx, d):
    path = yaml_config(fx, d, "train:\n  steps: 2\n  lr: fast\n")
    return Run(["train", str(path)], [path])


@case("config_out_of_range", "12", "config.yaml:3: config field rollout.group_size = 1: expected an integer >= 2")
def _(fx, d):
    path = yaml_config(fx, d, "rollout: {group_size: 1}\n")
    return Run(["train", str(path)], [path])


@case("config_duplicate_key", "20", "config.yaml:6: duplicate key 'train.lr' (first at line 4)")
def _(fx, d):
    path = yaml_config(fx, d, "train:\n  lr: 1.0e-3\n  steps: 2\n  lr: 3.0e-6\n")
    return Run(["train", str(path)], [path])


@case("config_duplicate_section", "20", "config.yaml:3: duplicate key 'model' (first at line 1)")
def _(fx, d):
    path = yaml_config(fx, d, "model: {path: other}\n")
    return Run(["train", str(path)], [path])


@case("config_latin1", "4", "config.yaml:3: not UTF-8 text (byte 0xe9")
def _(fx, d):
    path = yaml_config(fx, d, "")
    path.write_bytes(path.read_bytes() + "run: {output_dir: caf\xe9}\n".encode("latin-1"))
    return Run(["train", str(path)], [path])


@case("lr_inf", "5", "config field train.lr = 'inf': expected a finite number")
def _(fx, d):
    return Run(train(fx, d, "train.lr=inf"), [fx.config])


@case("lr_nan", "5", "config field train.lr = 'nan': expected a finite number")
def _(fx, d):
    return Run(train(fx, d, "train.lr=nan"), [fx.config])


@case("lr_above_one", "5", "config field train.lr = 3e+38: expected a positive number up to 1")
def _(fx, d):
    return Run(train(fx, d, "train.lr=3e38"), [fx.config])


@case("temperature_inf_in_yaml", "5", "config.yaml:3: config field rollout.temperature = inf: expected a finite number")
def _(fx, d):
    path = yaml_config(fx, d, "rollout: {temperature: .inf}\n")
    return Run(["train", str(path)], [path])


@case("reward_weight_nan", "5", "config field reward.weights.self_certainty = nan: expected a finite number")
def _(fx, d):
    return Run(train(fx, d, "reward.name=weighted", "reward.weights={self_certainty: .nan}"), [fx.config])


@case("override_malformed", "-", "expected section.field=value")
def _(fx, d):
    return Run(train(fx, d, "train.lr"), [fx.config])


@case("override_unknown_key", "-", "unknown config key 'train.lrr'; did you mean 'train.lr'?")
def _(fx, d):
    return Run(train(fx, d, "train.lrr=1"), [fx.config])


@case("vllm_server_missing", "-", "config field rollout.vllm_servers = []: expected the host:port of at least one `rlif serve-vllm`")
def _(fx, d):
    return Run(train(fx, d, "rollout.engine=vllm-server"), [fx.config])


@case("vllm_server_malformed", "-", "config field rollout.vllm_servers[0] = 'gpu-node': expected host:port")
def _(fx, d):
    return Run(train(fx, d, "rollout.engine=vllm-server", "rollout.vllm_servers=[gpu-node]"), [fx.config])


@case("vllm_server_not_listening", "-", "(connection refused): start one with `rlif serve-vllm")
def _(fx, d):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return Run(train(fx, d, "rollout.engine=vllm-server", f"rollout.vllm_servers=[127.0.0.1:{port}]"), [fx.config])


@case("vllm_server_open_without_key", "-", "--host 0.0.0.0: set RLIF_VLLM_KEY to a secret")
def _(fx, d):
    return Run(["serve-vllm", str(fx.model), "--host", "0.0.0.0"], [fx.model], env={"RLIF_VLLM_KEY": ""})


@case("clip_eps_out_of_range", "-", "config field train.clip_eps = 2.0: expected a number in (0, 1)")
def _(fx, d):
    return Run(train(fx, d, "train.clip_eps=2"), [fx.config])


@case("top_p_zero", "-", "config field rollout.top_p = 0.0: expected a number in (0, 1]")
def _(fx, d):
    return Run(train(fx, d, "rollout.top_p=0"), [fx.config])


@case("adam_betas_one_number", "-", "config field train.adam_betas = [0.9]: expected two numbers in [0, 1)")
def _(fx, d):
    return Run(train(fx, d, "train.adam_betas=[0.9]"), [fx.config])


@case("decode_unknown", "-", "config field rollout.decode = 'fast': expected one of")
def _(fx, d):
    return Run(train(fx, d, "rollout.decode=fast"), [fx.config])


@case("micro_batch_tokens_too_small", "-", "expected 0 (off) or at least data.max_prompt_tokens + rollout.max_new_tokens")
def _(fx, d):
    return Run(train(fx, d, "train.micro_batch_tokens=10"), [fx.config])


@case("reward_unknown", "-", "config field reward.name = 'nope': unknown reward")
def _(fx, d):
    return Run(train(fx, d, "reward.name=nope"), [fx.config])


@case("reward_module_missing", "-", "config field reward.name = 'no_such_module:fn': No module named 'no_such_module'")
def _(fx, d):
    return Run(train(fx, d, "reward.name=no_such_module:fn"), [fx.config])


@case("weights_without_weighted", "-", "reward.weights is only read by reward.name = 'weighted'")
def _(fx, d):
    return Run(train(fx, d, "reward.weights={self_certainty: 1.0}"), [fx.config])


@case("answer_format_unknown", "-", "config field data.answer_format = 'latex': unknown answer format")
def _(fx, d):
    return Run(train(fx, d, "data.answer_format=latex"), [fx.config])


@case("label_format_unknown", "-", "config field data.label_format = 'gsm9k': expected one of 'as_is', 'gsm8k'")
def _(fx, d):
    return Run(train(fx, d, "data.label_format=gsm9k"), [fx.config])


@case("correctness_without_labels", "-", "needs labels, but data.label_field is null")
def _(fx, d):
    return Run(train(fx, d, "reward.name=correctness", "data.label_field=null"), [fx.config])


@case("eval_without_labels", "-", "evaluation needs labels, but data.label_field is null")
def _(fx, d):
    return Run(train(fx, d, f"eval.path={fx.data}", "data.label_field=null", "reward.name=self_certainty"), [fx.config])


@case("prompts_per_step_above_the_data", "-", "the data has only 16 prompts")
def _(fx, d):
    return Run(train(fx, d, "train.steps=0", "train.prompts_per_step=64"), [fx.config])


@case("data_path_csv", "-", "config field data.path = 'data.csv': expected a file ending in .jsonl or .parquet")
def _(fx, d):
    return Run(train(fx, d, "data.path=data.csv"), [fx.config])


# ---------------------------------------------------------------------------------------------
# Data files


def data_case(fx, d, content: bytes | str, *overrides: str, name: str = "data.jsonl") -> Run:
    path = d / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return Run(train(fx, d, f"data.path={path}", *overrides), [path, fx.config])


@case("data_missing", "-", "does not exist")
def _(fx, d):
    return Run(train(fx, d, f"data.path={d / 'nope.jsonl'}"), [fx.config])


@case("data_is_a_directory", "13", "is a directory; expected a .jsonl or .parquet file")
def _(fx, d):
    (d / "data.jsonl").mkdir()
    return Run(train(fx, d, f"data.path={d / 'data.jsonl'}"), [d / "data.jsonl", fx.config])


@case("data_latin1", "4", "data.jsonl:2: not UTF-8 text (byte 0xe9 at byte offset 49 of the file)")
def _(fx, d):
    rows = '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "caf\xe9 1+2=", "answer": "3"}\n'
    return data_case(fx, d, rows.encode("latin-1"))


@case("data_binary", "4", "data.jsonl:1: not UTF-8 text (byte 0x89 at byte offset 0 of the file)")
def _(fx, d):
    return data_case(fx, d, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))


@case("data_invalid_json", "-", "data.jsonl:2: invalid JSON")
def _(fx, d):
    return data_case(fx, d, '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"\n')


@case("data_not_an_object", "-", "data.jsonl:1: expected a JSON object, got list")
def _(fx, d):
    return data_case(fx, d, '["1+1="]\n')


@case("data_missing_prompt_field", "-", "data.jsonl:1: missing field 'prompt' (fields: answer, question)")
def _(fx, d):
    return data_case(fx, d, '{"question": "1+1=", "answer": "2"}\n')


@case("data_empty_prompt", "-", "data.jsonl:1: field 'prompt' must be a non-empty string")
def _(fx, d):
    return data_case(fx, d, '{"prompt": "", "answer": "2"}\n')


@case("data_missing_label", "-", "data.jsonl:1: missing label field 'answer'")
def _(fx, d):
    return data_case(fx, d, '{"prompt": "1+1=", "solution": "2"}\n')


@case("data_label_a_list", "-", "data.jsonl:1: label field 'answer' must be a string or a number")
def _(fx, d):
    return data_case(fx, d, '{"prompt": "1+1=", "answer": [2]}\n')


@case("data_empty_file", "-", "data.jsonl: no records")
def _(fx, d):
    return data_case(fx, d, "")


@case("data_every_prompt_too_long", "-", "every prompt is longer than data.max_prompt_tokens=1")
def _(fx, d):
    return Run(train(fx, d, "data.max_prompt_tokens=1"), [fx.config])


@case("data_parquet_corrupt", "-", "not a readable Parquet file")
def _(fx, d):
    return data_case(fx, d, b"PAR1 this is not parquet", name="data.parquet")


@case("gsm8k_label_format_without_marker", "24", "data.jsonl:1: label field 'answer': a GSM8K answer must end with '#### <number>'")
def _(fx, d):
    return data_case(fx, d, '{"prompt": "1+1=", "answer": "2"}\n', "data.label_format=gsm8k")


@case("gsm8k_worked_solutions_warn", "24", "warning: 2 of the 2 labels", exit_code=0)
def _(fx, d):
    rows = '{"prompt": "1+1=", "answer": "1 and 1 make 2.\\n#### 2"}\n{"prompt": "2+2=", "answer": "2 and 2 make 4.\\n#### 4"}\n'
    return data_case(fx, d, rows, "train.steps=1")


@case("no_chat_template", "-", "has no chat template; set data.chat_template=false")
def _(fx, d):
    folder = d / "model"
    shutil.copytree(fx.model, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for template in folder.glob("chat_template.*"):
        template.unlink()
    return Run(train(fx, d, f"model.path={folder}", "data.chat_template=true"), [fx.config])


# ---------------------------------------------------------------------------------------------
# Models


@case("model_missing_absolute_path", "16", "model folder /nonexistent/model does not exist")
def _(fx, d):
    return Run(train(fx, d, "model.path=/nonexistent/model"), [fx.config])


@case("model_missing_relative_path", "16", "model folder ./nonexistent/model does not exist")
def _(fx, d):
    return Run(train(fx, d, "model.path=./nonexistent/model"), [fx.config])


@case("model_path_is_a_file", "16", "is a file; expected a model folder")
def _(fx, d):
    return Run(train(fx, d, f"model.path={fx.data}"), [fx.config])


@case("model_folder_empty", "-", "is not a model folder: it has no config.json")
def _(fx, d):
    (d / "empty_model").mkdir()
    return Run(train(fx, d, f"model.path={d / 'empty_model'}"), [fx.config])


@case("model_weights_truncated", "-", "could not load a causal LM from local folder")
def _(fx, d):
    folder = d / "model"
    shutil.copytree(fx.model, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return Run(train(fx, d, f"model.path={folder}"), [fx.config, folder])


@case("model_nan_weights", "6", "hold NaN/inf: 5 of the 1024 values of model.layers.0.self_attn.q_proj.weight")
def _(fx, d):
    import torch

    def poison(model):
        with torch.no_grad():
            model.model.layers[0].self_attn.q_proj.weight[0, :5] = float("nan")

    folder = fx.model_variant(d / "model", poison)
    return Run(train(fx, d, f"model.path={folder}"), [fx.config, folder])


@case("model_embedding_smaller_than_vocabulary", "7", "has an embedding of 15 tokens but its tokenizer has 21")
def _(fx, d):
    from rlif.testbed.tiny import tiny_causal_lm

    folder = fx.model_variant(d / "model", lambda _: tiny_causal_lm(15, hidden_size=32))
    return Run(train(fx, d, f"model.path={folder}"), [fx.config, folder])


@case("model_bert", "8", "(BertLMHeadModel) is not a causal language model")
def _(fx, d):
    from transformers import BertConfig, BertLMHeadModel

    config = BertConfig(vocab_size=21, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    folder = fx.model_variant(d / "model", lambda _: BertLMHeadModel(config))
    return Run(train(fx, d, f"model.path={folder}"), [fx.config, folder])


@case("model_t5", "8", "could not load a causal LM from local folder")
def _(fx, d):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=21, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    folder = fx.model_variant(d / "model", lambda _: T5ForConditionalGeneration(config))
    return Run(train(fx, d, f"model.path={folder}"), [fx.config, folder])


# ---------------------------------------------------------------------------------------------
# Output folders


@case("overwrite_not_a_run", "3", "is not a run folder rlif made")
def _(fx, d):
    mine = d / "run"
    (mine / "sub").mkdir(parents=True)
    (mine / "important.txt").write_text("my notes")
    (mine / "sub" / "thesis.tex").write_text("\\documentclass{article}")
    return Run(train(fx, d, "run.overwrite=true"), [mine, fx.config])


@case("overwrite_a_run_holding_a_link_out", "3", "run directory:", exit_code=0)
def _(fx, d):
    run = fx.copy_run(d / "run")
    outside = d / "elsewhere"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "results.csv").write_text("1,2,3\n")
    (run / "my_link").symlink_to(outside, target_is_directory=True)
    return Run(train(fx, d, "run.overwrite=true"), [outside, fx.config],
               check=lambda: "the link is still there" if (run / "my_link").is_symlink() else None)


@case("output_not_empty", "-", "the folder is not empty; pass run.resume=true")
def _(fx, d):
    (d / "run").mkdir()
    (d / "run" / "notes.txt").write_text("mine")
    return Run(train(fx, d), [d / "run", fx.config])


@case("output_under_a_file", "9", "is a file, not a folder")
def _(fx, d):
    (d / "a_file").write_text("x")
    return Run(["train", str(fx.config), f"run.output_dir={d / 'a_file' / 'run'}"], [d / "a_file", fx.config])


@case("output_read_only_file_system", "9", "cannot write there (Read-only file system)")
def _(fx, d):
    mount = mount_tmpfs(d / "mnt", "1m", read_only=True)
    return Run(["train", str(fx.config), f"run.output_dir={mount / 'run'}"], [fx.config], check=lambda: unmount(mount))


@case("output_disk_full_before_the_run", "9", "cannot write there (No space left on device)")
def _(fx, d):
    mount = mount_tmpfs(d / "mnt", "64k")
    fill(mount)
    return Run(["train", str(fx.config), f"run.output_dir={mount / 'run'}"], [fx.config], check=lambda: unmount(mount))


@case("output_disk_full_during_a_save", "9", "the last complete checkpoint is")
def _(fx, d):
    mount = mount_tmpfs(d / "mnt", "900k")  # room for the run's logs and one checkpoint (~380 KB), not a second one
    run = mount / "run"

    def check():
        problem = None
        try:
            from rlif.rl.checkpoint import latest_checkpoint, read_trainer_state

            read_trainer_state(latest_checkpoint(run)[1])  # the last complete checkpoint is intact
        except Exception as error:  # noqa: BLE001 - any failure to read it is the finding
            problem = f"the last checkpoint does not load: {error}"
        return unmount(mount) or problem

    return Run(["train", str(fx.config), f"run.output_dir={run}", "train.steps=3"], [fx.config], check=check)


def mount_tmpfs(folder: Path, size: str, read_only: bool = False) -> Path:
    folder.mkdir(parents=True)
    options = f"size={size}" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True, capture_output=True)
    return folder


def fill(folder: Path) -> None:
    """Write to `folder` until its file system is full."""
    try:
        with open(folder / "filler", "wb", buffering=0) as file:
            while True:
                file.write(b"\0" * 4096)
    except OSError:
        pass


def unmount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], check=False, capture_output=True)


def can_mount() -> bool:
    with tempfile.TemporaryDirectory() as folder:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", folder], capture_output=True, check=False)
        if mounted.returncode == 0:
            unmount(Path(folder))
        return mounted.returncode == 0


NEEDS_MOUNT = {"output_read_only_file_system", "output_disk_full_before_the_run", "output_disk_full_during_a_save"}


# ---------------------------------------------------------------------------------------------
# Rewards

REWARDS = '''
import torch
from rlif.rl.rewards import self_certainty_reward

def strings(rollout):
    return ["good"] * rollout.response_ids.shape[0]

def too_few(rollout):
    return torch.zeros(3)

def nan_reward(rollout):
    return self_certainty_reward(rollout) * float("nan")
'''


def reward_case(fx, d, name: str) -> Run:
    (d / "my_rewards.py").write_text(REWARDS)
    return Run(train(fx, d, f"reward.name=my_rewards:{name}"), [fx.config, d / "my_rewards.py"], env={"PYTHONPATH": str(d)})


@case("reward_returns_strings", "11", "config field reward.name = 'my_rewards:strings': the reward returned a list of 4 (str)")
def _(fx, d):
    return reward_case(fx, d, "strings")


@case("reward_returns_the_wrong_count", "11", "the reward returned 3 values for 4 responses")
def _(fx, d):
    return reward_case(fx, d, "too_few")


@case("reward_returns_nan", "17", "the reward function is the likely cause", exit_code=1)
def _(fx, d):
    return reward_case(fx, d, "nan_reward")


# ---------------------------------------------------------------------------------------------
# Run folders: resume, checkpoints


class RunsAFile:
    """A pickle payload: unpickling it creates the file (as a doctored checkpoint's code would)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@case("resume_without_a_run", "-", "holds no run (no config.yaml) to resume")
def _(fx, d):
    return Run(train(fx, d, "run.resume=true"), [fx.config])


@case("resume_with_another_config", "-", "the config differs from the saved one: train.lr (saved 0.001, now 0.0001)")
def _(fx, d):
    fx.copy_run(d / "run")
    return Run(train(fx, d, "run.resume=true", "train.lr=1e-4", config=fx.run_config), [fx.run_config])


@case("checkpoint_pickle_payload", "1", "trainer_state.pt, the pickle file of rlif <= 0.2.0, which rlif no longer loads")
def _(fx, d):
    run = fx.copy_run(d / "run")
    shutil.rmtree(run / "checkpoints" / "step_000002")
    checkpoint = run / "checkpoints" / "step_000001"
    for name in ("trainer_state.json", "trainer_state.safetensors"):
        (checkpoint / name).unlink()
    (checkpoint / "trainer_state.pt").write_bytes(pickle.dumps(RunsAFile(d / "payload_ran")))
    return Run(train(fx, d, "run.resume=true", config=fx.run_config), [fx.run_config],
               check=lambda: "the pickle payload ran" if (d / "payload_ran").exists() else None)


@case("checkpoint_pickle_in_the_new_files", "1", "no checkpoint of")
def _(fx, d):
    run = fx.copy_run(d / "run")
    shutil.rmtree(run / "checkpoints" / "step_000002")
    for name in ("trainer_state.json", "trainer_state.safetensors"):
        (run / "checkpoints" / "step_000001" / name).write_bytes(pickle.dumps(RunsAFile(d / "payload_ran")))
    return Run(train(fx, d, "run.resume=true", config=fx.run_config), [fx.run_config],
               check=lambda: "the pickle payload ran" if (d / "payload_ran").exists() else None)


@case("checkpoint_truncated_latest", "10", "does not load", exit_code=0)
def _(fx, d):
    run = fx.copy_run(d / "run")
    state = run / "checkpoints" / "step_000002" / "trainer_state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    (run / "report.md").unlink()
    return Run(train(fx, d, "run.resume=true", config=fx.run_config), [fx.run_config])


@case("checkpoint_truncated_only_one", "10", "no checkpoint of")
def _(fx, d):
    run = fx.copy_run(d / "run")
    shutil.rmtree(run / "checkpoints" / "step_000001")
    weights = run / "checkpoints" / "step_000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    return Run(train(fx, d, "run.resume=true", config=fx.run_config), [fx.run_config])


@case("complete_run_without_its_report", "18", "writing its missing report", exit_code=0)
def _(fx, d):
    run = fx.copy_run(d / "run")
    (run / "report.md").unlink()
    shutil.rmtree(run / "plots")
    return Run(train(fx, d, "run.resume=true", config=fx.run_config), [fx.run_config],
               check=lambda: None if (run / "report.md").is_file() and (run / "plots" / "training.png").is_file() else "no report")


@case("moved_run", "19", "was run as", exit_code=0)
def _(fx, d):
    run = fx.copy_run(d / "moved")
    shutil.rmtree(run / "checkpoints" / "step_000002")
    return Run(["train", str(fx.run_config), f"run.output_dir={run}", "run.resume=true"], [fx.run_config])


# ---------------------------------------------------------------------------------------------
# rlif score, eval, select, report, plot, models, compare


def score(fx, d, rows: str | None, *extra: str) -> Run:
    path = d / "rows.jsonl"
    if rows is not None:
        path.write_text(rows)
    return Run(["score", "--model", str(fx.model), "--input", str(path), "--output", str(d / "out.jsonl"), "--no-progress", *extra],
               [path] if rows is not None else [])


@case("score_missing_field", "14", "rows.jsonl:2: missing field 'response' (fields: prompt)")
def _(fx, d):
    return score(fx, d, '{"prompt": "1+1=", "response": "2"}\n{"prompt": "2+2="}\n')


@case("score_response_not_a_string", "-", "rows.jsonl:1: field 'response' must be a string, got 2")
def _(fx, d):
    return score(fx, d, '{"prompt": "1+1=", "response": 2}\n')


@case("score_empty_prompt", "-", "rows.jsonl:1: field 'prompt' is empty")
def _(fx, d):
    return score(fx, d, '{"prompt": "", "response": "2"}\n')


@case("score_input_missing", "-", "does not exist")
def _(fx, d):
    return score(fx, d, None)


def evaluate(fx, d, *extra: str, model: Path | None = None) -> list[str]:
    return ["eval", "--model", str(model or fx.model), "--output", str(d / "eval"), "--max-new-tokens", "4", "--no-progress", *extra]


@case("eval_missing_label", "15", "missing label field 'answer' (fields: prompt, solution; name the answer field with --label-field)")
def _(fx, d):
    path = write_jsonl(d / "problems.jsonl", [{"prompt": "1+1=", "solution": "2"}])
    return Run(evaluate(fx, d, "--benchmark", str(path)), [path])


@case("eval_unknown_benchmark", "-", "unknown benchmark 'gsm9k'")
def _(fx, d):
    return Run(evaluate(fx, d, "--benchmark", "gsm9k"), [])


@case("eval_benchmark_file_missing", "-", "does not exist")
def _(fx, d):
    return Run(evaluate(fx, d, "--benchmark", str(d / "nope.jsonl")), [])


@case("eval_benchmark_is_a_directory", "13", "is a directory")
def _(fx, d):
    (d / "problems.jsonl").mkdir()
    return Run(evaluate(fx, d, "--benchmark", str(d / "problems.jsonl")), [d / "problems.jsonl"])


@case("eval_temperature_inf", "5", "--temperature = inf: expected a positive finite number")
def _(fx, d):
    return Run(evaluate(fx, d, "--benchmark", str(fx.data), "--n", "2", "--temperature", "inf"), [])


@case("eval_top_p_above_one", "-", "--top-p = 2.0: expected a number in (0, 1]")
def _(fx, d):
    return Run(evaluate(fx, d, "--benchmark", str(fx.data), "--top-p", "2"), [])


@case("eval_limit_negative", "-", "--limit = -1: expected a non-negative integer")
def _(fx, d):
    return Run(evaluate(fx, d, "--benchmark", str(fx.data), "--limit", "-1"), [])


@case("eval_answer_format_unknown", "-", "answer format 'latex'")
def _(fx, d):
    return Run(evaluate(fx, d, "--benchmark", str(fx.data), "--answer-format", "latex"), [])


@case("eval_template_without_prompt", "-", "--prompt-template = 'Q:': expected a template containing {prompt}")
def _(fx, d):
    return Run(evaluate(fx, d, "--benchmark", str(fx.data), "--prompt-template", "Q:"), [])


@case("eval_resume_with_other_settings", "-", "holds an evaluation with other settings, so it cannot be resumed")
def _(fx, d):
    shutil.copytree(fx.eval_folder, d / "eval")
    return Run(evaluate(fx, d, "--benchmark", str(fx.data), "--limit", "3", "--n", "2"), [])


@case("eval_run_without_a_checkpoint", "-", "is a training run without a complete checkpoint")
def _(fx, d):
    run = fx.copy_run(d / "run")
    shutil.rmtree(run / "checkpoints")
    return Run(evaluate(fx, d, "--benchmark", str(fx.data), model=run), [])


@case("eval_model_missing", "16", "model folder /nonexistent/model does not exist")
def _(fx, d):
    return Run(evaluate(fx, d, "--benchmark", str(fx.data), model=Path("/nonexistent/model")), [])


@case("select_only_the_fields_it_needs", "21", "majority vote of 2", exit_code=0)
def _(fx, d):
    rows = [{"problem": p, "sample": s, "answer": str(p + s % 2), "correct": s != 1, "self_certainty": 1.0 + s,
             "mean_logprob": -1.0 - s} for p in range(2) for s in (-1, 0, 1)]
    path = write_jsonl(d / "responses.jsonl", rows)
    return Run(["select", str(path)], [path])


@case("select_missing_fields", "21", "responses.jsonl:1: missing field(s) correct")
def _(fx, d):
    path = write_jsonl(d / "responses.jsonl", [{"problem": 0, "sample": -1, "answer": "2", "self_certainty": 1.0, "mean_logprob": -1.0}])
    return Run(["select", str(path)], [path])


@case("select_not_an_eval_folder", "-", "is not an rlif evaluation folder (no settings.json)")
def _(fx, d):
    (d / "folder").mkdir()
    return Run(["select", str(d / "folder")], [d / "folder"])


@case("select_empty_file", "-", "no responses")
def _(fx, d):
    (d / "responses.jsonl").write_text("")
    return Run(["select", str(d / "responses.jsonl")], [d / "responses.jsonl"])


@case("report_not_a_run_folder", "-", "not a training run folder, no config.yaml or metrics.jsonl")
def _(fx, d):
    (d / "folder").mkdir()
    return Run(["report", str(d / "folder")], [d / "folder"])


@case("plot_missing_folder", "-", "no such folder")
def _(fx, d):
    return Run(["plot", str(d / "nope")], [])


@case("models_install_unknown", "-", "unknown model")
def _(fx, d):
    return Run(["models", "install", "no-such-model", "--no-pip"], [])


@case("compare_config_missing", "-", "does not exist")
def _(fx, d):
    return Run(["compare", str(d / "nope.yaml")], [])


# ---------------------------------------------------------------------------------------------
# Running the cases


def fingerprint(paths: list[Path]) -> dict[str, str]:
    """sha256 (or 'dir'/'link') of every file and folder below the user's paths."""
    found = {}
    for root in paths:
        for path in [root, *(sorted(root.rglob("*")) if root.is_dir() and not root.is_symlink() else [])]:
            if path.is_symlink():
                found[str(path)] = "link"
            elif path.is_dir():
                found[str(path)] = "dir"
            elif path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def message_line(output: str, expect: str) -> str:
    """The line a user reads: the error, or for a run that goes on, the line the case expects (a note, a warning)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if "error:" in line or "training stopped:" in line or expect in line:
            return line
    for marker in ("error:", "training stopped:", "warning:", "note:", "does not load", "writing its missing", "majority vote",
                   "run directory:"):
        for line in lines:
            if marker in line:
                return line
    return lines[-1] if lines else ""


def run_case(item: Case, fx: Fixtures, folder: Path, mountable: bool) -> dict:
    if item.name in NEEDS_MOUNT and not mountable:
        return {"case": item, "skipped": "needs a tmpfs mount (root)"}
    folder.mkdir(parents=True)
    run = item.build(fx, folder)
    before = fingerprint(run.user)
    result = rlif(run.argv, env=run.env, cwd=folder)
    output = result.stderr + "\n" + result.stdout
    problem = run.check() if run.check else None
    after = fingerprint(run.user)
    lost = sum(1 for path, digest in before.items() if after.get(path) != digest)
    message = message_line(result.stderr if item.exit_code == 2 else result.stdout + "\n" + result.stderr, item.expect)
    traceback = TRACEBACK in output
    clear = result.returncode == item.exit_code and not traceback and item.expect in output and not lost and not problem
    return {"case": item, "exit": result.returncode, "message": message, "traceback": traceback, "lost": lost,
            "clear": clear, "problem": problem, "output": output}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="CASE", help="run these cases only")
    parser.add_argument("--work", type=Path, default=None, help="folder for the cases' files (default: a temporary one)")
    parser.add_argument("--list", action="store_true", help="list the cases and what each expects")
    parser.add_argument("--verbose", action="store_true", help="print the output of every case that is not clear")
    args = parser.parse_args()
    if args.list:
        for item in CASES:
            print(f"{item.name:<40} item {item.item:<3} exit {item.exit_code}  expects: {item.expect}")
        return 0
    chosen = [c for c in CASES if not args.only or c.name in args.only]
    unknown = set(args.only or ()) - {c.name for c in CASES}
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    work = args.work or Path(tempfile.mkdtemp(prefix="rlif-bad-inputs-"))
    fx, mountable = Fixtures(work / "shared"), can_mount()
    print(f"command: python scripts/bad_inputs.py {' '.join(sys.argv[1:])}".rstrip())
    print("\n| case (issue item) | exit code | first line of the message | traceback | user files lost |\n|---|---|---|---|---|")
    results = []
    for item in chosen:
        result = run_case(item, fx, work / "cases" / item.name, mountable)
        results.append(result)
        label = f"{item.name} ({item.item})" if item.item != "-" else item.name
        if "skipped" in result:
            print(f"| {label} | - | skipped: {result['skipped']} | - | - |", flush=True)
            continue
        message = result["message"].replace("|", "\\|")
        message = message if len(message) <= 160 else message[:157] + "..."
        flag = "" if result["clear"] else " **NOT CLEAR**" + (f" ({result['problem']})" if result["problem"] else "")
        print(f"| {label} | {result['exit']} | {message}{flag} | {'yes' if result['traceback'] else 'no'} | {result['lost']} |",
              flush=True)
        if args.verbose and not result["clear"]:
            print(result["output"][-3000:], file=sys.stderr)
    ran = [r for r in results if "skipped" not in r]
    clear = sum(r["clear"] for r in ran)
    recovered = sum(1 for r in ran if r["case"].exit_code != 2)
    print(f"\n{clear} of {len(ran)} cases: a clear error (or, for {recovered} of them, the stop or recovery expected); "
          f"{sum(r['traceback'] for r in ran)} tracebacks; {sum(r['lost'] for r in ran)} user files lost; "
          f"{len(results) - len(ran)} skipped")
    return 0 if clear == len(ran) else 1


if __name__ == "__main__":
    sys.exit(main())
