"""Evaluation records: one dict per response, the one format `rlif eval`, training's evaluations and `rlif select` share.

A record holds: problem (index in the benchmark), sample (-1 = greedy, else 0..N-1), prompt, label, response,
answer (extracted), correct, self_certainty, entropy, mean_logprob, num_tokens, truncated; optionally
ref_logprob (under the initial model, during training) and features (task features, e.g. step_by_step).
Files of records are appended chunk by chunk and flushed, so a kill loses at most the chunk being written.
"""

from __future__ import annotations

from pathlib import Path

from rlif.data import jsonl
from rlif.errors import EvalError

# The fields `rlif select` needs in a responses file (Best-of-N and calibration read nothing else).
SELECTION_FIELDS = ("problem", "sample", "answer", "correct", "self_certainty", "mean_logprob")


def append_records(path: Path, records: list[dict]) -> None:
    """Append a chunk's records in one write, flushed to disk (a kill leaves at most one torn last line)."""
    jsonl.append(path, records, sync=True)


def load_finished(path: Path, num_samples: int) -> list[dict]:
    """The finished records: each problem's greedy response, and its sampled ones when all N are present.

    The file is rewritten without the rest: a torn last line (a kill in the middle of a write) and the
    samples of a partly written problem are dropped; any other malformed line is an error naming it.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = jsonl.read_log(path)  # a damaged line other than the last raises, naming it
    samples: dict[int, set[int]] = {}
    for record in records:
        samples.setdefault(record["problem"], set()).add(record["sample"])
    complete = {problem for problem, found in samples.items() if found.issuperset(range(num_samples))}
    kept = [record for record in records if record["sample"] < 0 or record["problem"] in complete]
    if len(kept) != sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()):
        jsonl.write(path, kept)
    return kept


def check_fields(records: list[tuple[str, dict]], fields: tuple[str, ...] = SELECTION_FIELDS) -> None:
    """Raise naming the first record (file:line) that lacks a needed field, and which fields it lacks."""
    for where, record in records:
        missing = [name for name in fields if name not in record]
        if missing:
            raise EvalError(f"{where}: missing field(s) {', '.join(missing)} (expected rlif evaluation records with {', '.join(fields)})")
