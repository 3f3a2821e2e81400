"""AUROC and the Mann-Whitney effect size on cases computed by hand."""

import math

import pytest

from rlif.eval.calibration import separation


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


def test_against_pair_counting_and_the_tie_corrected_normal_approximation():
    # Independent float64 reference: AUROC by counting all pairs; Z = (U - n1 n2 / 2) / sigma with the
    # tie-corrected sigma^2 = n1 n2 / 12 * ((n + 1) - sum(t^3 - t) / (n (n - 1))); r = Z / sqrt(n).
    import random
    from collections import Counter

    rng = random.Random(3)
    scores = [rng.choice([0.1, 0.2, 0.3]) + rng.randint(0, 20) / 10 for _ in range(70)]
    correct = [rng.random() < 0.2 + 0.2 * s for s in scores]
    pos = [s for s, c in zip(scores, correct) if c]
    neg = [s for s, c in zip(scores, correct) if not c]
    u = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    n1, n2, n = len(pos), len(neg), len(scores)
    ties = sum(t**3 - t for t in Counter(scores).values())
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))))
    s = separation(scores, correct)
    assert s.auroc == pytest.approx(u / (n1 * n2), rel=1e-12)
    assert s.effect_size_r == pytest.approx((u - n1 * n2 / 2) / sigma / math.sqrt(n), rel=1e-6)


def test_calibration_report_and_histogram(tmp_path):
    from rlif.eval.calibration import calibration_report
    from rlif.runs.plots import plot_calibration

    records = [
        {"sample": -1, "self_certainty": 2.0, "correct": True},
        {"sample": -1, "self_certainty": 1.0, "correct": False},
        {"sample": 0, "self_certainty": 3.0, "correct": True},
        {"sample": 1, "self_certainty": 1.0, "correct": True},
        {"sample": 0, "self_certainty": 0.5, "correct": False},
        {"sample": 1, "self_certainty": 0.5, "correct": True},
    ]
    report = calibration_report(records)
    assert report["greedy"]["auroc"] == 1.0 and report["greedy"]["responses"] == 2
    # sampled: correct {3, 1, 0.5} vs incorrect {0.5}: pairs 1 + 1 + 1/2 = 2.5 of 3.
    assert report["sampled"]["auroc"] == pytest.approx(2.5 / 3)
    assert report["sampled"]["self_certainty_correct"] == pytest.approx(1.5)
    assert calibration_report([{"sample": 0, "self_certainty": 1.0, "correct": True}])["sampled"]["auroc"] is None
    path = plot_calibration(records, tmp_path / "calibration.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
