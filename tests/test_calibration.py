"""AUROC and the Mann-Whitney effect size on cases computed by hand."""

import math

import pytest

from rlif.calibration import separation


def test_perfect_and_reversed_separation():
    s = separation([3, 4, 5, 0, 1, 2], [True, True, True, False, False, False])
    assert s.auroc == 1.0 and s.n_correct == 3 and s.n_incorrect == 3
    assert separation([0, 1, 2, 3, 4, 5], [True, True, True, False, False, False]).auroc == 0.0
    assert separation([0, 1, 2, 3, 4, 5], [True, True, True, False, False, False]).effect_size_r < 0


def test_auroc_counts_pairs_and_half_ties():
    # correct {2, 3}, incorrect {1, 2}: pairs (2>1) 1, (2=2) 1/2, (3>1) 1, (3>2) 1 -> 3.5 / 4.
    assert separation([2, 3, 1, 2], [True, True, False, False]).auroc == pytest.approx(0.875)


def test_effect_size_by_hand():
    # n1 = n2 = 3, no ties, U = 9 (perfect): mean 4.5, sd sqrt(3*3*7/12) = sqrt(5.25), Z = 4.5 / sqrt(5.25),
    # r = Z / sqrt(6).
    s = separation([3, 4, 5, 0, 1, 2], [True, True, True, False, False, False])
    assert s.effect_size_r == pytest.approx(4.5 / math.sqrt(5.25) / math.sqrt(6), rel=1e-6)


def test_no_separation_and_empty_groups():
    s = separation([1, 2, 1, 2], [True, True, False, False])
    assert s.auroc == 0.5 and s.effect_size_r == pytest.approx(0.0, abs=1e-12)
    assert separation([1, 2], [True, True]) is None
