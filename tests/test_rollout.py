"""Rollout generation (sampling distribution, layout, masks, seeds) and rewards (label hiding)."""

import pytest
import torch

from rlif.models.load import eos_token_ids, load_model, load_tokenizer
from rlif.rl.rewards import REWARDS, compute_reward, correctness_reward, register, resolve_reward
from rlif.rl.rollout import LabelsHiddenError, generate_rollout
from rlif.signals.batching import score_in_batches
from rlif.signals.model import SignalModel


def rollout_for(model_dir, prompts, **overrides):
    model, tokenizer = load_model(str(model_dir)).eval(), load_tokenizer(str(model_dir))
    kwargs = dict(group_size=3, temperature=1.0, top_p=1.0, max_new_tokens=6, batch_size=4, seed=7, eos_ids=eos_token_ids(tokenizer, model))
    kwargs.update(overrides)
    return model, tokenizer, generate_rollout(model, tokenizer, prompts, prompts, **kwargs)


def test_samples_follow_softmax_over_temperature_whatever_the_generation_config(tiny_model_dir):
    """The update scores softmax(z / T); the sampler must draw from exactly that (no top-k, no penalties)."""
    model, tokenizer = load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)  # a distribution far from uniform
    model.generation_config.top_k = 2
    model.generation_config.repetition_penalty = 3.0
    prompt = "<|user|>12+3=\n<|assistant|>"
    temperature = 0.7
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1] / temperature, -1)
    rollout = generate_rollout(
        model, tokenizer, [prompt], [prompt], group_size=4000, temperature=temperature, top_p=1.0,
        max_new_tokens=1, batch_size=1000, seed=0, eos_ids=eos_token_ids(tokenizer, model),
    )
    counts = torch.bincount(rollout.response_ids[:, 0], minlength=probs.shape[0]).float()
    total_variation = 0.5 * (counts / counts.sum() - probs).abs().sum().item()
    assert (probs > 0.01).sum() >= 3  # more than top_k = 2 tokens matter
    assert total_variation < 0.03, total_variation


def test_layout_masks_and_completions(tiny_model_dir):
    prompts = ["<|user|>1+1=\n<|assistant|>", "<|user|>12+30=\n<|assistant|>"]
    _, tokenizer, rollout = rollout_for(tiny_model_dir, prompts, labels=["2", "42"])
    assert rollout.prompts == [prompts[0]] * 3 + [prompts[1]] * 3 and rollout.labels == ["2"] * 3 + ["42"] * 3
    assert rollout.prompt_mask[0].tolist()[:3] == [0, 0, 1]  # the shorter prompt is left-padded
    eos = tokenizer.eos_token_id
    for i in range(6):
        n = int(rollout.response_mask[i].sum())
        tokens = rollout.response_ids[i, :n].tolist()
        assert rollout.response_mask[i, :n].all() and not rollout.response_mask[i, n:].any()
        assert bool(rollout.truncated[i]) == (eos not in tokens)
        assert tokens.count(eos) <= 1 and (eos not in tokens or tokens[-1] == eos)
        assert rollout.completions[i] == tokenizer.decode(tokens, skip_special_tokens=True)


def test_same_seed_same_rollout(tiny_model_dir):
    prompts = ["<|user|>1+1=\n<|assistant|>"]
    first = rollout_for(tiny_model_dir, prompts)[2]
    again = rollout_for(tiny_model_dir, prompts)[2]
    other = rollout_for(tiny_model_dir, prompts, seed=8)[2]
    assert torch.equal(first.response_ids, again.response_ids)
    assert not torch.equal(first.response_ids, other.response_ids)


def scored_rollout(model_dir, labels):
    prompts = ["<|user|>1+1=\n<|assistant|>", "<|user|>2+2=\n<|assistant|>"]
    model, _, rollout = rollout_for(model_dir, prompts, labels=labels)
    rollout.signals = score_in_batches(SignalModel(model), **rollout.select(slice(None)), batch_size=4)
    return rollout


def test_label_free_rewards_cannot_see_labels(tiny_model_dir):
    rollout = scored_rollout(tiny_model_dir, labels=["2", "4"])

    @register("peeking_test_reward")
    def peeking(rollout):
        return torch.tensor([float(label == "2") for label in rollout.labels])

    try:
        with pytest.raises(LabelsHiddenError, match="'peeking_test_reward' is label-free but read the labels"):
            compute_reward(peeking, rollout)
        # Self-certainty runs without labels; correctness declares them and sees them.
        assert compute_reward(resolve_reward("self_certainty"), rollout).shape == (6,)
        rollout.completions = ["so \\boxed{2}"] * 3 + ["4"] * 2 + ["5"]
        rollout.answers = [rollout.answer_format.extract(text) for text in rollout.completions]
        assert compute_reward(correctness_reward, rollout).tolist() == [1, 1, 1, 1, 1, 0]
    finally:
        REWARDS.pop("peeking_test_reward")


def test_self_certainty_reward_is_the_masked_mean(tiny_model_dir):
    rollout = scored_rollout(tiny_model_dir, labels=["2", "4"])
    rewards = compute_reward(resolve_reward("self_certainty"), rollout)
    for i in range(6):
        n = int(rollout.response_mask[i].sum())
        assert rewards[i].item() == pytest.approx(rollout.signals.self_certainty[i, :n].mean().item(), rel=1e-6)


def test_user_reward_by_import_path_and_length_check(tiny_model_dir, tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "import torch\n"
        "def length_reward(rollout):\n    return rollout.response_mask.sum(-1).float()\n"
        "def broken(rollout):\n    return torch.zeros(1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rollout = scored_rollout(tiny_model_dir, labels=["2", "4"])
    reward = resolve_reward("my_rewards:length_reward")
    assert reward.uses_labels is False
    assert compute_reward(reward, rollout).tolist() == rollout.response_mask.sum(-1).float().tolist()
    with pytest.raises(ValueError, match="returned 1 values for 6 responses"):
        compute_reward(resolve_reward("my_rewards:broken"), rollout)


def test_rollout_signals_from_the_sampling_pass_equal_a_scoring_pass_per_token(peaky_model_dir):
    """The trainer takes pi_old signals from the sampler: they must be the scoring pass's numbers, token by token."""
    prompts = ["1+1=", "12+30="]
    model, _, rollout = rollout_for(peaky_model_dir, prompts, temperature=0.8, max_new_tokens=7)
    with torch.no_grad():
        scored = score_in_batches(SignalModel(model), **rollout.select(slice(None)), batch_size=4, temperature=0.8)
    mask = rollout.response_mask.bool()
    assert rollout.signals.logprobs.shape == mask.shape
    for name in ("logprobs", "self_certainty", "entropy"):
        ours, theirs = getattr(rollout.signals, name), getattr(scored, name)
        torch.testing.assert_close(ours[mask], theirs[mask], rtol=1e-4, atol=1e-5)
        assert torch.all(ours[~mask] == 0)
