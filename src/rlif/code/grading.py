"""Code as an answer format: `code` (chat style) and `code_completion` (completion style), and grading.

Why an answer format, and not a separate code path in the evaluation: everything downstream of checking an
answer (records, resuming, Best-of-N, majority vote, calibration, `rlif select`, training's accuracy and
samples) is the same for code as for math once each response has an `answer` (what votes) and `correct`.
What differs is the check itself: a math answer is checked alone against its reference
(`equivalent(answer, reference)`), a program must be run against the tests, in a sandbox, many at once in
parallel. So `CodeAnswerFormat` is an `AnswerFormat` that overrides `grade` (the batched check every
evaluation and `Rollout.correct` call) and otherwise keeps the contract:

  extract(response)  the code in the response: chat style, the last fenced python block (else the last block,
                     else the whole response); completion style, the completion cut at the first top-level stop
                     sequence (`rlif.code.extract`). A training rollout's `answers` are these, label-free.
  grade(...)         per response: the program (the problem's prompt or prefix + the code), run against all
                     the problem's tests; `correct` = every test passed; `answer` = the test-outcome signature.
  equivalent(a, b)   equal signatures (or equal code, for a rollout's answers): plain string equality.

The label of a code problem is its tests: `CodeProblem.to_label()` (JSON; the reference solution is not in
it). A label-free reward never sees it (`Rollout.without_labels`), and nothing else in a rollout carries the
tests (MBPP's prompt shows its asserts by design: the MBPP paper's prompt, so the model knows the name).

The test-outcome signature (the `answer` of an evaluation record; majority vote and Borda group answers by it):
  "passed"           the tests ran to their end
  "failed:PFPT..."   a test failed: then each test is run on its own (one letter per test of the problem's
                     test list: P passed, F failed, T timed out, E error); "failed:F" without a test list
  "timeout"          the whole set ran out of time (its tests are not re-run one by one: a non-terminating
                     program would cost the timeout once per test)
  None               the program does not run (a syntax error, or it raised before the tests): no answer,
                     as a math response without a final answer; it never wins a vote
Two programs vote together when they pass and fail the same tests. The signature comes from the benchmark's
tests, so voting by it uses the tests' pass/fail pattern (not the labels' verdict alone, but not label-free
either, unlike math's majority vote; a label-free code vote would compare outputs on generated inputs).

`tests_passed` (the `code_tests` reward) is the share of the problem's tests passed: 1 for "passed", the
share of P in a "failed" signature, 0 for "timeout" and for a program that does not run.

Every run goes through `rlif.code.execute_many` (parallel, bounded by the cores), and its result is cached in
this process by (program, tests, limits): the reward, the step's accuracy and its samples share one run.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import threading
from collections.abc import Sequence
from typing import Any

from rlif.code.executor import ExecutionResult, execute_many
from rlif.code.extract import code_from_response, cut_completion
from rlif.code.problems import CodeProblem, Style
from rlif.data.answers import AnswerFormat, register_answer_format

TIMEOUT_S = 10.0  # per run, wall clock and CPU: HumanEval's canonical solutions take milliseconds; 10 s leaves room for a loaded machine
DETAIL_CHARS = 300
CACHE_SIZE = 16384
LETTERS = {"passed": "P", "failed": "F", "timeout": "T", "error": "E"}


@dataclasses.dataclass(frozen=True)
class CodeOutcome:
    """What running one response's program against its problem's tests gave."""

    program: str
    status: str  # of the run against all the tests: passed, failed, timeout, error
    detail: str
    signature: str | None
    tests_passed: float
    isolation: tuple[str, ...]
    sandbox: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def record_fields(self) -> dict[str, Any]:
        """The fields of an evaluation record."""
        return {"answer": self.signature, "correct": self.passed, "program": self.program, "status": self.status,
                "detail": self.detail[:DETAIL_CHARS], "tests_passed": self.tests_passed,
                "isolation": list(self.isolation), "sandbox": self.sandbox}


# --- cached runs ----------------------------------------------------------------------------------------

_cache: collections.OrderedDict[str, ExecutionResult] = collections.OrderedDict()
_cache_lock = threading.Lock()


def _key(job: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()


def run_jobs(jobs: Sequence[dict[str, Any]], workers: int | None = None) -> list[ExecutionResult]:
    """`execute_many(jobs)`, each distinct job run once per process (identical programs of a group, and the
    reward and the accuracy of one step, share a run)."""
    keys = [_key(job) for job in jobs]
    with _cache_lock:
        found = {key: _cache[key] for key in keys if key in _cache}
    missing = {key: job for key, job in zip(keys, jobs) if key not in found}
    if missing:
        found.update(zip(missing, execute_many(list(missing.values()), workers)))
        with _cache_lock:
            for key in missing:
                _cache[key] = found[key]
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return [found[key] for key in keys]


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


# --- grading --------------------------------------------------------------------------------------------

def _job(problem: CodeProblem, program: str, tests: str, timeout_s: float) -> dict[str, Any]:
    return {"program": program, "tests": tests, "timeout_s": timeout_s, "entry_point": problem.guarded_entry_point()}


def run_programs(problems: Sequence[CodeProblem], programs: Sequence[str], *, per_test: bool = True,
                 timeout_s: float = TIMEOUT_S, workers: int | None = None) -> list[CodeOutcome]:
    """Run each program against its problem's tests; with per_test, also each test on its own for the
    programs that failed (the signature and tests_passed need them; `passed` does not: without per_test a
    failed program's signature is "failed:F" and its tests_passed 0)."""
    if len(problems) != len(programs):
        raise ValueError(f"{len(problems)} problems for {len(programs)} programs")
    whole = run_jobs([_job(p, program, p.tests, timeout_s) for p, program in zip(problems, programs)], workers)
    split = [i for i, result in enumerate(whole)
             if per_test and result.status == "failed" and problems[i].test_list and len(problems[i].test_list) > 1]
    jobs = [_job(problems[i], programs[i], tests, timeout_s) for i in split for tests in problems[i].test_list]
    each = iter(run_jobs(jobs, workers))
    letters = {i: "".join(LETTERS[next(each).status] for _ in problems[i].test_list) for i in split}
    outcomes = []
    for i, (problem, program, result) in enumerate(zip(problems, programs, whole)):
        signature, share = _signature(result.status, letters.get(i))
        outcomes.append(CodeOutcome(program=program, status=result.status, detail=result.detail, signature=signature,
                                    tests_passed=share, isolation=result.isolation, sandbox=result.sandbox))
    return outcomes


def _signature(status: str, letters: str | None) -> tuple[str | None, float]:
    """(signature, share of tests passed) of a run's status and, for a failed run, its per-test letters."""
    if status == "passed":
        return "passed", 1.0
    if status == "timeout":
        return "timeout", 0.0
    if status == "error":
        return None, 0.0
    letters = letters or "F"
    return f"failed:{letters}", letters.count("P") / len(letters)


def problems_of(labels: Sequence[str | None]) -> list[CodeProblem]:
    """The problems code labels hold; a missing label is an error naming its position."""
    problems = []
    for position, label in enumerate(labels):
        if label is None:
            raise ValueError(f"response {position} has no tests to run (its label is None): a code check needs "
                             "the problem's tests as its label (data.label_field: tests)")
        problems.append(CodeProblem.from_label(label))
    return problems


def same_answer(a: str | None, b: str | None) -> bool:
    """Two code answers (signatures, or a rollout's extracted code) are the same when equal; None never is."""
    return a is not None and a == b


@dataclasses.dataclass(frozen=True)
class CodeAnswerFormat(AnswerFormat):
    """An answer format whose check runs programs (see the module docstring). style: how the program is
    taken from a response ("chat": the last fenced python block after the problem's prefix; "completion":
    the prompt continued); timeout_s: each run's wall-clock and CPU limit."""

    style: Style = "chat"
    timeout_s: float = TIMEOUT_S

    def programs(self, problems: Sequence[CodeProblem], responses: Sequence[str],
                 answers: Sequence[str | None] | None = None) -> list[str]:
        codes = answers if answers is not None else [self.extract(response) for response in responses]
        return [problem.program_from_code(code or "", self.style) for problem, code in zip(problems, codes)]

    def outcomes(self, responses: Sequence[str], references: Sequence[str | None],
                 answers: Sequence[str | None] | None = None, *, per_test: bool = True) -> list[CodeOutcome]:
        """Each response's program run against its problem (references: `CodeProblem.to_label` strings)."""
        problems = problems_of(references)
        return run_programs(problems, self.programs(problems, responses, answers), per_test=per_test,
                            timeout_s=self.timeout_s)

    def grade(self, responses: Sequence[str], references: Sequence[str | None],
              answers: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
        return [outcome.record_fields() for outcome in self.outcomes(responses, references, answers)]


CODE = register_answer_format(CodeAnswerFormat("code", code_from_response, same_answer, style="chat"))
CODE_COMPLETION = register_answer_format(
    CodeAnswerFormat("code_completion", cut_completion, same_answer, style="completion"))
CODE_FORMATS = {"chat": CODE, "completion": CODE_COMPLETION}
