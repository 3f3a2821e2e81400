"""Rewards: small callables `reward(rollout) -> Tensor (N,)`, one float per response.

A reward is a function (or object) with attributes set by `@register`:
  name             the name configs use (`reward.name: self_certainty`)
  uses_labels      whether it may read `rollout.labels`; label-free rewards get a rollout whose labels
                   raise `LabelsHiddenError` on any use.
  needs_reference  whether it reads `rollout.ref_signals` (the frozen initial model's signals): the
                   trainer then loads the reference model even when train.kl_coef is 0.
A new method is a new function here (or in your own module, named as `package.module:function`).

The methods the INTUITOR paper compares, by reward name:
  self_certainty          INTUITOR: the sampling policy's own self-certainty (online)
  offline_self_certainty  self-certainty under the frozen initial model (the paper shows it gets hacked)
  correctness             GRPO with a verifiable reward (uses labels)
  plurality               GRPO-PV: agreement with the group's plurality answer (no labels)
  negative_entropy        RENT: minus the mean token entropy
  random                  control: a uniform number fixed by the rollout's tokens
  weighted                a weighted sum of group-normalized rewards (`reward.weights`)
And on code prompts (`data.answer_format: code` or `code_completion`; the label is the problem's tests):
  code_tests              GRPO on code: the share of the problem's tests the program passes (uses labels)
  code_tests_all          GRPO on code: 1 when the program passes every test, else 0 (uses labels)
(INTUITOR on code is `self_certainty` as it is: it needs no tests, and never sees them.)
"""

from __future__ import annotations

import hashlib
import importlib
from typing import Callable, Protocol

import torch
from torch import Tensor

from rlif.code.grading import CodeAnswerFormat, CodeOutcome
from rlif.data.answers import AnswerFormat, plurality
from rlif.errors import ConfigError
from rlif.rl.loss import group_advantages
from rlif.rl.rollout import Rollout
from rlif.signals.tokens import masked_mean


class Reward(Protocol):
    name: str
    uses_labels: bool
    needs_reference: bool

    def __call__(self, rollout: Rollout) -> Tensor: ...


REWARDS: dict[str, Reward] = {}
WEIGHTED = "weighted"  # the name of the weighted sum, built from reward.weights by `build_reward`


def register(name: str, *, uses_labels: bool = False, needs_reference: bool = False) -> Callable:
    """Decorator: make a function a named reward."""

    def wrap(fn):
        fn.name, fn.uses_labels, fn.needs_reference = name, uses_labels, needs_reference
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
        reward.needs_reference = getattr(reward, "needs_reference", False)
        return reward
    if name == WEIGHTED:
        raise KeyError("the weighted reward is built from reward.weights (see build_reward)")
    if name not in REWARDS:
        raise KeyError(f"unknown reward; registered: {', '.join(sorted(REWARDS) + [WEIGHTED])} (or use package.module:function)")
    return REWARDS[name]


def build_reward(name: str, weights: dict[str, float] | None = None) -> Reward:
    """The reward a config names: `resolve_reward(name)`, or for "weighted" the `WeightedSum` of `weights`."""
    if name == WEIGHTED:
        if not weights:
            raise KeyError("reward 'weighted' needs reward.weights, e.g. {self_certainty: 1.0, correctness: 1.0}")
        return WeightedSum({component: (resolve_reward(component), float(w)) for component, w in weights.items()})
    if weights:
        raise KeyError(f"reward.weights is only read by reward.name = {WEIGHTED!r}")
    return resolve_reward(name)


def compute_reward(reward: Reward, rollout: Rollout) -> Tensor:
    """Call `reward` on the rollout, hiding labels unless it declares `uses_labels`; check the result."""
    view = rollout if reward.uses_labels else rollout.without_labels(reward.name)
    returned = reward(view)
    count = rollout.response_ids.shape[0]
    expected = f"expected one number per response: {count} of them, e.g. a tensor of shape ({count},)"
    try:
        values = torch.as_tensor(returned, dtype=torch.float32).flatten().cpu()
    except (TypeError, ValueError, RuntimeError):  # strings, None, ragged lists, objects
        raise ConfigError(f"config field reward.name = {reward.name!r}: the reward returned {_describe(returned)}; {expected}",
                          field="reward.name") from None
    if values.shape[0] != count:
        raise ConfigError(f"config field reward.name = {reward.name!r}: the reward returned {values.shape[0]} values for "
                          f"{count} responses ({_describe(returned)}); {expected}", field="reward.name")
    return values


def _describe(value) -> str:
    """What a reward returned, briefly: its type, its length or shape, the first items."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(item).__name__ for item in value})
        return f"a {type(value).__name__} of {len(value)} ({', '.join(kinds) or 'empty'}) starting {value[:3]!r:.80}"
    return f"{type(value).__name__} {value!r:.80}"


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


@register("offline_self_certainty", needs_reference=True)
def offline_self_certainty_reward(rollout: Rollout) -> Tensor:
    """Self-certainty under the frozen initial model (the reference), not the policy: the paper's hackable variant."""
    if rollout.ref_signals is None:
        raise ValueError("offline_self_certainty needs rollout.ref_signals (the reference model's signals)")
    return masked_mean(rollout.ref_signals.self_certainty, rollout.response_mask)  # (N,)


@register("plurality")
def plurality_reward(rollout: Rollout) -> Tensor:
    """GRPO-PV: 1 if the response's answer is its group's plurality answer, else 0 (no labels).

    Ties: every answer of a tied-largest cluster gets 1 (so a group of all-different answers is all 1s and
    learns nothing); a response without an answer gets 0 and casts no vote (`rlif.answers.plurality`).
    """
    rewards = []
    for start in range(0, len(rollout.answers), rollout.group_size):
        group = rollout.answers[start : start + rollout.group_size]
        rewards += plurality(group, rollout.answer_format.equivalent)
    return torch.tensor(rewards, dtype=torch.float32)  # (N,)


@register("negative_entropy")
def negative_entropy_reward(rollout: Rollout) -> Tensor:
    """RENT: minus the mean token entropy of the response under the sampling policy."""
    return -masked_mean(rollout.signals.entropy, rollout.response_mask)  # (N,)


@register("random")
def random_reward(rollout: Rollout) -> Tensor:
    """Control: a uniform number in [0, 1) hashed from the prompt, the response and its place in the group.

    A function of the rollout alone (no random state), so a resumed run repeats the same rewards.
    """
    values = []
    for row in range(rollout.response_ids.shape[0]):
        prompt = rollout.prompt_ids[row][rollout.prompt_mask[row].bool()].tolist()
        response = rollout.response_ids[row][rollout.response_mask[row].bool()].tolist()
        key = f"{prompt}|{response}|{row % rollout.group_size}".encode()
        values.append(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") / 2.0**64)
    return torch.tensor(values, dtype=torch.float64).float()  # (N,)


def code_outcomes(rollout: Rollout, per_test: bool) -> list[CodeOutcome]:
    """Each response's program run against its problem's tests, in parallel sandboxes (`rlif.code.grading`)."""
    if not isinstance(rollout.answer_format, CodeAnswerFormat):
        raise ValueError(f"a code reward needs a code answer format (data.answer_format: code or code_completion), "
                         f"got {rollout.answer_format.name!r}")
    return rollout.answer_format.outcomes(rollout.completions, rollout.labels, rollout.answers, per_test=per_test)


@register("code_tests", uses_labels=True)
def code_tests_reward(rollout: Rollout) -> Tensor:
    """GRPO on code: the share of the problem's tests the response's program passes (each test also alone)."""
    return torch.tensor([outcome.tests_passed for outcome in code_outcomes(rollout, per_test=True)], dtype=torch.float32)


@register("code_tests_all", uses_labels=True)
def code_tests_all_reward(rollout: Rollout) -> Tensor:
    """GRPO on code: 1 if the response's program passes all the problem's tests, else 0."""
    return torch.tensor([float(outcome.passed) for outcome in code_outcomes(rollout, per_test=False)])


code_tests_reward.needs_code = code_tests_all_reward.needs_code = True


def check_answer_format(reward: Reward, answer_format: AnswerFormat) -> None:
    """Refuse, before any model is loaded, a code reward (or a weighted sum holding one) without a code answer format."""
    components = [component for component, _ in reward.components.values()] if isinstance(reward, WeightedSum) else [reward]
    for component in components:
        if getattr(component, "needs_code", False) and not isinstance(answer_format, CodeAnswerFormat):
            raise ConfigError(f"config field reward.name = {component.name!r} runs programs against tests: it needs "
                              f"data.answer_format code or code_completion, got {answer_format.name!r}")


class WeightedSum:
    """sum_k w_k * n_k, where n_k is component k's reward normalized within each group:
        n_k,i = (r_k,i - mean_group(r_k)) / (std_group(r_k) + 1e-6)      (unbiased std; 0 for a constant group)

    the same normalization as the GRPO advantage, so weights compare rewards of different scales (a
    self-certainty of ~0.5 nats and a 0/1 correctness). Each component sees labels only if it uses them.
    """

    name = WEIGHTED

    def __init__(self, components: dict[str, tuple[Reward, float]]):
        self.components = components
        self.uses_labels = any(reward.uses_labels for reward, _ in components.values())
        self.needs_reference = any(getattr(reward, "needs_reference", False) for reward, _ in components.values())
        self.__doc__ = "weighted sum of group-normalized rewards: " + ", ".join(f"{w:g} x {k}" for k, (_, w) in components.items())

    def __call__(self, rollout: Rollout) -> Tensor:
        total = torch.zeros(rollout.response_ids.shape[0])
        for reward, weight in self.components.values():
            total += weight * group_advantages(compute_reward(reward, rollout), rollout.group_size)  # (N,)
        return total
