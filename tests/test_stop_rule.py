"""run.stop_rule: label-free early stopping inside `rlif train` (rlif.runs.checkpoint_choice.stop_decision)."""

import json
from pathlib import Path

import pytest

from rlif.config import load_config
from rlif.data.jsonl import read_log
from rlif.errors import ConfigError
from rlif.rl.train import train
from rlif.runs.checkpoint_choice import label_free, labeled_best, stop_decision

REPO = Path(__file__).resolve().parents[1]
MAIN_JOB = REPO / "configs" / "testbed" / "intuitor.yaml"


def point(step, agreement, kl=0.0, accuracy=None):
    record = {"step": step, "eval/sampled/agreement": agreement, "eval/sampled/kl_ref": kl}
    if accuracy is not None:
        record["eval/greedy/accuracy"] = accuracy
    return record


def test_agreement_early_stop_by_hand():
    points = [point(0, 0.6), point(10, 0.7)]
    assert stop_decision("agreement_early_stop", points) .stop is False
    decision = stop_decision("agreement_early_stop", points + [point(20, 0.65)])
    assert (decision.stop, decision.chosen_step) == (True, 10)
    assert "agreement fell from 0.700 (step 10) to 0.650" in decision.reason


def test_agreement_within_kl_by_hand():
    points = [point(0, 0.5), point(10, 0.6, kl=0.02)]
    decision = stop_decision("agreement_within_kl", points, kl_budget=0.05)
    assert (decision.stop, decision.chosen_step) == (False, 10)
    decision = stop_decision("agreement_within_kl", points + [point(20, 0.9, kl=0.08)], kl_budget=0.05)
    assert (decision.stop, decision.chosen_step) == (True, 10)  # step 20 agrees most but is outside the budget


def test_stop_rules_read_no_label():
    with_labels = [point(0, 0.6, accuracy=0.1), point(10, 0.5, accuracy=0.9)]
    assert label_free(with_labels[1]) == {"step": 10, "eval/sampled/agreement": 0.5, "eval/sampled/kl_ref": 0.0}
    for rule in ("agreement_early_stop", "agreement_within_kl"):
        swapped = [dict(p, **{"eval/greedy/accuracy": 1 - p["eval/greedy/accuracy"]}) for p in with_labels]
        assert stop_decision(rule, with_labels) == stop_decision(rule, swapped)


def test_a_stop_rule_needs_sampled_evaluation():
    with pytest.raises(ConfigError, match="run.stop_rule = 'agreement_early_stop': expected none, or held-out evaluation"):
        load_config(MAIN_JOB, ["run.stop_rule=agreement_early_stop", "eval.num_samples=0"])


def shortened(tmp_path, name, *overrides):
    return load_config(MAIN_JOB, [f"run.output_dir={tmp_path / name}", "run.progress=false", "train.steps=15",
                                  "eval.every=5", "eval.limit=100", "run.save_every=100", "run.keep_checkpoints=1", *overrides])


def test_intuitor_stops_within_one_evaluation_of_its_labeled_best_and_keeps_that_checkpoint(tmp_path, capsys):
    run = train(shortened(tmp_path, "intuitor"))
    chosen = json.loads((run / "chosen_checkpoint.json").read_text())
    evaluations = [m for m in read_log(run / "metrics.jsonl") if "eval/greedy/accuracy" in m]
    best = labeled_best(evaluations)
    assert chosen["stopped_at"] is not None and chosen["stopped_at"] < 15  # stopped before the budget
    assert chosen["stopped_at"] - best <= 5  # within one evaluation (eval.every = 5) of the labeled best
    assert chosen["step"] == best
    assert evaluations[-1]["step"] == chosen["stopped_at"]  # nothing trained after the stop
    kept = Path(chosen["checkpoint"])
    assert (kept / "config.json").is_file() or chosen["step"] == 0  # kept whatever keep_checkpoints (1) says
    report = (run / "report.md").read_text()
    assert "## What a user keeps (label-free stop rule)" in report and f"keeps **step {chosen['step']}**" in report
    # resuming a stopped run trains nothing more
    logged = read_log(run / "metrics.jsonl")
    capsys.readouterr()
    train(shortened(tmp_path, "intuitor", "run.resume=true"))
    assert "was stopped at step" in capsys.readouterr().out
    assert read_log(run / "metrics.jsonl") == logged


def test_grpo_is_not_stopped_more_than_one_evaluation_early(tmp_path):
    run = train(shortened(tmp_path, "grpo", "reward.name=correctness"))
    chosen = json.loads((run / "chosen_checkpoint.json").read_text())
    assert chosen["stopped_at"] is None or chosen["stopped_at"] >= 15 - 5
    if chosen["stopped_at"] is None:
        assert chosen["step"] == 15 and (run / "checkpoints" / "step_000015").is_dir()


def test_the_chosen_checkpoint_survives_keep_checkpoints(tmp_path, tiny_model_dir, tokenizer):
    from rlif.models.load import load_model
    from rlif.rl.checkpoint import list_checkpoints, save_checkpoint

    model = load_model(str(tiny_model_dir))
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, tokenizer, {"step": step}, keep=1, protect=frozenset({1}))
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1, 3]
