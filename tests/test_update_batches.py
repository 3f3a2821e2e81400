"""Micro-batches grouped by length: the same step gradient as row order, fewer token cells (bench/update_batches.py)."""

import importlib.util
from pathlib import Path

import torch

from rlif.models.load import load_model
from rlif.rl.rollout import generate_rollout
from rlif.signals.batching import length_batches
from rlif.signals.model import SignalModel

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_update_batches", REPO / "bench" / "update_batches.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def step_gradient(signal_model, rollout, batches, advantages):
    """The update's accumulated gradient over `batches` of rows (training's micro-batch loop, as the bench runs it)."""
    load_bench().update(signal_model, rollout, batches, advantages, temperature=0.9)
    return {name: p.grad.clone() for name, p in signal_model.named_parameters()}


def test_grouping_by_length_leaves_the_step_gradient_as_it_was(tiny_model_dir, tokenizer):
    model = load_model(str(tiny_model_dir))
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] += 2.0  # responses end at different lengths
    prompts = ["<|user|>1+2=\n<|assistant|>", "<|user|>12+30=\n<|assistant|>", "<|user|>7=\n<|assistant|>"]
    rollout = generate_rollout(model, tokenizer, prompts, prompts, group_size=4, temperature=0.9, top_p=1.0,
                               max_new_tokens=10, batch_size=12, seed=1, eos_ids=[tokenizer.eos_token_id])
    assert len(set(rollout.response_mask.sum(1).tolist())) > 2
    advantages = torch.randn(12, generator=torch.Generator().manual_seed(0))
    signal_model = SignalModel(model)
    by_length = length_batches(rollout.prompt_mask, rollout.response_mask, 5)
    in_order = list(torch.arange(12).split(5))
    assert sorted(torch.cat(by_length).tolist()) == list(range(12))
    assert [b.tolist() for b in by_length] != [b.tolist() for b in in_order]
    by_tokens = length_batches(rollout.prompt_mask, rollout.response_mask, 5, max_tokens=60)  # train.micro_batch_tokens
    assert sorted(torch.cat(by_tokens).tolist()) == list(range(12)) and [len(b) for b in by_tokens] != [len(b) for b in by_length]
    expected = step_gradient(signal_model, rollout, in_order, advantages)
    for batches in (by_length, by_tokens):
        got = step_gradient(signal_model, rollout, batches, advantages)
        for name in expected:
            # float32 sums in another order: equal to ~1e-5 of the largest entry (about 1 here)
            torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=2e-5, msg=name)


def test_update_batches_bench_runs_and_computes_fewer_cells_by_length():
    result = load_bench().main(["--rollouts", "1", "--rounds", "1"])  # the main job's model and its first rollout
    assert result["tokens"] <= result["cells"]["by length"] < result["cells"]["row order"]
    assert result["forwards"]["by tokens"] <= result["forwards"]["by length"] == result["forwards"]["row order"]
    assert all(len(times) == 1 and times[0] > 0 for times in result["seconds"].values())


def test_profile_update_bench_runs_each_variant_on_left_padded_rows():
    spec = importlib.util.spec_from_file_location("bench_profile_update", REPO / "bench" / "profile_update.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rollout = bench.synthetic_rollout(rows=6, prompt=10, tokens=4, vocab=50)
    lengths = rollout.prompt_mask.sum(1)
    assert ((6 <= lengths) & (lengths <= 14)).all() and rollout.prompt_mask[:, -1].all()  # left-padded, 0.6x..1.4x
    assert (rollout.prompt_ids[rollout.prompt_mask == 0] == 0).all() and rollout.response_mask.all()
    result = bench.main(["--rows", "4", "--prompt", "6", "--tokens", "3", "--variants", "base,mb16", "--repeats", "1"])
    assert set(result["seconds"]) == {"base", "mb16"} and all(t[0] > 0 for t in result["seconds"].values())


def test_autocast_cache_bench_shows_the_cached_weight_casts():
    """With the cache on, a bf16 copy of the decoder weights (67M parameters: 134 MB) is held at the forward's end and
    freed when autocast exits; with it off (what training's update uses), not."""
    spec = importlib.util.spec_from_file_location("bench_autocast_cache", REPO / "bench" / "autocast_cache.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--model", "cpu-wide"])
    (before_on, end_on, after_on), (before_off, end_off, _) = result["on"], result["off"]
    held_on, held_off = end_on - before_on, end_off - before_off
    assert held_on - held_off > 80e6, result  # most of the 134 MB of casts
    assert end_on - after_on > 50e6, result  # returned (mostly) when autocast exits
