"""Final answers: how a task's responses state them and when two are the same.

An `AnswerFormat` pairs `extract(response) -> answer or None` with `equivalent(answer, reference)`.
Configs name one (`data.answer_format: math`); a task adds its own with `register_answer_format`.

The "math" format extracts the last \\boxed{...} (balanced braces), else the text after the last
"####", else the text after the last "answer is", else the last number in the text; answers are equal
when they are the same number or the same normalized text.
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


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
                return line
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def parse_number(text: str) -> float | None:
    """A plain number like '1,234', '-3.5', '$12', '40%' or '7.'; None for anything else."""
    cleaned = text.strip().strip("$").rstrip("%").rstrip(".").replace(",", "").replace("\\!", "").strip()
    cleaned = re.sub(r"^\\\$|\\%$", "", cleaned).strip()
    try:
        return float(cleaned)
    except ValueError:
        return None


def normalize_text(text: str) -> str:
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    text = text.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("$", "")
    return re.sub(r"\s+", "", text).rstrip(".").lower()


def answers_match(predicted: str | None, reference: str | None) -> bool:
    """Numeric equality (relative 1e-6) when both parse as numbers, else normalized string equality."""
    if predicted is None or reference is None:
        return False
    a, b = parse_number(predicted), parse_number(reference)
    if a is not None and b is not None:
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    return normalize_text(predicted) == normalize_text(reference)


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
_LAZY_FORMATS = {"arithmetic": "rlif.testbed.task"}


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
