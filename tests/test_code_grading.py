"""rlif.code.grading (the code answer formats: programs run against the tests, outcome signatures) and code
benchmark files as prompts (rlif.data.prompts, rlif.data.benchmarks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlif.code import execute, load_humaneval
from rlif.code.grading import CODE, CODE_COMPLETION, CodeAnswerFormat, run_jobs, same_answer
from rlif.code.problems import CodeProblem, load_problems, split_check
from rlif.data.answers import get_answer_format
from rlif.data.benchmarks import get_benchmark
from rlif.data.prompts import load_code_prompts, load_task_prompts
from rlif.errors import DataError
from rlif.eval.best_of_n import majority_vote

ADD = {"task_id": "T/0", "prompt": 'def add(a, b):\n    """Return the sum of a and b."""\n', "entry_point": "add",
       "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n    assert candidate(-1, 1) == 0\n"}
TWICE = {"task_id": "T/1", "prompt": 'def twice(x):\n    """Return 2 * x."""\n', "entry_point": "twice",
         "test": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(0) == 0\n"}
FAST = CodeAnswerFormat("code", CODE.extract, CODE.equivalent, style="chat", timeout_s=1.0)


def fenced(body: str) -> str:
    return f"Here it is:\n\n```python\n{body}```\n"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


@pytest.fixture
def add_label(tmp_path) -> str:
    return load_code_prompts(write_jsonl(tmp_path / "add.jsonl", [ADD]))[0].label


def test_signatures_by_hand(add_label):
    responses = {
        "right": fenced("def add(a, b):\n    return a + b\n"),         # 3 + 0 + 0: all pass
        "product": fenced("def add(a, b):\n    return a * b\n"),       # 2 != 3, 0 == 0, -1 != 0
        "difference": fenced("def add(a, b):\n    return a - b\n"),    # -1 != 3, 0 == 0, -2 != 0
        "zero": fenced("def add(a, b):\n    return 0\n"),              # 0 != 3, 0 == 0, 0 == 0
        "loops": fenced("def add(a, b):\n    while True:\n        pass\n"),
        "syntax": fenced("def add(a, b)\n    return a + b\n"),
        "raises": fenced("raise RuntimeError('before the tests')\n"),
    }
    graded = dict(zip(responses, FAST.grade(list(responses.values()), [add_label] * len(responses))))
    expected = {"right": ("passed", True, 1.0, "passed"), "product": ("failed:FPF", False, 1 / 3, "failed"),
                "difference": ("failed:FPF", False, 1 / 3, "failed"), "zero": ("failed:FPP", False, 2 / 3, "failed"),
                "loops": ("timeout", False, 0.0, "timeout"), "syntax": (None, False, 0.0, "error"),
                "raises": (None, False, 0.0, "error")}
    for name, (answer, correct, share, status) in expected.items():
        row = graded[name]
        assert (row["answer"], row["correct"], row["status"]) == (answer, correct, status), (name, row["detail"])
        assert row["tests_passed"] == pytest.approx(share), name
        assert row["program"].startswith(ADD["prompt"].rstrip()) and row["sandbox"] in ("bubblewrap", "unshare", "basic")
        assert {"subprocess", "tempdir", "empty-env", "wall-timeout"} <= set(row["isolation"])
    # the program is the prompt (imports, helpers), then the answer's code, which redefines the function
    assert graded["right"]["program"] == ADD["prompt"].rstrip() + "\n\n\ndef add(a, b):\n    return a + b\n"
    # majority vote groups by signature: the two wrong programs that fail the same tests outvote the right one
    answers = [graded[name]["answer"] for name in ("product", "right", "difference", "syntax")]
    assert majority_vote(answers, CODE.equivalent) == 0
    assert not same_answer(None, None) and same_answer("failed:FPF", "failed:FPF")


def test_completion_style_continues_the_prompt(add_label):
    completions = ["    return a + b\n\n\ndef unrelated():\n    pass\n", "    return a + b + 1\n", "  return\n"]
    graded = CODE_COMPLETION.grade(completions, [add_label] * 3)
    assert [row["answer"] for row in graded] == ["passed", "failed:FFF", None]
    assert graded[0]["program"] == ADD["prompt"] + "    return a + b\n\n"  # cut at the next top-level def
    assert get_answer_format("code_completion") is CODE_COMPLETION and get_answer_format("code") is CODE


def test_humaneval_canonical_solutions_grade_as_correct_in_both_styles():
    problems = load_humaneval()[:6]
    labels = [problem.to_label() for problem in problems]
    chat = CODE.grade([fenced(p.prompt + p.canonical_solution) for p in problems], labels)
    completion = CODE_COMPLETION.grade([p.canonical_solution for p in problems], labels)
    assert [row["answer"] for row in chat + completion] == ["passed"] * 12, [r["detail"] for r in chat + completion]
    wrong = CODE_COMPLETION.grade(["    return False\n"], [labels[0]])[0]  # HumanEval/0: right where False is expected
    letters = wrong["answer"].removeprefix("failed:")
    assert wrong["status"] == "failed" and len(letters) == len(problems[0].test_list) == 7 and set(letters) == {"P", "F"}
    assert wrong["tests_passed"] == pytest.approx(letters.count("P") / 7)


def test_label_round_trip_and_refusals(tmp_path):
    problem = load_problems(write_jsonl(tmp_path / "he.jsonl", [{**ADD, "canonical_solution": "    return a + b\n"}]))[0]
    back = CodeProblem.from_label(problem.to_label())
    assert back == CodeProblem(**{**problem.__dict__, "canonical_solution": None})
    assert "return a + b" not in problem.to_label()  # the reference solution is not part of the label
    for bad in ("42", '{"tests": "assert True"}', None):
        with pytest.raises(ValueError, match="not a code problem label"):
            CodeProblem.from_label(bad)
    with pytest.raises(ValueError, match="label is None"):
        CODE.grade(["x"], [None])


def test_split_check_by_hand():
    source = ("METADATA = {}\n\n\ndef check(candidate):\n    import math\n    assert candidate(1) == 1\n    x = 2\n\n"
              "    for i in range(x):\n        assert candidate(i) == i\n\n# after\n")
    head, tail = "METADATA = {}\n\n\ndef check(candidate):\n", "\n# after\n"
    assert split_check(source) == [
        head + "    import math\n    assert candidate(1) == 1\n" + tail,
        head + "    import math\n    x = 2\n    for i in range(x):\n        assert candidate(i) == i\n" + tail,
    ]
    assert split_check("def check(c): assert c(1) == 1\n") is None  # the body on the def line
    assert split_check("def check(c):\n    assert c(1) == 1; assert c(2) == 2\n") is None  # statements sharing a line
    assert split_check("def check(c):\n    assert c(1) == 1\n") is None  # one test: nothing to split
    assert split_check("def test(c):\n    assert c(1) == 1\n    assert c(2) == 2\n") is None  # no check
    problems = load_humaneval()
    assert sum(1 for p in problems if p.test_list) == 160 and sum(len(p.test_list or ()) for p in problems) == 1177


def test_split_humaneval_tests_pass_for_the_canonical_solutions():
    from rlif.code import execute_many

    problems = load_humaneval()[:8]
    jobs = [{"program": p.prompt + p.canonical_solution, "tests": tests, "entry_point": p.entry_point, "timeout_s": 20}
            for p in problems for tests in p.test_list]
    assert {result.status for result in execute_many(jobs)} == {"passed"}


def test_each_distinct_run_happens_once():
    job = {"program": "import os\nPID = os.getpid()\n", "tests": "assert PID > 0\n", "timeout_s": 5, "entry_point": None}
    first, again = run_jobs([job, dict(job)])
    assert first is again and first.passed  # one run for both
    assert run_jobs([job])[0] is first
    assert execute(job["program"], job["tests"]).passed


# --- code benchmark files as prompts -------------------------------------------------------------------------

MBPP = {"task_id": 11, "text": "Write a function that doubles a number.", "code": "def double(x):\n    return 2 * x",
        "test_list": ["assert double(2) == 4", "assert double(0) == 0"], "test_setup_code": ""}
LCB = {"question_id": "q1", "question_content": "Print the sum of two integers on one line.", "starter_code": "",
       "metadata": "{}", "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}])}


def test_code_files_load_as_prompts_with_their_tests_as_labels(tmp_path):
    he = load_code_prompts(write_jsonl(tmp_path / "he.jsonl", [ADD, TWICE]))
    assert [p.prompt for p in he] == [ADD["prompt"], TWICE["prompt"]] and he[1].source.endswith("he.jsonl:2")
    assert CodeProblem.from_label(he[0].label).tests == ADD["test"] + "\n\ncheck(add)\n"
    mbpp = load_code_prompts(write_jsonl(tmp_path / "mbpp.jsonl", [MBPP]))[0]
    assert "assert double(2) == 4" in mbpp.prompt  # the MBPP paper's prompt shows the asserts (the function's name)
    assert CODE.grade([fenced(MBPP["code"] + "\n")], [mbpp.label])[0]["answer"] == "passed"
    lcb = load_code_prompts(write_jsonl(tmp_path / "lcb.jsonl", [LCB]))[0]
    assert CODE.grade([fenced("a, b = map(int, input().split())\nprint(a + b)\n")], [lcb.label])[0]["correct"]
    # no labels: the tests are never read; a file in no code layout is then plain prompts
    assert [p.label for p in load_code_prompts(tmp_path / "he.jsonl", label_field=None)] == [None, None]
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"question": "Write a function that reverses a string."}])
    assert load_code_prompts(plain, "question", None)[0].prompt.startswith("Write a function")
    assert load_task_prompts(tmp_path / "he.jsonl", "prompt", "tests", "code_completion")[0].label == he[0].label


def test_code_file_errors_name_the_file_and_what_is_expected(tmp_path):
    he = write_jsonl(tmp_path / "he.jsonl", [ADD])
    with pytest.raises(DataError, match="label_field 'tests' \\(or null: no labels\\), got 'prompt' and 'answer'"):
        load_code_prompts(he, "prompt", "answer")
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "Write code."}])
    with pytest.raises(DataError, match="plain.jsonl:1: not a code benchmark .*HumanEval \\(prompt, test, entry_point\\)"):
        load_code_prompts(plain, "prompt", "tests")
    broken = write_jsonl(tmp_path / "broken.jsonl", [ADD, {"prompt": "def f():\n", "test": "", "task_id": "T/2"}])
    with pytest.raises(DataError, match="broken.jsonl:2: not a humaneval problem: KeyError\\('entry_point'\\)"):
        load_code_prompts(broken)


def test_code_benchmarks_are_told_from_their_layout(tmp_path):
    humaneval = get_benchmark("humaneval")
    assert (humaneval.answer_format, humaneval.label_field) == ("code", "tests")
    problems = humaneval.load(3)
    assert len(problems) == 3 and CodeProblem.from_label(problems[0].label).entry_point == "has_close_elements"
    he = get_benchmark(str(write_jsonl(tmp_path / "he.jsonl", [ADD])))
    assert (he.answer_format, he.prompt_field, he.label_field) == ("code", "prompt", "tests")
    math = get_benchmark(str(write_jsonl(tmp_path / "math.jsonl", [{"prompt": "1+1=", "answer": "2"}])))
    assert (math.answer_format, math.label_field) == ("math", "answer")
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "def f():\n"}])
    assert get_benchmark(str(plain), answer_format="code").label_field == "tests"
