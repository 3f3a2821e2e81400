"""The README's main job, shortened, computes what it computed when the reference file was written.

The reference (tests/data/main_job_short_metrics.jsonl) is regenerated only by `python scripts/main_job_reference.py`,
when a change is meant to change what training computes. Floats may differ in their last bits between machines
(thread counts change the order of float sums), so they are compared to 1e-6 relative (1e-7 absolute for values
near 0); everything else exactly.
"""

import json
import math
from pathlib import Path

from conftest import load_repo_module

REPO = Path(__file__).resolve().parents[1]


def _script():
    return load_repo_module("scripts/main_job_reference.py")


def test_short_main_job_equals_the_reference(tmp_path):
    script = _script()
    produced = [json.loads(line) for line in script.run_short_job(tmp_path / "run").read_text().splitlines()]
    expected = [json.loads(line) for line in script.REFERENCE.read_text().splitlines()]
    assert [r["step"] for r in produced] == [r["step"] for r in expected]
    differences = []
    for got, want in zip(produced, expected):
        keys = {k for k in set(got) | set(want) if not k.startswith("time/")}
        for key in sorted(keys):
            a, b = got.get(key), want.get(key)
            same = math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) if isinstance(a, float) and isinstance(b, float) else a == b
            if not same:
                differences.append(f"step {want['step']} {key}: {a!r} (now) vs {b!r} (reference)")
    assert not differences, "\n".join(differences)
