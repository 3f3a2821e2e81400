"""Final answers: how a task's responses state them and when two are the same.

An `AnswerFormat` pairs `extract(response) -> answer or None` with `equivalent(answer, reference)`.
Configs name one (`data.answer_format: math`); a task adds its own with `register_answer_format`. The code
formats (`code`, `code_completion`: programs run against the tests) are in `rlif.code.grading`.

The "math" format (GSM8K, MATH, MATH-500, arithmetic tasks):
- extract: the last \\boxed{...} (balanced braces), else the text after the last "####", else the text
  after the last "answer is", else the last number in the text. "18 dollars" after a marker is read as 18.
- equivalent: two plain numbers ("1,234", "$18", "7.") compare exactly as the decimals written (1000001 is not
  1000000, 13535.01 is not 13535; 0.5 is 0.50, as math-verify decides); otherwise
  equal normalized text is equal; otherwise Hugging Face `math-verify` decides (LaTeX parsed to SymPy:
  \\frac{1}{2} = 0.5, \\left( 3, \\frac{\\pi}{2} \\right) = (3, \\pi/2), 18\\% = 18, units in \\text{}
  dropped). When math-verify cannot parse one of the two, the answers are not equal.
  math-verify bounds each parse and comparison with a 5 s SIGALRM timeout, which only works in the
  main thread; in any other thread rlif calls it without a timeout (math-verify would raise otherwise).
  A timeout counts as "not equal", so only pathological expressions can make a result machine-dependent.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
import threading
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable, Sequence

from math_verify import LatexExtractionConfig, parse, verify

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
# A number followed only by unit words ("18 dollars", "$5 per hour."): the number is the answer.
_NUMBER_WITH_UNITS = re.compile(r"^\\?\$?\s*(-?\d[\d,]*(?:\.\d+)?)\s*(?:[A-Za-z]{2,}[A-Za-z ]*)\.?$")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
MATH_VERIFY_TIMEOUT_S = 5


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...}, with nested braces kept; None if absent or unclosed."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def extract_answer(text: str) -> str | None:
    """The final answer a response states, or None when it states none."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    for marker in ("####", "answer is"):
        position = text.rfind(marker)
        if position >= 0:
            tail = text[position + len(marker) :].strip().strip(":").strip()
            line = tail.splitlines()[0].strip().rstrip(".") if tail else ""
            if line:
                with_units = _NUMBER_WITH_UNITS.match(line)
                return with_units.group(1) if with_units else line
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def parse_decimal(text: str) -> Decimal | None:
    """A plain number like '1,234', '-3.5', '$12', '40%' or '7.' as the exact decimal written; None for anything else."""
    cleaned = text.strip().strip("$").rstrip("%").rstrip(".").replace("\\!", "").strip()
    cleaned = re.sub(r"^\\\$|\\%$", "", cleaned).strip()
    if "," in cleaned:
        # Only thousands separators: "1,2" is a list of two answers, not twelve.
        if not _THOUSANDS.fullmatch(cleaned):
            return None
        cleaned = cleaned.replace(",", "")
    return Decimal(cleaned) if _PLAIN_NUMBER.fullmatch(cleaned) else None


def parse_number(text: str) -> float | None:
    """`parse_decimal` as a float."""
    value = parse_decimal(text)
    return None if value is None else float(value)


def normalize_text(text: str) -> str:
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    text = text.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("$", "")
    return re.sub(r"\s+", "", text).rstrip(".").lower()


def simple_match(predicted: str | None, reference: str | None) -> bool | None:
    """The cheap checks: True/False when both are plain numbers, True for equal normalized text, else None (undecided).

    Plain numbers are equal when the decimals written are (no tolerance: a relative 1e-6 made 1000001 equal 1000000)."""
    if predicted is None or reference is None:
        return False
    a, b = parse_decimal(predicted), parse_decimal(reference)
    if a is not None and b is not None:
        return a == b
    if normalize_text(predicted) == normalize_text(reference):
        return True
    return None


def _timeout() -> int | None:
    # math-verify's timeout is signal.alarm: main thread only (elsewhere it raises instead of parsing).
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=65536)
def _math_verify_parse(answer: str, timeout: int | None) -> tuple:
    """math-verify's parse of an extracted answer (read as the content of a \\boxed{}); () when it cannot."""

    return tuple(parse(f"\\boxed{{{answer}}}", extraction_config=[LatexExtractionConfig()], parsing_timeout=timeout))


def math_verify_equal(predicted: str, reference: str) -> bool:
    """math-verify's verdict on two extracted answers; False when either does not parse."""

    timeout = _timeout()
    gold, target = _math_verify_parse(reference, timeout), _math_verify_parse(predicted, timeout)
    if not gold or not target:
        return False
    return bool(verify(list(gold), list(target), timeout_seconds=timeout))


def answers_match(predicted: str | None, reference: str | None) -> bool:
    """Numeric equality for plain numbers, equal normalized text, else math-verify's symbolic check."""
    decided = simple_match(predicted, reference)
    if decided is not None:
        return decided
    return math_verify_equal(predicted, reference)


# math-verify logs every timeout and unparsable string at WARNING; a long evaluation would drown in them.
logging.getLogger("math_verify").setLevel(logging.ERROR)
logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)


@dataclass(frozen=True)
class AnswerFormat:
    name: str
    extract: Callable[[str], str | None]  # the final answer a response states, or None
    equivalent: Callable[[str | None, str | None], bool]  # is a predicted answer the reference answer?
    # Optional task-specific features of a response (e.g. {"step_by_step": True}); evaluation summaries
    # average their boolean and numeric values.
    describe: Callable[[str], dict] | None = None

    def is_correct(self, response: str, reference: str | None) -> bool:
        return self.equivalent(self.extract(response), reference)

    def grade(self, responses: Sequence[str], references: Sequence[str | None],
              answers: Sequence[str | None] | None = None) -> list[dict]:
        """Per response, what checking it gives: its `answer` (what votes) and `correct`, for evaluation records
        and `Rollout.correct`. `answers`: the responses' extracted answers when already known. A format whose
        check is costly overrides this to check all responses at once (code: `rlif.code.grading`)."""
        if answers is None:
            answers = [self.extract(response) for response in responses]
        return [{"answer": answer, "correct": self.equivalent(answer, reference)} for answer, reference in zip(answers, references)]


def answer_clusters(answers: list[str | None], equivalent: Callable[[str | None, str | None], bool]) -> list[int | None]:
    """Cluster id of each answer (equivalent answers share one; the first member is the representative); None for no answer."""
    representatives: list[str] = []
    ids: list[int | None] = []
    for answer in answers:
        if answer is None:
            ids.append(None)
            continue
        match = next((k for k, rep in enumerate(representatives) if equivalent(answer, rep)), None)
        if match is None:
            representatives.append(answer)
            match = len(representatives) - 1
        ids.append(match)
    return ids


def plurality(answers: list[str | None], equivalent: Callable[[str | None, str | None], bool]) -> list[bool]:
    """Whether each answer is a plurality answer of the list: its cluster is at least as large as any other.

    Ties: every answer of every tied-largest cluster counts (so a list of all-different answers is all True).
    A missing answer (None) never votes and is never a plurality answer.
    """
    ids = answer_clusters(answers, equivalent)
    sizes = Counter(i for i in ids if i is not None)
    largest = max(sizes.values(), default=0)
    return [i is not None and sizes[i] == largest for i in ids]


def agreement(answers: list[str | None], equivalent: Callable[[str | None, str | None], bool]) -> float:
    """Share of the list holding its most common answer (missing answers count in the total, never agree)."""
    sizes = Counter(i for i in answer_clusters(answers, equivalent) if i is not None)
    return max(sizes.values(), default=0) / max(1, len(answers))


ANSWER_FORMATS: dict[str, AnswerFormat] = {}


def register_answer_format(answer_format: AnswerFormat) -> AnswerFormat:
    ANSWER_FORMATS[answer_format.name] = answer_format
    return answer_format


MATH = register_answer_format(AnswerFormat("math", extract_answer, answers_match))

# Formats defined in modules that are imported only when a config names them (importing registers them).
_LAZY_FORMATS = {"arithmetic": "rlif.testbed.task", "code": "rlif.code.grading", "code_completion": "rlif.code.grading"}


def get_answer_format(name: str) -> AnswerFormat:
    """A registered format by name, or `package.module:attribute` naming an AnswerFormat."""
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        answer_format = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(answer_format, AnswerFormat):
            raise TypeError(f"{name} is not an rlif.answers.AnswerFormat")
        return answer_format
    if name not in ANSWER_FORMATS and name in _LAZY_FORMATS:
        importlib.import_module(_LAZY_FORMATS[name])
    if name not in ANSWER_FORMATS:
        raise KeyError(f"unknown answer format; registered: {', '.join(sorted(set(ANSWER_FORMATS) | set(_LAZY_FORMATS)))} (or package.module:attribute)")
    return ANSWER_FORMATS[name]
