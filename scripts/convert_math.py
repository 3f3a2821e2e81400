"""Convert Hendrycks MATH (problem/solution JSONL) to rlif's prompt/answer form.

    python scripts/convert_math.py /work/shared/data/math/train.jsonl data/math/train.jsonl

prompt = the problem; answer = the content of the last \\boxed{...} of the solution (nested braces kept);
level, type and unique_id are kept for analysis. Two training solutions box their answer without braces
(`\\boxed 2`, `\\boxed 9`: train/algebra/24014.json and 25040.json); LaTeX reads a brace-less macro argument
as the next single token, and so does this script. Two solutions box nothing (`\\boxed{}`:
train/number_theory/7115.json and 7117.json): those problems have no reference answer and are left out rather
than given one by hand. A solution with no boxed answer at all is an error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

from rlif.data.answers import last_boxed

_BRACELESS_BOXED = re.compile(r"\\boxed\s+(\\[A-Za-z]+|[^\s{])")  # \boxed 2: the argument is one token


def boxed_answer(solution: str) -> str | None:
    answer = last_boxed(solution)
    if answer is not None:
        return answer
    braceless = _BRACELESS_BOXED.findall(solution)
    return braceless[-1] if braceless else None


def convert(source: Path, target: Path) -> dict:
    rows, braceless, empty = [], [], []
    with source.open(encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            record = json.loads(line)
            answer = last_boxed(record["solution"])
            if answer is None:
                answer = boxed_answer(record["solution"])
                if answer is None:
                    raise SystemExit(f"{source}:{line_number}: no boxed answer in the solution of {record['unique_id']}")
                braceless.append(record["unique_id"])
            if not answer:
                empty.append(record["unique_id"])
                continue
            rows.append({"prompt": record["problem"], "answer": answer, "level": record["level"], "type": record["type"],
                         "unique_id": record["unique_id"]})
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return {
        "records": len(rows),
        "braceless_boxed": braceless,
        "left_out_empty_boxed": empty,
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "output_sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="MATH JSONL with problem, solution, level, type, unique_id")
    parser.add_argument("target", type=Path, help="output JSONL with prompt, answer, level, type, unique_id")
    args = parser.parse_args(argv)
    print(json.dumps(convert(args.source, args.target), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
