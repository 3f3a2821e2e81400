"""Rollouts: G sampled responses per prompt, as one typed batch.

A `Rollout` is what rewards see. Labels travel with it but are hidden from any reward that does not
declare `uses_labels = True`: touching them raises `LabelsHiddenError`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from rlif.answers import MATH, AnswerFormat
from rlif.sampling import sample
from rlif.signals import TokenSignals


class LabelsHiddenError(RuntimeError):
    """A label-free reward tried to read the labels."""


class HiddenLabels(Sequence):
    """Stands in for the labels of a rollout given to a label-free reward; any use raises."""

    def __init__(self, reward_name: str):
        self.reward_name = reward_name

    def _refuse(self, *_args):
        raise LabelsHiddenError(
            f"reward {self.reward_name!r} is label-free but read the labels; "
            "declare `uses_labels = True` on it if it is meant to use them"
        )

    __getitem__ = __len__ = __iter__ = __contains__ = __bool__ = _refuse


@dataclass
class Rollout:
    """N = num_prompts x group_size responses; row i answers prompt group_ids[i]."""

    prompt_ids: Tensor  # (N, P) left-padded prompt tokens
    prompt_mask: Tensor  # (N, P) 1 on prompt tokens, 0 on padding
    response_ids: Tensor  # (N, T) right-padded sampled tokens
    response_mask: Tensor  # (N, T) 1 up to and including the first EOS, 0 after it and on padding
    group_ids: Tensor  # (N,) index of the prompt in this step's batch
    group_size: int  # G: responses per prompt, rows of a group are contiguous
    prompts: list[str]  # N raw prompt texts (before templating)
    completions: list[str]  # N decoded responses (special tokens removed)
    truncated: Tensor  # (N,) bool, True when the response hit max_new_tokens without EOS
    labels: Sequence[str | None] = ()  # N reference answers, or HiddenLabels
    answers: list[str | None] = field(default_factory=list)  # N final answers extracted from the completions
    answer_format: AnswerFormat = MATH  # how answers are extracted and compared
    signals: TokenSignals | None = None  # (N, T) log-probs, self-certainty, entropy of pi_old, from the sampling pass
    ref_logprobs: Tensor | None = None  # (N, T) reference-model log-probs, None without a reference model
    ref_signals: TokenSignals | None = None  # (N, T) the reference model's signals (offline rewards read them)
    extras: dict = field(default_factory=dict)  # per-reward state (e.g. offline signals), keyed by name

    @property
    def response_lengths(self) -> Tensor:
        return self.response_mask.sum(-1)  # (N,)

    def correct(self) -> Tensor:
        """(N,) 1.0 where the extracted answer equals the label (reads the labels)."""
        equivalent = self.answer_format.equivalent
        return torch.tensor([float(equivalent(a, label)) for a, label in zip(self.answers, self.labels)])

    def without_labels(self, reward_name: str) -> "Rollout":
        return dataclasses.replace(self, labels=HiddenLabels(reward_name))

    def select(self, rows: Tensor | slice) -> dict[str, Tensor]:
        """The tensors a forward pass needs for a subset of rows."""
        return {
            "prompt_ids": self.prompt_ids[rows],
            "prompt_mask": self.prompt_mask[rows],
            "response_ids": self.response_ids[rows],
            "response_mask": self.response_mask[rows],
        }


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (run seed, step, process, call), stable across runs."""
    seed = 0x9E3779B97F4A7C15
    for part in parts:
        seed = (seed ^ (int(part) + 0x9E3779B97F4A7C15 + (seed << 6) + (seed >> 2))) & ((1 << 63) - 1)
    return seed


def generate_rollout(
    model,
    tokenizer,
    prompt_texts: list[str],
    rendered_prompts: list[str],
    *,
    group_size: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    eos_ids: Sequence[int],
    labels: Sequence[str | None] = (),
    prompt_keys: Sequence[int] | None = None,
    answer_format: AnswerFormat = MATH,
    decode: str = "dynamic",
    progress=None,
) -> Rollout:
    """Sample `group_size` responses to each rendered prompt (see `rlif.sampling.sample`).

    `prompt_keys` name the prompts in the random stream (the training loop passes their dataset index
    and derives `seed` from the step), so a prompt gets the same responses on any number of processes.
    `rollout.signals` (per-token log-prob at `temperature`, self-certainty, entropy) come from the
    sampling pass itself: the logits that drew each token also score it, so no forward is repeated.
    """
    encoded = [tokenizer(text, add_special_tokens=False).input_ids for text in rendered_prompts]
    samples = sample(
        model,
        encoded,
        num_samples=group_size,
        max_new_tokens=max_new_tokens,
        eos_ids=eos_ids,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        prompt_keys=prompt_keys,
        batch_size=batch_size,
        track_signals=True,
        decode=decode,
        progress=progress,
    )
    rows = [i for i in range(len(encoded)) for _ in range(group_size)]  # group members contiguous
    pad = tokenizer.pad_token_id
    prompt_ids, prompt_mask = left_pad([encoded[i] for i in rows], pad)  # (N, P)
    response_ids, response_mask = right_pad(samples.responses, pad)  # (N, T)
    completions = [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in samples.responses]
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        group_ids=torch.tensor(rows),
        group_size=group_size,
        prompts=[prompt_texts[i] for i in rows],
        completions=completions,
        truncated=torch.tensor(samples.truncated),
        labels=[labels[i] for i in rows] if labels else [None] * len(rows),
        answers=[answer_format.extract(text) for text in completions],
        answer_format=answer_format,
        signals=samples.token_signals,  # (N, T): the same right-padded layout as response_ids
    )


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max((len(s) for s in sequences), default=0)  # none: a process whose share of the problems is empty
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


def right_pad(sequences: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(1, max((len(s) for s in sequences), default=0))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask
