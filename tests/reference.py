"""Independent references for the token signals, written from the definitions.

`reference` works in float64. `reference_exact` uses mpmath at 50 significant digits: float64 itself
loses the relative precision of entropies below ~1e-13 (log p_max rounds against a logsumexp in the
hundreds), so very peaked distributions need it.
"""

import mpmath
import numpy as np
import torch


def reference(logits, targets, temperature=1.0):
    """float64 log-prob at `temperature`, KL(U || p) and entropy of each row."""
    z = logits.double()
    vocab = z.shape[-1]
    logp_t = torch.log_softmax(z / temperature, -1).gather(-1, targets[:, None]).squeeze(-1)
    logp = torch.log_softmax(z, -1)
    uniform = torch.full_like(logp, 1.0 / vocab)
    kl_uniform = (uniform * (uniform.log() - logp)).sum(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp_t, kl_uniform, entropy


def reference_exact(logits, targets, temperature=1.0):
    """The same three quantities in 50-digit arithmetic, returned as float64 tensors."""
    mpmath.mp.dps = 50
    out = []
    for row, target in zip(logits.double().tolist(), targets.tolist()):
        z = [mpmath.mpf(v) for v in row]
        lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in z))
        lse_t = mpmath.log(mpmath.fsum(mpmath.exp(v / temperature) for v in z))
        logp = [v - lse for v in z]
        vocab = len(z)
        kl_uniform = -mpmath.log(vocab) - mpmath.fsum(logp) / vocab
        entropy = -mpmath.fsum(mpmath.exp(lp) * lp for lp in logp)
        out.append((float(z[target] / temperature - lse_t), float(kl_uniform), float(entropy)))
    return tuple(torch.tensor(column, dtype=torch.float64) for column in zip(*out))


def assert_close(actual, expected, rtol=1e-5, atol=1e-30):
    """|actual - expected| <= atol + rtol |expected| elementwise, compared in float64 on the CPU."""
    actual, expected = actual.double().cpu(), expected.double().cpu()
    assert torch.all((actual - expected).abs() <= atol + rtol * expected.abs()), (actual - expected).abs().max()


def assert_signals_match_float64(hidden, weight, bias, targets, upstream, temperature, logprobs, sc, entropy, logprobs_only):
    """Signals of `hidden @ weight.T + bias` (whose gradients were taken against `upstream`) vs the float64 reference."""
    h64, w64, b64 = (t.detach().cpu().double().requires_grad_() for t in (hidden, weight, bias))
    ref_logprobs, ref_sc, ref_entropy = reference(h64 @ w64.T + b64, targets.cpu(), temperature)
    (ref_logprobs * upstream.cpu().double()).sum().backward()
    assert_close(logprobs, ref_logprobs.detach(), rtol=1e-5, atol=1e-5)
    if logprobs_only:
        assert sc is None and entropy is None
    else:
        assert_close(sc, ref_sc.detach(), rtol=1e-4, atol=1e-5)
        assert_close(entropy, ref_entropy.detach(), rtol=1e-4, atol=1e-5)
    for actual, expected in ((hidden.grad, h64.grad), (weight.grad, w64.grad), (bias.grad, b64.grad)):
        assert_close(actual, expected, rtol=1e-4, atol=1e-5)



def keyed_uniform_reference(seed: int, prompt_keys: np.ndarray, sample_ids: np.ndarray, position: int) -> np.ndarray:
    """splitmix64 of (seed, prompt key, sample id, position) in numpy uint64, top 53 bits as a float in [0, 1)."""
    golden = np.uint64(0x9E3779B97F4A7C15)

    def splitmix(x):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    with np.errstate(over="ignore"):
        x = np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * golden
        for part in (prompt_keys.astype(np.uint64), sample_ids.astype(np.uint64), np.uint64(position)):
            x = splitmix(x ^ (part + golden))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
