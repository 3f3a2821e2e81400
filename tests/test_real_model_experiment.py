"""scripts/real_model_experiment.py (the GPU experiment) end to end at its tiny size on CPU, on the tiny test model."""

import json
from pathlib import Path

from conftest import load_repo_module

REPO = Path(__file__).resolve().parents[1]


def test_the_experiment_runs_every_method_and_writes_its_table(tmp_path, tiny_model_dir):
    experiment = load_repo_module("scripts/real_model_experiment.py")
    rows = experiment.main(["--tiny", "--model", str(tiny_model_dir), "--output", str(tmp_path), "--no-progress"])
    assert list(rows) == ["INTUITOR", "GRPO", "offline SC"]
    saved = json.loads((tmp_path / "table.json").read_text())
    table = (tmp_path / "table.md").read_text()
    for method, row in rows.items():
        assert saved["rows"][method] == json.loads(json.dumps(row))
        assert row["steps"] == 2 and 0 <= row["greedy_before"] <= 1 and 0 <= row["truncated_after"] <= 1
        assert row["agreement_early_stop_step"] in (0, 1, 2) and row["agreement_within_kl_step"] in (0, 1, 2)
        assert f"| {method} |" in table
        run = tmp_path / method.lower().replace(" ", "-")
        config = (run / "config.yaml").read_text()
        assert f"name: {experiment.METHODS[method]}" in config and "stop_rule: none" in config
    # the evaluation subset holds GSM8K's reference numbers, not the worked solutions
    subset = [json.loads(line) for line in (tmp_path / "gsm8k_test_subset.jsonl").read_text().splitlines()]
    assert len(subset) == 2 and subset[0]["answer"] == "18"
