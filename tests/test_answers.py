"""Answer extraction and checking ("math" format: rlif's extraction, math-verify's equivalence) on real answers."""

import threading

import pytest

from rlif.data.answers import MATH, answers_match, extract_answer, last_boxed, parse_number
from rlif.data.benchmarks import get_benchmark
from rlif.data.prompts import read_records


def test_every_bundled_reference_solution_checks_as_correct():
    # MATH-500 solutions end in \boxed{...} (nested braces, \left( \right), \text{}); GSM8K ones in "#### N".
    math500 = get_benchmark("math500")
    for where, row in read_records(math500.path):
        assert MATH.is_correct(row["solution"], row["answer"]), where
    gsm8k = get_benchmark("gsm8k")
    for problem, (where, row) in zip(gsm8k.load(), read_records(gsm8k.path)):
        assert MATH.is_correct(row["answer"], problem.label), where


def test_extraction():
    nested = "so $r = 3$ and the point is $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$"
    assert extract_answer(nested) == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{\\sqrt{3}}{2}}") == "\\frac{\\sqrt{3}}{2}"
    assert last_boxed("\\boxed{\\frac{1}{2}") is None  # unclosed
    assert extract_answer("9 * 2 = <<9*2=18>>18\n#### 18") == "18"
    assert extract_answer("So the answer is 18 dollars.") == "18"  # units after the number are dropped
    assert extract_answer("The answer is $1,200.") == "$1,200"
    assert extract_answer("The answer is 3x + 2.") == "3x + 2"
    assert extract_answer("She makes 9 * 2 = $18 every day at the market.") == "18"  # no \boxed{}: last number
    assert extract_answer("I do not know.") is None


def test_plain_numbers():
    assert parse_number("1,450,000") == 1450000 and parse_number("$18") == 18 and parse_number("7.") == 7
    assert parse_number("40%") == 40 and parse_number("\\$5") == 5 and parse_number("-0.25") == -0.25
    assert parse_number("1,2") is None  # two answers, not twelve
    assert parse_number("nan") is None and parse_number("12a") is None


# (predicted, reference, equal): real MATH-500 / GSM8K references against forms a model writes.
CASES = [
    ("1450000", "1,450,000", True),  # GSM8K labels carry thousands separators
    ("1,450,000", "1450000", True),
    ("18.00", "18", True),
    ("18 \\text{ dollars}", "18", True),  # units inside \boxed{}
    ("\\$18", "18", True),
    ("18\\%", "18", True),
    ("17", "18", False),
    ("14/3", "\\frac{14}{3}", True),  # MATH-500 #2
    ("\\dfrac{14}{3}", "\\frac{14}{3}", True),
    ("4.67", "\\frac{14}{3}", False),
    ("0.5", "\\frac{1}{2}", True),
    ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),  # MATH-500 #0
    ("(3, \\pi)", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    ("\\sqrt{117}", "3\\sqrt{13}", True),  # MATH-500 #8
    ("-2, 1", "1,-2", True),  # MATH-500 #25: a list of solutions in any order
    ("12", "1,-2", False),
    ("Evelyn", "\\text{Evelyn}", True),  # MATH-500 #4
    ("\\text{Bob}", "\\text{Evelyn}", False),
    ("5", "x=5", True),  # MATH-500 #23
    ("-q + p", "p - q", True),  # MATH-500 #1
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
    (None, "18", False),
]


@pytest.mark.parametrize("predicted, reference, equal", CASES)
def test_equivalence(predicted, reference, equal):
    assert answers_match(predicted, reference) is equal


def test_equivalence_in_a_worker_thread():
    # math-verify's timeouts use SIGALRM (main thread only); elsewhere rlif calls it without one.
    results = []
    worker = threading.Thread(target=lambda: results.append([answers_match(p, r) for p, r, _ in CASES]))
    worker.start()
    worker.join()
    assert results == [[equal for _, _, equal in CASES]]
