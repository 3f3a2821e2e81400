"""Prompt datasets (JSONL or Parquet) and prompt rendering.

Every record is checked when the file is loaded, before any model is touched: a malformed line
fails with the file, the line number and what was expected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A data file is missing or a record in it is malformed."""


@dataclass(frozen=True)
class PromptRecord:
    prompt: str  # the raw prompt text from the file
    label: str | None  # the reference answer, or None when the dataset has no labels
    source: str  # "file:line" (or "file:row N" for Parquet), for error messages and samples


def read_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(location, record) pairs of a .jsonl or .parquet file; malformed JSON raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as error:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{path}: not a readable Parquet file ({error})") from None
        return [(f"{path}:row {i}", row) for i, row in enumerate(rows)]
    records = []
    with path.open(encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number}: invalid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
            records.append((f"{path}:{line_number}", record))
    return records


def load_prompts(path: str | Path, prompt_field: str = "prompt", label_field: str | None = None) -> list[PromptRecord]:
    """Validated prompts (and labels when `label_field` is given) of a JSONL or Parquet file."""
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no records")
    prompts = []
    for where, record in records:
        prompt = record.get(prompt_field)
        if prompt_field not in record:
            raise DataError(f"{where}: missing field {prompt_field!r} (fields: {', '.join(sorted(record)) or 'none'})")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: field {prompt_field!r} must be a non-empty string, got {prompt!r:.80}")
        label = None
        if label_field is not None:
            if label_field not in record:
                raise DataError(f"{where}: missing label field {label_field!r} (set data.label_field=null for unlabeled data)")
            value = record[label_field]
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise DataError(f"{where}: label field {label_field!r} must be a string or a number, got {value!r:.80}")
            label = str(value)
        prompts.append(PromptRecord(prompt=prompt, label=label, source=where))
    return prompts


def render_prompt(
    tokenizer,
    prompt: str,
    *,
    prompt_template: str = "{prompt}",
    system_prompt: str | None = None,
    chat_template: bool = True,
) -> str:
    """The exact text the model is conditioned on (tokenize it with add_special_tokens=False)."""
    user_message = prompt_template.replace("{prompt}", prompt)
    if not chat_template:
        return user_message
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
            "set data.chat_template=false (or pass --no-chat-template) to use the plain prompt text"
        )
    messages = [{"role": "user", "content": user_message}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
