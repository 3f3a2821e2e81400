"""GPU paths against the CPU/float64 references. Skipped without CUDA; `bench/gpu_check.sh` runs them on a GPU."""

from pathlib import Path

import pytest
import torch
from reference import assert_close, reference

from rlif.signals.chunked import hidden_signals

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh)")


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.9])
@pytest.mark.parametrize("logprobs_only", [False, True])
@pytest.mark.parametrize("train_head", [True, False])  # False: LoRA's frozen head, gradient prepared in the forward
def test_hidden_signals_on_cuda_match_the_float64_reference(compute_dtype, temperature, logprobs_only, train_head):
    torch.backends.cuda.matmul.allow_tf32 = False
    generator = torch.Generator().manual_seed(0)
    n, d, vocab, chunk = 301, 64, 5003, 128
    hidden = torch.randn(n, d, generator=generator)
    weight = torch.randn(vocab, d, generator=generator) * 0.3
    targets = torch.randint(0, vocab, (n,), generator=generator)
    upstream = torch.randn(n, generator=generator)
    h, w = hidden.cuda().requires_grad_(), weight.cuda().requires_grad_(train_head)
    logprobs, sc, entropy = hidden_signals(h, w, targets.cuda(), temperature=temperature, chunk_size=chunk,
                                           compute_dtype=compute_dtype, logprobs_only=logprobs_only)
    (logprobs * upstream.cuda()).sum().backward()
    # The reference sees the logits the GPU matmul rounded to (bf16 rounds them; float32 does not).
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    logits64 = h64 @ w64.T
    if compute_dtype == torch.bfloat16:
        w16 = weight.cuda().bfloat16()
        rounded = torch.cat([(h16 @ w16.T).double().cpu() for h16 in hidden.cuda().bfloat16().split(chunk)])  # as chunked
        logits64 = logits64 + (rounded - logits64).detach()  # bf16 values, float64 gradient
    ref_logprobs, ref_sc, ref_entropy = reference(logits64, targets, temperature)
    (ref_logprobs * upstream.double()).sum().backward()
    assert_close(logprobs, ref_logprobs.detach(), rtol=1e-5, atol=1e-5)
    if not logprobs_only:
        assert_close(sc, ref_sc.detach(), rtol=1e-4, atol=1e-5)
        assert_close(entropy, ref_entropy.detach(), rtol=1e-4, atol=1e-5)
    loose = compute_dtype == torch.bfloat16  # bf16 gradient matmuls
    assert_close(h.grad, h64.grad, rtol=2e-2 if loose else 1e-4, atol=2e-2 if loose else 1e-4)
    if train_head:
        assert_close(w.grad, w64.grad, rtol=2e-2 if loose else 1e-4, atol=2e-2 if loose else 1e-4)
    else:
        assert w.grad is None


def test_sampler_on_cuda_matches_the_scoring_pass_and_hf_greedy(tiny_model_dir):
    from rlif.models.load import eos_token_ids, load_model, load_tokenizer
    from rlif.sampling.native import sample
    from rlif.signals.batching import pad_pairs
    from rlif.signals.model import SignalModel

    model, tokenizer = load_model(str(tiny_model_dir)).cuda().eval(), load_tokenizer(str(tiny_model_dir))
    eos = eos_token_ids(tokenizer, model)
    prompts = [tokenizer(p, add_special_tokens=False).input_ids for p in ["1+2=", "123+45=", "7="]]
    samples = sample(model, prompts, num_samples=3, max_new_tokens=9, eos_ids=eos, temperature=0.8, seed=2, track_signals=True)
    batch = pad_pairs([prompts[i // 3] for i in range(9)], samples.responses, tokenizer.pad_token_id)
    with torch.no_grad():
        scored = SignalModel(model)(*(t.cuda() for t in batch), temperature=0.8)
    mask = batch[3].bool()
    for name in ("logprobs", "self_certainty", "entropy"):
        ours = getattr(samples.token_signals, name)[:, : mask.shape[1]]
        torch.testing.assert_close(ours[mask], getattr(scored, name).cpu()[mask], rtol=1e-4, atol=1e-4)
    greedy = sample(model, prompts, max_new_tokens=8, eos_ids=eos, greedy=True)
    for prompt, response in zip(prompts, greedy.responses):
        out = model.generate(torch.tensor([prompt]).cuda(), do_sample=False, max_new_tokens=8, eos_token_id=eos, pad_token_id=0)
        expected = out[0, len(prompt):].tolist()
        expected = expected[: expected.index(eos[0]) + 1] if eos[0] in expected else expected
        assert response == expected


def cuda_training_run(tmp_path, tiny_model_dir, addition_data, name="run", **model):
    """Metrics of 3 training steps of the tiny model on CUDA (bf16 autocast, fused AdamW)."""
    import yaml

    from rlif.config import load_config
    from rlif.data.jsonl import read_log as read_jsonl
    from rlif.rl.train import train

    raw = {
        "model": {"path": str(tiny_model_dir), **model},
        "data": {"path": str(addition_data), "system_prompt": None},
        "rollout": {"group_size": 4, "max_new_tokens": 12, "temperature": 1.0, "generation_batch_size": 16},
        "train": {"prompts_per_step": 4, "steps": 3, "lr": 3e-3, "micro_batch_size": 6, "score_batch_size": 5},
        "run": {"output_dir": str(tmp_path / name), "save_every": 10, "progress": False},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    train(load_config(path))
    return read_jsonl(tmp_path / name / "metrics.jsonl")


def test_training_steps_on_cuda(tmp_path, tiny_model_dir, addition_data):
    """Three bf16 steps on the GPU train: the policy starts at the reference (KL 0), moves away from it, and its
    weights change; every loss is finite."""
    from safetensors.torch import load_file

    from rlif.rl.checkpoint import latest_checkpoint

    metrics = cuda_training_run(tmp_path, tiny_model_dir, addition_data)
    assert len(metrics) == 3 and all(torch.isfinite(torch.tensor(m["loss/policy"])) for m in metrics)
    assert metrics[0]["signals/kl_ref"] == pytest.approx(0.0, abs=1e-3) and metrics[-1]["signals/kl_ref"] > metrics[0]["signals/kl_ref"]
    before = load_file(Path(tiny_model_dir) / "model.safetensors")
    after = load_file(latest_checkpoint(tmp_path / "run")[1] / "model.safetensors")
    assert any(not torch.equal(before[k], after[k].to(before[k].dtype)) for k in before)


def test_compiled_layers_on_cuda_train_what_eager_layers_train(tmp_path, tiny_model_dir, addition_data):
    """model.compile_layers (with activation checkpointing) on CUDA: the first step's loss and gradient norm as eager's
    (the rollouts are the same draws from the same weights; bf16 kernels fused differently round differently)."""
    runs = [cuda_training_run(tmp_path, tiny_model_dir, addition_data, name=f"layers-{c}", gradient_checkpointing=True,
                              compile_layers=c) for c in (False, True)]
    eager, compiled = runs[0][0], runs[1][0]
    assert compiled["reward/mean"] == eager["reward/mean"]
    assert compiled["optim/grad_norm"] == pytest.approx(eager["optim/grad_norm"], rel=2e-2)
    assert compiled["loss/policy"] == pytest.approx(eager["loss/policy"], rel=2e-2, abs=1e-4)


@pytest.mark.parametrize("decode", ["static", "compiled"])
def test_static_and_compiled_decode_on_cuda_draw_what_the_dynamic_one_draws(tiny_model_dir, decode):
    from rlif.models.load import eos_token_ids, load_model, load_tokenizer
    from rlif.sampling.native import sample

    torch.backends.cuda.matmul.allow_tf32 = False
    model, tokenizer = load_model(str(tiny_model_dir)).cuda().eval(), load_tokenizer(str(tiny_model_dir))
    eos = eos_token_ids(tokenizer, model)
    prompts = [tokenizer(p, add_special_tokens=False).input_ids for p in ["1+2=", "123+45=", "7="]]
    kwargs = dict(num_samples=4, max_new_tokens=24, eos_ids=eos, batch_size=8, temperature=0.9, seed=3, track_signals=True)
    expected = sample(model, prompts, decode="dynamic", **kwargs)
    for _ in range(2):  # the second compiled call replays the CUDA graphs recorded by the first
        got = sample(model, prompts, decode=decode, **kwargs)
        assert got.responses == expected.responses and got.truncated == expected.truncated
        torch.testing.assert_close(got.self_certainty, expected.self_certainty, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.logprob, expected.logprob, rtol=1e-4, atol=1e-4)


def test_bf16_weight_gradient_products_accumulate_in_float32_on_cuda():
    from rlif.signals.chunked import _add_product, _float32_output_matmul

    assert _float32_output_matmul(torch.device("cuda", torch.cuda.current_device()), torch.bfloat16), "torch >= 2.8 adds bf16 products in float32"
    generator = torch.Generator().manual_seed(6)
    a, b = torch.randn(300, 2048, generator=generator), torch.randn(2048, 40, generator=generator)
    a16, b16 = a.bfloat16(), b.bfloat16()
    exact = a16.double() @ b16.double()
    total = torch.zeros(300, 40, device="cuda")
    _add_product(total, a16.cuda(), b16.cuda())
    rounded = (a16.cuda() @ b16.cuda()).double().cpu()  # what a bf16 result would have kept
    assert (total.double().cpu() - exact).abs().max() < 0.1 * (rounded - exact).abs().max()


def test_an_offloaded_reference_on_cuda_scores_as_one_kept_there_and_leaves_no_device_memory():
    from test_parallel import offload_reference_case

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    expected, got, before, after = offload_reference_case(torch.device("cuda"))
    for name in ("logprobs", "self_certainty", "entropy"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=1e-6, atol=1e-6)
    assert [t.data_ptr() for t in after] == [t.data_ptr() for t in before]
    assert all(t.device.type == "cpu" and t.is_pinned() for t in after)  # host copies, pinned for asynchronous copies in
    del expected, got
    assert torch.cuda.memory_allocated() == held  # the pass's device copies are gone
