"""The KV-cache sampler: exact greedy, keyed randomness, nucleus, signals from the sampling pass."""


import numpy as np
import pytest
import torch

from rlif.models import eos_token_ids, load_model, load_tokenizer
from rlif.sampling import draw_tokens, keyed_uniform, sample
from rlif.score import pad_pairs
from rlif.scoring import SignalModel

PROMPTS = ["<|user|>1+2=\n<|assistant|>", "<|user|>123+45=\n<|assistant|>", "<|user|>7=\n<|assistant|>"]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)  # a less uniform distribution than the random init gives
    encoded = [tokenizer(p, add_special_tokens=False).input_ids for p in PROMPTS]
    return model, tokenizer, encoded, eos_token_ids(tokenizer, model)


def test_draw_tokens_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]] * 3))
    assert draw_tokens(logits, torch.tensor([0.1, 0.6, 0.8]), temperature=1.0).tolist() == [0, 1, 2]
    # top_p = 0.6: the nucleus is {0, 1} (mass before token 1 is 0.5 < 0.6), renormalized to (2/3, 1/3).
    assert draw_tokens(logits, torch.tensor([0.1, 0.7, 0.99]), temperature=1.0, top_p=0.6).tolist() == [0, 1, 1]
    # A zero-probability token is never drawn, even where the CDF is flat.
    logits = torch.tensor([[0.0, -float("inf"), 0.0]])
    assert draw_tokens(logits, torch.tensor([0.5]), 1.0).tolist() in ([0], [2])
    assert draw_tokens(logits, torch.tensor([0.4999]), 1.0).tolist() == [0]


def test_keyed_uniform():
    keys, ids = np.arange(20000), np.zeros(20000)
    u = keyed_uniform(5, keys, ids, 3)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.003
    assert np.array_equal(u, keyed_uniform(5, keys, ids, 3))
    for other in (keyed_uniform(6, keys, ids, 3), keyed_uniform(5, keys, ids + 1, 3), keyed_uniform(5, keys, ids, 4)):
        assert np.mean(u == other) < 0.001


def test_greedy_equals_hf_generate(loaded):
    model, tokenizer, encoded, eos = loaded
    ours = sample(model, encoded, max_new_tokens=10, eos_ids=eos, greedy=True, batch_size=2)
    for prompt, response in zip(encoded, ours.responses):
        out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
        expected = out[0, len(prompt) :].tolist()
        if eos[0] in expected:
            expected = expected[: expected.index(eos[0]) + 1]
        assert response == expected


def test_samples_do_not_depend_on_batching_or_order(loaded):
    model, _, encoded, eos = loaded
    kwargs = dict(num_samples=4, max_new_tokens=12, eos_ids=eos, temperature=0.9, seed=11)
    together = sample(model, encoded, batch_size=64, **kwargs)
    one_by_one = sample(model, encoded, batch_size=1, **kwargs)
    reversed_order = sample(model, encoded[::-1], prompt_keys=[2, 1, 0], batch_size=5, **kwargs)
    assert together.responses == one_by_one.responses
    for i in range(3):
        assert together.responses[i * 4 : (i + 1) * 4] == reversed_order.responses[(2 - i) * 4 : (3 - i) * 4]
    assert len({tuple(r) for r in together.responses}) > 6  # samples differ from each other
    assert together.responses != sample(model, encoded, batch_size=64, **{**kwargs, "seed": 12}).responses


def test_signals_from_the_sampling_pass_match_the_scoring_pass(loaded):
    model, tokenizer, encoded, eos = loaded
    temperature = 0.8
    samples = sample(model, encoded, num_samples=3, max_new_tokens=9, eos_ids=eos, temperature=temperature, seed=2, track_signals=True)
    prompts = [encoded[i // 3] for i in range(9)]
    batch = pad_pairs(prompts, samples.responses, tokenizer.pad_token_id)
    with torch.no_grad():
        signals = SignalModel(model)(*batch, temperature=temperature)
    mask = batch[3].float()
    for name, ours in (("self_certainty", samples.self_certainty), ("entropy", samples.entropy), ("logprobs", samples.logprob)):
        scored = (getattr(signals, name) * mask).sum(-1) / mask.sum(-1)
        torch.testing.assert_close(ours, scored, rtol=1e-4, atol=1e-5)
    assert all(t == (len(r) == 9 and r[-1] not in eos) for r, t in zip(samples.responses, samples.truncated))


def test_nucleus_sampling_distribution(loaded):
    model, _, encoded, eos = loaded
    top_p, temperature = 0.7, 1.0
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([encoded[0]])).logits[0, -1] / temperature, -1)
    sorted_probs, order = probs.sort(descending=True)
    keep = (sorted_probs.cumsum(0) - sorted_probs) < top_p
    nucleus = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    nucleus /= nucleus.sum()
    samples = sample(model, [encoded[0]], num_samples=4000, max_new_tokens=1, eos_ids=eos, temperature=temperature, top_p=top_p, batch_size=4000)
    counts = torch.bincount(torch.tensor([r[0] for r in samples.responses]), minlength=probs.shape[0]).float()
    assert keep.sum() >= 2 and keep.sum() < probs.shape[0] - 2
    assert counts[nucleus == 0].sum() == 0
    assert 0.5 * (counts / counts.sum() - nucleus).abs().sum() < 0.03
