"""The README's main job and the comparison driver, end to end on small budgets; report and checkpoint choice."""

from pathlib import Path

import pytest
import yaml

from rlif.cli import main
from rlif.data.jsonl import read_log as read_jsonl
from rlif.errors import ConfigError
from rlif.runs.checkpoint_choice import RULES, agreement_early_stop, agreement_within_kl, choose, labeled_best, pick_gap
from rlif.runs.compare import load_comparison

REPO = Path(__file__).resolve().parents[1]
MAIN_JOB = REPO / "configs" / "testbed" / "intuitor.yaml"


def test_main_job_end_to_end_with_few_steps(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the config's paths are relative to the repository root
    run = tmp_path / "main"
    overrides = ["train.steps=2", "train.prompts_per_step=4", "eval.limit=8", "eval.every=1", "run.save_every=1", f"run.output_dir={run}", "run.progress=false"]
    assert main(["train", str(MAIN_JOB), *overrides]) == 0
    metrics = read_jsonl(run / "metrics.jsonl")
    evaluated = [m for m in metrics if "eval/greedy/accuracy" in m]
    assert [m["step"] for m in evaluated] == [0, 1, 2]
    for key in ("eval/greedy/step_by_step", "eval/sampled/step_by_step", "eval/sampled/agreement", "eval/sampled/kl_ref",
                "eval/sampled/ref_logprob", "eval/greedy/len_mean", "eval/sampled/self_certainty"):
        assert all(key in m for m in evaluated), key
    assert evaluated[0]["eval/sampled/kl_ref"] == pytest.approx(0.0, abs=1e-5)  # the policy is the reference at step 0
    assert all("rollout/agreement" in m and "signals/ref_self_certainty" in m for m in metrics if m["step"] > 0)
    records = read_jsonl(run / "eval" / "step_000002.jsonl")
    assert len(records) == 8 * 5 and all(isinstance(r["features"]["step_by_step"], bool) for r in records)
    greedy = [r for r in records if r["sample"] < 0]
    assert evaluated[-1]["eval/greedy/step_by_step"] == pytest.approx(sum(r["features"]["step_by_step"] for r in greedy) / 8)
    report = (run / "report.md").read_text()
    assert "## Before and after" in report and "share of answers given step by step" in report
    assert "## Label-free checkpoint choice" in report and "## Held-out answers before and after" in report
    for plot in ("eval.png", "training.png"):
        assert (run / "plots" / plot).stat().st_size > 5000
    assert (run / "samples.jsonl").exists() and sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001", "step_000002"]


def tiny_comparison(tmp_path, model_dir, data_path, seeds=(0, 1)):
    base = {
        "model": {"path": str(model_dir)},
        "data": {"path": str(data_path), "system_prompt": None, "answer_format": "math"},
        "rollout": {"group_size": 3, "max_new_tokens": 6, "temperature": 1.0},
        "train": {"prompts_per_step": 2, "steps": 2, "lr": 1e-3},
        "eval": {"path": str(data_path), "limit": 4, "num_samples": 2, "every": 1, "max_new_tokens": 6},
        "run": {"save_every": 1},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {
        "base": str(tmp_path / "base.yaml"),
        "output_dir": str(tmp_path / "cmp"),
        "seeds": list(seeds),
        "common": {"train": {"kl_coef": 0.01}},
        "methods": {"INTUITOR": {"reward": {"name": "self_certainty"}}, "SC + acc.": {"reward": {"name": "weighted", "weights": {"self_certainty": 1.0, "correctness": 1.0}}}},
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_compare_runs_every_method_and_seed_then_skips_them(tmp_path, tiny_model_dir, addition_data, capsys):
    spec = tiny_comparison(tmp_path, tiny_model_dir, addition_data)
    assert main(["compare", str(spec), "--no-progress"]) == 0
    out = tmp_path / "cmp"
    for method in ("intuitor", "sc-acc"):
        for seed in (0, 1):
            run = out / method / f"seed_{seed}"
            config = yaml.safe_load((run / "config.yaml").read_text())
            assert config["train"]["seed"] == seed and config["train"]["kl_coef"] == 0.01
            assert len([m for m in read_jsonl(run / "metrics.jsonl") if "eval/greedy/accuracy" in m]) == 3
    assert yaml.safe_load((out / "sc-acc" / "seed_0" / "config.yaml").read_text())["reward"]["weights"] == {"self_certainty": 1.0, "correctness": 1.0}
    table = (out / "comparison.md").read_text()
    assert "| INTUITOR |" in table and "| SC + acc. |" in table and "| base model (step 0) |" in table and " ± " in table
    assert "## Label-free checkpoint choice" in table and (out / "curves.png").stat().st_size > 5000
    capsys.readouterr()
    assert main(["compare", str(spec), "--no-progress"]) == 0  # everything complete: nothing retrained
    assert capsys.readouterr().out.count("complete, skipped") == 4
    (out / "sc-acc" / "seed_1" / "report.md").unlink()  # as if still training: left out of the table
    assert main(["compare", str(spec), "--aggregate-only"]) == 0
    table = (out / "comparison.md").read_text()
    assert "| SC + acc. (1 of 2 seeds) |" in table and "| INTUITOR |" in table


def test_compare_validates_every_run_before_starting(tmp_path, tiny_model_dir, addition_data, capsys):
    spec = tiny_comparison(tmp_path, tiny_model_dir, addition_data)
    raw = yaml.safe_load(spec.read_text())
    raw["methods"]["broken"] = {"reward": {"name": "no_such_reward"}}
    spec.write_text(yaml.safe_dump(raw))
    assert main(["compare", str(spec)]) == 2
    assert "method 'broken'" in capsys.readouterr().err and not (tmp_path / "cmp").exists()
    raw["methods"].pop("broken")
    raw["sedes"] = [1]
    spec.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="unknown key"):
        load_comparison(spec)


def point(step, accuracy, agreement, kl=0.0, self_certainty=0.0):
    return {"step": step, "eval/greedy/accuracy": accuracy, "eval/sampled/agreement": agreement,
            "eval/sampled/kl_ref": kl, "eval/sampled/self_certainty": self_certainty}


def test_checkpoint_rules_on_hand_built_series():
    # Accuracy peaks at step 20, then the policy sharpens onto wrong answers: agreement and
    # self-certainty keep rising, and so does the KL to the initial model.
    points = [
        point(0, 0.50, 0.60, 0.00, 1.0),
        point(10, 0.60, 0.70, 0.02, 1.2),
        point(20, 0.70, 0.80, 0.04, 1.4),
        point(30, 0.55, 0.78, 0.08, 1.6),
        point(40, 0.40, 0.90, 0.20, 1.9),
    ]
    assert labeled_best(points) == 20
    picks = {name: rule(points) for name, rule in RULES.items()}
    assert picks == {"last": 40, "max_self_certainty": 40, "max_agreement": 40, "agreement_within_kl": 20, "agreement_early_stop": 20}
    assert agreement_within_kl(points, kl_budget=0.01) == 0 and agreement_within_kl(points, kl_budget=1.0) == 40
    assert pick_gap(points, 40) == pytest.approx(0.30) and pick_gap(points, 20) == 0.0
    assert agreement_early_stop(points[:3]) == 20  # never dropped: the last one
    # Ties go to the earliest step.
    assert RULES["max_agreement"]([point(0, 0.5, 0.8), point(10, 0.6, 0.8)]) == 0
    choices = choose(points)
    assert choices["agreement_within_kl"] == {"step": 20, "accuracy": 0.70, "gap": 0.0}
    # Without sampled answers, the rules that need them are left out rather than guessing.
    greedy_only = [{"step": 0, "eval/greedy/accuracy": 0.5}, {"step": 10, "eval/greedy/accuracy": 0.6}]
    assert set(choose(greedy_only)) == {"last"}


def test_plot_grids_use_few_rows_without_a_column_of_one():
    from rlif.runs.plots import grid_layout

    expected = {(7, 4): (2, 4), (8, 4): (2, 4), (9, 4): (3, 3), (5, 3): (2, 3), (6, 3): (2, 3), (2, 4): (1, 2), (1, 3): (1, 1)}
    assert {args: grid_layout(*args) for args in expected} == expected
