"""Convert GSM8K train (question / worked solution ending in '#### N') to rlif's prompt/answer form.

    python scripts/convert_gsm8k.py ../shared/data/gsm8k/train.jsonl data/gsm8k/train.jsonl

prompt = the question; answer = N, the number after '####' (`rlif.data.benchmarks.gsm8k_reference`, the reference
`rlif eval --benchmark gsm8k` checks against); solution = the worked solution, kept for reading.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlif.data.benchmarks import gsm8k_reference
from rlif.data.jsonl import read_objects, write
from rlif.files import sha256


def convert(source: Path, target: Path) -> dict:
    rows = [{"prompt": r["question"], "answer": gsm8k_reference(r["answer"]), "solution": r["answer"]} for _, r in read_objects(source)]
    write(target, rows)
    return {"source": str(source), "source_sha256": sha256(source), "rows": len(rows), "target_sha256": sha256(target)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    print(json.dumps(convert(args.source, args.target), indent=1))
