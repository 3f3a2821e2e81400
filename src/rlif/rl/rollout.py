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

from rlif.data.answers import MATH, AnswerFormat
from rlif.sampling.native import sample
from rlif.signals.batching import left_pad, right_pad
from rlif.signals.tokens import TokenSignals


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
    """N = num_prompts x group_size responses; rows i * G .. i * G + G - 1 answer prompt i."""

    prompt_ids: Tensor  # (N, P) left-padded prompt tokens
    prompt_mask: Tensor  # (N, P) 1 on prompt tokens, 0 on padding
    response_ids: Tensor  # (N, T) right-padded sampled tokens
    response_mask: Tensor  # (N, T) 1 up to and including the first EOS, 0 after it and on padding
    group_size: int  # G: responses per prompt, rows of a group are contiguous
    prompts: list[str]  # N raw prompt texts (before templating)
    completions: list[str]  # N decoded responses (special tokens removed)
    truncated: Tensor  # (N,) bool, True when the response hit max_new_tokens without EOS
    labels: Sequence[str | None] = ()  # N reference answers, or HiddenLabels
    answers: list[str | None] = field(default_factory=list)  # N final answers extracted from the completions
    answer_format: AnswerFormat = MATH  # how answers are extracted and compared
    signals: TokenSignals | None = None  # (N, T) log-probs, self-certainty, entropy of pi_old: from the sampling pass, or the trainer's
    ref_signals: TokenSignals | None = None  # (N, T) the frozen reference model's signals (KL term, offline rewards); None without one
    engine_logprobs: Tensor | None = None  # (N, T) the engine's log-probs, kept when the trainer's pass replaced `signals`

    @property
    def response_lengths(self) -> Tensor:
        return self.response_mask.sum(-1)  # (N,)

    def correct(self) -> Tensor:
        """(N,) 1.0 where the response is right by its label (reads the labels): for math, the extracted answer
        equals it; for code, the program passes the tests (`AnswerFormat.grade`, all responses at once)."""
        graded = self.answer_format.grade(self.completions, self.labels, self.answers)
        return torch.tensor([float(row["correct"]) for row in graded])

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
    seed: int,
    batch_size: int = 64,
    eos_ids: Sequence[int],
    labels: Sequence[str | None] = (),
    prompt_keys: Sequence[int] | None = None,
    answer_format: AnswerFormat = MATH,
    decode: str = "dynamic",
    cpu_threads: int = 0,
    engine=None,
    progress=None,
) -> Rollout:
    """Sample `group_size` responses to each rendered prompt.

    With the native engine (`engine` None: `rlif.sampling.native.sample` on `model`, with `batch_size`, `decode` and
    `cpu_threads`), `rollout.signals` (per-token log-prob at `temperature`, self-certainty, entropy) come from the
    sampling pass itself: the logits that drew each token also score it, so no forward is repeated. Another engine
    (`engine.sample`, e.g. `rlif.sampling.vllm_engine.VLLMEngine`) gives the sampled tokens' log-probs only
    (`rollout.signals.self_certainty` is None until the trainer scores the rollout).
    `prompt_keys` name the prompts in the random stream (the training loop passes their place in the step's batch
    and derives `seed` from the step), so a prompt gets the same responses on any number of processes.
    """
    encoded = [tokenizer(text, add_special_tokens=False).input_ids for text in rendered_prompts]
    common = dict(num_samples=group_size, max_new_tokens=max_new_tokens, eos_ids=eos_ids, temperature=temperature,
                  top_p=top_p, seed=seed, prompt_keys=prompt_keys)
    if engine is None:
        samples = sample(model, encoded, batch_size=batch_size, track_signals=True, decode=decode, cpu_threads=cpu_threads,
                         progress=progress, **common)
    else:
        samples = engine.sample(encoded, **common)
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
        group_size=group_size,
        prompts=[prompt_texts[i] for i in rows],
        completions=completions,
        truncated=torch.tensor(samples.truncated),
        labels=[labels[i] for i in rows] if labels else [None] * len(rows),
        answers=[answer_format.extract(text) for text in completions],
        answer_format=answer_format,
        signals=samples.token_signals,  # (N, T): the same right-padded layout as response_ids
    )


