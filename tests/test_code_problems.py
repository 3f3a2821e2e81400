"""rlif.code.problems: the bundled HumanEval, and hand-written MBPP and LiveCodeBench files, run through execute."""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import re
import zlib
from pathlib import Path

import pytest

from rlif.code import execute, execute_many, load_humaneval, load_problems, partial_credit, run_answer
from rlif.code.problems import HUMANEVAL_PATH, decode_test_cases, function_under_test

README = HUMANEVAL_PATH.with_name("README.md")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


# --- HumanEval ---------------------------------------------------------------------------------------------

def test_bundled_humaneval_is_the_upstream_file():
    problems = load_humaneval()
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0" and problems[163].task_id == "HumanEval/163"
    digest = hashlib.sha256(HUMANEVAL_PATH.read_bytes()).hexdigest()
    assert digest in README.read_text(encoding="utf-8")
    assert (HUMANEVAL_PATH.parent / "LICENSE").read_text().startswith("The MIT License")
    first = problems[0]
    assert first.entry_point == "has_close_elements" and first.layout == "humaneval"
    assert first.tests.rstrip().endswith("check(has_close_elements)")
    assert first.code_prefix == first.prompt and first.canonical_solution.lstrip().startswith("for idx, elem")


def test_first_ten_canonical_solutions_pass_and_wrong_ones_fail():
    problems = load_humaneval()[:10]
    jobs = [{"program": problem.prompt + problem.canonical_solution, "tests": problem.tests,
             "entry_point": problem.entry_point, "timeout_s": 20} for problem in problems]
    results = execute_many(jobs)
    assert [result.status for result in results] == ["passed"] * 10, [(r.detail, r.stderr[-300:]) for r in results]
    wrong = problems[0].prompt + "    return False\n"
    assert execute(wrong, problems[0].tests, 20, entry_point=problems[0].entry_point).status == "failed"
    # the same answers as a model would write them
    completion = problems[2].canonical_solution + "\n\ndef main():\n    print(truncate_number(3.5))\n"
    assert run_answer(problems[2], completion, style="completion").passed
    chat = f"Here is the function:\n\n```python\n{problems[2].prompt}{problems[2].canonical_solution}```\nIt keeps the fraction."
    assert run_answer(problems[2], chat, style="chat").passed
    identity = "```python\ndef truncate_number(number):\n    return number\n```"
    assert run_answer(problems[2], identity, style="chat").status == "failed"


# --- MBPP --------------------------------------------------------------------------------------------------

MBPP_RECORDS = [
    {"task_id": 2, "text": "Write a function to find the shared elements from the given two lists.",
     "code": "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n  return (res) ",
     "test_list": ["assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
                   "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))",
                   "assert set(similar_elements((11, 12, 14, 13),(17, 15, 14, 13))) == set((13, 14))"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 3, "text": "Write a python function to identify non-prime numbers.",
     "code": "import math\ndef is_not_prime(n):\n    result = False\n    for i in range(2,int(math.sqrt(n)) + 1):\n"
             "        if n % i == 0:\n            result = True\n    return result",
     "test_list": ["assert is_not_prime(2) == False", "assert is_not_prime(10) == True", "assert is_not_prime(35) == True"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 900, "text": "Write a function that scales every value by the module's FACTOR.",
     "code": "def scaled(values):\n    return [value * FACTOR for value in values]",
     "test_list": ["assert scaled([1, 2]) == [3, 6]", "assert scaled([]) == []"],
     "test_setup_code": "import builtins\nbuiltins.FACTOR = 3", "challenge_test_list": []},
]


def test_mbpp_layout(tmp_path):
    problems = load_problems(write_jsonl(tmp_path / "mbpp.jsonl", MBPP_RECORDS))
    assert [problem.layout for problem in problems] == ["mbpp"] * 3
    assert [problem.entry_point for problem in problems] == ["similar_elements", "is_not_prime", "scaled"]
    assert "Your code should pass these tests" in problems[0].prompt and "similar_elements((3, 4, 5, 6)" in problems[0].prompt
    assert len(problems[1].test_list) == 3
    results = execute_many([{"program": problem.canonical_solution, "tests": problem.tests,
                             "entry_point": problem.entry_point} for problem in problems])
    assert [result.status for result in results] == ["passed"] * 3, [result.detail for result in results]
    assert partial_credit(problems[1], f"```python\n{problems[1].canonical_solution}\n```") == 1.0
    wrong_for_35 = "```python\ndef is_not_prime(n):\n    return n % 2 == 0 and n > 2\n```"
    assert partial_credit(problems[1], wrong_for_35) == pytest.approx(2 / 3)
    assert run_answer(problems[1], wrong_for_35).status == "failed"


def test_function_under_test():
    assert function_under_test("assert set(similar_elements((3, 4), (4,))) == set((4,))") == "similar_elements"
    assert function_under_test("assert math.isclose(area(2), 12.56, rel_tol=0.01)") == "area"
    assert function_under_test("assert not is_odd(2)") == "is_odd"
    assert function_under_test("assert len([1]) == 1") is None


# --- LiveCodeBench -----------------------------------------------------------------------------------------

def packed(cases: list[dict]) -> str:
    """LiveCodeBench's packing of private cases: base64(zlib(pickle(JSON text)))."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


LCB_RECORDS = [
    {"question_title": "Sum of pairs", "question_id": "abc001_a", "platform": "atcoder", "difficulty": "easy",
     "question_content": "Read N, then N integers. Print their sum, and on a second line their maximum.",
     "starter_code": "", "metadata": "{}",
     "public_test_cases": json.dumps([{"input": "3\n1 2 3\n", "output": "6\n3\n", "testtype": "stdin"}]),
     "private_test_cases": packed([{"input": "2\n-5 4\n", "output": "-1\n4", "testtype": "stdin"},
                                   {"input": "1\n7\n", "output": "7\n7\n", "testtype": "stdin"}])},
    {"question_title": "Two sum", "question_id": "1", "platform": "leetcode", "difficulty": "easy",
     "question_content": "Return the indices of the two numbers that add up to target.",
     "starter_code": "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        ",
     "metadata": json.dumps({"func_name": "twoSum"}),
     "public_test_cases": json.dumps([{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", "testtype": "functional"},
                                      {"input": "[3, 2, 4]\n6", "output": "[1, 2]", "testtype": "functional"}]),
     "private_test_cases": json.dumps([{"input": "[3, 3]\n6", "output": "[0, 1]", "testtype": "functional"}])},
]

STDIN_SOLUTION = ("import sys\n\ndata = sys.stdin.read().split()\nnumbers = list(map(int, data[1:]))\n"
                  "print(sum(numbers))\nprint(max(numbers))\n")
STDIN_WITH_INPUT = ("n = int(input())\nnumbers = [int(x) for x in input().split()]\nprint(sum(numbers), '  ')\n"
                    "print(max(numbers))\nexit(0)\n")
TWO_SUM = ("from typing import List\n\nclass Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
           "        seen = {}\n        for index, value in enumerate(nums):\n            if target - value in seen:\n"
           "                return (seen[target - value], index)\n            seen[value] = index\n")


def test_livecodebench_layout(tmp_path):
    problems = load_problems(write_jsonl(tmp_path / "lcb.jsonl", LCB_RECORDS))
    stdin_problem, functional = problems
    assert (stdin_problem.kind, functional.kind) == ("stdin", "functional")
    assert len(stdin_problem.test_list) == 3 and len(functional.test_list) == 3
    assert functional.entry_point == "twoSum" and "class Solution" in functional.prompt
    for solution in (STDIN_SOLUTION, STDIN_WITH_INPUT):
        result = run_answer(stdin_problem, f"```python\n{solution}```")
        assert result.passed, (result.detail, result.stderr[-500:])
    wrong_max = STDIN_SOLUTION.replace("max(numbers)", "min(numbers)")
    assert run_answer(stdin_problem, wrong_max).status == "failed"
    assert partial_credit(stdin_problem, wrong_max) == pytest.approx(1 / 3)  # only "7 / 7" survives min for max
    crashing = "import sys\nprint(6)\nraise SystemExit(3)\n"
    assert run_answer(stdin_problem, crashing).status == "failed"
    assert run_answer(stdin_problem, "print(6\n").status == "error"  # a syntax error is still the program's error
    assert run_answer(functional, TWO_SUM).passed  # a tuple compares as its JSON list
    fake = ("class Solution:\n    def twoSum(self, nums, target):\n        class Any(list):\n"
            "            def __eq__(s, o): return True\n        return Any()\n")
    assert run_answer(functional, fake).status == "failed"


def test_livecodebench_parquet_and_refused_pickles(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow
    import pyarrow.parquet

    table = pyarrow.Table.from_pylist(LCB_RECORDS)
    pyarrow.parquet.write_table(table, tmp_path / "lcb.parquet")
    problems = load_problems(tmp_path / "lcb.parquet")
    assert [problem.task_id for problem in problems] == ["abc001_a", "1"]
    assert decode_test_cases(packed([{"input": "1", "output": "2", "testtype": "stdin"}]))[0]["output"] == "2"

    class Evil:
        def __reduce__(self):
            return (print, ("pickle ran code",))

    evil = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(pickle.UnpicklingError, match="refusing builtins.print"):
        decode_test_cases(evil)


def test_layout_detection_errors(tmp_path):
    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"question": "What?", "answer": "42"}])
    expected = re.escape(str(unknown)) + r".*\['answer', 'question'\].*HumanEval \(prompt, test, entry_point\)"
    with pytest.raises(ValueError, match=expected):
        load_problems(unknown)
    broken = write_jsonl(tmp_path / "broken.jsonl", [LCB_RECORDS[0], {**LCB_RECORDS[1], "metadata": "{}"}])
    with pytest.raises(ValueError, match="record 1 .*func_name"):
        load_problems(broken)
    with pytest.raises(ValueError, match="expected a .jsonl"):
        load_problems(tmp_path / "problems.csv")
    record = {"task_id": "T/0", "prompt": "def f():\n", "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
    humaneval = write_jsonl(tmp_path / "he.jsonl", [record])
    assert load_problems(humaneval)[0].tests.endswith("check(f)\n")
