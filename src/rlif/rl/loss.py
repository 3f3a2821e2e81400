"""GRPO math: group-normalized advantages, the k3 KL estimator and the clipped policy loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """A_i = (r_i - mean_g) / (std_g + eps) within each group of `group_size` contiguous rewards.

    std is the unbiased sample standard deviation (as verl and TRL); a group whose rewards are all
    equal gets advantage 0 for every member.
    """
    grouped = rewards.float().view(-1, group_size)  # (num_prompts, G)
    mean = grouped.mean(-1, keepdim=True)  # (num_prompts, 1)
    std = grouped.std(-1, unbiased=True, keepdim=True)  # (num_prompts, 1)
    return ((grouped - mean) / (std + eps)).view(-1)  # (N,)


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


@dataclass
class LossTerms:
    loss: Tensor  # scalar to backpropagate: token sum of this micro-batch / tokens of the whole step
    policy_loss: Tensor  # scalar, token sum of -surrogate (no grad)
    kl: Tensor  # scalar, token sum of k3 KL (no grad)
    clipped: Tensor  # scalar, tokens whose surrogate was clipped
    num_tokens: Tensor  # scalar, response tokens in this micro-batch


def policy_loss(
    logprobs: Tensor,  # (B, T) current policy, with grad
    pi_old_logprobs: Tensor,  # (B, T) policy at rollout time
    advantages: Tensor,  # (B,) one advantage per response
    response_mask: Tensor,  # (B, T)
    *,
    clip_eps: float,
    kl_coef: float,
    ref_logprobs: Tensor | None,  # (B, T), None when kl_coef == 0
    total_tokens: float,
    weights: Tensor | None = None,  # (B, T) per-token importance weights of the surrogate (truncated IS), None: 1
) -> LossTerms:
    """PPO clipped surrogate + kl_coef * k3 KL, aggregated as a token mean over the whole step (or mini-batch).

    Each micro-batch divides its token sum by the `total_tokens` of the update, so summing micro-batch
    gradients gives exactly the gradient of the update's token-mean loss. `weights` multiply each token's
    surrogate (not its KL term), as truncated importance sampling between the sampling engine and the trainer does.
    """
    mask = response_mask.float()  # (B, T)
    adv = advantages[:, None].float()  # (B, 1), the same advantage for every token
    ratio = torch.exp(logprobs - pi_old_logprobs)  # (B, T)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)  # (B, T)
    per_token = -surrogate if weights is None else -surrogate * weights  # (B, T)
    kl = torch.zeros_like(per_token)
    if kl_coef > 0:
        kl = k3_kl(logprobs, ref_logprobs)  # (B, T)
        per_token = per_token + kl_coef * kl
    clipped = ((ratio - 1).abs() > clip_eps) & (surrogate != ratio * adv)  # (B, T) the clip changed the term
    return LossTerms(
        loss=(per_token * mask).sum() / total_tokens,
        policy_loss=(-surrogate * mask).sum().detach(),
        kl=(kl * mask).sum().detach(),
        clipped=(clipped.float() * mask).sum(),
        num_tokens=mask.sum(),
    )
