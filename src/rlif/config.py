"""Typed run configuration: YAML file + `section.field=value` overrides, validated before any work.

Each concern is one flat dataclass with a docstring under every field (`rlif config docs` prints
them). Defaults are the INTUITOR paper's (Qwen2.5-1.5B/3B on MATH): 128 prompts x G = 7, lr 3e-6,
beta 0.005, clip 0.2, temperature 0.9, 3072 new tokens, cosine schedule with 10% warmup.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import inspect
import math
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from rlif.data.answers import get_answer_format
from rlif.data.prompts import LABEL_FORMATS
from rlif.errors import ConfigError
from rlif.files import write_text_atomic
from rlif.rl.rewards import build_reward
from rlif.runs.trackers import check_report_to
from rlif.sampling import DEFAULT_CPU_THREADS, DEFAULT_VLLM_PORT, VLLM_INSTALL, is_address

DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class ModelConfig:
    path: str = ""
    """Policy model: a local Hugging Face model folder or a hub id. The frozen reference is the same weights."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the weights are loaded and updated in (the optimizer state follows it)."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast for forward passes (accelerate). auto: bf16 on a CUDA GPU that supports it, else no."""
    gradient_checkpointing: bool = False
    """Recompute decoder activations in the backward pass (less memory, about 30% more compute)."""
    compile_layers: bool = False
    """Run the update's decoder layers compiled (torch.compile, forward and backward; one graph per layer class, compiled during the first step). Meant for GPUs (fewer, fused kernels; not yet timed on one); one process or DDP, not FSDP2 or DeepSpeed. Sampling and scoring stay as they are."""
    trust_remote_code: bool = False
    """Allow model/tokenizer code from the model folder to run (Hugging Face `trust_remote_code`)."""
    reference_device: str = "auto"
    """Where the frozen reference copy lives: auto (the policy's device), offload (CPU memory, moved to the policy's device only for the reference pass), or a device such as cpu or cuda:1. Not used with LoRA (the reference is the policy with its adapters disabled)."""

    def validate(self) -> None:
        _require(bool(self.path), "model.path", self.path, "a model folder or hub id")
        if self.reference_device not in ("auto", "offload"):
            try:
                torch.device(self.reference_device)
            except (RuntimeError, ValueError):
                _require(False, "model.reference_device", self.reference_device, "auto, offload or a torch device such as cpu or cuda:1")


@dataclass
class DataConfig:
    path: str = ""
    """Training prompts: a .jsonl file (one JSON object per line) or a .parquet file."""
    prompt_field: str = "prompt"
    """Field holding the prompt text."""
    label_field: str | None = "answer"
    """Field holding the reference answer, used only by rewards that declare `uses_labels` and for monitoring accuracy. null: no labels. With a code answer format: `tests` (the problems' tests) or null."""
    prompt_template: str = "{prompt}"
    """Template of the user message: `{prompt}` is replaced by the prompt text (other braces are kept as they are)."""
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    """System message for the chat template (the paper's asks for step-by-step reasoning and a \\boxed{} answer). null: none."""
    chat_template: bool = True
    """Wrap the user message in the tokenizer's chat template (with a generation prompt). false: the rendered text is the prompt."""
    max_prompt_tokens: int = 512
    """Prompts longer than this (in tokens, after templating) are dropped at start-up, and the count is printed."""
    answer_format: str = "math"
    """How final answers are extracted from responses and compared with labels (`rlif.answers`; or package.module:attribute). `code` (chat style) or `code_completion`: data.path is a HumanEval/MBPP/LiveCodeBench file, answers are programs run against its tests in a sandbox (`rlif.code.grading`)."""
    label_format: Literal["as_is", "gsm8k"] = "as_is"
    """How the reference answer is read from the label field: as_is (the whole field), or gsm8k (the text after the last `####`: GSM8K's answer field is a worked solution ending in `#### 72`, and `rlif eval --benchmark gsm8k` reads it the same way). A math run whose labels look like worked solutions gets a warning at start-up."""

    def validate(self) -> None:
        try:
            get_answer_format(self.answer_format)
        except (KeyError, ImportError, AttributeError, TypeError) as error:
            raise ConfigError(f"config field data.answer_format = {self.answer_format!r}: {error.args[0] if error.args else error}",
                              field="data.answer_format") from None
        _require(self.label_format in LABEL_FORMATS, "data.label_format", self.label_format, f"one of {', '.join(LABEL_FORMATS)}")
        _require(bool(self.path), "data.path", self.path, "a .jsonl or .parquet file")
        _require(Path(self.path).suffix in (".jsonl", ".parquet"), "data.path", self.path, "a file ending in .jsonl or .parquet")
        _require("{prompt}" in self.prompt_template, "data.prompt_template", self.prompt_template, "a format string containing {prompt}")
        _require(self.max_prompt_tokens > 0, "data.max_prompt_tokens", self.max_prompt_tokens, "a positive integer")


@dataclass
class RolloutConfig:
    group_size: int = 7
    """G: responses sampled per prompt; advantages are normalized within each group."""
    temperature: float = 0.9
    """Sampling temperature; policy and reference log-probs use the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0 samples from the whole distribution, as the paper)."""
    max_new_tokens: int = 3072
    """Responses stop at EOS or after this many tokens (then counted as truncated)."""
    generation_batch_size: int = 64
    """Sequences per `generate` call (memory knob; does not change the result's distribution)."""
    decode: Literal["dynamic", "static", "compiled"] = "dynamic"
    """Decode loop of the native engine: dynamic (growing cache, finished rows leave at once; best on CPU), static (fixed-shape
    cache, no host waits), compiled (static + torch.compile with CUDA graphs; for GPUs). All three use the same random numbers."""
    engine: Literal["auto", "native", "vllm", "vllm-server"] = "auto"
    """Generation engine: native (rlif's KV-cache sampler: exact, keyed randomness; signals from the sampling pass), vllm (a colocated vLLM engine on each process's device, weights synced after every update; the trainer then scores the rollout in one pass for pi_old and self-certainty), vllm-server (the same engine on other GPUs or machines, `rlif serve-vllm`, at rollout.vllm_servers; weights pushed over NCCL, gloo on CPU), auto (vllm when it is installed and the device is a GPU, else native)."""
    vllm_servers: list[str] = field(default_factory=list)
    """For engine vllm-server: host:port of each `rlif serve-vllm` (a list, or one); every training process sends its prompts to its share of them, and process 0 pushes the weights to all (docs/vllm-engine.md)."""
    gpu_memory_utilization: float = 0.3
    """vllm engine on a GPU: the share of the device's memory vLLM takes for its weights and KV cache (the update shares the device; vLLM sleeps between rollouts where it can)."""
    cpu_threads: int = DEFAULT_CPU_THREADS
    """Torch threads of the native engine's decode loop on a CPU (0: torch's default, one per core). Decoding runs many small operations, which extra threads slow down on a busy machine (docs/performance.md); the rest of the step keeps torch's default."""

    def validate(self) -> None:
        _require(self.group_size >= 2, "rollout.group_size", self.group_size, "an integer >= 2 (advantages need a group)")
        _require(self.temperature > 0, "rollout.temperature", self.temperature, "a positive number")
        _require(0 < self.top_p <= 1, "rollout.top_p", self.top_p, "a number in (0, 1]")
        _require(self.max_new_tokens >= 1, "rollout.max_new_tokens", self.max_new_tokens, "a positive integer")
        _require(self.generation_batch_size >= 1, "rollout.generation_batch_size", self.generation_batch_size, "a positive integer")
        _require(0 < self.gpu_memory_utilization < 1, "rollout.gpu_memory_utilization", self.gpu_memory_utilization, "a number in (0, 1)")
        _require(self.cpu_threads >= 0, "rollout.cpu_threads", self.cpu_threads, "0 (torch's default) or a positive integer")
        if self.engine == "vllm" and importlib.util.find_spec("vllm") is None:
            _require(False, "rollout.engine", self.engine, f"native or auto, or install vLLM: {VLLM_INSTALL}")
        if self.engine == "vllm-server":
            _require(bool(self.vllm_servers), "rollout.vllm_servers", self.vllm_servers,
                     f"the host:port of at least one `rlif serve-vllm` (e.g. [localhost:{DEFAULT_VLLM_PORT}]) for engine vllm-server")
            for index, address in enumerate(self.vllm_servers):
                _require(is_address(address), f"rollout.vllm_servers[{index}]", address, f"host:port, e.g. localhost:{DEFAULT_VLLM_PORT}")


@dataclass
class TrainConfig:
    prompts_per_step: int = 128
    """Prompts per optimizer step (the batch is prompts_per_step x group_size responses)."""
    steps: int = 0
    """Optimizer steps to run. 0: as many as `epochs` passes over the data give (rounded down, at least 1)."""
    epochs: float = 1.0
    """Passes over the training prompts when `steps` is 0."""
    lr: float = 3e-6
    """Peak AdamW learning rate."""
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup (to 0 at the last step for cosine and linear)."""
    warmup_ratio: float = 0.1
    """Fraction of the steps with a linear warmup from 0."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW (beta1, beta2)."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    clip_eps: float = 0.2
    """PPO ratio clip: the surrogate uses clip(ratio, 1 - clip_eps, 1 + clip_eps). With one update per rollout (ppo_epochs = mini_batches = 1) the ratio is exactly 1, so the clip never binds and this setting changes nothing (loss/clip_frac is 0)."""
    ppo_epochs: int = 1
    """Passes of optimizer updates over each rollout (TRL's num_iterations, verl's ppo_epochs). Above 1, pi_old comes from a no-grad scoring pass of the policy before the first update, and the clip binds."""
    mini_batches: int = 1
    """Optimizer updates per pass: the rollout's responses are split into this many mini-batches (a seeded shuffle per step and pass; verl's ppo_mini_batch_size = batch / mini_batches). The learning rate schedule advances once per step."""
    tis_cap: float = 0.0
    """Truncated importance sampling for engines whose log-probs differ from the trainer's (vllm): each token's loss is weighted by min(pi_trainer / pi_engine, tis_cap) (TRL's vLLM importance sampling correction, verl's TIS). 0: off."""
    kl_coef: float = 0.005
    """beta: weight of the k3 KL(pi || pi_ref) penalty in the loss. 0 skips the reference model entirely."""
    advantage_eps: float = 1e-6
    """eps in (r - mean_group) / (std_group + eps)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward of the update (gradient accumulation over the step's batch)."""
    micro_batch_tokens: int = 0
    """0: micro-batches of micro_batch_size sequences. > 0: each micro-batch of the update takes as many sequences (longest first) as fit this many token positions once trimmed of padding (sequences x (longest prompt + longest response) among them), so batches of short answers hold more of them; at least data.max_prompt_tokens + rollout.max_new_tokens."""
    score_batch_size: int = 16
    """Sequences per no-grad forward of the reference model (its log-probs for the KL term)."""
    score_batch_tokens: int = 0
    """0: reference forwards of score_batch_size sequences. > 0: each takes as many sequences (longest first) as fit this many token positions once trimmed of padding, as micro_batch_tokens does for the update; at least data.max_prompt_tokens + rollout.max_new_tokens."""
    chunk_tokens: int = 2048
    """Tokens per chunk of the vocabulary projection (bounds the float32 logits held at once)."""
    seed: int = 0
    """Seeds data order and sampling; each step derives its own seed, so a resumed run repeats the same trajectory."""

    def validate(self) -> None:
        for name in ("prompts_per_step", "micro_batch_size", "score_batch_size", "chunk_tokens"):
            _require(getattr(self, name) >= 1, f"train.{name}", getattr(self, name), "a positive integer")
        for name in ("micro_batch_tokens", "score_batch_tokens"):
            _require(getattr(self, name) >= 0, f"train.{name}", getattr(self, name), "0 (off) or a positive integer")
        _require(self.steps >= 0, "train.steps", self.steps, "0 (use epochs) or a positive integer")
        _require(self.epochs > 0, "train.epochs", self.epochs, "a positive number")
        # AdamW moves each weight by about lr per step: above 1 a run diverges at once (and near float32's range the
        # optimizer's step size overflows)
        _require(0 < self.lr <= 1, "train.lr", self.lr, "a positive number up to 1")
        _require(0 <= self.warmup_ratio < 1, "train.warmup_ratio", self.warmup_ratio, "a number in [0, 1)")
        _require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "a non-negative number")
        betas_ok = len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas)
        _require(betas_ok, "train.adam_betas", self.adam_betas, "two numbers in [0, 1)")
        _require(self.max_grad_norm > 0, "train.max_grad_norm", self.max_grad_norm, "a positive number")
        _require(0 < self.clip_eps < 1, "train.clip_eps", self.clip_eps, "a number in (0, 1)")
        _require(self.kl_coef >= 0, "train.kl_coef", self.kl_coef, "a non-negative number")
        _require(self.advantage_eps > 0, "train.advantage_eps", self.advantage_eps, "a positive number")
        for name in ("ppo_epochs", "mini_batches"):
            _require(getattr(self, name) >= 1, f"train.{name}", getattr(self, name), "a positive integer")
        _require(self.tis_cap == 0 or self.tis_cap >= 1, "train.tis_cap", self.tis_cap, "0 (off) or a cap >= 1 (e.g. 2)")


@dataclass
class LoraConfig:
    rank: int = 0
    """LoRA rank r (peft). 0: train every weight (full fine-tuning). > 0: train low-rank adapters only; the reference is the base model with the adapters disabled, so no second copy of the weights is held."""
    alpha: float = 16.0
    """LoRA scaling numerator: the adapter update is scaled by alpha / rank."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Modules that get adapters (peft `target_modules`): names such as q_proj, v_proj, or ["all-linear"] for every linear layer except the output head. The output head (lm_head) cannot be adapted."""
    save_merged: bool = True
    """Checkpoints also hold the merged weights (base + adapters) as a plain Hugging Face model folder; the adapter itself is always saved in the checkpoint's adapter/ folder (peft format)."""

    def validate(self) -> None:
        _require(self.rank >= 0, "lora.rank", self.rank, "0 (full fine-tuning) or a positive integer")
        _require(self.alpha > 0, "lora.alpha", self.alpha, "a positive number")
        _require(bool(self.target_modules), "lora.target_modules", self.target_modules, 'a non-empty list of module names, or ["all-linear"]')
        if self.rank > 0:
            try:
                import peft  # noqa: F401
            except ImportError:
                _require(False, "lora.rank", self.rank, "0, or install peft (pip install 'rlif[lora]') to train LoRA adapters")


@dataclass
class RewardConfig:
    name: str = "self_certainty"
    """Reward function: a registered name (`rlif rewards` lists them) or `package.module:function` of your own."""
    weights: dict[str, float] = field(default_factory=dict)
    """For name `weighted` only: reward name -> weight; the reward is the weighted sum of the named rewards, each normalized within its group first, e.g. {self_certainty: 1.0, correctness: 1.0}."""

    def validate(self) -> None:
        try:
            build_reward(self.name, self.weights)
        except (KeyError, ImportError, AttributeError) as error:
            field_name = "reward.weights" if self.weights and self.name == "weighted" else "reward.name"
            value = self.weights if field_name == "reward.weights" else self.name
            raise ConfigError(f"config field {field_name} = {value!r}: {error.args[0] if error.args else error}", field=field_name) from None


@dataclass
class EvalConfig:
    path: str | None = None
    """Held-out labeled problems (same fields, template and answer format as `data`) evaluated during training. null: none."""
    every: int = 0
    """Evaluate before the first step, every this many steps and after the last one. 0: only before and after."""
    limit: int = 0
    """Evaluate the first `limit` problems of the file (0: all)."""
    num_samples: int = 0
    """Sampled answers per problem at the rollout temperature, for sampled accuracy (0: greedy only)."""
    max_new_tokens: int = 0
    """Token limit of evaluation answers (0: rollout.max_new_tokens)."""
    batch_size: int = 64
    """Sequences per evaluation decode batch."""

    def validate(self) -> None:
        if self.path is not None:
            _require(Path(self.path).suffix in (".jsonl", ".parquet"), "eval.path", self.path, "a .jsonl or .parquet file, or null")
        for name in ("every", "limit", "num_samples", "max_new_tokens"):
            _require(getattr(self, name) >= 0, f"eval.{name}", getattr(self, name), "a non-negative integer")
        _require(self.batch_size >= 1, "eval.batch_size", self.batch_size, "a positive integer")


@dataclass
class RunConfig:
    output_dir: str = "runs/intuitor"
    """Run directory: resolved config, metrics.jsonl, samples, checkpoints, plots."""
    resume: bool = False
    """Continue from the latest complete checkpoint in output_dir (the config must match the saved one but for batching and memory settings, see docs/method.md)."""
    overwrite: bool = False
    """Allow starting a fresh run in a non-empty output_dir (its old files are deleted)."""
    save_every: int = 50
    """Checkpoint every this many steps (and always at the last step)."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept on disk (older ones are deleted after a newer one is complete)."""
    sample_every: int = 10
    """Write sample completions to samples.jsonl every this many steps (and at step 1)."""
    num_samples: int = 4
    """Completions written each time samples are dumped."""
    report_to: list[str] = field(default_factory=lambda: ["none"])
    """Experiment trackers (accelerate's), a list or one name: tensorboard, wandb, mlflow, trackio, comet_ml, aim, clearml, dvclive, swanlab; all (every installed one); none. They get the flattened config, each step's metrics and the samples; metrics.jsonl is always written (docs/trackers.md)."""
    progress: bool = True
    """Show progress bars."""
    stop_rule: Literal["none", "agreement_early_stop", "agreement_within_kl"] = "none"
    """Label-free early stopping, decided at each evaluation from the held-out prompts' sampled answers (their labels unused; rlif.runs.checkpoint_choice): agreement_early_stop stops when the answers' agreement falls and keeps the evaluation before; agreement_within_kl stops when the KL to the initial model exceeds run.stop_kl_budget and keeps the most self-consistent evaluation within it. The kept checkpoint is written to chosen_checkpoint.json and never deleted. Needs eval.path and eval.num_samples >= 2."""
    stop_kl_budget: float = 0.05
    """For stop_rule agreement_within_kl: the KL to the initial model (nats per token, sampled held-out answers) above which the run stops."""

    def validate(self) -> None:
        _require(self.stop_kl_budget > 0, "run.stop_kl_budget", self.stop_kl_budget, "a positive number")
        for name in ("save_every", "keep_checkpoints", "sample_every"):
            _require(getattr(self, name) >= 1, f"run.{name}", getattr(self, name), "a positive integer")
        _require(self.num_samples >= 0, "run.num_samples", self.num_samples, "a non-negative integer")
        _require(bool(self.output_dir), "run.output_dir", self.output_dir, "a folder path")
        check_report_to(self.report_to)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training prompts and how they are rendered."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampling of responses."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The GRPO update."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Low-rank adapters (peft) instead of full fine-tuning."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """What is optimized."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation on held-out problems during training."""
    run: RunConfig = field(default_factory=RunConfig)
    """Where results go, checkpointing and logging."""

    def validate(self) -> "Config":
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate()
        if self.run.stop_rule != "none":
            _require(self.eval.path is not None and self.eval.num_samples >= 2, "run.stop_rule", self.run.stop_rule,
                     "none, or held-out evaluation with sampled answers: eval.path and eval.num_samples >= 2")
        longest = self.data.max_prompt_tokens + self.rollout.max_new_tokens
        for name in ("micro_batch_tokens", "score_batch_tokens"):
            budget = getattr(self.train, name)
            _require(budget == 0 or budget >= longest, f"train.{name}", budget,
                     f"0 (off) or at least data.max_prompt_tokens + rollout.max_new_tokens = {longest} (one sequence's longest)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Loading


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config field {name} = {value!r}: expected {allowed}", field=name)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Config from a YAML file (optional) plus `section.field=value` overrides, validated.

    An error about a value that came from the file names the file and the line (FILE:LINE: config field ...)."""
    raw: dict[str, Any] = {}
    lines: dict[tuple, int] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a directory; expected a YAML file")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        raw, lines = read_yaml(path)
        raw = raw or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path}: expected a mapping of sections, got {type(raw).__name__}")
    return config_from_dict(raw, overrides, source=str(path) if path else "config", lines=lines)


def read_yaml(path: str | Path) -> tuple[Any, dict[tuple, int]]:
    """(data, line of each mapping key by its path of keys) of a YAML file, read with yaml's SafeLoader.

    Refused with ConfigError naming the file and the line: text that is not UTF-8, invalid YAML, and a key given
    twice in one mapping (YAML would keep the last one silently)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(f"config file {path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x} at byte offset "
                          f"{error.start}); save the file as UTF-8") from None
    loader = yaml.SafeLoader(text)
    lines: dict[tuple, int] = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines
        _key_lines(node, (), lines, path)
        return loader.construct_document(node), lines
    except yaml.YAMLError as error:  # the line where the construct began (an unclosed bracket), then the problem's
        context, problem = getattr(error, "context_mark", None), getattr(error, "problem_mark", None)
        mark = context or problem
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        what = getattr(error, "problem", None) or str(error)
        if context is not None and problem is not None:
            what = f"{error.context}: {what} at line {problem.line + 1}"
        raise ConfigError(f"config file {where}: not valid YAML ({what})") from None
    finally:
        loader.dispose()


def _key_lines(node, keys: tuple, lines: dict[tuple, int], path: Path) -> None:
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _key_lines(item, keys, lines, path)
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
            continue
        key, line = (*keys, key_node.value), key_node.start_mark.line + 1
        if key in lines:
            raise ConfigError(f"config file {path}:{line}: duplicate key {'.'.join(key)!r} (first at line {lines[key]}); "
                              "YAML would keep only the last one: delete one of them")
        lines[key] = line
        _key_lines(value_node, key, lines, path)


def config_from_dict(raw: dict[str, Any], overrides=(), source: str = "config", lines: dict[tuple, int] | None = None) -> Config:
    """Config from a mapping of sections (e.g. a YAML file's; `lines`: the line of each key there) plus overrides."""
    lines = lines or {}
    overridden: set[str] = set()
    try:
        values: dict[str, dict[str, Any]] = {}
        sections = {f.name: f for f in dataclasses.fields(Config)}
        for section_name, section_values in raw.items():
            _check_known(section_name, sections, _located(source, lines.get((section_name,))))
            if not isinstance(section_values, dict):
                raise ConfigError(f"{_located(source, lines.get((section_name,)))}: section {section_name!r} must be a mapping, "
                                  f"got {section_values!r}")
            values.setdefault(section_name, {}).update(section_values)
        for override in overrides:
            key, sep, text = override.partition("=")
            section_name, dot, field_name = key.strip().partition(".")
            if not sep or not dot:
                raise ConfigError(f"override {override!r}: expected section.field=value, e.g. train.lr=1e-5")
            _check_known(section_name, sections, "override")
            values.setdefault(section_name, {})[field_name] = _OverrideText(text)
            overridden.add(f"{section_name}.{field_name}")
        config = Config()
        for section_name, section_values in values.items():
            section_cls = type(getattr(config, section_name))
            setattr(config, section_name, _build_section(section_cls, section_name, section_values, source, lines))
        return config.validate()
    except ConfigError as error:
        from_file = error.field and not any(error.field == o or error.field.startswith((o + ".", o + "[")) for o in overridden)
        line = _field_line(error.field, lines) if from_file else None
        if line is None:
            raise
        raise ConfigError(f"{source}:{line}: {error}", field=error.field) from None


def _located(source: str, line: int | None) -> str:
    return f"{source}:{line}" if line else source


def _field_line(field_name: str, lines: dict[tuple, int]) -> int | None:
    """The line of a field ("train.adam_betas[1]", "reward.weights.x") in the file: of its deepest key there."""
    keys = tuple(re.sub(r"\[\d+\]", "", field_name).split("."))
    for depth in range(len(keys), 1, -1):
        if keys[:depth] in lines:
            return lines[keys[:depth]]
    return None


class _OverrideText(str):
    """A value typed on the command line: parsed according to the field's type."""


def _check_known(name: str, known: dict, where: str, prefix: str = "") -> None:
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f"; did you mean {prefix + close[0]!r}?" if close else f"; known: {', '.join(prefix + k for k in known)}"
        raise ConfigError(f"{where}: unknown config key {prefix + name!r}{hint}")


def _build_section(cls: type, section_name: str, values: dict[str, Any], source: str = "config", lines: dict | None = None):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        where = "override" if isinstance(value, _OverrideText) else _located(source, (lines or {}).get((section_name, name)))
        _check_known(name, fields, where, prefix=f"{section_name}.")
        try:
            kwargs[name] = _coerce(value, hints[name], f"{section_name}.{name}")
        except ConfigError as error:
            error.field = error.field or f"{section_name}.{name}"
            raise
    return cls(**kwargs)


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type, or raise ConfigError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(value, _OverrideText) and annotation is not str and not (origin in (typing.Union, types.UnionType) and str in args):
        try:
            value = yaml.safe_load(str(value))
        except yaml.YAMLError:
            value = str(value)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("null", "none"))):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config field {name} = {value!r}: expected one of {', '.join(map(repr, args))}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config field {name} = {value!r}: expected true or false")
    if annotation is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit())):
            raise ConfigError(f"config field {name} = {value!r}: expected an integer")
        return int(value)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"config field {name} = {value!r}: expected a number")
        try:
            number = float(value)  # YAML 1.1 reads 3e-6 as a string; float() accepts it
        except (TypeError, ValueError):
            raise ConfigError(f"config field {name} = {value!r}: expected a number") from None
        if not math.isfinite(number):  # inf or nan would pass every range check and fail steps later
            raise ConfigError(f"config field {name} = {value!r}: expected a finite number")
        return number
    if annotation is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"config field {name} = {value!r}: expected a string")
        return str(value)
    if origin is list:
        if isinstance(value, str) and args[0] is str:
            value = [value]  # one name for a one-item list: run.report_to=tensorboard
        if not isinstance(value, list):
            raise ConfigError(f"config field {name} = {value!r}: expected a list")
        return [_coerce(item, args[0], f"{name}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config field {name} = {value!r}: expected a mapping")
        return {_coerce(k, args[0], name): _coerce(v, args[1], f"{name}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported config type {annotation} for {name}")


def save_config(config: Config, path: str | Path) -> None:
    """Written whole or not at all (a kill mid-write keeps the old file: a resumed run reads it)."""
    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True))


# ---------------------------------------------------------------------------------------------
# Documentation


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass, by field name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def config_reference() -> str:
    """Markdown table of every config field: name, type, default, meaning."""
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    defaults = Config()
    for section in dataclasses.fields(Config):
        cls = type(getattr(defaults, section.name))
        docs = field_docs(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = _type_name(hints[f.name])
            default = getattr(getattr(defaults, section.name), f.name)
            lines.append(f"| `{section.name}.{f.name}` | {kind} | `{default!r}` | {docs.get(f.name, '')} |".replace("\\\\", "\\"))
    return "\n".join(lines)


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args).replace("NoneType", "null")
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))
