"""The INTUITOR / GRPO training loop.

One step, top to bottom:
    sample prompts -> G responses each (our KV-cache sampler; the sampling pass also gives each
    token's log-prob, self-certainty and entropy) -> reference log-probs (one no-grad pass) ->
    reward -> group-normalized advantages -> PPO-clip loss + beta * k3 KL, token mean -> AdamW step
    (grad clip, schedule).
The method is the reward: `reward.name: self_certainty` is INTUITOR, `correctness` is GRPO.

Why self-certainty costs nothing: there is exactly one optimizer update per step, so the weights of
the update's forward are the weights that sampled the rollout (pi_old = pi_theta). The PPO ratio's
denominator is therefore the update's own log-prob, detached (ratio 1, as TRL does with one
iteration), and no no-grad pass of the policy is needed for it. Self-certainty (and the logged
entropy and log-prob) come from the logits the sampler computes anyway, so INTUITOR runs exactly the
passes a model-free reward runs (sampling, reference, update); `bench/step.py` measures both.

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
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from rlif.checkpoint import (
    STATE_FILE,
    latest_checkpoint,
    remove_incomplete,
    rng_state,
    save_checkpoint,
    set_rng_state,
    truncate_jsonl,
)
from rlif.config import Config, ConfigError, save_config
from rlif.data import DataError, PromptRecord, load_prompts, render_prompt
from rlif.grpo import group_advantages, k3_kl, policy_loss
from rlif.lora import load_policy
from rlif.models import compiled_layers, eos_token_ids, load_model, load_tokenizer
from rlif.parallel import (
    build_reference,
    check_supported_setup,
    full_parameters,
    init_fsdp_root,
    load_optimizer_state_dict,
    loss_scale,
    model_state_dict,
    on_any_process,
    optimizer_state_dict,
    same_batch_count,
    sampling_model,
)
from rlif.rewards import build_reward, compute_reward
from rlif.answers import agreement, get_answer_format
from rlif.rollout import Rollout, generate_rollout, seed_for
from rlif.runlog import RunLogger
from rlif.scoring import SignalModel, length_batches, score_in_batches, trim_padding
from rlif.signals import masked_mean


class TrainingDiverged(RuntimeError):
    """A loss, reward or gradient became NaN/inf; the run stopped before the bad update."""


# Config fields that may differ between a run and its resumption: how it runs, not what it computes (the batching and
# memory settings change only the order of float additions; a run that ran out of memory resumes with smaller ones).
_RESUMABLE_DIFFERENCES = {
    "run.resume", "run.overwrite", "run.progress", "run.report_to",
    "train.micro_batch_size", "train.micro_batch_tokens", "train.score_batch_size", "train.score_batch_tokens",
    "train.chunk_tokens",
    "rollout.generation_batch_size", "rollout.decode",
    "model.gradient_checkpointing", "model.compile_layers", "model.reference_device",
}


@dataclass
class TrainingPrompts:
    records: list[PromptRecord]  # prompts that fit max_prompt_tokens
    rendered: list[str]  # the exact text the model is conditioned on, per record
    dropped: int  # prompts longer than max_prompt_tokens


def prepare_prompts(config: Config, tokenizer, path: str, limit: int = 0) -> TrainingPrompts:
    """Load, validate and render the prompts of `path` as the data section says; drop overlong ones."""
    records = load_prompts(path, config.data.prompt_field, config.data.label_field)
    if limit:
        records = records[:limit]
    kept, rendered = [], []
    for record in records:
        text = render_prompt(
            tokenizer,
            record.prompt,
            prompt_template=config.data.prompt_template,
            system_prompt=config.data.system_prompt,
            chat_template=config.data.chat_template,
        )
        if len(tokenizer(text, add_special_tokens=False).input_ids) <= config.data.max_prompt_tokens:
            kept.append(record)
            rendered.append(text)
    if not kept:
        raise DataError(f"{path}: every prompt is longer than data.max_prompt_tokens={config.data.max_prompt_tokens}")
    return TrainingPrompts(kept, rendered, len(records) - len(kept))


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
    from accelerate import Accelerator
    from accelerate.utils import AutocastKwargs

    mixed_precision = config.model.mixed_precision
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    log_with = None if config.run.report_to == "none" else config.run.report_to
    # The update's forward (the prepared model's, under this autocast) uses each weight once: autocast's cache would
    # only hold a bf16 copy of every weight until the forward ends (0.67 GiB for 0.5B, at the update's peak).
    # Sampling, which reuses the weights at every decode step, keeps the cache (`_cached_casts`).
    return Accelerator(mixed_precision=mixed_precision, log_with=log_with, project_dir=config.run.output_dir,
                       kwargs_handlers=[AutocastKwargs(cache_enabled=False)])


def _cached_casts():
    """Autocast with its cache of weight casts: for sampling and evaluation, whose many forwards then cast once."""
    from accelerate.utils import AutocastKwargs

    return AutocastKwargs(cache_enabled=True)


def train(config: Config) -> Path:
    """Run (or resume) training as configured; returns the run directory."""
    # ---- set-up: everything that can fail cheaply fails before a model is loaded --------------
    accelerator = build_accelerator(config)
    check_supported_setup(accelerator, config)
    cfg_train, cfg_rollout = config.train, config.rollout
    if cfg_train.prompts_per_step % accelerator.num_processes:
        raise ConfigError(
            f"config field train.prompts_per_step = {cfg_train.prompts_per_step}: must be divisible by the "
            f"{accelerator.num_processes} processes (each samples whole groups)"
        )
    reward = build_reward(config.reward.name, config.reward.weights)
    if reward.uses_labels and config.data.label_field is None:
        raise ConfigError(f"config field reward.name = {reward.name!r} needs labels, but data.label_field is null")
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code)
    prompts = prepare_prompts(config, tokenizer, config.data.path)
    eval_problems = None
    if config.eval.path is not None:
        if config.data.label_field is None:
            raise ConfigError(f"config field eval.path = {config.eval.path!r}: evaluation needs labels, but data.label_field is null")
        eval_problems = prepare_prompts(config, tokenizer, config.eval.path, config.eval.limit)
    num_steps = total_steps(config, len(prompts.records))
    run_dir = prepare_run_dir(config, accelerator)

    resume_from = latest_checkpoint(run_dir) if config.run.resume else None
    start_step = resume_from[0] if resume_from else 0
    if start_step >= num_steps:
        accelerator.print(f"{run_dir} is already complete ({start_step}/{num_steps} steps)")
        return run_dir
    policy = load_policy(config, resume_from[1] if resume_from else None)  # full weights, or base + LoRA adapters
    # The frozen initial model: the KL term, offline rewards, evaluation's label-free signals.
    needs_reference = cfg_train.kl_coef > 0 or getattr(reward, "needs_reference", False)
    reference = build_reference(config, accelerator, policy, load_model, needed=needs_reference)  # None if not needed
    signal_model = SignalModel(policy, cfg_train.chunk_tokens)
    # fused on CUDA: one kernel, and no parameter-sized temporary as the foreach AdamW makes (its sqrt of the second
    # moments); CPU runs keep the foreach one, whose trajectories the README's testbed figures come from
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=cfg_train.lr, betas=tuple(cfg_train.adam_betas),
        weight_decay=cfg_train.weight_decay, fused=accelerator.device.type == "cuda",
    )
    from accelerate.utils import gather_object
    from transformers import get_scheduler

    scheduler = get_scheduler(
        cfg_train.lr_schedule, optimizer, num_warmup_steps=int(cfg_train.warmup_ratio * num_steps), num_training_steps=num_steps
    )
    if resume_from:
        state = torch.load(resume_from[1] / STATE_FILE, weights_only=False, mmap=True)
        scheduler.load_state_dict(state["scheduler"])
        if accelerator.num_processes == len(state["rng"]):
            set_rng_state(state["rng"][accelerator.process_index])
    if config.run.resume and accelerator.is_main_process:
        # Forget what was logged after the checkpoint (all of it when there is none: step 0 reruns).
        last_kept = start_step if resume_from else -1
        truncate_jsonl(run_dir / "metrics.jsonl", last_kept)
        truncate_jsonl(run_dir / "samples.jsonl", last_kept)
        remove_incomplete(run_dir)
    signal_model, optimizer = accelerator.prepare(signal_model, optimizer)
    if resume_from:  # after prepare: the state is keyed by parameter name and gets sharded like the parameters
        load_optimizer_state_dict(accelerator, signal_model, optimizer, state["optimizer"])
    init_fsdp_root(accelerator, signal_model)
    eos_ids = eos_token_ids(tokenizer, policy)
    answer_format = get_answer_format(config.data.answer_format)
    if config.run.report_to != "none":
        accelerator.init_trackers("rlif", config=config.to_dict())
    logger = RunLogger(run_dir, accelerator, num_steps, start_step, config.run.progress, config.run.report_to)
    if prompts.dropped:
        logger.write(f"dropped {prompts.dropped} prompts longer than data.max_prompt_tokens={config.data.max_prompt_tokens}")
    local_prompts = cfg_train.prompts_per_step // accelerator.num_processes
    has_labels = config.data.label_field is not None

    def evaluate_now(step: int) -> dict[str, float]:
        if eval_problems is None:
            return {}
        model = sampling_model(accelerator, signal_model)
        ref_scope = None if reference is None else (lambda: _evaluation_reference(accelerator, reference, signal_model))
        with accelerator.autocast(_cached_casts()), full_parameters(accelerator, signal_model):
            return run_evaluation(accelerator, model, tokenizer, eval_problems, answer_format, eos_ids, config, run_dir, step, ref_scope)

    if start_step == 0 and eval_problems is not None:
        logger.log(0, evaluate_now(0))

    for step in range(start_step + 1, num_steps + 1):
        step_start = time.perf_counter()
        # ---- 1. prompts: this process's share of the step's batch ---------------------------
        indices = step_prompt_indices(step, cfg_train.prompts_per_step, len(prompts.records), cfg_train.seed)
        positions = range(accelerator.process_index * local_prompts, (accelerator.process_index + 1) * local_prompts)
        indices = [indices[k] for k in positions]
        batch = [prompts.records[i] for i in indices]

        # ---- 2. rollouts: G responses per prompt from the current policy ---------------------
        with accelerator.autocast(_cached_casts()), full_parameters(accelerator, signal_model):
            rollout = generate_rollout(
                sampling_model(accelerator, signal_model),
                tokenizer,
                [record.prompt for record in batch],
                [prompts.rendered[i] for i in indices],
                group_size=cfg_rollout.group_size,
                temperature=cfg_rollout.temperature,
                top_p=cfg_rollout.top_p,
                max_new_tokens=cfg_rollout.max_new_tokens,
                batch_size=cfg_rollout.generation_batch_size,
                decode=cfg_rollout.decode,
                seed=seed_for(cfg_train.seed, step),
                prompt_keys=positions,  # a prompt's place in the global batch: same samples on any process count
                eos_ids=eos_ids,
                labels=[record.label for record in batch],
                answer_format=answer_format,
            )
        generate_end = time.perf_counter()

        # ---- 3. score: reference log-probs (the policy's signals came with the samples) -----------
        if reference is not None:
            ref_batches = step_batches(accelerator, rollout, cfg_train.score_batch_size, cfg_train.score_batch_tokens)
            with accelerator.autocast(), reference.scoring(signal_model) as ref_model:
                rollout.ref_signals = score_in_batches(ref_model, **rollout.select(slice(None)), batches=ref_batches,
                                                       temperature=cfg_rollout.temperature)
            rollout.ref_logprobs = rollout.ref_signals.logprobs
        score_end = time.perf_counter()

        # ---- 4. reward -> group-normalized advantages ------------------------------------------
        rewards = compute_reward(reward, rollout)  # (N,)
        if on_any_process(accelerator, not torch.isfinite(rewards).all()):
            raise TrainingDiverged(_diverged(step, f"reward {reward.name!r} returned non-finite values", run_dir))
        advantages = group_advantages(rewards, cfg_rollout.group_size, cfg_train.advantage_eps)  # (N,)

        # ---- 5. update: PPO-clip + beta * KL, token mean over the whole step -------------------
        signal_model.train()
        total_tokens = accelerator.reduce(rollout.response_mask.sum().to(accelerator.device), "sum").item()
        # the loss is a token mean over the whole step, so the grouping changes the gradient only by the order of float additions
        micro_batches = step_batches(accelerator, rollout, cfg_train.micro_batch_size, cfg_train.micro_batch_tokens)
        try:
            sums = accumulate_gradients(  # loss, policy loss, kl, clipped tokens, tokens
                signal_model, rollout, advantages, micro_batches, total_tokens=total_tokens, device=accelerator.device,
                temperature=cfg_rollout.temperature, clip_eps=cfg_train.clip_eps, kl_coef=cfg_train.kl_coef,
                # DDP/FSDP/DeepSpeed average gradients over processes; the loss is already a global token mean
                backward=lambda loss: accelerator.backward(loss * loss_scale(accelerator)),
                no_sync=lambda last: _maybe_no_sync(accelerator, signal_model, last),
                step_loss=lambda local: accelerator.reduce(local.clone(), "sum"),  # every process checks the same value
                compile_layers=config.model.compile_layers,
            )
        except NonFiniteLoss as error:
            raise TrainingDiverged(_diverged(step, str(error), run_dir)) from None
        grad_norm = accelerator.clip_grad_norm_(signal_model.parameters(), cfg_train.max_grad_norm)
        if not torch.isfinite(torch.as_tensor(grad_norm)):
            raise TrainingDiverged(_diverged(step, f"the gradient norm is {float(grad_norm)}", run_dir))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_end = time.perf_counter()

        # ---- 6. metrics, samples, checkpoint ----------------------------------------------------
        sums = accelerator.reduce(sums[1:], "sum").cpu()  # policy loss, kl, clipped tokens, tokens
        metrics = rollout_metrics(accelerator, rollout, rewards, has_labels)
        num_completion_tokens = metrics.pop("rollout/tokens")
        metrics.update(
            {
                "loss/policy": (sums[0] / sums[3]).item(),
                "loss/kl": (sums[1] / sums[3]).item() if reference is not None else 0.0,
                "loss/clip_frac": (sums[2] / sums[3]).item(),
                "optim/grad_norm": float(grad_norm),
                "optim/lr": lr,
                "time/step_s": step_end - step_start,
                "time/generate_s": generate_end - step_start,
                "time/score_s": score_end - generate_end,
                "time/update_s": step_end - score_end,
                "time/tokens_per_s": num_completion_tokens / (step_end - step_start),
            }
        )
        if (config.eval.every and step % config.eval.every == 0) or step == num_steps:
            metrics.update(evaluate_now(step))
        logger.log(step, metrics)
        if step == 1 or step % config.run.sample_every == 0:
            records = gather_object(sample_records(rollout, rewards, config.run.num_samples, has_labels))  # every process's first groups
            logger.samples(step, records[: config.run.num_samples])
        if step % config.run.save_every == 0 or step == num_steps:
            _save(accelerator, signal_model, tokenizer, optimizer, scheduler, run_dir, step, config.run.keep_checkpoints,
                  config.lora.save_merged)

    logger.close()
    accelerator.end_training()
    if accelerator.is_main_process:
        from rlif.report import write_report

        write_report(run_dir)  # plots/*.png and report.md
    return run_dir


def run_evaluation(
    accelerator, model, tokenizer, problems: TrainingPrompts, answer_format, eos_ids, config, run_dir, step, reference=None
) -> dict:
    """Evaluate on this process's share of the problems, gather, write RUN/eval/step_N.jsonl; `eval/...` metrics.

    With a reference (a SignalModel, or a function returning a context that yields one), answers also get their
    reference log-prob (label-free signals: `kl_ref`, `ref_logprob`).
    """
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from rlif.evaluate import evaluate, summarize
    from rlif.runlog import append_jsonl

    shard = list(range(accelerator.process_index, len(problems.records), accelerator.num_processes))
    answers_per_problem = 1 + config.eval.num_samples
    show = config.run.progress and accelerator.is_main_process
    bar = tqdm(total=len(shard) * answers_per_problem, desc=f"eval step {step}", unit="answer", leave=False, disable=not show, dynamic_ncols=True)
    result = evaluate(
        model,
        tokenizer,
        [problems.records[i] for i in shard],
        [problems.rendered[i] for i in shard],
        answer_format,
        max_new_tokens=config.eval.max_new_tokens or config.rollout.max_new_tokens,
        eos_ids=eos_ids,
        num_samples=config.eval.num_samples,
        temperature=config.rollout.temperature,
        top_p=config.rollout.top_p,
        seed=seed_for(config.train.seed, step, 1),
        batch_size=config.eval.batch_size,
        decode=config.rollout.decode,
        problem_ids=shard,
        reference=reference,
        progress=bar,
    )
    bar.close()
    records = sorted(gather_object(result.records), key=lambda r: (r["sample"], r["problem"]))
    if accelerator.is_main_process:
        path = Path(run_dir) / "eval" / f"step_{step:06d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        for record in records:
            append_jsonl(path, {"step": step, **record})
    greedy = [r for r in records if r["sample"] < 0]
    sampled = [r for r in records if r["sample"] >= 0]
    summaries = {**summarize(greedy, "greedy/", answer_format), **summarize(sampled, "sampled/", answer_format)}
    return {f"eval/{k}": v for k, v in summaries.items()}


def step_batches(accelerator, rollout: Rollout, batch_size: int, max_tokens: int) -> list[torch.Tensor]:
    """The rollout's rows in batches of similar length (`batch_size` rows, or filled to `max_tokens` token positions),
    as many batches on every process: under FSDP2 each forward gathers the parameters from all of them."""
    batches = length_batches(rollout.prompt_mask, rollout.response_mask, batch_size, max_tokens)
    return same_batch_count(accelerator, batches)


class NonFiniteLoss(ArithmeticError):
    """The step's loss is NaN/inf (raised before its last backward, so no update was applied)."""


def accumulate_gradients(
    signal_model: SignalModel,
    rollout: Rollout,
    advantages: torch.Tensor,  # (N,)
    micro_batches: list[torch.Tensor],  # row indices of `rollout`, together every row once
    *,
    total_tokens: int,  # the step's response tokens over all processes: the loss is their mean
    device: torch.device,
    temperature: float,
    clip_eps: float,
    kl_coef: float,
    backward=torch.Tensor.backward,
    no_sync=lambda last: contextlib.nullcontext(),
    step_loss=lambda local: local,
    compile_layers: bool = False,
) -> torch.Tensor:
    """Forward and backward over the step's micro-batches, adding the step's gradient to the parameters' `.grad`.

    Each micro-batch is trimmed of the padding its rows share. `backward(loss)` runs one micro-batch's backward and
    `no_sync(last)` is the context it runs in (training passes accelerate's). Returns the summed (loss, policy loss,
    kl, clipped tokens, tokens) on `device`, read by the host only once: before the last backward, whose context may
    apply the update (DeepSpeed), NonFiniteLoss is raised if the step's loss is not finite (`step_loss` turns this
    process's share into the step's loss: training sums it over processes).
    """
    sums = torch.zeros(5, device=device)
    for i, rows in enumerate(micro_batches):
        trimmed = trim_padding(*rollout.select(rows).values())
        prompt_ids, prompt_mask, response_ids, response_mask = (t.to(device) for t in trimmed)
        width = response_ids.shape[1]
        last = i == len(micro_batches) - 1
        with no_sync(last), compiled_layers(signal_model, compile_layers):
            signals = signal_model(prompt_ids, prompt_mask, response_ids, response_mask, temperature=temperature,
                                   logprobs_only=True)
            terms = policy_loss(
                signals.logprobs,
                signals.logprobs.detach(),  # pi_old: one update per step, so the weights that sampled are these
                advantages[rows].to(device),
                response_mask,
                clip_eps=clip_eps,
                kl_coef=kl_coef,
                ref_logprobs=None if rollout.ref_logprobs is None else rollout.ref_logprobs[rows, :width].to(device),
                total_tokens=total_tokens,
            )
            sums += torch.stack([terms.loss, terms.policy_loss, terms.kl, terms.clipped, terms.num_tokens]).detach().float()
            if last and not torch.isfinite(loss := step_loss(sums[0])):
                raise NonFiniteLoss(f"the loss is {loss.item()}")
            backward(terms.loss)
    return sums


def rollout_metrics(accelerator, rollout: Rollout, rewards: torch.Tensor, has_labels: bool) -> dict[str, float]:
    """Per-response statistics gathered over processes."""
    mask = rollout.response_mask
    per_response = {
        "reward": rewards,
        "self_certainty": masked_mean(rollout.signals.self_certainty, mask),
        "entropy": masked_mean(rollout.signals.entropy, mask),
        "logprob": masked_mean(rollout.signals.logprobs, mask),
        "length": rollout.response_lengths.float(),
        "truncated": rollout.truncated.float(),
    }
    if rollout.ref_logprobs is not None:
        per_response["kl"] = masked_mean(k3_kl(rollout.signals.logprobs, rollout.ref_logprobs), mask)
    if rollout.ref_signals is not None:
        per_response["ref_self_certainty"] = masked_mean(rollout.ref_signals.self_certainty, mask)
    if has_labels:
        per_response["correct"] = rollout.correct()
    gathered = {k: accelerator.gather(v.float().to(accelerator.device)).cpu() for k, v in per_response.items()}
    metrics = {
        "reward/mean": gathered["reward"].mean().item(),
        "reward/std": gathered["reward"].std().item(),
        "signals/self_certainty": gathered["self_certainty"].mean().item(),
        "signals/entropy": gathered["entropy"].mean().item(),
        "signals/logprob": gathered["logprob"].mean().item(),
        "rollout/len_mean": gathered["length"].mean().item(),
        "rollout/len_max": gathered["length"].max().item(),
        "rollout/truncated": gathered["truncated"].mean().item(),
        "rollout/tokens": gathered["length"].sum().item(),
    }
    if "kl" in gathered:
        metrics["signals/kl_ref"] = gathered["kl"].mean().item()
    if "ref_self_certainty" in gathered:
        metrics["signals/ref_self_certainty"] = gathered["ref_self_certainty"].mean().item()
    # Label-free: the share of each group giving its most common answer.
    group_agreement = torch.tensor(
        [agreement(rollout.answers[i : i + rollout.group_size], rollout.answer_format.equivalent) for i in range(0, len(rollout.answers), rollout.group_size)]
    )
    metrics["rollout/agreement"] = accelerator.gather(group_agreement.float().to(accelerator.device)).mean().item()
    if has_labels:
        metrics["rollout/accuracy"] = gathered["correct"].mean().item()
    return metrics


def sample_records(rollout: Rollout, rewards: torch.Tensor, count: int, has_labels: bool) -> list[dict]:
    """The first response of the first `count` groups, for people to read."""
    records = []
    correct = rollout.correct() if has_labels else None
    for row in range(0, min(count * rollout.group_size, len(rollout.completions)), rollout.group_size):
        mask = rollout.response_mask[row]
        record = {
            "prompt": rollout.prompts[row],
            "completion": rollout.completions[row],
            "reward": rewards[row].item(),
            "self_certainty": masked_mean(rollout.signals.self_certainty[row], mask).item(),
            "length": int(mask.sum()),
            "truncated": bool(rollout.truncated[row]),
        }
        if has_labels:
            record["label"] = rollout.labels[row]
            record["answer"] = rollout.answers[row]
            record["correct"] = bool(correct[row])
        records.append(record)
    return records


def _save(accelerator, signal_model, tokenizer, optimizer, scheduler, run_dir: Path, step: int, keep: int, lora_merged: bool) -> None:
    from accelerate.utils import gather_object

    rng = gather_object([rng_state()])  # one entry per process
    weights = model_state_dict(accelerator, signal_model)  # full weights on process 0 (gathered under FSDP2)
    optimizer_state = optimizer_state_dict(accelerator, signal_model, optimizer)  # keyed by parameter name
    if accelerator.is_main_process:
        state = {"step": step, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": rng}
        model = accelerator.unwrap_model(signal_model).model
        save_checkpoint(run_dir, step, model, tokenizer, state, keep, state_dict=weights, lora_merged=lora_merged)
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def _evaluation_reference(accelerator, reference, signal_model):
    """The reference for scoring eval answers. Each process evaluates its own share of the problems, so a
    sharded (FSDP2) reference is gathered whole first: its forwards then need no collectives."""
    with reference.scoring(signal_model) as ref_model:
        with full_parameters(accelerator, ref_model) if reference.sharded else contextlib.nullcontext():
            yield ref_model


def _maybe_no_sync(accelerator, model, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    accelerator.sync_gradients = last  # DeepSpeed steps its engine in the backward where this is True
    if last or accelerator.is_fsdp2:  # FSDP2 reduce-scatters every micro-batch: unsharded gradients would not fit
        return contextlib.nullcontext()
    return accelerator.no_sync(model)


def _diverged(step: int, what: str, run_dir: Path) -> str:
    latest = latest_checkpoint(run_dir)
    kept = f"the last good checkpoint is {latest[1]}" if latest else "no checkpoint was written yet"
    return (
        f"step {step}: {what}; training stopped before applying this update ({kept}). "
        "Lower train.lr or raise train.kl_coef, then resume with run.resume=true or start a new run."
    )
