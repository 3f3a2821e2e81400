"""Rewards: small callables `reward(rollout) -> Tensor (N,)`, one float per response.

A reward is a function (or object) with two attributes set by `@register`:
  name         the name configs use (`reward.name: self_certainty`)
  uses_labels  whether it may read `rollout.labels`; label-free rewards get a rollout whose labels
               raise `LabelsHiddenError` on any use.
A new method is a new function here (or in your own module, named as `package.module:function`).
"""

from __future__ import annotations

import importlib
from typing import Callable, Protocol

import torch
from torch import Tensor

from rlif.rollout import Rollout
from rlif.signals import masked_mean


class Reward(Protocol):
    name: str
    uses_labels: bool

    def __call__(self, rollout: Rollout) -> Tensor: ...


REWARDS: dict[str, Reward] = {}


def register(name: str, *, uses_labels: bool = False) -> Callable:
    """Decorator: make a function a named reward."""

    def wrap(fn):
        fn.name, fn.uses_labels = name, uses_labels
        REWARDS[name] = fn
        return fn

    return wrap


def resolve_reward(name: str) -> Reward:
    """A registered reward by name, or `package.module:attribute` imported from the user's code."""
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        reward = getattr(importlib.import_module(module_name), attribute)
        if not callable(reward):
            raise TypeError(f"{name} is not callable")
        reward.name = getattr(reward, "name", name)
        reward.uses_labels = getattr(reward, "uses_labels", False)
        return reward
    if name not in REWARDS:
        raise KeyError(f"unknown reward; registered: {', '.join(sorted(REWARDS))} (or use package.module:function)")
    return REWARDS[name]


def compute_reward(reward: Reward, rollout: Rollout) -> Tensor:
    """Call `reward` on the rollout, hiding labels unless it declares `uses_labels`; check the result."""
    view = rollout if reward.uses_labels else rollout.without_labels(reward.name)
    values = torch.as_tensor(reward(view), dtype=torch.float32).flatten().cpu()
    if values.shape[0] != rollout.response_ids.shape[0]:
        raise ValueError(f"reward {reward.name!r} returned {values.shape[0]} values for {rollout.response_ids.shape[0]} responses")
    return values


@register("self_certainty")
def self_certainty_reward(rollout: Rollout) -> Tensor:
    """INTUITOR: mean self-certainty KL(U || p_t) over response tokens, from the policy that sampled them.

    Read from the sampling pass (the logits that drew each token also score it): no extra forward.
    """
    return masked_mean(rollout.signals.self_certainty, rollout.response_mask)  # (N,)


@register("correctness", uses_labels=True)
def correctness_reward(rollout: Rollout) -> Tensor:
    """GRPO's verifiable reward: 1 if the response's final answer matches the label, else 0."""
    return rollout.correct()
