"""The KV-cache sampler: exact greedy, keyed randomness, nucleus, signals from the sampling pass, decode loops."""

import shutil

import numpy as np
import pytest
import torch
from reference import keyed_uniform_reference

from rlif.models.load import eos_token_ids, load_model, load_tokenizer
from rlif.sampling.keys import keyed_uniform
from rlif.sampling.native import _COMPILED_DECODERS, draw_tokens, sample
from rlif.signals.batching import pad_pairs
from rlif.signals.model import SignalModel

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
    keys, ids = torch.arange(20000), torch.zeros(20000, dtype=torch.long)
    u = keyed_uniform(5, keys, ids, 3).numpy()
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.003
    assert np.array_equal(u, keyed_uniform(5, keys, ids, 3).numpy())
    for other in (keyed_uniform(6, keys, ids, 3), keyed_uniform(5, keys, ids + 1, 3), keyed_uniform(5, keys, ids, 4)):
        assert np.mean(u == other.numpy()) < 0.001


def test_keyed_uniform_has_the_bits_of_the_numpy_reference():
    rng = np.random.default_rng(0)
    keys = np.concatenate([rng.integers(0, 2**62, 3000), np.arange(100)])
    ids = rng.integers(0, 64, keys.size)
    for seed in (0, 7, 2**63 + 5, (1 << 63) - 1):
        for position in (0, 1, 4095):
            expected = keyed_uniform_reference(seed, keys, ids, position)
            got = keyed_uniform(seed, torch.from_numpy(keys), torch.from_numpy(ids), position)
            assert got.dtype == torch.float64 and np.array_equal(got.numpy(), expected)


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


def _assert_same_samples(expected, got, track_signals):
    assert got.responses == expected.responses and got.truncated == expected.truncated
    if track_signals:
        for name in ("logprob", "self_certainty", "entropy"):
            torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=1e-5, atol=1e-5)
        for name in ("logprobs", "self_certainty", "entropy"):
            torch.testing.assert_close(getattr(got.token_signals, name), getattr(expected.token_signals, name), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "settings",
    [
        {"greedy": True},
        {"temperature": 0.9, "seed": 3},
        {"temperature": 0.7, "top_p": 0.8, "seed": 4},
        {"temperature": 1.0, "seed": 5, "frequent_eos": True},  # rows end at different steps, all of them early
    ],
)
@pytest.mark.parametrize("track_signals", [False, True])
@pytest.mark.parametrize("model_name", ["llama", "qwen2"])
def test_static_decode_draws_what_the_dynamic_one_draws(loaded, peaky_model_dir, settings, track_signals, model_name):
    model, _, encoded, eos = loaded
    if model_name == "qwen2":
        model = load_model(str(peaky_model_dir)).eval()
    settings = dict(settings)
    if settings.pop("frequent_eos", False):
        eos = list(range(model.config.vocab_size // 2))
    # 3 prompts x 4 samples in batches of 2 prompts: the second batch fills its rows with copies.
    kwargs = dict(num_samples=4, max_new_tokens=40, eos_ids=eos, batch_size=8, track_signals=track_signals, **settings)
    dynamic = sample(model, encoded, decode="dynamic", **kwargs)
    static = sample(model, encoded, decode="static", **kwargs)
    _assert_same_samples(dynamic, static, track_signals)
    lengths = [len(r) for r in dynamic.responses]
    assert max(lengths) > 1 and (min(lengths) < 40 or settings.get("greedy"))


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++")), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_decode_draws_the_same_and_compiles_once(loaded):
    model, _, encoded, eos = loaded
    kwargs = dict(num_samples=4, max_new_tokens=20, eos_ids=eos, batch_size=8, temperature=0.9, seed=3, track_signals=True)
    dynamic = sample(model, encoded, decode="dynamic", **kwargs)
    torch._dynamo.reset()
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    _assert_same_samples(dynamic, sample(model, encoded, decode="compiled", **kwargs), track_signals=True)
    decoder = _COMPILED_DECODERS[model][8]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs > before  # the decode step was compiled
    # A second call (other prompts, shorter, fewer) reuses the cache and the graph: nothing is compiled again.
    again = sample(model, encoded[:1], decode="compiled", **{**kwargs, "max_new_tokens": 7})
    assert again.responses == sample(model, encoded[:1], decode="dynamic", **{**kwargs, "max_new_tokens": 7}).responses
    assert _COMPILED_DECODERS[model][8] is decoder
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    # The same model under bf16 autocast (as training samples) and then without: each gets a cache of its dtype.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = sample(model, encoded, decode="compiled", **kwargs)
        assert under_autocast.responses == sample(model, encoded, decode="dynamic", **kwargs).responses
    _assert_same_samples(dynamic, sample(model, encoded, decode="compiled", **kwargs), track_signals=True)


def test_unknown_decode_mode_is_refused(loaded):
    model, _, encoded, eos = loaded
    with pytest.raises(ValueError, match="decode='fast'.*dynamic, static, compiled"):
        sample(model, encoded, max_new_tokens=2, eos_ids=eos, decode="fast")


def test_static_decode_refuses_sliding_window_models_with_the_reason():
    from rlif.testbed.tiny import tiny_causal_lm

    model = tiny_causal_lm(20, architecture="qwen2", hidden_size=32, seed=0)
    model.config.sliding_window = 4
    model.config.layer_types = ["sliding_attention"] * model.config.num_hidden_layers
    with pytest.raises(ValueError, match="decode='static' needs full-attention layers; qwen2 has sliding-window layers"):
        sample(model, [[1, 2, 3]], max_new_tokens=3, eos_ids=[0], decode="static")
