"""SignalModel on real tiny models against a float64 full-logits reference, padding and alignment included."""

import copy

import pytest
import torch

from rlif.models import load_model
from rlif.rollout import response_mask_from_ids
from rlif.score import pad_pairs
from rlif.scoring import SignalModel, score_in_batches
from reference import reference_exact


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


def test_pad_equals_eos(tiny_model_dir):
    """With PAD == EOS the mask comes from the first EOS, and that EOS is scored."""
    eos = 2
    generated = torch.tensor([[12, 13, eos, eos, eos], [14, eos, eos, eos, eos], [12, 12, 12, 12, 12]])
    mask, truncated = response_mask_from_ids(generated, [eos])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, True]

    model = load_model(str(tiny_model_dir)).eval()
    model64 = copy.deepcopy(model).double()
    prompts = [[4, 9, 6], [4, 10, 11, 6], [4, 6]]
    prompt_batch = pad_pairs(prompts, [[1]] * 3, pad_id=eos)[:2]
    with torch.no_grad():
        signals = score_in_batches(SignalModel(model), *prompt_batch, generated, mask, batch_size=2)
    for i, prompt in enumerate(prompts):
        response = generated[i, : int(mask[i].sum())].tolist()
        _, ref_sc, _ = reference_row(model64, prompt, response)
        torch.testing.assert_close(signals.self_certainty[i, : len(response)].double(), ref_sc, rtol=1e-4, atol=1e-5)


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
