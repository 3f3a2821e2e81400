"""Signals against an independent float64 reference: KL(U || p) and -sum p log p written directly."""

import math

import pytest
import torch
from reference import assert_close, assert_signals_match_float64, reference, reference_exact

from rlif.signals.chunked import hidden_signals
from rlif.signals.tokens import block_signals, logit_signals, masked_mean


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


# ---- every fast path against the float64 reference, on odd shapes ------------------------------------------------

ODD_SHAPES = [(1, 1, 2, 1), (7, 3, 5, 3), (33, 17, 131, 8), (50, 8, 1000, 13)]  # (rows, d, V, chunk)


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
@pytest.mark.parametrize("logprobs_only", [False, True])
def test_chunked_paths_on_odd_shapes(shape, temperature, logprobs_only):
    n, d, vocab, chunk = shape
    generator = torch.Generator().manual_seed(n * 1000 + vocab)
    hidden = torch.randn(n, d, generator=generator).mul(2.0).requires_grad_()
    weight = torch.randn(vocab, d, generator=generator).requires_grad_()
    bias = torch.randn(vocab, generator=generator).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=generator)
    upstream = torch.randn(n, generator=generator)

    logprobs, sc, entropy = hidden_signals(
        hidden, weight, targets, bias=bias, temperature=temperature, chunk_size=chunk, logprobs_only=logprobs_only
    )
    (logprobs * upstream).sum().backward()

    assert_signals_match_float64(hidden, weight, bias, targets, upstream, temperature, logprobs, sc, entropy, logprobs_only)


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("with_bias", [False, True])
def test_frozen_head_gradient_is_prepared_in_the_forward(shape, temperature, with_bias):
    """LoRA's case (head frozen): the forward saves d logp / d hidden, one (N, d) tensor, and the backward scales rows."""
    n, d, vocab, chunk = shape
    generator = torch.Generator().manual_seed(n + 7 * vocab)
    hidden = torch.randn(n, d, generator=generator).mul(2.0).requires_grad_()
    weight = torch.randn(vocab, d, generator=generator)
    bias = torch.randn(vocab, generator=generator) if with_bias else None
    targets = torch.randint(0, vocab, (n,), generator=generator)
    upstream = torch.randn(n, generator=generator)

    logprobs = hidden_signals(hidden, weight, targets, bias=bias, temperature=temperature, chunk_size=chunk, logprobs_only=True)[0]
    assert [tuple(t.shape) for t in logprobs.grad_fn.saved_tensors] == [(n, d)]  # not the hidden states and the head
    (logprobs * upstream).sum().backward()

    h64 = hidden.detach().double().requires_grad_()
    logits64 = h64 @ weight.double().T + (0 if bias is None else bias.double())
    ref_logprobs = reference(logits64, targets, temperature)[0]
    (ref_logprobs * upstream.double()).sum().backward()
    assert_close(logprobs, ref_logprobs.detach(), rtol=1e-5, atol=1e-5)
    assert_close(hidden.grad, h64.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("train_head", [True, False])
def test_bf16_matmul_gradients_match_the_reference_on_rounded_operands(train_head):
    """compute_dtype bf16 (autocast's): both backward paths, against float64 on the bf16-rounded hidden states and head."""
    generator = torch.Generator().manual_seed(8)
    n, d, vocab, temperature = 37, 24, 611, 0.8
    hidden = torch.randn(n, d, generator=generator).requires_grad_()
    weight = (torch.randn(vocab, d, generator=generator) * 0.3).requires_grad_(train_head)
    targets = torch.randint(0, vocab, (n,), generator=generator)
    upstream = torch.randn(n, generator=generator)
    logprobs = hidden_signals(hidden, weight, targets, temperature=temperature, chunk_size=9, compute_dtype=torch.bfloat16,
                              logprobs_only=True)[0]
    (logprobs * upstream).sum().backward()

    h16, w16 = hidden.detach().bfloat16().double(), weight.detach().bfloat16().double()
    logits = (hidden.detach().bfloat16() @ weight.detach().bfloat16().T).double().requires_grad_()  # what the matmul made
    ref_logprobs = reference(logits, targets, temperature)[0]
    (ref_logprobs * upstream.double()).sum().backward()
    assert_close(logprobs, ref_logprobs.detach(), rtol=1e-5, atol=1e-5)
    # d/d hidden and d/d weight through the bf16 matmul; the gradient block is rounded to bf16 once (rel. 2^-9)
    assert_close(hidden.grad, logits.grad @ w16, rtol=2e-2, atol=2e-3)
    if train_head:
        assert_close(weight.grad, logits.grad.T @ h16, rtol=2e-2, atol=2e-3)
    else:
        assert weight.grad is None


@pytest.mark.parametrize("temperature", [1.0, 0.9])
def test_block_signals_works_in_place_and_returns_the_log_normalizer(temperature):
    torch.manual_seed(3)
    logits = torch.randn(9, 301) * 4
    targets = torch.randint(0, 301, (9,))
    block = logits.clone()
    logprobs, sc, entropy, row_max, log_norm_t, _ = block_signals(block, targets, temperature)
    assert not torch.equal(block, logits)  # the block was used as scratch space
    assert torch.equal(row_max, logits.max(-1).values)
    expected_log_norm = torch.logsumexp((logits.double() - row_max.double()[:, None]) / temperature, -1)
    assert_close(log_norm_t, expected_log_norm, rtol=1e-6)
    ref_logprobs, ref_sc, ref_entropy = reference(logits, targets, temperature)
    assert_close(logprobs, ref_logprobs, rtol=1e-5, atol=1e-6)
    assert_close(sc, ref_sc, rtol=1e-4, atol=2e-6)
    assert_close(entropy, ref_entropy, rtol=1e-4)
    block = logits.clone()
    only, none_sc, none_entropy, _, log_norm_only, _ = block_signals(block, targets, temperature, logprobs_only=True)
    assert none_sc is None and none_entropy is None
    assert_close(block, torch.exp((logits.double() - row_max.double()[:, None]) / temperature), rtol=1e-5)  # left for a backward
    assert_close(only, ref_logprobs, rtol=1e-5, atol=1e-6)
    assert_close(log_norm_only, log_norm_t, rtol=1e-6)


def test_logprobs_only_keeps_precision_on_peaked_rows():
    torch.manual_seed(2)
    logits = torch.randn(16, 50) * 300
    targets = logits.argmax(-1)  # log p of the argmax is about -1e-30: only log1p of the rest keeps it
    ref_logprobs, _, _ = reference_exact(logits, targets, 0.8)
    logprobs = block_signals(logits.clone(), targets, 0.8, logprobs_only=True).logprobs
    assert_close(logprobs, ref_logprobs, rtol=1e-5, atol=1e-37)


def test_low_precision_matmul_path_matches_the_reference_on_its_rounded_logits():
    torch.manual_seed(4)
    n, d, vocab = 21, 24, 517
    hidden, weight = torch.randn(n, d), torch.randn(vocab, d) * 0.3
    targets = torch.randint(0, vocab, (n,))
    logprobs, sc, entropy = hidden_signals(hidden, weight, targets, temperature=0.7, chunk_size=8, compute_dtype=torch.bfloat16)
    rounded = (hidden.bfloat16() @ weight.bfloat16().T).double()  # the logits the bf16 matmul produced
    ref_logprobs, ref_sc, ref_entropy = reference(rounded, targets, 0.7)
    assert_close(logprobs, ref_logprobs, rtol=1e-5, atol=1e-5)
    assert_close(sc, ref_sc, rtol=1e-4, atol=1e-5)
    assert_close(entropy, ref_entropy, rtol=1e-4, atol=1e-5)


def test_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        hidden_signals(torch.randn(2, 4), torch.randn(5, 4), torch.zeros(2, dtype=torch.long), temperature=0.0)


@pytest.mark.parametrize("temperature", [1.0, 0.9])
@pytest.mark.parametrize("logprobs_only", [False, True])
def test_block_signals_draws_targets_from_its_weights(temperature, logprobs_only):
    torch.manual_seed(5)
    logits = torch.randn(6, 77) * 3
    seen = {}

    def draw(weights):
        seen["weights"] = weights.clone()
        return weights.argmin(-1)  # any rule: the point is which weights it sees and that its choice is scored

    drawn = block_signals(logits.clone(), draw, temperature, logprobs_only=logprobs_only)
    expected_weights = torch.exp((logits.double() - logits.double().max(-1, keepdim=True).values) / temperature)
    assert_close(seen["weights"], expected_weights, rtol=1e-5)
    assert torch.equal(drawn.targets, expected_weights.argmin(-1))
    ref_logprobs, ref_sc, ref_entropy = reference(logits, drawn.targets, temperature)
    assert_close(drawn.logprobs, ref_logprobs, rtol=1e-5, atol=1e-6)
    if not logprobs_only:
        assert_close(drawn.self_certainty, ref_sc, rtol=1e-4, atol=2e-6)
        assert_close(drawn.entropy, ref_entropy, rtol=1e-4)


def test_peaked_rows_at_a_temperature_keep_relative_precision():
    torch.manual_seed(6)
    logits = torch.randn(12, 40) * 60
    targets = torch.cat([logits[:6].argmax(-1), torch.randint(0, 40, (6,))])  # the argmax (log p ~ -tiny) and others
    logprobs, sc, entropy = logit_signals(logits, targets, 0.8)
    ref_logprobs, ref_sc, ref_entropy = reference_exact(logits, targets, 0.8)
    assert_close(logprobs, ref_logprobs, rtol=1e-5, atol=1e-37)
    assert_close(sc, ref_sc, rtol=1e-6)
    assert_close(entropy, ref_entropy, rtol=1e-4, atol=1e-37)


def test_backend_choice_is_validated():
    from rlif.signals import triton_kernels as triton_signals

    args = (torch.randn(2, 4), torch.randn(5, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="backend must be"):
        hidden_signals(*args, backend="cuda")
    if not triton_signals.available():
        with pytest.raises(ImportError, match="needs the triton package"):
            hidden_signals(*args, backend="triton")
    torch.testing.assert_close(hidden_signals(*args, backend="auto")[0], hidden_signals(*args, backend="torch")[0])


def test_add_product_accumulates_low_precision_products_into_float32():
    from rlif.signals.chunked import _add_product

    generator = torch.Generator().manual_seed(5)
    a, b = torch.randn(7, 64, generator=generator), torch.randn(64, 5, generator=generator)
    total = torch.ones(7, 5)
    _add_product(total, a, b)  # float32: addmm in place
    assert_close(total, 1 + a.double() @ b.double(), rtol=1e-5, atol=1e-5)
    total = torch.ones(7, 5)
    _add_product(total, a.bfloat16(), b.bfloat16())  # CPU: the bf16 product, rounded, then added
    assert total.dtype == torch.float32
    assert_close(total, 1 + (a.bfloat16() @ b.bfloat16()).double(), rtol=1e-6, atol=1e-6)
