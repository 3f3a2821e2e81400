"""JSON Lines: the one reader and writer of every .jsonl file rlif reads or writes.

Input files (prompts, benchmarks, responses to score) are read strictly: a line that is not UTF-8, not
JSON or not an object is an error naming the file, the line and what was expected. Files rlif appends to
during a run (metrics, samples, evaluation responses) may end in a line torn by a kill; readers of those
skip it, and rewrites go through a temporary file and one rename.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from rlif.errors import DataError
from rlif.files import write_text_atomic


def read_objects(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of an input file; any malformed line raises DataError."""
    path = Path(path)
    records = []
    with path.open("rb") as file:
        offset = 0
        for number, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}:{number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at byte offset {offset + error.start} "
                    "of the file); save the file as UTF-8"
                ) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: invalid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            records.append((number, record))
    return records


def read_log(path: str | Path) -> list[dict]:
    """The records of a file rlif appended to (empty if it does not exist); a last line torn by a kill is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break  # torn by a kill during the last append
            raise DataError(f"{path}:{number}: not valid JSON; the file is damaged") from None
    return records


def dumps(record: dict) -> str:
    """One line of JSON; tensors become numbers and non-finite floats strings ("nan", "inf")."""
    return json.dumps({key: jsonable(value) for key, value in record.items()}, ensure_ascii=False)


def jsonable(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def append(path: str | Path, records: Iterable[dict], sync: bool = False) -> None:
    """Append records in one write (a kill leaves at most one torn last line); `sync` flushes them to disk."""
    text = "".join(dumps(record) + "\n" for record in records)
    with open(path, "a", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        if sync:
            os.fsync(file.fileno())


def write(path: str | Path, records: Iterable[dict]) -> None:
    """Replace the file's content with `records`, whole or not at all (temporary file, then one rename)."""
    write_text_atomic(path, "".join(dumps(record) + "\n" for record in records))


def truncate_steps(path: str | Path, last_step: int) -> None:
    """Keep only the records of a per-step log whose "step" is <= last_step (a torn line is dropped)."""
    path = Path(path)
    if path.exists():
        write(path, [record for record in _whole_lines(path) if record.get("step", 0) <= last_step])


def _whole_lines(path: Path) -> list[dict]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    return records
