"""Evaluation benchmarks: which file, which fields, how the reference answer is read, which answer format.

Built in (bundled with the package, licenses kept): `gsm8k` (GSM8K test, 1,319 problems; the reference is
the text after `####`), `math500` (MATH-500, 500 problems; the reference is the `answer` field, the
last \\boxed{} of the solution) and `humaneval` (HumanEval, 164 problems; the label is the tests, answers are
programs run in a sandbox: `rlif.code.grading`). Any JSONL/Parquet file with a prompt and a label field is a
benchmark too (`rlif eval --benchmark my_task.jsonl --prompt-field prompt --label-field answer --answer-format
math`); a file in a code layout (HumanEval, MBPP, LiveCodeBench) is a code benchmark, told from its fields
(or `--answer-format code`). A task package adds a named one with `register_benchmark`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from rlif.data.prompts import CODE_LABEL_FIELD, LABEL_FORMATS, PromptRecord, gsm8k_reference, is_code_file, is_code_format, load_task_prompts
from rlif.errors import DataError

DATA_DIR = Path(__file__).parent / "benchmark_data"


@dataclass(frozen=True)
class Benchmark:
    name: str
    path: Path  # a .jsonl or .parquet file
    prompt_field: str  # the field holding the problem text
    label_field: str  # the field the reference answer is read from
    answer_format: str = "math"  # an rlif.answers format name (or package.module:attribute)
    reference: Callable[[str], str] | None = None  # label field -> reference answer (None: as is)
    description: str = ""

    def load(self, limit: int = 0) -> list[PromptRecord]:
        """The first `limit` problems (0: all), validated, with their reference answers."""
        problems = load_task_prompts(self.path, self.prompt_field, self.label_field, self.answer_format,
                                     reference=self.reference, label_hint="name the answer field with --label-field")
        return problems[:limit] if limit else problems


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


register_benchmark(
    Benchmark("gsm8k", DATA_DIR / "gsm8k" / "test.jsonl", "question", "answer", "math", gsm8k_reference, "GSM8K test (1,319 grade-school word problems)")
)
register_benchmark(
    Benchmark("humaneval", DATA_DIR / "humaneval" / "test.jsonl", "prompt", CODE_LABEL_FIELD, "code", None,
              "HumanEval (164 Python functions; each answer runs against the unit tests in a sandbox)")
)
register_benchmark(
    Benchmark("math500", DATA_DIR / "math500" / "test.jsonl", "problem", "answer", "math", None, "MATH-500 (500 competition problems, LaTeX answers)")
)


def get_benchmark(name_or_path: str, *, prompt_field: str | None = None, label_field: str | None = None, answer_format: str | None = None,
                  label_format: str | None = None) -> Benchmark:
    """A registered benchmark by name, or a .jsonl/.parquet file (fields default to prompt/answer, format to math).

    Field and format arguments override a registered benchmark's only when given; `label_format` (a
    `LABEL_FORMATS` name, as data.label_format) sets how the reference is read from the label field.
    """
    if name_or_path in BENCHMARKS:
        benchmark = BENCHMARKS[name_or_path]
    elif Path(name_or_path).suffix in (".jsonl", ".parquet"):
        if Path(name_or_path).is_dir():
            raise DataError(f"benchmark file {name_or_path} is a directory; expected a .jsonl or .parquet file")
        if not Path(name_or_path).is_file():
            raise DataError(f"benchmark file {name_or_path} does not exist")
        path = Path(name_or_path)
        code = is_code_format(answer_format) if answer_format is not None else is_code_file(path)
        benchmark = Benchmark(path.stem, path, "prompt", CODE_LABEL_FIELD if code else "answer", "code" if code else "math")
    else:
        raise DataError(
            f"unknown benchmark {name_or_path!r}: expected one of {', '.join(sorted(BENCHMARKS))} or a .jsonl/.parquet file"
        )
    if label_format is not None and label_format not in LABEL_FORMATS:
        raise DataError(f"label format {label_format!r}: expected one of {', '.join(LABEL_FORMATS)}")
    overrides = {"prompt_field": prompt_field, "label_field": label_field, "answer_format": answer_format}
    benchmark = replace(benchmark, **{key: value for key, value in overrides.items() if value is not None})
    return benchmark if label_format is None else replace(benchmark, reference=LABEL_FORMATS[label_format])
