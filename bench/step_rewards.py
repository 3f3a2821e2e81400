"""Rewards used by bench/step.py, for rlif and for TRL (importable by name from the bench folder)."""

from __future__ import annotations

import math

import torch


def response_length(rollout):
    """rlif: a reward that needs no model (the response's length), to time a step without self-certainty."""
    return rollout.response_mask.sum(-1).float()


def trl_completion_length(completion_ids, **_):
    """TRL: the same model-free reward."""
    return [float(len(ids)) for ids in completion_ids]


def trl_self_certainty(trainer_holder: dict, tokenizer, batch_size: int):
    """TRL: self-certainty the way a TRL user gets it, a reward function that runs the policy again.

    GRPOTrainer does not hand reward functions the policy's logits, so the function re-tokenizes each prompt
    (chat template), appends the completion ids and runs a no-grad forward of the trainer's model in
    micro-batches: full logits -> float32 log_softmax -> mean over the vocabulary, at the positions that predict
    completion tokens.
    """

    def self_certainty(prompts, completion_ids, **_):
        trainer = trainer_holder["trainer"]
        model = trainer.accelerator.unwrap_model(trainer.model)
        device = next(model.parameters()).device
        prompt_ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True) for p in prompts]
        prompt_ids = [ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids for ids in prompt_ids]
        rewards = []
        for start in range(0, len(prompts), batch_size):
            rows = range(start, min(start + batch_size, len(prompts)))
            sequences = [prompt_ids[i] + list(completion_ids[i]) for i in rows]
            width = max(map(len, sequences))
            input_ids = torch.full((len(sequences), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros_like(input_ids)
            for r, seq in enumerate(sequences):
                input_ids[r, : len(seq)] = torch.tensor(seq)
                attention[r, : len(seq)] = 1
            with torch.no_grad(), trainer.accelerator.autocast():
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)  # (B, L, V)
            per_token_sc = -logp.mean(-1) - math.log(logp.shape[-1])  # (B, L)
            for r, i in enumerate(rows):
                p, n = len(prompt_ids[i]), len(completion_ids[i])
                rewards.append(per_token_sc[r, p - 1 : p - 1 + n].mean().item() if n else 0.0)
        return rewards

    return self_certainty
