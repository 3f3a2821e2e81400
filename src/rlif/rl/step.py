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
from rlif.models.lora import is_peft_model, merged_state_dict
from rlif.rl.checkpoint import latest_checkpoint
from rlif.rl.distributed import full_parameters, loss_scale, on_any_process, same_batch_count, sampling_model, weights_finite
from rlif.rl.loss import group_advantages, k3_kl, policy_loss
from rlif.rl.reference import Reference
from rlif.rl.rewards import Reward, compute_reward
from rlif.rl.rollout import Rollout, generate_rollout
from rlif.sampling.keys import seed_for
from rlif.sampling.vllm_engine import VLLMEngine
from rlif.sampling.vllm_server import VLLMServerClient
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
    engine: VLLMEngine | VLLMServerClient | None = None  # rollout.engine vllm or vllm-server; None: the native sampler on the policy

    @property
    def updates_per_rollout(self) -> int:
        return self.config.train.ppo_epochs * self.config.train.mini_batches

    @property
    def scores_rollout(self) -> bool:
        """Whether the trainer scores each rollout with the policy before updating: for pi_old when several updates use
        one rollout (with one, pi_old is the update's own log-prob, detached), and always after another engine sampled
        (it reports no self-certainty, and its log-probs are not the trainer's)."""
        return self.engine is not None or self.updates_per_rollout > 1


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
    rollout = sample_rollout(state, step, prompts)
    generated = time.perf_counter()

    # ---- scoring: the policy's signals (pi_old) when needed; the frozen reference's (KL, offline rewards)
    if state.scores_rollout:
        rollout.engine_logprobs, rollout.signals = rollout.signals.logprobs, policy_signals(state, rollout)
    if state.reference is not None:
        rollout.ref_signals = reference_signals(state, rollout)
    scored = time.perf_counter()

    # ---- reward -> group-normalized advantages --------------------------------------------------
    rewards = compute_reward(state.reward, rollout)  # (N,)
    if on_any_process(accelerator, not torch.isfinite(rewards).all()):
        raise TrainingDiverged(diverged_message(step, f"reward {state.reward.name!r} returned non-finite values", state.run_dir,
                                                advice=non_finite_reward_advice(accelerator, rollout)))
    advantages = group_advantages(rewards, config.rollout.group_size, config.train.advantage_eps)  # (N,)

    # ---- update: PPO-clip + beta * KL, token mean over each update's responses ------------------
    sums, grad_norm, lr = update(state, step, rollout, advantages)  # sums: policy loss, kl, clipped, tokens
    synced = time.perf_counter()
    if state.engine is not None:
        sync_engine(state)  # the next rollout samples from the updated policy
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
        **({m.SYNC_S: updated - synced} if state.engine is not None else {}),
        m.TOKENS_PER_S: completion_tokens / (updated - started),
    })
    return StepResult(metrics, rollout, rewards)


def sample_rollout(state: TrainState, step: int, prompts: StepPrompts) -> Rollout:
    """G responses to each prompt from the current policy, with the engine the config names."""
    config, accelerator = state.config, state.accelerator
    settings = dict(
        group_size=config.rollout.group_size, temperature=config.rollout.temperature, top_p=config.rollout.top_p,
        max_new_tokens=config.rollout.max_new_tokens, seed=seed_for(config.train.seed, step), prompt_keys=prompts.keys,
        eos_ids=state.eos_ids, labels=prompts.labels, answer_format=state.answer_format,
    )
    if state.engine is not None:
        state.engine.wake_up()  # vLLM's sleep mode gave its memory to the update; a no-op where it has none
        rollout = generate_rollout(None, state.tokenizer, prompts.texts, prompts.rendered, engine=state.engine, **settings)
        state.engine.sleep()
        return rollout
    with accelerator.autocast(cached_casts()), full_parameters(accelerator, state.signal_model):
        return generate_rollout(
            sampling_model(accelerator, state.signal_model), state.tokenizer, prompts.texts, prompts.rendered,
            batch_size=config.rollout.generation_batch_size, decode=config.rollout.decode,
            cpu_threads=config.rollout.cpu_threads, **settings,
        )


def policy_signals(state: TrainState, rollout: Rollout) -> TokenSignals:
    """(N, T) signals of the rollout under the current policy (no grad): pi_old's log-probs at the sampling temperature,
    and self-certainty and entropy at temperature 1 (one fused pass over the vocabulary, as verl's old-log-prob pass)."""
    train = state.config.train
    batches = step_batches(state.accelerator, rollout, train.score_batch_size, train.score_batch_tokens)
    state.signal_model.eval()
    with state.accelerator.autocast():
        return score_in_batches(state.signal_model, **rollout.select(slice(None)), batches=batches,
                                temperature=state.config.rollout.temperature)


def sync_engine(state: TrainState) -> None:
    """The policy's current weights into the engine (full weights under FSDP2): every process into its own colocated
    engine, or process 0 into the servers' engines."""
    with full_parameters(state.accelerator, state.signal_model):
        state.engine.update_weights(policy_weights(state.accelerator, state.signal_model).items())
    if state.engine.shared:  # vllm-server: process 0 pushed, and nobody samples before it is done
        state.accelerator.wait_for_everyone()


def reference_signals(state: TrainState, rollout: Rollout) -> TokenSignals:
    """(N, T) signals of the rollout under the frozen reference, in batches of similar length."""
    train = state.config.train
    batches = step_batches(state.accelerator, rollout, train.score_batch_size, train.score_batch_tokens)
    with state.accelerator.autocast(), state.reference.scoring(state.signal_model) as ref_model:
        return score_in_batches(ref_model, **rollout.select(slice(None)), batches=batches, temperature=state.config.rollout.temperature)


def update(state: TrainState, step: int, rollout: Rollout, advantages: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """`train.ppo_epochs` passes over the rollout, each of `train.mini_batches` optimizer updates (one, by default):
    per update, accumulate the gradient of its responses over micro-batches, clip it, apply AdamW. Returns the loss
    sums over processes and updates (policy loss, kl, clipped tokens, tokens), the mean gradient norm and the learning
    rate used (the schedule advances once per step). Raises TrainingDiverged before an update whose loss or gradient
    norm is not finite."""
    config = state.config
    pi_old = rollout.signals.logprobs if state.scores_rollout else None  # None: the update's own, detached
    weights = None
    if config.train.tis_cap > 0 and rollout.engine_logprobs is not None:  # truncated importance sampling
        weights = torch.exp(pi_old - rollout.engine_logprobs).clamp(max=config.train.tis_cap) * rollout.response_mask  # (N, T)
    state.signal_model.train()
    sums, norms = torch.zeros(4), []
    lr = state.scheduler.get_last_lr()[0]
    for epoch in range(config.train.ppo_epochs):
        for rows in mini_batches(rollout, config.train.mini_batches, seed_for(config.train.seed, step, epoch)):
            update_sums, grad_norm = optimizer_update(state, step, rollout, advantages, rows, pi_old, weights)
            sums += update_sums
            norms.append(float(grad_norm))
    state.scheduler.step()
    return sums, sum(norms) / len(norms), lr


def mini_batches(rollout: Rollout, count: int, seed: int) -> list[torch.Tensor]:
    """The rollout's rows in `count` mini-batches of (nearly) equal size: all rows in order when count is 1, else a
    shuffle keyed by `seed` (so a resumed run repeats it)."""
    rows = torch.arange(rollout.response_ids.shape[0])
    if count == 1:
        return [rows]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    return [part for part in rows[order].tensor_split(count) if len(part)]


def optimizer_update(state: TrainState, step: int, rollout: Rollout, advantages: torch.Tensor, rows: torch.Tensor,
                     pi_old: torch.Tensor | None, weights: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """One AdamW update on the responses `rows`: gradient accumulated over micro-batches, clipped, applied."""
    config, accelerator, model = state.config, state.accelerator, state.signal_model
    total_tokens = accelerator.reduce(rollout.response_mask[rows].sum().to(accelerator.device), "sum").item()
    # the loss is a token mean over the update's responses, so the grouping changes the gradient only by float rounding
    micro_batches = step_batches(accelerator, rollout, config.train.micro_batch_size, config.train.micro_batch_tokens, rows)
    try:
        sums = accumulate_gradients(  # loss, policy loss, kl, clipped tokens, tokens
            model, rollout, advantages, micro_batches, total_tokens=total_tokens, device=accelerator.device,
            temperature=config.rollout.temperature, clip_eps=config.train.clip_eps, kl_coef=config.train.kl_coef,
            pi_old_logprobs=pi_old, weights=weights,
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
    state.optimizer.step()
    if not weights_finite(accelerator, model):  # any cause (an overflow, a faulty device): stop before logging or saving
        raise TrainingDiverged(diverged_message(step, "the weights hold NaN/inf after the update", state.run_dir, applied=True))
    state.optimizer.zero_grad(set_to_none=True)
    return accelerator.reduce(sums[1:], "sum").cpu(), grad_norm


def step_batches(accelerator, rollout: Rollout, batch_size: int, max_tokens: int, rows: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The rollout's rows (or the subset `rows`) in batches of similar length (`batch_size` rows, or filled to
    `max_tokens` token positions), as many batches on every process: under FSDP2 each forward gathers the parameters
    from all of them."""
    if rows is None:
        batches = length_batches(rollout.prompt_mask, rollout.response_mask, batch_size, max_tokens)
    else:
        batches = [rows[b] for b in length_batches(rollout.prompt_mask[rows], rollout.response_mask[rows], batch_size, max_tokens)]
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
    pi_old_logprobs: torch.Tensor | None = None,  # (N, T); None: each micro-batch's own log-probs, detached
    weights: torch.Tensor | None = None,  # (N, T) importance weights of the surrogate (truncated IS); None: 1
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
                # pi_old: with one update per rollout the weights that sampled are these (ratio exactly 1)
                signals.logprobs.detach() if pi_old_logprobs is None else pi_old_logprobs[rows, :width].to(device),
                advantages[rows].to(device),
                response_mask,
                clip_eps=clip_eps,
                kl_coef=kl_coef,
                ref_logprobs=None if rollout.ref_signals is None else rollout.ref_signals.logprobs[rows, :width].to(device),
                total_tokens=total_tokens,
                weights=None if weights is None else weights[rows, :width].to(device),
            )
            sums += torch.stack([terms.loss, terms.policy_loss, terms.kl, terms.clipped, terms.num_tokens]).detach().float()
            if last and not torch.isfinite(loss := step_loss(sums[0])):
                raise NonFiniteLoss(f"the loss is {loss.item()}")
            backward(terms.loss)
    return sums


def policy_weights(accelerator, signal_model) -> dict[str, torch.Tensor]:
    """The policy's full weights under the causal LM's own parameter names, on every process: LoRA merged into the base
    weights (`rlif.models.lora.merged_state_dict`); under FSDP2 call it inside `full_parameters` (unsharded)."""
    model = accelerator.unwrap_model(signal_model).model
    return merged_state_dict(model) if is_peft_model(model) else {name: t.detach() for name, t in model.state_dict().items()}


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
    if rollout.engine_logprobs is not None:  # the sampling engine's log-probs against the trainer's
        gap = (rollout.engine_logprobs - rollout.signals.logprobs).abs() * mask  # (N, T)
        per_response["mismatch_mean"], per_response["mismatch_max"] = masked_mean(gap, mask), gap.max(-1).values
    gathered = {k: accelerator.gather(v.float().to(accelerator.device)).cpu() for k, v in per_response.items()}
    metrics = {
        m.REWARD_MEAN: gathered["reward"].mean().item(),
        m.REWARD_STD: gathered["reward"].std().item(),
        m.SELF_CERTAINTY: gathered["self_certainty"].mean().item(),
        m.ENTROPY: gathered["entropy"].mean().item(),
        m.LOGPROB: gathered["logprob"].mean().item(),
        m.LEN_MEAN: gathered["length"].mean().item(),
        m.LEN_MAX: gathered["length"].max().item(),
        m.TRUNCATED: gathered["truncated"].mean().item(),
        "rollout/tokens": gathered["length"].sum().item(),
    }
    if "kl" in gathered:
        metrics[m.KL_REF] = gathered["kl"].mean().item()
    if "mismatch_mean" in gathered:
        metrics[m.LOGPROB_MISMATCH_MEAN] = gathered["mismatch_mean"].mean().item()
        metrics[m.LOGPROB_MISMATCH_MAX] = gathered["mismatch_max"].max().item()
    if "ref_self_certainty" in gathered:
        metrics[m.REF_SELF_CERTAINTY] = gathered["ref_self_certainty"].mean().item()
    # Label-free: the share of each group giving its most common answer.
    group_agreement = torch.tensor(
        [agreement(rollout.answers[i : i + rollout.group_size], rollout.answer_format.equivalent) for i in range(0, len(rollout.answers), rollout.group_size)]
    )
    metrics[m.ROLLOUT_AGREEMENT] = accelerator.gather(group_agreement.float().to(accelerator.device)).mean().item()
    if has_labels:
        metrics[m.ROLLOUT_ACCURACY] = gathered["correct"].mean().item()
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
