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
    signals: TokenSignals | None = None  # (N, T) pi_old log-probs, self-certainty, entropy
    ref_logprobs: Tensor | None = None  # (N, T) reference-model log-probs, None when kl_coef == 0
    extras: dict = field(default_factory=dict)  # per-reward state (e.g. offline signals), keyed by name

    @property
    def response_lengths(self) -> Tensor:
        return self.response_mask.sum(-1)  # (N,)

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


def response_mask_from_ids(response_ids: Tensor, eos_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(mask up to and including the first EOS, truncated flag) for right-padded generated tokens.

    Computed from the first EOS position, not from `token != pad`, so a tokenizer whose PAD equals
    EOS is handled.
    """
    is_eos = torch.isin(response_ids, torch.tensor(list(eos_ids), device=response_ids.device))  # (N, T)
    eos_seen_before = (is_eos.cumsum(-1) - is_eos.long()) > 0  # (N, T): an EOS strictly earlier
    mask = (~eos_seen_before).long()  # (N, T)
    truncated = ~is_eos.any(-1)  # (N,)
    return mask, truncated


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (run seed, step, process, call), stable across runs."""
    seed = 0x9E3779B97F4A7C15
    for part in parts:
        seed = (seed ^ (int(part) + 0x9E3779B97F4A7C15 + (seed << 6) + (seed >> 2))) & ((1 << 63) - 1)
    return seed


@torch.no_grad()
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
    progress=None,
) -> Rollout:
    """Sample `group_size` responses to each rendered prompt with HF `generate`.

    The sampler is pinned (top_k off, no repetition penalty) whatever the model's generation_config
    says, so responses are draws from softmax(logits / temperature), the distribution the update scores.
    """
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    generation_config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        repetition_penalty=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(eos_ids),
        pad_token_id=tokenizer.pad_token_id,
    )
    encoded = [tokenizer(text, add_special_tokens=False).input_ids for text in rendered_prompts]
    rows = [i for i in range(len(encoded)) for _ in range(group_size)]  # group members contiguous
    prompt_chunks, response_chunks = [], []
    was_training = model.training
    model.eval()
    for call, start in enumerate(range(0, len(rows), batch_size)):
        batch_rows = rows[start : start + batch_size]
        batch = tokenizer.pad(
            {"input_ids": [encoded[i] for i in batch_rows]}, padding=True, padding_side="left", return_tensors="pt"
        )
        torch.manual_seed(seed_for(seed, call))
        output = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            generation_config=generation_config,
        )
        prompt_width = batch["input_ids"].shape[1]
        prompt_chunks.append((batch["input_ids"], batch["attention_mask"]))
        response_chunks.append(output[:, prompt_width:].cpu())
        if progress is not None:
            progress.update(len(batch_rows))
    model.train(was_training)

    prompt_ids = _left_pad_cat([ids for ids, _ in prompt_chunks], tokenizer.pad_token_id)  # (N, P)
    prompt_mask = _left_pad_cat([mask for _, mask in prompt_chunks], 0)  # (N, P)
    response_ids = _right_pad_cat(response_chunks, tokenizer.pad_token_id)  # (N, T)
    response_mask, truncated = response_mask_from_ids(response_ids, eos_ids)
    response_ids = torch.where(response_mask.bool(), response_ids, tokenizer.pad_token_id)
    completions = [
        tokenizer.decode(ids[: int(n)], skip_special_tokens=True) for ids, n in zip(response_ids, response_mask.sum(-1))
    ]
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        group_ids=torch.tensor(rows),
        group_size=group_size,
        prompts=[prompt_texts[i] for i in rows],
        completions=completions,
        truncated=truncated,
        labels=[labels[i] for i in rows] if labels else [None] * len(rows),
    )


def _left_pad_cat(chunks: list[Tensor], value: int) -> Tensor:
    width = max(c.shape[1] for c in chunks)
    return torch.cat([torch.nn.functional.pad(c, (width - c.shape[1], 0), value=value) for c in chunks])


def _right_pad_cat(chunks: list[Tensor], value: int) -> Tensor:
    width = max(c.shape[1] for c in chunks)
    return torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1]), value=value) for c in chunks])
