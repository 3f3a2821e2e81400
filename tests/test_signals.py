"""Signals against an independent float64 reference: KL(U || p) and -sum p log p written directly."""

import math

import pytest
import torch

from reference import reference, reference_exact
from rlif.signals import hidden_signals, logit_signals, masked_mean


def assert_close(actual, expected, rtol=1e-5, atol=1e-30):
    actual, expected = actual.double(), expected.double()
    assert torch.all((actual - expected).abs() <= atol + rtol * expected.abs()), (actual, expected)


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0, 30.0])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logit_signals_match_float64_reference(scale, temperature):
    torch.manual_seed(0)
    logits = torch.randn(64, 257) * scale
    targets = torch.randint(0, 257, (64,))
    logprobs, sc, entropy = logit_signals(logits, targets, temperature)
    ref_logprobs, ref_sc, ref_entropy = reference(logits, targets, temperature)
    assert_close(logprobs, ref_logprobs, rtol=1e-5, atol=1e-6)
    assert_close(sc, ref_sc, rtol=1e-4, atol=2e-6)
    # Peaked rows have entropies down to ~1e-20: the stable formula keeps relative precision.
    assert_close(entropy, ref_entropy, rtol=1e-4, atol=1e-30)


def test_extremely_peaked_rows_keep_relative_precision():
    torch.manual_seed(2)
    logits = torch.randn(16, 50) * 300  # gaps of tens to hundreds: entropies down to ~1e-30
    targets = torch.randint(0, 50, (16,))
    logprobs, sc, entropy = logit_signals(logits, targets)
    ref_logprobs, ref_sc, ref_entropy = reference_exact(logits, targets)
    assert_close(logprobs, ref_logprobs, rtol=1e-6, atol=1e-30)
    assert_close(sc, ref_sc, rtol=1e-6)
    tiny = ref_entropy < 1e-37 * 50  # below float32's normal range exp(s) underflows to 0 or a denormal
    assert_close(entropy[~tiny], ref_entropy[~tiny], rtol=1e-4)
    assert torch.all(entropy[tiny] <= 1e-35)


def test_hand_values():
    # Uniform logits: p = 1/V everywhere, so sc = 0, H = log V, log p = -log V.
    logprobs, sc, entropy = logit_signals(torch.zeros(1, 4), torch.tensor([2]))
    assert sc.item() == pytest.approx(0.0, abs=1e-7)
    assert entropy.item() == pytest.approx(math.log(4))
    assert logprobs.item() == pytest.approx(-math.log(4))
    # Two tokens with logits (log 3, 0): p = (3/4, 1/4); H = -(3/4 log 3/4 + 1/4 log 1/4);
    # KL(U || p) = 1/2 log(1/2 / 3/4) + 1/2 log(1/2 / 1/4) = 1/2 log(4/3).
    logprobs, sc, entropy = logit_signals(torch.tensor([[math.log(3), 0.0]]), torch.tensor([1]))
    assert entropy.item() == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), rel=1e-6)
    assert sc.item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    assert logprobs.item() == pytest.approx(math.log(0.25), rel=1e-6)


def test_ties_at_the_maximum():
    logits = torch.tensor([[2.0, 2.0, -1.0]])
    _, sc, entropy = logit_signals(logits, torch.tensor([0]))
    _, ref_sc, ref_entropy = reference(logits, torch.tensor([0]))
    assert_close(entropy, ref_entropy, rtol=1e-6)
    assert_close(sc, ref_sc, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_hidden_signals_forward_and_backward_match_float64(chunk_size, with_bias):
    torch.manual_seed(1)
    n, d, vocab, temperature = 23, 16, 97, 0.9
    hidden = torch.randn(n, d, requires_grad=True)
    weight = torch.randn(vocab, d).mul(0.5).requires_grad_()
    bias = torch.randn(vocab).requires_grad_() if with_bias else None
    targets = torch.randint(0, vocab, (n,))
    upstream = torch.randn(n)

    logprobs, sc, entropy = hidden_signals(hidden, weight, targets, bias=bias, temperature=temperature, chunk_size=chunk_size)
    (logprobs * upstream).sum().backward()

    h64 = hidden.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    b64 = bias.detach().double().requires_grad_() if with_bias else None
    logits64 = h64 @ w64.T + (b64 if with_bias else 0)
    ref_logprobs, ref_sc, ref_entropy = reference(logits64, targets, temperature)
    (ref_logprobs * upstream.double()).sum().backward()

    assert_close(logprobs, ref_logprobs.detach(), rtol=1e-5, atol=1e-5)
    assert_close(sc, ref_sc.detach(), rtol=1e-4, atol=1e-5)
    assert_close(entropy, ref_entropy.detach(), rtol=1e-4, atol=1e-5)
    assert_close(hidden.grad, h64.grad, rtol=1e-4, atol=1e-5)
    assert_close(weight.grad, w64.grad, rtol=1e-4, atol=1e-5)
    if with_bias:
        assert_close(bias.grad, b64.grad, rtol=1e-4, atol=1e-5)
    assert not sc.requires_grad and not entropy.requires_grad


def test_hidden_signals_rejects_bad_shapes():
    with pytest.raises(ValueError, match="expected hidden"):
        hidden_signals(torch.randn(2, 3, 4), torch.randn(5, 4), torch.zeros(2, dtype=torch.long))


def test_masked_mean():
    values = torch.tensor([[1.0, 2.0, 100.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(values, mask).tolist() == [1.5, 4.0]
    assert masked_mean(values, mask, dim=None).item() == pytest.approx(7 / 3)
