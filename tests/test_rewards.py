"""The compared methods' rewards on hand-built rollouts: values by hand, ties, label hiding, offline vs online."""

import pytest
import torch

from rlif.config import load_config
from rlif.data.answers import MATH, agreement, plurality
from rlif.errors import ConfigError
from rlif.rl.rewards import (
    REWARDS,
    WeightedSum,
    build_reward,
    compute_reward,
    negative_entropy_reward,
    offline_self_certainty_reward,
    plurality_reward,
    random_reward,
    register,
    resolve_reward,
    self_certainty_reward,
)
from rlif.rl.rollout import LabelsHiddenError, Rollout
from rlif.signals.tokens import TokenSignals
from rlif.testbed.task import ARITHMETIC


def hand_rollout(answers, group_size, labels=None, self_certainty=None, entropy=None, ref_self_certainty=None, lengths=None):
    """N responses of up to 3 tokens; signals given per token as (N, 3) lists (masked by `lengths`)."""
    n = len(answers)
    lengths = lengths or [3] * n
    response_mask = torch.tensor([[1] * k + [0] * (3 - k) for k in lengths])
    zeros = torch.zeros(n, 3)

    def signals(values):
        return TokenSignals(zeros.clone(), torch.tensor(values, dtype=torch.float32) if values else zeros.clone(), zeros.clone())

    policy = signals(self_certainty)
    if entropy:
        policy.entropy = torch.tensor(entropy, dtype=torch.float32)
    return Rollout(
        prompt_ids=torch.arange(n * 2).view(n, 2) % 5 + 7,
        prompt_mask=torch.ones(n, 2, dtype=torch.long),
        response_ids=(torch.arange(n * 3).view(n, 3) % 4 + 7) * response_mask,
        response_mask=response_mask,
        group_size=group_size,
        prompts=["p"] * n,
        completions=[f"answer: {a}" if a is not None else "" for a in answers],
        truncated=torch.zeros(n, dtype=torch.bool),
        labels=labels or ["1"] * n,
        answers=answers,
        answer_format=ARITHMETIC,
        signals=policy,
        ref_signals=signals(ref_self_certainty) if ref_self_certainty else None,
    )


def test_plurality_by_hand_with_ties_and_missing_answers():
    eq = ARITHMETIC.equivalent
    assert plurality(["7", "7", "8", None], eq) == [True, True, False, False]
    assert plurality(["7", "8", "7", "8"], eq) == [True] * 4  # a tie: every tied answer counts
    assert plurality(["1", "2", "3", "4"], eq) == [True] * 4  # all different: all tied at 1
    assert plurality([None, None, "5", None], eq) == [False, False, True, False]  # None never votes
    assert plurality([None, None], eq) == [False, False]
    assert plurality(["042", "42", "41"], eq) == [True, True, False]  # equivalent answers are one answer
    assert plurality(["1,000", "1000.0", "7"], MATH.equivalent) == [True, True, False]  # the task's own equivalence
    assert agreement(["7", "7", "8", None], eq) == 0.5 and agreement(["1", "2"], eq) == 0.5 and agreement([None], eq) == 0.0


def test_plurality_reward_is_per_group():
    rollout = hand_rollout(["3", "3", "4", "5", "6", "5"], group_size=3, labels=["4"] * 6)
    # group 1: 3,3,4 -> the 3s; group 2: 5,6,5 -> the 5s. Labels (4) play no part.
    assert compute_reward(plurality_reward, rollout).tolist() == [1, 1, 0, 1, 0, 1]


def test_negative_entropy_and_offline_self_certainty_by_hand():
    rollout = hand_rollout(
        ["1", "2"], group_size=2, lengths=[2, 3],
        self_certainty=[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
        entropy=[[0.5, 1.5, 99.0], [3.0, 0.0, 3.0]],  # 99 is padding: masked out
        ref_self_certainty=[[0.2, 0.4, 99.0], [0.3, 0.3, 0.9]],
    )
    assert compute_reward(negative_entropy_reward, rollout).tolist() == pytest.approx([-1.0, -2.0])
    assert compute_reward(offline_self_certainty_reward, rollout).tolist() == pytest.approx([0.3, 0.5])
    assert compute_reward(self_certainty_reward, rollout).tolist() == pytest.approx([1.0, 1.0])
    rollout.ref_signals = None
    with pytest.raises(ValueError, match="ref_signals"):
        offline_self_certainty_reward(rollout)


def test_random_reward_is_a_function_of_the_rollout():
    rollout = hand_rollout(["1"] * 8, group_size=4)
    values = compute_reward(random_reward, rollout)
    again = compute_reward(random_reward, hand_rollout(["9"] * 8, group_size=4, labels=["5"] * 8))
    assert torch.equal(values, again)  # answers and labels do not enter, only tokens and place in the group
    assert ((values >= 0) & (values < 1)).all() and len(set(values.tolist())) == 8
    changed = hand_rollout(["1"] * 8, group_size=4)
    changed.response_ids[0, 0] += 1
    assert compute_reward(random_reward, changed)[0] != values[0] and torch.equal(compute_reward(random_reward, changed)[1:], values[1:])


def test_every_label_free_reward_runs_with_labels_hidden():
    rollout = hand_rollout(["1", "2", "2", None], group_size=2, self_certainty=[[1, 2, 3]] * 4, entropy=[[1, 1, 1]] * 4,
                           ref_self_certainty=[[1, 1, 1]] * 4)
    label_free = [r for r in REWARDS.values() if not r.uses_labels]
    assert {r.name for r in label_free} >= {"self_certainty", "offline_self_certainty", "plurality", "negative_entropy", "random"}
    for reward in label_free:
        seen = []

        def spy(view, reward=reward, seen=seen):
            seen.append(view.labels)
            return reward(view)

        spy.name, spy.uses_labels = reward.name, False
        compute_reward(spy, rollout)
        with pytest.raises(LabelsHiddenError):
            list(seen[0])
    assert REWARDS["correctness"].uses_labels


def test_weighted_sum_by_hand():
    # Group of 3: self-certainty (1, 2, 3) -> normalized (-1, 0, 1); correctness (1, 0, 0) -> (2/sqrt(3), -1/sqrt(3), -1/sqrt(3))
    # (mean 1/3, unbiased std sqrt(1/3)). Weighted 1.0 and 0.5.
    rollout = hand_rollout(["7", "8", "9"], group_size=3, labels=["7"] * 3, self_certainty=[[1, 1, 1], [2, 2, 2], [3, 3, 3]])
    reward = build_reward("weighted", {"self_certainty": 1.0, "correctness": 0.5})
    assert reward.uses_labels and not reward.needs_reference and reward.name == "weighted"
    s3 = 3**0.5
    expected = [-1 + 0.5 * 2 / s3, 0 - 0.5 / s3, 1 - 0.5 / s3]
    assert compute_reward(reward, rollout).tolist() == pytest.approx(expected, abs=1e-5)
    assert build_reward("weighted", {"offline_self_certainty": 1.0, "plurality": 1.0}).needs_reference


def test_weighted_sum_hides_labels_from_label_free_parts():
    @register("test_peeks_at_labels")
    def peeks(rollout):
        return torch.tensor([float(label) for label in rollout.labels])

    try:
        rollout = hand_rollout(["1", "2"], group_size=2, labels=["1", "1"])
        reward = WeightedSum({"correctness": (REWARDS["correctness"], 1.0), "test_peeks_at_labels": (peeks, 1.0)})
        with pytest.raises(LabelsHiddenError):
            compute_reward(reward, rollout)
    finally:
        REWARDS.pop("test_peeks_at_labels")


def test_reward_config_errors_name_the_field(tmp_path):
    base = ["model.path=m", "data.path=d.jsonl"]
    assert load_config(None, base + ["reward.name=weighted", "reward.weights={self_certainty: 1, correctness: 2}"]).reward.weights == {
        "self_certainty": 1.0, "correctness": 2.0}
    with pytest.raises(ConfigError, match="reward.name = 'weighted': reward 'weighted' needs reward.weights"):
        load_config(None, base + ["reward.name=weighted"])
    with pytest.raises(ConfigError, match=r"reward.weights = \{'self_certainy': 1.0\}: unknown reward"):
        load_config(None, base + ["reward.name=weighted", "reward.weights={self_certainy: 1}"])
    with pytest.raises(ConfigError, match="reward.weights is only read by reward.name = 'weighted'"):
        load_config(None, base + ["reward.weights={self_certainty: 1}"])
    with pytest.raises(KeyError, match="built from reward.weights"):
        resolve_reward("weighted")


def test_offline_and_online_self_certainty_differ_after_an_update(tiny_model_dir):
    """Both equal the same model's self-certainty before any update; after one, only the online one moves."""
    from rlif.models.load import eos_token_ids, load_model, load_tokenizer
    from rlif.rl.rollout import generate_rollout
    from rlif.signals.batching import score_in_batches
    from rlif.signals.model import SignalModel

    policy, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    reference = SignalModel(load_model(str(tiny_model_dir))).eval()
    prompts = ["<|user|>12+3\n<|assistant|>", "<|user|>4+56\n<|assistant|>"]
    rollout = generate_rollout(policy, tokenizer, prompts, prompts, group_size=3, temperature=1.0, top_p=1.0, max_new_tokens=6,
                               batch_size=8, seed=0, eos_ids=eos_token_ids(tokenizer, policy))
    tensors = rollout.select(slice(None))
    rollout.ref_signals = score_in_batches(reference, **tensors, batch_size=8)
    rollout.signals = score_in_batches(SignalModel(policy), **tensors, batch_size=8)
    online, offline = compute_reward(self_certainty_reward, rollout), compute_reward(offline_self_certainty_reward, rollout)
    assert torch.allclose(online, offline)

    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)  # one big step towards the sampled responses
    signals = SignalModel(policy)(*tensors.values())
    (-(signals.logprobs * rollout.response_mask).sum()).backward()
    optimizer.step()
    rollout.signals = score_in_batches(SignalModel(policy), **tensors, batch_size=8)
    assert torch.equal(compute_reward(offline_self_certainty_reward, rollout), offline)
    assert (compute_reward(self_certainty_reward, rollout) - offline).abs().max() > 1e-3
