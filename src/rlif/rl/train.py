"""The training loop: set-up, then `train_step` (rlif.rl.step) for each step, with evaluation, logging and checkpoints.

`rlif train CONFIG` calls `train(config)`. Everything that can fail cheaply (the config, the distributed setup, the
reward, the tokenizer, the prompt files, the run folder) fails before a model is loaded. A resumed run continues from
its latest complete checkpoint with the same data order, random numbers, optimizer and schedule state, so on the same
platform it repeats the uninterrupted run's metrics exactly.

Departures from the paper, and the choices it leaves open:
- Log-probs for the PPO ratio and the KL use the sampling temperature (the behaviour policy);
  self-certainty and entropy use temperature 1 (the paper's definition, the same numbers
  `rlif score` gives).
- Advantage std is unbiased with eps 1e-6 (verl); the loss is a token mean over the whole step's
  batch (across micro-batches and processes), exactly as if it were one batch.
- Dropout is disabled: the update scores tokens with the same function that sampled them.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import AutocastKwargs, gather_object
from transformers import get_scheduler

from rlif.config import Config, save_config
from rlif.data import jsonl
from rlif.data.answers import get_answer_format
from rlif.data.prompts import TrainingPrompts, prepare_prompts
from rlif.errors import ConfigError
from rlif.eval.generate import evaluate_in_training
from rlif.models.load import eos_token_ids, load_model, load_tokenizer
from rlif.models.lora import load_policy
from rlif.rl.checkpoint import STATE_FILE, latest_checkpoint, remove_incomplete, rng_state, save_checkpoint, set_rng_state
from rlif.rl.distributed import (
    check_supported_setup,
    full_parameters,
    init_fsdp_root,
    load_optimizer_state_dict,
    model_state_dict,
    optimizer_state_dict,
    sampling_model,
)
from rlif.rl.reference import build_reference
from rlif.rl.rewards import build_reward, check_answer_format
from rlif.rl.step import StepPrompts, TrainState, cached_casts, sample_records, train_step
from rlif.runs.log import RunLogger
from rlif.runs.report import write_report
from rlif.sampling.keys import seed_for
from rlif.signals.model import SignalModel

# Config fields that may differ between a run and its resumption: how it runs, not what it computes (the batching and
# memory settings change only the order of float additions; a run that ran out of memory resumes with smaller ones).
_RESUMABLE_DIFFERENCES = {
    "run.resume", "run.overwrite", "run.progress", "run.report_to",
    "train.micro_batch_size", "train.micro_batch_tokens", "train.score_batch_size", "train.score_batch_tokens",
    "train.chunk_tokens",
    "rollout.generation_batch_size", "rollout.decode",
    "model.gradient_checkpointing", "model.compile_layers", "model.reference_device",
}


def total_steps(config: Config, num_prompts: int) -> int:
    if config.train.steps:
        return config.train.steps
    steps = int(config.train.epochs * num_prompts // config.train.prompts_per_step)
    if steps < 1:
        raise ConfigError(
            f"config field train.prompts_per_step = {config.train.prompts_per_step}: the data has only {num_prompts} "
            f"prompts, so {config.train.epochs} epoch(s) make no full step; lower it or set train.steps"
        )
    return steps


def step_prompt_indices(step: int, prompts_per_step: int, num_prompts: int, seed: int) -> list[int]:
    """Global prompt indices of `step` (1-based): consecutive slices of per-epoch permutations."""
    indices = []
    for position in range((step - 1) * prompts_per_step, step * prompts_per_step):
        epoch, offset = divmod(position, num_prompts)
        generator = torch.Generator().manual_seed(seed_for(seed, epoch))
        indices.append(int(torch.randperm(num_prompts, generator=generator)[offset]))
    return indices


def prepare_run_dir(config: Config, accelerator) -> Path:
    run_dir = Path(config.run.output_dir)
    saved = run_dir / "config.yaml"
    if config.run.resume:
        if not saved.exists():
            raise ConfigError(f"config field run.resume = True: {run_dir} holds no run (no config.yaml) to resume")
        differences = _config_differences(yaml.safe_load(saved.read_text()), config.to_dict())
        refused = [d for d in differences if d.split(" ")[0] not in _RESUMABLE_DIFFERENCES]
        if refused:
            raise ConfigError(f"cannot resume {run_dir}: the config differs from the saved one: " + "; ".join(refused))
        changed = [d for d in differences if not d.startswith("run.")]
        if changed:
            accelerator.print(f"resuming {run_dir} with changed settings: " + "; ".join(changed))
            accelerator.wait_for_everyone()  # every process has read the saved config before it is replaced
            if accelerator.is_main_process:  # config.yaml says what runs from here on; resumes.log keeps the history
                latest = latest_checkpoint(run_dir)
                with open(run_dir / "resumes.log", "a") as log:
                    log.write(f"resumed after step {latest[0] if latest else 0} with: " + "; ".join(changed) + "\n")
                save_config(config, saved)
            accelerator.wait_for_everyone()
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if not config.run.overwrite:
            raise ConfigError(
                f"config field run.output_dir = {str(run_dir)!r}: the folder is not empty; "
                "pass run.resume=true to continue that run or run.overwrite=true to start over"
            )
        if accelerator.is_main_process:
            shutil.rmtree(run_dir)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, saved)
    accelerator.wait_for_everyone()
    return run_dir


def _config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    differences = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += _config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key} (saved {a!r}, now {b!r})")
    return differences


def build_accelerator(config: Config):
    mixed_precision = config.model.mixed_precision
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    log_with = None if config.run.report_to == "none" else config.run.report_to
    # The update's forward (the prepared model's, under this autocast) uses each weight once: autocast's cache would
    # only hold a bf16 copy of every weight until the forward ends (0.67 GiB for 0.5B, at the update's peak).
    # Sampling, which reuses the weights at every decode step, keeps the cache (`rlif.rl.step.cached_casts`).
    return Accelerator(mixed_precision=mixed_precision, log_with=log_with, project_dir=config.run.output_dir,
                       kwargs_handlers=[AutocastKwargs(cache_enabled=False)])


@dataclass
class Run:
    """A run ready to train: the step's state and what the loop around the steps needs."""

    state: TrainState
    prompts: TrainingPrompts  # the training prompts
    eval_problems: TrainingPrompts | None  # held-out labeled problems, None without eval.path
    num_steps: int
    start_step: int  # the last step already done (0 for a new run)


def train(config: Config) -> Path:
    """Run (or resume) training as configured; returns the run directory."""
    run_dir, run = set_up(config)
    if run is None:  # a resumed run that had already finished
        return run_dir
    state, accelerator = run.state, run.state.accelerator
    logger = RunLogger(run_dir, accelerator, run.num_steps, run.start_step, config.run.progress, config.run.report_to)
    if run.prompts.dropped:
        logger.write(f"dropped {run.prompts.dropped} prompts longer than data.max_prompt_tokens={config.data.max_prompt_tokens}")
    if run.start_step == 0 and run.eval_problems is not None:
        logger.log(0, evaluate(state, run.eval_problems, 0))
    for step in range(run.start_step + 1, run.num_steps + 1):
        result = train_step(state, step, step_prompts(state, run.prompts, step))
        metrics = result.metrics
        if run.eval_problems is not None and ((config.eval.every and step % config.eval.every == 0) or step == run.num_steps):
            metrics.update(evaluate(state, run.eval_problems, step))
        logger.log(step, metrics)
        if step == 1 or step % config.run.sample_every == 0:
            has_labels = config.data.label_field is not None
            records = gather_object(sample_records(result.rollout, result.rewards, config.run.num_samples, has_labels))
            logger.samples(step, records[: config.run.num_samples])  # every process's first groups, then cut
        if step % config.run.save_every == 0 or step == run.num_steps:
            save(state, step)
    logger.close()
    accelerator.end_training()
    if accelerator.is_main_process:
        write_report(run_dir)  # plots/*.png and report.md
    return run_dir


def set_up(config: Config) -> tuple[Path, Run | None]:
    """Check everything that can fail cheaply, then load the models (from the latest checkpoint when resuming).
    Returns the run directory and the run, or None for a resumed run that is already complete."""
    accelerator = build_accelerator(config)
    check_supported_setup(accelerator, config)
    if config.train.prompts_per_step % accelerator.num_processes:
        raise ConfigError(
            f"config field train.prompts_per_step = {config.train.prompts_per_step}: must be divisible by the "
            f"{accelerator.num_processes} processes (each samples whole groups)"
        )
    reward = build_reward(config.reward.name, config.reward.weights)
    if reward.uses_labels and config.data.label_field is None:
        raise ConfigError(f"config field reward.name = {reward.name!r} needs labels, but data.label_field is null")
    check_answer_format(reward, get_answer_format(config.data.answer_format))
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code)
    prompts = prepare_prompts(config.data, tokenizer, config.data.path)
    eval_problems = None
    if config.eval.path is not None:
        if config.data.label_field is None:
            raise ConfigError(f"config field eval.path = {config.eval.path!r}: evaluation needs labels, but data.label_field is null")
        eval_problems = prepare_prompts(config.data, tokenizer, config.eval.path, config.eval.limit)
    num_steps = total_steps(config, len(prompts.records))
    run_dir = prepare_run_dir(config, accelerator)

    resume_from = latest_checkpoint(run_dir) if config.run.resume else None
    start_step = resume_from[0] if resume_from else 0
    if start_step >= num_steps:
        accelerator.print(f"{run_dir} is already complete ({start_step}/{num_steps} steps)")
        return run_dir, None
    policy = load_policy(config, resume_from[1] if resume_from else None)  # full weights, or base + LoRA adapters
    # The frozen initial model: the KL term, offline rewards, evaluation's label-free signals.
    needs_reference = config.train.kl_coef > 0 or getattr(reward, "needs_reference", False)
    reference = build_reference(config, accelerator, policy, load_model, needed=needs_reference)  # None if not needed
    signal_model = SignalModel(policy, config.train.chunk_tokens)
    # fused on CUDA: one kernel, and no parameter-sized temporary as the foreach AdamW makes (its sqrt of the second
    # moments); CPU runs keep the foreach one, whose trajectories the testbed figures come from
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=config.train.lr, betas=tuple(config.train.adam_betas),
        weight_decay=config.train.weight_decay, fused=accelerator.device.type == "cuda",
    )
    scheduler = get_scheduler(
        config.train.lr_schedule, optimizer, num_warmup_steps=int(config.train.warmup_ratio * num_steps), num_training_steps=num_steps
    )
    if resume_from:
        saved = torch.load(resume_from[1] / STATE_FILE, weights_only=False, mmap=True)
        scheduler.load_state_dict(saved["scheduler"])
        if accelerator.num_processes == len(saved["rng"]):
            set_rng_state(saved["rng"][accelerator.process_index])
    if config.run.resume and accelerator.is_main_process:
        # Forget what was logged after the checkpoint (all of it when there is none: step 0 reruns).
        last_kept = start_step if resume_from else -1
        jsonl.truncate_steps(run_dir / "metrics.jsonl", last_kept)
        jsonl.truncate_steps(run_dir / "samples.jsonl", last_kept)
        remove_incomplete(run_dir)
    signal_model, optimizer = accelerator.prepare(signal_model, optimizer)
    if resume_from:  # after prepare: the state is keyed by parameter name and gets sharded like the parameters
        load_optimizer_state_dict(accelerator, signal_model, optimizer, saved["optimizer"])
    init_fsdp_root(accelerator, signal_model)
    if config.run.report_to != "none":
        accelerator.init_trackers("rlif", config=config.to_dict())
    state = TrainState(
        config=config, accelerator=accelerator, signal_model=signal_model, optimizer=optimizer, scheduler=scheduler,
        reference=reference, reward=reward, tokenizer=tokenizer, eos_ids=eos_token_ids(tokenizer, policy),
        answer_format=get_answer_format(config.data.answer_format), run_dir=run_dir,
    )
    return run_dir, Run(state, prompts, eval_problems, num_steps, start_step)


def step_prompts(state: TrainState, prompts: TrainingPrompts, step: int) -> StepPrompts:
    """This process's share of step `step`'s prompts (consecutive slices of per-epoch permutations)."""
    config, accelerator = state.config, state.accelerator
    indices = step_prompt_indices(step, config.train.prompts_per_step, len(prompts.records), config.train.seed)
    local = config.train.prompts_per_step // accelerator.num_processes
    positions = range(accelerator.process_index * local, (accelerator.process_index + 1) * local)
    mine = [indices[k] for k in positions]
    return StepPrompts(
        texts=[prompts.records[i].prompt for i in mine],
        rendered=[prompts.rendered[i] for i in mine],
        labels=[prompts.records[i].label for i in mine],
        keys=positions,
    )


def evaluate(state: TrainState, problems: TrainingPrompts, step: int) -> dict[str, float]:
    """`eval/...` metrics of the current policy on the held-out problems (RUN/eval/step_N.jsonl holds the answers)."""
    accelerator, signal_model, reference = state.accelerator, state.signal_model, state.reference
    model = sampling_model(accelerator, signal_model)
    ref_scope = None if reference is None else (lambda: _evaluation_reference(accelerator, reference, signal_model))
    with accelerator.autocast(cached_casts()), full_parameters(accelerator, signal_model):
        return evaluate_in_training(accelerator, model, state.tokenizer, problems, state.answer_format, state.eos_ids,
                                    state.config, state.run_dir, step, ref_scope)


def save(state: TrainState, step: int) -> None:
    """Checkpoint `step`: full weights, optimizer state keyed by parameter name, schedule, every process's RNG."""
    accelerator, signal_model, config = state.accelerator, state.signal_model, state.config
    rng = gather_object([rng_state()])  # one entry per process
    weights = model_state_dict(accelerator, signal_model)  # full weights on process 0 (gathered under FSDP2)
    optimizer_state = optimizer_state_dict(accelerator, signal_model, state.optimizer)  # keyed by parameter name
    if accelerator.is_main_process:
        trainer_state = {"step": step, "optimizer": optimizer_state, "scheduler": state.scheduler.state_dict(), "rng": rng}
        model = accelerator.unwrap_model(signal_model).model
        save_checkpoint(state.run_dir, step, model, state.tokenizer, trainer_state, config.run.keep_checkpoints,
                        state_dict=weights, lora_merged=config.lora.save_merged)
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def _evaluation_reference(accelerator, reference, signal_model):
    """The reference for scoring eval answers. Each process evaluates its own share of the problems, so a
    sharded (FSDP2) reference is gathered whole first: its forwards then need no collectives."""
    with reference.scoring(signal_model) as ref_model:
        with full_parameters(accelerator, ref_model) if reference.sharded else contextlib.nullcontext():
            yield ref_model
