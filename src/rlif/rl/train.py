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

import atexit
import contextlib
import errno
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import AutocastKwargs, gather_object
from transformers import AutoConfig, get_scheduler

from rlif.config import Config, save_config
from rlif.data import jsonl
from rlif.data.answers import get_answer_format
from rlif.data.prompts import TrainingPrompts, prepare_prompts, worked_solution_warning
from rlif.errors import ConfigError, OutputError
from rlif.eval.generate import evaluate_in_training
from rlif.files import write_text_atomic
from rlif.models.load import check_vocabulary, eos_token_ids, load_model, load_tokenizer, resolve_model_path
from rlif.models.lora import load_policy
from rlif.rl.checkpoint import (
    latest_checkpoint,
    loadable_checkpoint,
    prune_checkpoints,
    remove_incomplete,
    rng_state,
    save_checkpoint,
    seed_global_rngs,
    set_rng_state,
)
from rlif.rl.distributed import (
    check_supported_setup,
    full_parameters,
    init_fsdp_root,
    load_optimizer_state_dict,
    model_state_dict,
    on_any_process,
    optimizer_state_dict,
    sampling_model,
)
from rlif.rl.reference import build_reference
from rlif.rl.rewards import build_reward, check_answer_format
from rlif.rl.step import StepPrompts, TrainState, cached_casts, sample_records, sync_engine, train_step
from rlif.runs import trackers
from rlif.runs.checkpoint_choice import StopDecision, eval_points, stop_decision
from rlif.runs.folder import check_writable, is_rlif_run, mark_run, moved_from, remove_run_contents
from rlif.runs.log import RunLogger
from rlif.runs.report import write_report
from rlif.sampling.keys import seed_for
from rlif.sampling.vllm_engine import VLLMEngine, check_head_dim, check_versions
from rlif.sampling.vllm_server import VLLMServerClient
from rlif.signals.model import SignalModel

CHOSEN_FILE = "chosen_checkpoint.json"  # what run.stop_rule keeps

# Config fields that may differ between a run and its resumption: how it runs, not what it computes (the batching and
# memory settings change only the order of float additions; a run that ran out of memory resumes with smaller ones).
_RESUMABLE_DIFFERENCES = {
    "run.resume", "run.overwrite", "run.progress", "run.report_to", "run.keep_checkpoints",
    "train.micro_batch_size", "train.micro_batch_tokens", "train.score_batch_size", "train.score_batch_tokens",
    "train.chunk_tokens",
    "rollout.generation_batch_size", "rollout.decode", "rollout.cpu_threads", "rollout.gpu_memory_utilization",
    "rollout.vllm_servers",
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
        if accelerator.is_main_process:
            check_writable(run_dir)  # before any model is loaded
        saved_config = yaml.safe_load(saved.read_text())
        differences = _config_differences(_with_defaults(saved_config, Config().to_dict()), config.to_dict())
        moved = moved_from(saved_config, run_dir)  # the folder is the run: one copied or moved elsewhere resumes there
        refused = [d for d in differences if d.split(" ")[0] not in _RESUMABLE_DIFFERENCES and not d.startswith("run.output_dir ")]
        if refused:
            raise ConfigError(f"cannot resume {run_dir}: the config differs from the saved one: " + "; ".join(refused))
        if moved:
            accelerator.print(f"note: {run_dir} was run as {moved}; it resumes where it is now")
        changed = [d for d in differences if not d.startswith("run.") or (moved and d.startswith("run.output_dir "))]
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
    occupied = run_dir.exists() and any(run_dir.iterdir())  # seen by every process before process 0 writes there
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        check_writable(run_dir)  # before any model is loaded
    if occupied:
        if not config.run.overwrite:
            raise ConfigError(
                f"config field run.output_dir = {str(run_dir)!r}: the folder is not empty; "
                "pass run.resume=true to continue that run or run.overwrite=true to start over"
            )
        if not is_rlif_run(run_dir):
            raise ConfigError(
                f"config field run.overwrite = True: {run_dir} is not a run folder rlif made (no .rlif-run marker, nor "
                "config.yaml and metrics.jsonl), so rlif does not delete it; choose another run.output_dir"
            )
        if accelerator.is_main_process:
            remove_run_contents(run_dir)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        mark_run(run_dir)
        save_config(config, saved)
    accelerator.wait_for_everyone()
    return run_dir


def _with_defaults(saved: dict, defaults: dict) -> dict:
    """The saved config with the fields added to rlif since it was written at their defaults (what that run used)."""
    merged = dict(saved)
    for key, default in defaults.items():
        if key not in merged:
            merged[key] = default
        elif isinstance(default, dict) and isinstance(merged[key], dict):
            merged[key] = _with_defaults(merged[key], default)
    return merged


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
    log_with = trackers.resolve(config.run.report_to) or None
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
    evaluations: list[dict] = field(default_factory=list)  # the metrics of every evaluation so far (the stop rule reads them)
    chosen_step: int | None = None  # the evaluation run.stop_rule keeps so far (its checkpoint is never deleted)


# A storage failure stops the run as a clear error (the last complete checkpoint is intact), not a traceback.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO}


def train(config: Config) -> Path:
    """Run (or resume) training as configured; returns the run directory."""
    try:
        return _train(config)
    except OSError as error:
        if error.errno not in _STORAGE_ERRNOS:
            raise
        latest = latest_checkpoint(config.run.output_dir)
        kept = f"the last complete checkpoint is {latest[1]} (intact)" if latest else "no checkpoint was written yet"
        raise OutputError(
            f"could not write {error.filename or config.run.output_dir} ({error.strerror}); training stopped, {kept}. "
            "Free space or make the folder writable, then resume with run.resume=true"
        ) from None


def _train(config: Config) -> Path:
    run_dir, run = set_up(config)
    if run is None:  # a resumed run that had already finished
        return run_dir
    state, accelerator = run.state, run.state.accelerator
    logger = RunLogger(run_dir, accelerator, run.num_steps, run.start_step, config.run.progress)
    if run.prompts.dropped:
        logger.write(f"dropped {run.prompts.dropped} prompts longer than data.max_prompt_tokens={config.data.max_prompt_tokens}")
    if run.start_step == 0 and run.eval_problems is not None:
        metrics = evaluate(state, run.eval_problems, 0)
        logger.log(0, metrics)
        apply_stop_rule(run, 0, metrics)  # step 0 (no training) is a candidate; it never stops the run
    for step in range(run.start_step + 1, run.num_steps + 1):
        result = train_step(state, step, step_prompts(state, run.prompts, step))
        metrics = result.metrics
        evaluated = run.eval_problems is not None and ((config.eval.every and step % config.eval.every == 0) or step == run.num_steps)
        if evaluated:
            metrics.update(evaluate(state, run.eval_problems, step))
        logger.log(step, metrics)
        if step == 1 or step % config.run.sample_every == 0:
            has_labels = config.data.label_field is not None
            records = gather_object(sample_records(result.rollout, result.rewards, config.run.num_samples, has_labels))
            logger.samples(step, records[: config.run.num_samples])  # every process's first groups, then cut
        decision = apply_stop_rule(run, step, metrics) if evaluated else None
        # with a stop rule every evaluated step is a candidate to keep, so it is checkpointed too
        if step % config.run.save_every == 0 or step == run.num_steps or (decision is not None):
            save(state, step, protect=frozenset({run.chosen_step}) - {None})
        if decision is not None:
            write_chosen(run, decision, stopped_at=step if decision.stop else None)
            if decision.stop:
                logger.write(f"step {step}: {config.run.stop_rule} stopped the run: {decision.reason}")
                break
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
    if (warning := worked_solution_warning(prompts.records, config.data)) and accelerator.is_main_process:
        print(f"warning: {warning}", file=sys.stderr)
    eval_problems = None
    if config.eval.path is not None:
        if config.data.label_field is None:
            raise ConfigError(f"config field eval.path = {config.eval.path!r}: evaluation needs labels, but data.label_field is null")
        eval_problems = prepare_prompts(config.data, tokenizer, config.eval.path, config.eval.limit)
    num_steps = total_steps(config, len(prompts.records))
    vllm, engine = uses_vllm(config, accelerator), None
    if vllm and config.rollout.engine == "vllm-server":  # the servers reached and checked before any model loads
        engine = build_engine(config, accelerator)
    elif vllm:  # vLLM and transformers versions, the model's head size: before any model loads
        check_versions()
        check_head_dim(resolve_model_path(config.model.path), config.model.trust_remote_code)
    run_dir = prepare_run_dir(config, accelerator)

    # (step, folder, trainer state) of the newest checkpoint that loads (a damaged one is passed over, with a note)
    resume_from = loadable_checkpoint(run_dir, accelerator.print) if config.run.resume else None
    start_step = resume_from[0] if resume_from else 0
    stopped = stopped_by_rule(run_dir) if config.run.resume else None
    if stopped is not None:
        accelerator.print(f"{run_dir} was stopped at step {stopped['stopped_at']} by run.stop_rule {stopped['rule']} "
                          f"(kept step {stopped['step']}: {stopped['checkpoint']})")
        return run_dir, None
    if start_step >= num_steps:
        accelerator.print(f"{run_dir} is already complete ({start_step}/{num_steps} steps)")
        if accelerator.is_main_process:  # killed after the last save, before its old checkpoints went, or during the report
            prune_checkpoints(run_dir, config.run.keep_checkpoints, protect=chosen_steps(run_dir))
            if not (run_dir / "report.md").is_file():
                accelerator.print(f"writing its missing report: {write_report(run_dir)}")
        return run_dir, None
    policy = load_policy(config, resume_from[1] if resume_from else None)  # full weights, or base + LoRA adapters
    check_vocabulary(policy, tokenizer, config.model.path)
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
    seed_global_rngs(seed_for(config.train.seed, accelerator.process_index))  # a resume then restores the saved states
    if resume_from:
        saved = resume_from[2]
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
    trackers.start(accelerator, config, run_dir, first_step=start_step + 1 if resume_from else 0)
    state = TrainState(
        config=config, accelerator=accelerator, signal_model=signal_model, optimizer=optimizer, scheduler=scheduler,
        reference=reference, reward=reward, tokenizer=tokenizer, eos_ids=eos_token_ids(tokenizer, policy),
        answer_format=get_answer_format(config.data.answer_format), run_dir=run_dir,
    )
    if vllm:
        state.engine = engine or build_engine(config, accelerator)
        sync_engine(state)  # a resumed run's (or LoRA's) weights are not the model folder's
    run = Run(state, prompts, eval_problems, num_steps, start_step)
    for point in eval_points(jsonl.read_log(run_dir / "metrics.jsonl")) if resume_from else []:
        if point["step"] <= start_step:  # (another process may not have cut the log back to the checkpoint yet)
            apply_stop_rule(run, point["step"], point)  # the evaluations before the checkpoint, as the rule saw them
    return run_dir, run


def chosen_record(run_dir: Path) -> dict:
    """What run.stop_rule wrote to CHOSEN_FILE (the kept step, whether and where it stopped); {} when nothing."""
    path = run_dir / CHOSEN_FILE
    return (json.loads(path.read_text()) or {}) if path.is_file() else {}


def chosen_steps(run_dir: Path) -> frozenset[int]:
    """The step run.stop_rule kept ({} when it kept none yet): never pruned."""
    step = chosen_record(run_dir).get("step")
    return frozenset() if step is None else frozenset({step})


def stopped_by_rule(run_dir: Path) -> dict | None:
    """The record of a run that run.stop_rule stopped, or None."""
    record = chosen_record(run_dir)
    return record if record.get("stopped_at") is not None else None


def uses_vllm(config: Config, accelerator) -> bool:
    """rollout.engine: vllm or vllm-server; or auto on a GPU when vLLM is installed (else the native sampler)."""
    if config.rollout.engine == "auto":
        return accelerator.device.type == "cuda" and importlib.util.find_spec("vllm") is not None
    return config.rollout.engine in ("vllm", "vllm-server")


_ENGINES: dict[tuple, VLLMEngine | VLLMServerClient] = {}  # this process's engines by their settings: the next run (rlif compare) reuses one


def build_engine(config: Config, accelerator) -> VLLMEngine | VLLMServerClient:
    """This process's vLLM engine: colocated on its own device (tensor parallel 1; every process samples its share), or
    the client of the `rlif serve-vllm` servers at rollout.vllm_servers.

    One engine per process and settings: a later run in the same process with the same model and limits reuses it
    (its weights are synced at every run's start). Every request carries its own seed, so the engine's seed is 0."""
    path = resolve_model_path(config.model.path)
    model_config = AutoConfig.from_pretrained(path, trust_remote_code=config.model.trust_remote_code)
    longest = config.data.max_prompt_tokens + config.rollout.max_new_tokens  # vLLM refuses more than the model's positions
    max_model_len = min(longest, getattr(model_config, "max_position_embeddings", None) or longest)
    if config.rollout.engine == "vllm-server":
        key = (tuple(config.rollout.vllm_servers), accelerator.process_index, max_model_len)
        if key not in _ENGINES:
            _ENGINES[key] = VLLMServerClient(
                config.rollout.vllm_servers, process_index=accelerator.process_index, num_processes=accelerator.num_processes,
                device=accelerator.device, max_model_len=max_model_len, dtype=config.model.dtype,
                vocab_size=getattr(getattr(model_config, "text_config", None) or model_config, "vocab_size", None),
            )
        return _ENGINES[key]
    settings = dict(max_model_len=max_model_len, dtype=config.model.dtype,
                    gpu_memory_utilization=config.rollout.gpu_memory_utilization, trust_remote_code=config.model.trust_remote_code)
    key = (path, str(accelerator.device), *sorted(settings.items()))
    if key not in _ENGINES:
        if accelerator.device.type == "cuda":
            torch.cuda.set_device(accelerator.device)
        if not _ENGINES:
            atexit.register(close_engines)  # before vLLM's own exit handlers, which fail on an engine still open
        _ENGINES[key] = VLLMEngine(key[0], seed=0, **settings)
    return _ENGINES[key]


def close_engines() -> None:
    """Shut down this process's vLLM engines (at exit; or to free their memory)."""
    while _ENGINES:
        _ENGINES.popitem()[1].close()


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


def apply_stop_rule(run: Run, step: int, metrics: dict) -> StopDecision | None:
    """Record evaluation `step` and, with run.stop_rule set, decide from the label-free signals whether to stop and
    which evaluation to keep (None without a rule)."""
    run.evaluations.append({"step": step, **metrics})
    rule = run.state.config.run.stop_rule
    if rule == "none":
        return None
    decision = stop_decision(rule, run.evaluations, run.state.config.run.stop_kl_budget)
    run.chosen_step = decision.chosen_step
    return decision


def write_chosen(run: Run, decision: StopDecision, stopped_at: int | None) -> None:
    """RUN/chosen_checkpoint.json: the evaluation the stop rule keeps, its checkpoint (step 0: the initial model)."""
    state = run.state
    if not state.accelerator.is_main_process:
        return
    chosen = decision.chosen_step
    path = str(state.run_dir / "checkpoints" / f"step_{chosen:06d}") if chosen else state.config.model.path
    record = {"rule": state.config.run.stop_rule, "step": chosen, "checkpoint": path, "stopped_at": stopped_at,
              "reason": decision.reason}
    write_text_atomic(state.run_dir / CHOSEN_FILE, json.dumps(record, indent=2) + "\n")


def save(state: TrainState, step: int, protect: frozenset[int] = frozenset()) -> None:
    """Checkpoint `step`: full weights, optimizer state keyed by parameter name, schedule, every process's RNG."""
    accelerator, signal_model, config = state.accelerator, state.signal_model, state.config
    rng = gather_object([rng_state()])  # one entry per process
    weights = model_state_dict(accelerator, signal_model)  # full weights on process 0 (gathered under FSDP2)
    optimizer_state = optimizer_state_dict(accelerator, signal_model, state.optimizer)  # keyed by parameter name
    failed = None
    if accelerator.is_main_process:
        trainer_state = {"step": step, "optimizer": optimizer_state, "scheduler": state.scheduler.state_dict(), "rng": rng}
        model = accelerator.unwrap_model(signal_model).model
        try:
            save_checkpoint(state.run_dir, step, model, state.tokenizer, trainer_state, config.run.keep_checkpoints,
                            state_dict=weights, lora_merged=config.lora.save_merged, protect=protect)
        except OutputError as error:  # a full or read-only disk: every process stops, with the message
            failed = error
    if on_any_process(accelerator, failed is not None):
        raise failed or OutputError(f"step {step}: process 0 could not write the checkpoint; training stopped")
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def _evaluation_reference(accelerator, reference, signal_model):
    """The reference for scoring eval answers. Each process evaluates its own share of the problems, so a
    sharded (FSDP2) reference is gathered whole first: its forwards then need no collectives."""
    with reference.scoring(signal_model) as ref_model:
        with full_parameters(accelerator, ref_model) if reference.sharded else contextlib.nullcontext():
            yield ref_model
