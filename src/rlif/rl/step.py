"""One INTUITOR / GRPO training step, top to bottom (`train_step`):

    prompts -> G responses each from the current policy (the sampling pass also gives each token's log-prob,
    self-certainty and entropy) -> the frozen reference's signals (one no-grad pass, when the KL term or the reward
    needs them) -> reward -> group-normalized advantages -> PPO-clip loss + beta * k3 KL, token mean over the
    whole step -> AdamW step (gradient clipping, schedule) -> metrics.

The method is the reward: `reward.name: self_certainty` is INTUITOR, `correctness` is GRPO (`rlif.rl.rewards`).
Set-up, evaluation, logging and checkpoints are the loop's (`rlif.rl.train`).

Why self-certainty costs nothing: there is exactly one optimizer update per step, so the weights of the update's
forward are the weights that sampled the rollout (pi_old = pi_theta). The PPO ratio's denominator is therefore the
update's own log-prob, detached (ratio 1, as TRL does with one iteration), and no no-grad pass of the policy is
needed for it. Self-certainty (and the logged entropy and log-prob) come from the logits the sampler computes
anyway, so INTUITOR runs exactly the passes a model-free reward runs (sampling, reference, update).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import AutocastKwargs

from rlif import metrics as m
from rlif.data.answers import AnswerFormat, agreement
from rlif.errors import TrainingDiverged
from rlif.models.load import compiled_layers
from rlif.rl.checkpoint import latest_checkpoint
from rlif.rl.distributed import full_parameters, loss_scale, on_any_process, same_batch_count, sampling_model, weights_finite
from rlif.rl.loss import group_advantages, k3_kl, policy_loss
from rlif.rl.reference import Reference
from rlif.rl.rewards import Reward, compute_reward
from rlif.rl.rollout import Rollout, generate_rollout
from rlif.sampling.keys import seed_for
from rlif.signals.batching import length_batches, score_in_batches, trim_padding
from rlif.signals.model import SignalModel
from rlif.signals.tokens import TokenSignals, masked_mean

if TYPE_CHECKING:
    from rlif.config import Config


@dataclass
class TrainState:
    """Everything a step uses besides its prompts; built once by `rlif.rl.train.train`."""

    config: Config
    accelerator: Accelerator
    signal_model: SignalModel  # the policy, prepared by accelerate (DDP/FSDP2/DeepSpeed wrap it)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    reference: Reference | None  # the frozen initial model; None when nothing needs it
    reward: Reward
    tokenizer: object
    eos_ids: list[int]  # every token id that ends a response
    answer_format: AnswerFormat
    run_dir: Path  # for the "last good checkpoint" of a divergence message


@dataclass
class StepPrompts:
    """This process's share of a step's prompts."""

    texts: list[str]  # raw prompt texts
    rendered: list[str]  # the exact text the model is conditioned on (template, system prompt, chat template)
    labels: list[str | None]  # reference answers (hidden from label-free rewards)
    keys: Sequence[int]  # each prompt's place in the step's global batch: keys its samples, on any process count


class StepResult(NamedTuple):
    metrics: dict[str, float]
    rollout: Rollout
    rewards: torch.Tensor  # (N,)


def cached_casts() -> AutocastKwargs:
    """Autocast with its cache of weight casts: for sampling and evaluation, whose many forwards then cast once."""
    return AutocastKwargs(cache_enabled=True)


def train_step(state: TrainState, step: int, prompts: StepPrompts) -> StepResult:
    """One optimizer step on `prompts` (1-based `step`); returns its metrics, rollout and rewards."""
    config, accelerator = state.config, state.accelerator
    started = time.perf_counter()

    # ---- rollout: G responses per prompt from the current policy --------------------------------
    with accelerator.autocast(cached_casts()), full_parameters(accelerator, state.signal_model):
        rollout = generate_rollout(
            sampling_model(accelerator, state.signal_model), state.tokenizer, prompts.texts, prompts.rendered,
            group_size=config.rollout.group_size, temperature=config.rollout.temperature, top_p=config.rollout.top_p,
            max_new_tokens=config.rollout.max_new_tokens, batch_size=config.rollout.generation_batch_size,
            decode=config.rollout.decode, seed=seed_for(config.train.seed, step), prompt_keys=prompts.keys,
            eos_ids=state.eos_ids, labels=prompts.labels, answer_format=state.answer_format,
        )
    generated = time.perf_counter()

    # ---- reference: the frozen initial model's signals (KL term, offline rewards) ---------------
    if state.reference is not None:
        rollout.ref_signals = reference_signals(state, rollout)
    scored = time.perf_counter()

    # ---- reward -> group-normalized advantages --------------------------------------------------
    rewards = compute_reward(state.reward, rollout)  # (N,)
    if on_any_process(accelerator, not torch.isfinite(rewards).all()):
        raise TrainingDiverged(diverged_message(step, f"reward {state.reward.name!r} returned non-finite values", state.run_dir,
                                                advice=non_finite_reward_advice(accelerator, rollout)))
    advantages = group_advantages(rewards, config.rollout.group_size, config.train.advantage_eps)  # (N,)

    # ---- update: PPO-clip + beta * KL, token mean over the whole step ---------------------------
    sums, grad_norm, lr = update(state, step, rollout, advantages)  # sums: policy loss, kl, clipped, tokens
    updated = time.perf_counter()

    # ---- metrics --------------------------------------------------------------------------------
    metrics = rollout_metrics(accelerator, rollout, rewards, has_labels=config.data.label_field is not None)
    completion_tokens = metrics.pop("rollout/tokens")
    metrics.update({
        m.LOSS_POLICY: (sums[0] / sums[3]).item(),
        m.LOSS_KL: (sums[1] / sums[3]).item() if state.reference is not None else 0.0,
        m.CLIP_FRAC: (sums[2] / sums[3]).item(),
        m.GRAD_NORM: float(grad_norm),
        m.LR: lr,
        m.STEP_S: updated - started,
        m.GENERATE_S: generated - started,
        m.SCORE_S: scored - generated,
        m.UPDATE_S: updated - scored,
        m.TOKENS_PER_S: completion_tokens / (updated - started),
    })
    return StepResult(metrics, rollout, rewards)


def reference_signals(state: TrainState, rollout: Rollout) -> TokenSignals:
    """(N, T) signals of the rollout under the frozen reference, in batches of similar length."""
    train = state.config.train
    batches = step_batches(state.accelerator, rollout, train.score_batch_size, train.score_batch_tokens)
    with state.accelerator.autocast(), state.reference.scoring(state.signal_model) as ref_model:
        return score_in_batches(ref_model, **rollout.select(slice(None)), batches=batches, temperature=state.config.rollout.temperature)


def update(state: TrainState, step: int, rollout: Rollout, advantages: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Accumulate the step's gradient over micro-batches, clip it, apply AdamW; returns the loss sums over processes
    (policy loss, kl, clipped tokens, tokens), the gradient norm and the learning rate used. Raises TrainingDiverged
    before any update when the loss or the gradient norm is not finite."""
    config, accelerator, model = state.config, state.accelerator, state.signal_model
    model.train()
    total_tokens = accelerator.reduce(rollout.response_mask.sum().to(accelerator.device), "sum").item()
    # the loss is a token mean over the whole step, so the grouping changes the gradient only by the order of float additions
    micro_batches = step_batches(accelerator, rollout, config.train.micro_batch_size, config.train.micro_batch_tokens)
    try:
        sums = accumulate_gradients(  # loss, policy loss, kl, clipped tokens, tokens
            model, rollout, advantages, micro_batches, total_tokens=total_tokens, device=accelerator.device,
            temperature=config.rollout.temperature, clip_eps=config.train.clip_eps, kl_coef=config.train.kl_coef,
            # DDP/FSDP/DeepSpeed average gradients over processes; the loss is already a global token mean
            backward=lambda loss: accelerator.backward(loss * loss_scale(accelerator)),
            no_sync=lambda last: maybe_no_sync(accelerator, model, last),
            step_loss=lambda local: accelerator.reduce(local.clone(), "sum"),  # every process checks the same value
            compile_layers=config.model.compile_layers,
        )
    except NonFiniteLoss as error:
        raise TrainingDiverged(diverged_message(step, str(error), state.run_dir)) from None
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.train.max_grad_norm)
    if not torch.isfinite(torch.as_tensor(grad_norm)):
        raise TrainingDiverged(diverged_message(step, f"the gradient norm is {float(grad_norm)}", state.run_dir))
    lr = state.scheduler.get_last_lr()[0]
    state.optimizer.step()
    if not weights_finite(accelerator, model):  # any cause (an overflow, a faulty device): stop before logging or saving
        raise TrainingDiverged(diverged_message(step, "the weights hold NaN/inf after the update", state.run_dir, applied=True))
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    return accelerator.reduce(sums[1:], "sum").cpu(), grad_norm, lr


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
                ref_logprobs=None if rollout.ref_signals is None else rollout.ref_signals.logprobs[rows, :width].to(device),
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
    if rollout.ref_signals is not None:
        per_response["kl"] = masked_mean(k3_kl(rollout.signals.logprobs, rollout.ref_signals.logprobs), mask)
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


def maybe_no_sync(accelerator, model, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    accelerator.sync_gradients = last  # DeepSpeed steps its engine in the backward where this is True
    if last or accelerator.is_fsdp2:  # FSDP2 reduce-scatters every micro-batch: unsharded gradients would not fit
        return contextlib.nullcontext()
    return accelerator.no_sync(model)


def diverged_message(step: int, what: str, run_dir: Path, advice: str | None = None, applied: bool = False) -> str:
    latest = latest_checkpoint(run_dir)
    kept = f"the last good checkpoint is {latest[1]}" if latest else "no checkpoint was written yet"
    stopped = "before writing a checkpoint of these weights" if applied else "before applying this update"
    advice = advice or "Lower train.lr or raise train.kl_coef, then resume with run.resume=true or start a new run."
    return f"step {step}: {what}; training stopped {stopped} ({kept}). {advice}"


def non_finite_reward_advice(accelerator, rollout: Rollout) -> str | None:
    """When the policy's own signals of the rollout are finite, the reward function made the NaN: say so (None: the
    model's signals are not finite either, and the usual advice about the learning rate applies)."""
    mask = rollout.response_mask.bool()
    signals = (rollout.signals.logprobs, rollout.signals.self_certainty, rollout.signals.entropy)
    if on_any_process(accelerator, not all(torch.isfinite(values[mask]).all() for values in signals)):
        return None
    return ("The policy's log-probs, self-certainty and entropy of these responses are finite, so the reward function is "
            "the likely cause: check what it returns for them (a division by zero, a log of 0), then resume with "
            "run.resume=true.")
