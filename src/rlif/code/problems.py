"""Code benchmarks as `CodeProblem`s: the bundled HumanEval, and local files in the HumanEval, MBPP or
LiveCodeBench layout (.jsonl, .jsonl.gz or .parquet), told apart by their fields.

  HumanEval      task_id, prompt, test (defines check(candidate)), entry_point [, canonical_solution]
  MBPP           task_id, text (original) or prompt (sanitized), test_list (assert strings)
                 [, test_setup_code, test_imports, code]
  LiveCodeBench  question_content, public_test_cases [, private_test_cases] (JSON lists, as text or lists, of
                 {input, output, testtype: stdin | functional}; the private ones may be LiveCodeBench's
                 base64 + zlib + pickle packing, read by an unpickler that loads no classes), starter_code,
                 metadata (JSON with func_name for functional cases) [, question_id, question_title]
"""

from __future__ import annotations

import ast
import base64
import builtins
import dataclasses
import gzip
import io
import json
import pickle
import zlib
from pathlib import Path
from typing import Any, Literal

from rlif.code.executor import ExecutionResult, execute, execute_many
from rlif.code.extract import program_from_completion, program_from_response, with_prefix

HUMANEVAL_PATH = Path(__file__).resolve().parents[1] / "data" / "benchmark_data" / "humaneval" / "test.jsonl"
_RUNNERS_SOURCE = (Path(__file__).with_name("_test_runners.py")).read_text(encoding="utf-8")
Style = Literal["chat", "completion"]
LABEL_KEY, LABEL_VERSION = "rlif_code_problem", 1


@dataclasses.dataclass(frozen=True)
class CodeProblem:
    """One problem. tests is the source `execute` runs after the program, ending with what runs the tests
    (HumanEval: `check(<entry_point>)`); test_list, when the layout has separate tests, holds each as a
    standalone source for partial credit. code_prefix goes before a chat-style answer (HumanEval: the prompt,
    for its imports and helpers). stdin problems are scripts: `program_for` turns one into a string the tests
    run once per case. plain_returns: check that the entry point returns plain data (see execute)."""

    task_id: str
    prompt: str
    tests: str
    entry_point: str | None
    layout: str
    kind: Literal["functional", "stdin"] = "functional"
    test_list: tuple[str, ...] | None = None
    code_prefix: str = ""
    canonical_solution: str | None = None
    plain_returns: bool = True

    def program_for(self, code: str) -> str:
        """The program `execute` runs for this code (already extracted from the model's answer)."""
        if self.kind == "stdin":
            return f"rlif_solution_source = {code!r}\nrlif_solution_code = compile(rlif_solution_source, 'solution.py', 'exec')\n"
        return code

    def program_from_answer(self, answer: str, style: Style) -> str:
        if style == "completion":
            return self.program_for(program_from_completion(self.prompt, answer))
        if style == "chat":
            return self.program_for(program_from_response(answer, self.code_prefix))
        raise ValueError(f"style must be 'chat' or 'completion', got {style!r}")

    def program_from_code(self, code: str, style: Style) -> str:
        """The program for code already taken out of an answer (`cut_completion`'s or `code_from_response`'s)."""
        if style == "completion":
            return self.program_for(self.prompt + code)
        if style == "chat":
            return self.program_for(with_prefix(self.code_prefix, code))
        raise ValueError(f"style must be 'chat' or 'completion', got {style!r}")

    def to_label(self) -> str:
        """The problem as a label string (JSON): what a code reward or evaluation needs to run an answer's
        tests; no reference solution."""
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                  if field.name != "canonical_solution"}
        return json.dumps({LABEL_KEY: LABEL_VERSION, **fields}, ensure_ascii=False)

    @classmethod
    def from_label(cls, label: str) -> "CodeProblem":
        """The problem a `to_label` string holds; ValueError naming what is wrong for anything else."""
        try:
            fields = json.loads(label)
        except (TypeError, ValueError):
            fields = None
        if not isinstance(fields, dict) or fields.pop(LABEL_KEY, None) != LABEL_VERSION:
            raise ValueError(f"not a code problem label (a CodeProblem.to_label string): {str(label)[:80]!r}")
        if fields.get("test_list") is not None:
            fields["test_list"] = tuple(fields["test_list"])
        return cls(**fields)

    def guarded_entry_point(self) -> str | None:
        return self.entry_point if self.plain_returns else None


def run_answer(problem: CodeProblem, answer: str, style: Style = "chat", timeout_s: float = 10.0,
               **limits: Any) -> ExecutionResult:
    """Extract the program from a model's answer and run it against all the problem's tests."""
    return execute(problem.program_from_answer(answer, style), problem.tests, timeout_s,
                   entry_point=problem.guarded_entry_point(), **limits)


def partial_credit(problem: CodeProblem, answer: str, style: Style = "chat", timeout_s: float = 10.0,
                   workers: int | None = None, **limits: Any) -> float:
    """The fraction of the problem's separate tests the answer passes (each in its own sandbox); all or
    nothing for a problem without a test list."""
    if not problem.test_list:
        return 1.0 if run_answer(problem, answer, style, timeout_s, **limits).passed else 0.0
    program = problem.program_from_answer(answer, style)
    jobs = [{"program": program, "tests": tests, "timeout_s": timeout_s,
             "entry_point": problem.guarded_entry_point(), **limits} for tests in problem.test_list]
    results = execute_many(jobs, workers)
    return sum(result.passed for result in results) / len(results)


# --- HumanEval ---------------------------------------------------------------------------------------------

def split_check(test: str) -> list[str] | None:
    """HumanEval's tests one by one: for each statement of `check`'s body that holds an assert, the test
    source with `check` reduced to that statement and the statements without an assert before it (imports,
    set-up). None when the source does not split cleanly (no `check`, statements sharing a line, < 2 tests)."""
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return None
    check = next((node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "check"), None)
    if check is None or check.body[0].lineno <= check.lineno:
        return None
    lines = test.splitlines(keepends=True)
    spans = [(node.lineno, node.end_lineno) for node in check.body]
    if any(end >= start for (_, end), (start, _) in zip(spans, spans[1:])):
        return None
    head, tail = "".join(lines[:check.body[0].lineno - 1]), "".join(lines[check.end_lineno:])
    setup, tests = [], []
    for node, (start, end) in zip(check.body, spans):
        source = "".join(lines[start - 1:end])
        if any(isinstance(inner, ast.Assert) for inner in ast.walk(node)):
            tests.append(head + "".join(setup) + source + tail)
        else:
            setup.append(source)
    return tests if len(tests) >= 2 else None


def humaneval_problem(record: dict[str, Any]) -> CodeProblem:
    """test_list: each assert of `check` on its own (`split_check`), for partial credit and outcome signatures."""
    entry_point = record["entry_point"]
    call = f"\n\ncheck({entry_point})\n"
    split = split_check(record["test"])
    return CodeProblem(task_id=str(record.get("task_id", entry_point)), prompt=record["prompt"],
                       tests=record["test"] + call, entry_point=entry_point, layout="humaneval",
                       test_list=tuple(test + call for test in split) if split else None,
                       code_prefix=record["prompt"], canonical_solution=record.get("canonical_solution"))


def load_humaneval() -> list[CodeProblem]:
    """The 164 HumanEval problems bundled with rlif (src/rlif/data/benchmark_data/humaneval, MIT)."""
    return load_problems(HUMANEVAL_PATH)


# --- MBPP --------------------------------------------------------------------------------------------------

def function_under_test(assertion: str) -> str | None:
    """The first function an assert calls that is not a builtin: `assert set(similar(a, b)) == {4}` -> similar."""
    try:
        tree = ast.parse(assertion)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not hasattr(builtins, node.func.id):
            return node.func.id
    return None


def mbpp_problem(record: dict[str, Any]) -> CodeProblem:
    """The prompt is the MBPP paper's: the task text and its tests, so the model knows the function's name."""
    text = record.get("text", record.get("prompt"))
    asserts = [str(assertion) for assertion in record["test_list"]]
    setup_lines = [str(line) for line in record.get("test_imports") or []]
    if record.get("test_setup_code"):
        setup_lines.append(str(record["test_setup_code"]))
    setup = "\n".join(setup_lines)
    joined = "\n".join(asserts)
    return CodeProblem(task_id=str(record["task_id"]), prompt=f"{text}\nYour code should pass these tests:\n\n{joined}\n",
                       tests=f"{setup}\n{joined}\n", entry_point=function_under_test(asserts[0]) if asserts else None,
                       layout="mbpp", test_list=tuple(f"{setup}\n{assertion}\n" for assertion in asserts),
                       canonical_solution=record.get("code"))


# --- LiveCodeBench -----------------------------------------------------------------------------------------

class _DataOnlyUnpickler(pickle.Unpickler):
    """Loads strings, numbers, lists and dicts; refuses every class or function a pickle names, which is
    how a pickle runs code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing {module}.{name}: test cases are plain data")


def decode_test_cases(value: Any) -> list[dict[str, Any]]:
    """A list of cases from a list, a JSON text, or LiveCodeBench's base64(zlib(pickle(JSON text)))."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str):
        raise TypeError(f"test cases must be a list or a string, got {type(value).__name__}")
    if not value.strip():
        return []
    try:
        return json.loads(value)
    except ValueError:
        pass
    unpacked = _DataOnlyUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(value)))).load()
    return json.loads(unpacked) if isinstance(unpacked, (str, bytes)) else unpacked


def livecodebench_problem(record: dict[str, Any]) -> CodeProblem:
    cases = decode_test_cases(record["public_test_cases"]) + decode_test_cases(record.get("private_test_cases") or [])
    if not cases:
        raise ValueError(f"LiveCodeBench problem {record.get('question_id')!r} has no test cases")
    kinds = {case.get("testtype") for case in cases}
    if len(kinds) != 1 or not kinds <= {"stdin", "functional"}:
        raise ValueError(f"LiveCodeBench problem {record.get('question_id')!r}: test types {sorted(map(str, kinds))}, "
                         "expected all stdin or all functional")
    kind = kinds.pop()
    metadata = record.get("metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata) if metadata.strip() else {}
    function_name = metadata.get("func_name")
    if kind == "functional" and not function_name:
        raise ValueError(f"LiveCodeBench problem {record.get('question_id')!r} has functional tests but no metadata.func_name")
    starter = record.get("starter_code") or ""
    prompt = record["question_content"] + (f"\n\n{starter}" if starter else "")

    def tests_for(selected: list[dict[str, Any]]) -> str:
        cases_json = json.dumps([{"input": case["input"], "output": case["output"]} for case in selected])
        if kind == "stdin":
            return f"{_RUNNERS_SOURCE}\n\nrun_stdin_cases({cases_json!r}, rlif_solution_code)\n"
        return f"{_RUNNERS_SOURCE}\n\nrun_functional_cases({cases_json!r}, {function_name!r}, globals())\n"

    return CodeProblem(task_id=str(record.get("question_id", record.get("question_title", ""))), prompt=prompt,
                       tests=tests_for(cases), entry_point=function_name if kind == "functional" else None,
                       layout="livecodebench", kind=kind, test_list=tuple(tests_for([case]) for case in cases))


# --- files -------------------------------------------------------------------------------------------------

LAYOUTS = {
    "humaneval": ({"prompt", "test", "entry_point"}, humaneval_problem),
    "mbpp": ({"test_list"}, mbpp_problem),
    "livecodebench": ({"question_content", "public_test_cases"}, livecodebench_problem),
}
EXPECTED_LAYOUTS = ("HumanEval (prompt, test, entry_point), MBPP (text or prompt, test_list) or "
             "LiveCodeBench (question_content, public_test_cases)")


def read_records(path: Path) -> list[dict[str, Any]]:
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet

        return pyarrow.parquet.read_table(path).to_pylist()
    if name.endswith((".jsonl", ".jsonl.gz")):
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if name.endswith(".gz") else raw).decode("utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    raise ValueError(f"{path}: expected a .jsonl, .jsonl.gz or .parquet file")


def layout_of(fields: set[str]) -> str | None:
    """The code layout a record with these fields is in, or None."""
    for layout, (required, _) in LAYOUTS.items():
        if required <= fields and (layout != "mbpp" or fields & {"text", "prompt"}):
            return layout
    return None


def detect_layout(path: Path, fields: set[str]) -> str:
    layout = layout_of(fields)
    if layout is None:
        raise ValueError(f"{path}: cannot tell the layout from its fields {sorted(fields)}; expected {EXPECTED_LAYOUTS}")
    return layout


def load_problems(path: str | Path) -> list[CodeProblem]:
    """Every problem of a local file, its layout told from the first record's fields."""
    path = Path(path)
    records = read_records(path)
    if not records:
        raise ValueError(f"{path}: no problems in the file")
    layout = detect_layout(path, set(records[0]))
    make = LAYOUTS[layout][1]
    problems = []
    for number, record in enumerate(records):
        try:
            problems.append(make(record))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: record {number} ({layout} layout): {error!r}") from error
    return problems
