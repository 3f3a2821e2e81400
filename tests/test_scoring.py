"""SignalModel on real tiny models against a float64 full-logits reference, padding and alignment included."""

import copy

import pytest
import torch
from reference import reference_exact

from rlif.models.load import load_model
from rlif.rl.rollout import generate_rollout
from rlif.signals.batching import length_batches, pad_pairs, score_in_batches
from rlif.signals.model import SignalModel


def reference_row(model64, prompt, response, temperature=1.0):
    """Signals of one unpadded sequence from the float64 model: logits at position t-1 score token t."""
    ids = torch.tensor([prompt + response])
    logits = model64(input_ids=ids).logits[0]  # (L, V)
    start = len(prompt)
    predicting = logits[start - 1 : start - 1 + len(response)]  # (T, V)
    return reference_exact(predicting, torch.tensor(response), temperature)


ROWS = [  # (prompt tokens, response tokens): different lengths force left and right padding
    ([4, 9, 10, 11, 6], [12, 13, 14, 2]),
    ([4, 8, 6], [15]),  # a one-token response
    ([4, 9, 9, 9, 9, 9, 9, 6], [10, 11, 12, 13, 14, 15, 2]),
]


@pytest.mark.parametrize("model_dir", ["tiny_model_dir", "peaky_model_dir"])
@pytest.mark.parametrize("temperature", [1.0, 0.8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_padded_batch_matches_unpadded_float64(model_dir, temperature, dtype, request):
    """float64 weights: the whole pipeline is exact to 1e-6 even for entropies of 1e-20. float32 weights:
    the model's own rounding (~1e-7 of logits in the hundreds) bounds what any scorer can reach."""
    path = request.getfixturevalue(model_dir)
    model = load_model(str(path)).eval()
    model64 = copy.deepcopy(model).double()
    batch = pad_pairs([p for p, _ in ROWS], [r for _, r in ROWS], pad_id=0)
    rtol, atol, entropy_atol = (1e-6, 1e-9, 1e-40) if dtype == torch.float64 else (1e-4, 1e-5, 1e-6)
    with torch.no_grad():
        signals = SignalModel(model.to(dtype), chunk_size=3)(*batch, temperature=temperature)
        for i, (prompt, response) in enumerate(ROWS):
            ref_logprobs, ref_sc, ref_entropy = reference_row(model64, prompt, response, temperature)
            n = len(response)
            torch.testing.assert_close(signals.logprobs[i, :n].double(), ref_logprobs, rtol=rtol, atol=atol)
            torch.testing.assert_close(signals.self_certainty[i, :n].double(), ref_sc, rtol=rtol, atol=atol)
            torch.testing.assert_close(signals.entropy[i, :n].double(), ref_entropy, rtol=rtol, atol=entropy_atol)
            assert torch.all(signals.logprobs[i, n:] == 0)  # padding is never scored


def test_scoring_uses_the_predicting_position_not_the_next(tiny_model_dir):
    """The known trap: logits[:, -T:] scores each token with the distribution after it."""
    model = load_model(str(tiny_model_dir)).eval()
    prompt, response = ROWS[0]
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
        ours = SignalModel(model)(*pad_pairs([prompt], [response], 0)).logprobs[0]
    right = torch.log_softmax(logits[len(prompt) - 1 : -1], -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
    wrong = torch.log_softmax(logits[-len(response) :], -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
    torch.testing.assert_close(ours, right, rtol=1e-5, atol=1e-5)
    assert (ours - wrong).abs().max() > 1e-2


def test_pad_equals_eos(tiny_model_dir, tokenizer):
    """With PAD == EOS (as SmolLM2's tokenizer) masks come from lengths: the first EOS is scored, the
    padding after it (the same id) is not."""
    import copy as copy_module

    pad_is_eos = copy_module.deepcopy(tokenizer)
    pad_is_eos.pad_token = pad_is_eos.eos_token
    eos = pad_is_eos.eos_token_id
    model = load_model(str(tiny_model_dir)).eval()
    with torch.no_grad():
        model.lm_head.weight[eos] += 2.0  # EOS likely enough that responses end at different lengths
    prompts = ["<|user|>1+2=\n<|assistant|>", "<|user|>12+30=\n<|assistant|>"]
    rollout = generate_rollout(model, pad_is_eos, prompts, prompts, group_size=4, temperature=1.0, top_p=1.0,
                               max_new_tokens=8, batch_size=8, seed=3, eos_ids=[eos])
    lengths = rollout.response_mask.sum(-1)
    assert len(set(lengths.tolist())) > 1 and not rollout.truncated.all()
    for i in range(8):
        n = int(lengths[i])
        tokens = rollout.response_ids[i].tolist()
        assert (tokens[n - 1] == eos) != bool(rollout.truncated[i])  # a finished response ends with its EOS
        assert eos not in tokens[: n - 1] and all(t == eos for t in tokens[n:])  # the padding is EOS too
    model64 = copy.deepcopy(model).double()
    by_tokens = length_batches(rollout.prompt_mask, rollout.response_mask, 3, max_tokens=60)  # train.score_batch_tokens
    assert [len(rows) for rows in by_tokens] == [3, 4, 1]  # by hand from the lengths; 3 rows each would be 3, 3, 2
    with torch.no_grad():
        by_rows = score_in_batches(SignalModel(model), **rollout.select(slice(None)), batch_size=3)
        by_budget = score_in_batches(SignalModel(model), **rollout.select(slice(None)), batches=by_tokens)
    for i in range(8):
        prompt = rollout.prompt_ids[i][rollout.prompt_mask[i].bool()].tolist()
        response = rollout.response_ids[i, : int(lengths[i])].tolist()
        _, ref_sc, _ = reference_row(model64, prompt, response)
        for signals in (by_rows, by_budget):
            torch.testing.assert_close(signals.self_certainty[i, : len(response)].double(), ref_sc, rtol=1e-4, atol=1e-5)
            assert torch.all(signals.self_certainty[i, len(response) :] == 0)
    with pytest.raises(ValueError, match="batch_size = 0: expected a positive integer"):
        score_in_batches(SignalModel(model), **rollout.select(slice(None)))  # neither a batch size nor batches


def test_gradient_flows_to_the_weights(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    signals = SignalModel(model)(*pad_pairs([p for p, _ in ROWS], [r for _, r in ROWS], 0))
    signals.logprobs.sum().backward()
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unsupported_logit_transform_is_refused(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(NotImplementedError, match="final_logit_softcapping"):
        SignalModel(model)


def padded_masks(prompt_lengths, response_lengths):
    """(prompt mask left-padded to 3, response mask right-padded to 10) of rows of these lengths."""
    prompt_mask = torch.tensor([[0] * (3 - p) + [1] * p for p in prompt_lengths])
    response_mask = torch.tensor([[1] * r + [0] * (10 - r) for r in response_lengths])
    return prompt_mask, response_mask


def test_length_batches_group_rows_of_similar_length():
    """Every row once, longest first, ties in row order; padded cells of the trimmed batches, derived by hand."""

    prompt_lengths, response_lengths = [3, 3, 3, 3, 2], [10, 1, 9, 2, 1]  # totals 13, 4, 12, 5, 3
    prompt_mask, response_mask = padded_masks(prompt_lengths, response_lengths)
    batches = length_batches(prompt_mask, response_mask, batch_size=2)
    assert [b.tolist() for b in batches] == [[0, 2], [3, 1], [4]]

    def cells(groups):  # rows x (longest prompt + longest response) of each batch after trim_padding
        return sum(len(g) * (max(prompt_lengths[i] for i in g) + max(response_lengths[i] for i in g)) for g in groups)

    assert cells([b.tolist() for b in batches]) == 2 * 13 + 2 * 5 + 1 * 3  # 39 cells for 34 tokens
    assert cells([[0, 1], [2, 3], [4]]) == 2 * 13 + 2 * 12 + 3  # in row order: 53


def test_length_batches_by_token_budget_fill_each_batch_up_to_it():
    """With max_tokens, rows (longest first) join a batch while rows x (longest prompt + longest response) fits;
    derived by hand for prompts 3, 3, 3, 3, 2 and responses 10, 1, 9, 2, 1 (longest first: rows 0, 2, 3, 1, 4)."""

    prompt_mask, response_mask = padded_masks([3, 3, 3, 3, 2], [10, 1, 9, 2, 1])
    # 26: rows 0 and 2 take 2 x 13; row 3 would make 3 x 13. Then rows 3, 1, 4: 3 x (3 + 2) = 15 <= 26.
    assert [b.tolist() for b in length_batches(prompt_mask, response_mask, 1, max_tokens=26)] == [[0, 2], [3, 1, 4]]
    # 13: rows 0 and 2 alone (13 and 12 tokens), rows 3 and 1 (2 x 5; row 4 would make 3 x 5 = 15), then row 4
    assert [b.tolist() for b in length_batches(prompt_mask, response_mask, 1, max_tokens=13)] == [[0], [2], [3, 1], [4]]
    # 12: row 0 (13 tokens) is longer than the budget alone, and still gets a batch of its own
    assert [b.tolist() for b in length_batches(prompt_mask, response_mask, 1, max_tokens=12)] == [[0], [2], [3, 1], [4]]
