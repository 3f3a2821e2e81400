"""Best-of-N rules on hand-built cases: votes, ties, Borda's power, pass@N."""

import random

import pytest

from rlif.data.answers import answers_match
from rlif.eval.best_of_n import (
    best_of_n,
    borda_ranks,
    borda_vote,
    default_borda_p,
    majority_vote,
    max_score,
    pass_at_n,
    random_pick,
)

same_text = lambda a, b: a == b  # noqa: E731


def test_majority_vote_and_its_ties():
    assert majority_vote(["3", "4", "4", "7"], same_text) == 1
    assert majority_vote(["3", "4", "4", "3"], same_text) == 0  # 2-2: the group seen first wins
    assert majority_vote(["4", "3", "3", "4"], same_text) == 0
    assert majority_vote([None, None, "5"], same_text) == 2  # no answer never wins
    assert majority_vote([None, None], same_text) is None
    # Equivalent answers vote together: "1,000" and "1000.0" are one answer; the group's first sample is picked.
    assert majority_vote(["7", "1,000", "7.5", "1000.0"], answers_match) == 1


def test_max_score_ignores_unanswered_and_breaks_ties_by_index():
    assert max_score(["a", None, "b"], [1.0, 5.0, 1.0]) == 0
    assert max_score(["a", "b", "c"], [0.1, 0.3, 0.2]) == 1
    assert max_score([None], [1.0]) is None


def test_borda_by_hand():
    answers, certainty = ["5", "7", "7", "9"], [0.9, 0.5, 0.4, 0.1]  # ranks 1, 2, 3, 4
    assert borda_ranks(certainty) == [1, 2, 3, 4]
    # p = 1: votes 4, 3, 2, 1 -> "5": 4, "7": 3 + 2 = 5, "9": 1.
    assert borda_vote(answers, certainty, 1.0, same_text) == 1
    # p = 2: votes 16, 9, 4, 1 -> "5": 16 beats "7": 13.
    assert borda_vote(answers, certainty, 2.0, same_text) == 0
    # p = 0.3: 4^.3 = 1.516, 3^.3 + 2^.3 = 1.390 + 1.231 -> "7".
    assert borda_vote(answers, certainty, 0.3, same_text) == 1
    # An unanswered sample keeps its rank but its votes go nowhere.
    assert borda_vote([None, "7", "5", "5"], [0.9, 0.8, 0.1, 0.0], 1.0, same_text) == 1  # "7": 3, "5": 2 + 1 = 3 -> tie -> "7" seen first


def test_borda_ranks_equal_scores_by_index():
    assert borda_ranks([1.0, 2.0, 2.0]) == [3, 1, 2]


def test_borda_p0_is_majority_and_large_p_is_max_self_certainty():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 9)
        answers = [rng.choice(["1", "2", "3", None]) for _ in range(n)]
        certainty = [rng.choice([0.1, 0.2, 0.3, 0.5, rng.random()]) for _ in range(n)]
        assert borda_vote(answers, certainty, 0.0, same_text) == majority_vote(answers, same_text)
        top = borda_ranks(certainty).index(1)
        if answers[top] is not None:
            assert answers[borda_vote(answers, certainty, 60.0, same_text)] == answers[max_score(answers, certainty)]


def test_default_borda_power():
    assert [default_borda_p(n) for n in (2, 8, 16, 32, 64)] == [0.3, 0.3, 0.3, 1.2, 1.2]


def test_random_pick_is_seeded_and_answered():
    answers = ["1", None, "2", "3", None]
    picks = {random_pick(answers, seed=0, problem=p) for p in range(50)}
    assert picks == {0, 2, 3}
    assert random_pick(answers, 0, 7) == random_pick(answers, 0, 7)
    assert random_pick([None, None], 0, 1) is None


def test_pass_at_n():
    assert pass_at_n([False, False, True]) and not pass_at_n([False, False])


def record(problem, sample, answer, correct, certainty, logprob=-1.0):
    return {"problem": problem, "sample": sample, "label": "4", "answer": answer, "correct": correct, "self_certainty": certainty, "mean_logprob": logprob}


def test_best_of_n_table_by_hand():
    records = [
        # problem 0: majority right ("4" x2), most certain wrong ("5"), greedy wrong.
        record(0, -1, "5", False, 9.0),
        record(0, 0, "4", True, 1.0, logprob=-0.1),
        record(0, 1, "4", True, 2.0, logprob=-0.2),
        record(0, 2, "5", False, 3.0, logprob=-0.3),
        # problem 1: nobody right.
        record(1, -1, "1", False, 1.0),
        record(1, 0, "1", False, 1.0),
        record(1, 1, None, False, 5.0),
        record(1, 2, "2", False, 2.0),
    ]
    table = best_of_n(records, same_text, borda_p=1.0, seed=0)
    assert table["num_samples"] == 3 and table["num_problems"] == 2
    accuracy = table["accuracy"]
    assert accuracy["greedy"] == 0.0
    assert accuracy["majority"] == 0.5
    assert accuracy["self_certainty"] == 0.0
    assert accuracy["mean_logprob"] == 0.5  # -0.1 is the likeliest: "4"
    # Borda p = 1, problem 0: ranks by certainty 3, 2, 1 -> votes "4": 1 + 2 = 3, "5": 3 -> tie -> "4" (seen first).
    assert accuracy["borda"] == 0.5
    assert accuracy["pass@3"] == 0.5
    assert accuracy["sample_mean"] == pytest.approx((2 / 3 + 0) / 2)
    assert table["problems"][0]["majority"] == {"sample": 0, "answer": "4", "correct": True}


def test_best_of_n_needs_equal_sample_counts():
    with pytest.raises(ValueError, match="same number"):
        best_of_n([record(0, 0, "1", True, 1.0), record(0, 1, "1", True, 1.0), record(1, 0, "1", True, 1.0)], same_text)
