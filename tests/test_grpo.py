"""GRPO math against values derived by hand."""

import math

import pytest
import torch

from rlif.rl.loss import group_advantages, k3_kl, policy_loss


def test_group_advantages_by_hand():
    # Group 1: rewards (1, 2, 3): mean 2, unbiased std 1 -> (-1, 0, 1).
    # Group 2: all equal -> 0 (no signal, no NaN).
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    adv = group_advantages(rewards, group_size=3, eps=0.0)
    assert adv[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0])
    adv = group_advantages(rewards, group_size=3, eps=1e-6)
    assert adv[3:].tolist() == [0.0, 0.0, 0.0]
    # Group of two (0, 1): mean 0.5, unbiased std sqrt(0.5) -> -+0.5 / (sqrt(0.5) + eps).
    adv = group_advantages(torch.tensor([0.0, 1.0]), group_size=2, eps=1e-4)
    assert adv.tolist() == pytest.approx([-0.5 / (math.sqrt(0.5) + 1e-4), 0.5 / (math.sqrt(0.5) + 1e-4)])


def test_group_advantages_groups_are_contiguous():
    rewards = torch.tensor([0.0, 1.0, 10.0, 30.0])
    adv = group_advantages(rewards, group_size=2, eps=0.0)
    assert adv.tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)] * 2)


def test_k3_by_hand():
    # log ratio d = ref - logp; k3 = e^d - d - 1.  d = 0 -> 0; d = 1 -> e - 2; d = -1 -> 1/e.
    logp = torch.tensor([0.0, -1.0, 0.0])
    ref = torch.tensor([0.0, 0.0, -1.0])
    assert k3_kl(logp, ref).tolist() == pytest.approx([0.0, math.e - 2, math.exp(-1)])


def test_policy_loss_on_policy_is_minus_advantage():
    # ratio = 1: surrogate = A per token; loss = -mean_tokens(A).
    # Response 1 (A = 2) has 2 tokens, response 2 (A = -1) has 1 token: token mean = (2 + 2 - 1) / 3 = 1.
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    terms = policy_loss(logp, logp.detach(), torch.tensor([2.0, -1.0]), mask, clip_eps=0.2, kl_coef=0.0, ref_logprobs=None, total_tokens=3)
    assert terms.loss.item() == pytest.approx(-1.0)
    terms.loss.backward()
    # d loss / d logp = -A * ratio / total_tokens on unmasked tokens.
    assert logp.grad.flatten().tolist() == pytest.approx([-2 / 3, -2 / 3, 1 / 3, 0.0])
    assert terms.clipped.item() == 0


def test_policy_loss_clipping_by_hand():
    # ratio = e for every token (logp - old = 1), clip 0.2.
    # A = +1: min(e * 1, 1.2 * 1) = 1.2, clipped, gradient 0.  A = -1: min(-e, -1.2) = -e, not clipped.
    logp = torch.zeros(2, 1, requires_grad=True)
    old = torch.full((2, 1), -1.0)
    mask = torch.ones(2, 1)
    terms = policy_loss(logp, old, torch.tensor([1.0, -1.0]), mask, clip_eps=0.2, kl_coef=0.0, ref_logprobs=None, total_tokens=2)
    assert terms.loss.item() == pytest.approx((-1.2 + math.e) / 2)
    terms.loss.backward()
    assert logp.grad[:, 0].tolist() == pytest.approx([0.0, math.e / 2])
    assert terms.clipped.item() == 1


def test_policy_loss_kl_term_by_hand():
    # On-policy, A = 0, logp = 0, ref = -1: k3 = e^-1 - (-1) - 1 = 1/e per token; loss = beta / e.
    logp = torch.zeros(1, 3, requires_grad=True)
    terms = policy_loss(
        logp, logp.detach(), torch.zeros(1), torch.ones(1, 3), clip_eps=0.2, kl_coef=0.1, ref_logprobs=torch.full((1, 3), -1.0), total_tokens=3
    )
    assert terms.loss.item() == pytest.approx(0.1 * math.exp(-1))
    assert terms.kl.item() == pytest.approx(3 * math.exp(-1))
    terms.loss.backward()
    # d k3 / d logp = -e^(ref - logp) + 1 = 1 - 1/e per token, times beta / 3.
    assert logp.grad[0].tolist() == pytest.approx([0.1 * (1 - math.exp(-1)) / 3] * 3)


def test_micro_batches_sum_to_the_full_batch_gradient():
    torch.manual_seed(0)
    logp = torch.randn(6, 5, requires_grad=True)
    old = logp.detach() + 0.1 * torch.randn(6, 5)
    ref = logp.detach() + 0.1 * torch.randn(6, 5)
    adv = torch.randn(6)
    mask = (torch.rand(6, 5) > 0.3).long()
    mask[:, 0] = 1
    kwargs = dict(clip_eps=0.2, kl_coef=0.05, total_tokens=float(mask.sum()))
    full = policy_loss(logp, old, adv, mask, ref_logprobs=ref, **kwargs)
    (full_grad,) = torch.autograd.grad(full.loss, logp)
    total = 0.0
    grads = torch.zeros_like(logp)
    for rows in (slice(0, 2), slice(2, 5), slice(5, 6)):
        part = policy_loss(logp[rows], old[rows], adv[rows], mask[rows], ref_logprobs=ref[rows], **kwargs)
        grads += torch.autograd.grad(part.loss, logp)[0]
        total += part.loss.item()
    assert total == pytest.approx(full.loss.item(), rel=1e-6)
    torch.testing.assert_close(grads, full_grad)


def test_policy_loss_with_detached_pi_old_has_the_policy_gradient():
    # pi_old = logp.detach() (one update per step): ratio is exactly 1 and d loss / d logp = -A * mask / total_tokens.
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    terms = policy_loss(logp, logp.detach(), torch.tensor([2.0, -1.0]), mask, clip_eps=0.2, kl_coef=0.0,
                        ref_logprobs=None, total_tokens=3.0)
    terms.loss.backward()
    assert terms.loss.item() == pytest.approx(-1.0) and terms.clipped.item() == 0
    assert logp.grad.flatten().tolist() == pytest.approx([-2 / 3, -2 / 3, 1 / 3, 0.0])


def test_importance_weights_scale_the_surrogate_not_the_kl():
    # ratio 1, A = (1, -2), weights (0.5, 2): per token -w A = (-0.5, 4); k3 with ref - logp = 1: e - 2 per token.
    # loss = ((-0.5 + 4) + 2 * beta * (e - 2)) / 2 tokens
    logp = torch.zeros(2, 1, requires_grad=True)
    ref = torch.ones(2, 1)
    beta = 0.1
    terms = policy_loss(logp, logp.detach(), torch.tensor([1.0, -2.0]), torch.ones(2, 1), clip_eps=0.2, kl_coef=beta,
                        ref_logprobs=ref, total_tokens=2, weights=torch.tensor([[0.5], [2.0]]))
    assert terms.loss.item() == pytest.approx((3.5 + 2 * beta * (math.e - 2)) / 2)
    assert terms.policy_loss.item() == pytest.approx(-1.0 + 2.0)  # the logged policy loss is unweighted
