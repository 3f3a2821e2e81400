"""pass@k: the chance that at least one of k answers drawn (without replacement) from n, of which c are
correct, is correct; the unbiased estimator of Chen et al. 2021, 1 - C(n-c, k) / C(n, k)."""

from __future__ import annotations

from collections.abc import Iterable


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) as the product prod_{i=n-c+1}^{n} (1 - k/i): each factor lies in [0, 1], so
    nothing overflows or cancels the way the ratio of two binomials of large n does."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every draw of k includes a correct answer
        return 1.0
    all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / i
    return 1.0 - all_wrong


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """The benchmark's pass@k: the mean over problems of pass_at_k(n, c, k), each problem given as (n, c)."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ValueError("no problems")
    return sum(values) / len(values)
