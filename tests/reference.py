"""Independent references for the token signals, written from the definitions.

`reference` works in float64. `reference_exact` uses mpmath at 50 significant digits: float64 itself
loses the relative precision of entropies below ~1e-13 (log p_max rounds against a logsumexp in the
hundreds), so very peaked distributions need it.
"""

import mpmath
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
