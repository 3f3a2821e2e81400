"""Final-answer extraction and exact-match / numeric comparison.

Extraction order: the last \\boxed{...} (balanced braces), else the text after the last "####",
else the text after the last "answer is", else the last number in the text.
"""

from __future__ import annotations

import re

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


def is_correct(completion: str, reference: str | None) -> bool:
    return answers_match(extract_answer(completion), reference)
