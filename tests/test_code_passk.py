"""rlif.code.pass_at_k against exact fractions and math.comb."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from rlif.code import mean_pass_at_k, pass_at_k


def exact(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_hand_computed_values():
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-15)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4, abs=1e-15)  # pass@1 is c/n
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252, abs=1e-15)  # 1 - C(7,5)/C(10,5) = 11/12
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # only one wrong answer: any two include a right one
    assert pass_at_k(4, 4, 4) == 1.0


def test_matches_exact_fractions_and_comb():
    for n in range(1, 31):
        for c in range(n + 1):
            for k in range(1, n + 1):
                value = pass_at_k(n, c, k)
                assert value == pytest.approx(float(exact(n, c, k)), abs=1e-12), (n, c, k)
    for n, c, k in [(200, 13, 100), (1000, 1, 10), (1000, 999, 1), (500, 250, 10)]:  # binomials far past float range
        reference = 1.0 - math.comb(n - c, k) / math.comb(n, k)  # Python divides the big integers exactly, then rounds
        assert pass_at_k(n, c, k) == pytest.approx(reference, rel=1e-12, abs=1e-15)


def test_mean_and_bad_arguments():
    assert mean_pass_at_k([(5, 2), (5, 0), (5, 5)], 2) == pytest.approx((0.7 + 0 + 1) / 3)
    for n, c, k in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)
