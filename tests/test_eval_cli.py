"""`rlif eval` / `rlif select` end to end on a tiny model and a tiny benchmark file: records, resume, run settings."""

import contextlib
import json

import pytest
import yaml

from rlif.cli import main
from rlif.data.answers import MATH
from rlif.data.jsonl import read_log as read_jsonl

FIELDS = {"problem", "sample", "prompt", "label", "response", "answer", "correct", "self_certainty", "entropy", "mean_logprob", "num_tokens", "truncated"}


def run_eval(model, data, out, *extra):
    args = ["eval", "--model", str(model), "--benchmark", str(data), "--output", str(out), "--max-new-tokens", "6", "--no-progress"]
    return main(args + [str(a) for a in extra])


def test_eval_writes_checked_records_summary_and_plot(tmp_path, tiny_model_dir, addition_data, capsys):
    out = tmp_path / "eval"
    assert run_eval(tiny_model_dir, addition_data, out, "--limit", 5, "--n", 3, "--batch-size", 4) == 0
    records = read_jsonl(out / "responses.jsonl")
    assert len(records) == 5 * 4 and all(set(r) == FIELDS for r in records)
    assert sorted((r["problem"], r["sample"]) for r in records) == [(p, s) for p in range(5) for s in (-1, 0, 1, 2)]
    for r in records:  # correctness is re-derivable from the stored response and label
        assert r["correct"] == MATH.is_correct(r["response"], r["label"])
        assert r["answer"] == MATH.extract(r["response"])
    summary = json.loads((out / "summary.json").read_text())
    greedy = [r for r in records if r["sample"] == -1]
    assert summary["metrics"]["greedy/accuracy"] == pytest.approx(sum(r["correct"] for r in greedy) / 5)
    assert summary["best_of_n"]["num_samples"] == 3 and summary["best_of_n"]["borda_p"] == 0.3
    assert set(summary["best_of_n"]["accuracy"]) == {"greedy", "sample_mean", "majority", "self_certainty", "borda", "mean_logprob", "random", "pass@3"}
    assert summary["calibration"]["sampled"]["responses"] == 15
    assert len(read_jsonl(out / "selection.jsonl")) == 5
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "majority vote of 3" in printed and "pass@3 (oracle)" in printed

    # rlif select recomputes the table from the saved responses, with another Borda power.
    assert main(["select", str(out), "--borda-p", "0"]) == 0
    summary_p0 = json.loads((out / "summary.json").read_text())
    assert summary_p0["best_of_n"]["borda_p"] == 0.0
    assert summary_p0["best_of_n"]["accuracy"]["borda"] == summary_p0["best_of_n"]["accuracy"]["majority"]
    # ... and from a bare responses file.
    assert main(["select", str(out / "responses.jsonl")]) == 0


def test_eval_resumes_where_it_stopped(tmp_path, tiny_model_dir, addition_data):
    reference = tmp_path / "uninterrupted"
    assert run_eval(tiny_model_dir, addition_data, reference, "--limit", 5, "--n", 2, "--batch-size", 4) == 0
    expected = read_jsonl(reference / "responses.jsonl")

    # A smaller limit first, then the full one: the second run answers only the new problems (with the static
    # decode loop, which changes speed, not answers).
    grown = tmp_path / "grown"
    assert run_eval(tiny_model_dir, addition_data, grown, "--limit", 2, "--n", 2, "--batch-size", 4) == 0
    assert {r["problem"] for r in read_jsonl(grown / "responses.jsonl")} == {0, 1}
    assert run_eval(tiny_model_dir, addition_data, grown, "--limit", 5, "--n", 2, "--batch-size", 4, "--decode", "static") == 0
    assert_same_records(read_jsonl(grown / "responses.jsonl"), expected)

    # A kill in the middle of an append: a torn last line and a half-written problem are redone.
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "settings.json").write_text((reference / "settings.json").read_text())
    lines = (reference / "responses.jsonl").read_text().splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line)["problem"] != 3]  # problem 3's records partly missing
    kept = kept[:-1] + [line for line in lines if json.loads(line)["problem"] == 3][:2] + [lines[-1][:25]]
    (killed / "responses.jsonl").write_text("".join(kept))
    assert run_eval(tiny_model_dir, addition_data, killed, "--limit", 5, "--n", 2, "--batch-size", 4) == 0
    assert_same_records(read_jsonl(killed / "responses.jsonl"), expected)


def assert_same_records(actual, expected):
    key = lambda r: (r["problem"], r["sample"])  # noqa: E731
    actual, expected = sorted(actual, key=key), sorted(expected, key=key)
    assert [key(r) for r in actual] == [key(r) for r in expected]
    for a, b in zip(actual, expected):
        assert (a["response"], a["answer"], a["correct"]) == (b["response"], b["answer"], b["correct"])
        assert a["self_certainty"] == pytest.approx(b["self_certainty"], rel=1e-5, abs=1e-6)


def test_eval_refuses_other_settings_and_bad_input_before_loading(tmp_path, tiny_model_dir, addition_data, capsys):
    out = tmp_path / "eval"
    assert run_eval(tiny_model_dir, addition_data, out, "--limit", 2, "--n", 2) == 0
    capsys.readouterr()
    assert run_eval(tiny_model_dir, addition_data, out, "--limit", 2, "--n", 2, "--seed", 1) == 2
    assert "seed (saved 0, now 1)" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="}\n')
    assert run_eval("no/such/model", bad, tmp_path / "bad_eval") == 2
    assert f"{bad}:2: missing label field 'answer'" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_model_dir), "--benchmark", "gsm9k", "--output", str(tmp_path / "x")]) == 2
    assert "unknown benchmark 'gsm9k'" in capsys.readouterr().err


def test_eval_of_a_training_run_uses_its_prompt_settings(tmp_path, tiny_model_dir, addition_data):
    from rlif.config import load_config
    from rlif.data.prompts import prepare_prompts
    from rlif.eval.generate import generate_records
    from rlif.models.load import eos_token_ids, load_model, load_tokenizer
    from rlif.rl.train import train

    raw = {
        "model": {"path": str(tiny_model_dir)},
        "data": {"path": str(addition_data), "system_prompt": None, "prompt_template": " {prompt} "},
        "rollout": {"group_size": 2, "max_new_tokens": 5, "temperature": 1.0},
        "train": {"prompts_per_step": 2, "steps": 2, "lr": 1e-3},
        "run": {"output_dir": str(tmp_path / "run"), "save_every": 1, "progress": False},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(tmp_path / "run.yaml")
    run_dir = train(config)
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(run_dir), "--benchmark", str(addition_data), "--output", str(out), "--limit", "3", "--no-progress"]) == 0
    settings = json.loads((out / "settings.json").read_text())
    checkpoint = run_dir / "checkpoints" / "step_000002"
    assert settings["model"] == str(checkpoint.resolve())
    assert (settings["system_prompt"], settings["prompt_template"], settings["max_new_tokens"]) == (None, " {prompt} ", 5)

    # The responses are the ones the latest checkpoint gives to prompts rendered by training's own code.
    tokenizer, model = load_tokenizer(str(checkpoint)), load_model(str(checkpoint))
    prompts = prepare_prompts(config.data, tokenizer, str(addition_data), limit=3)
    direct = generate_records(
        model, tokenizer, prompts.records, prompts.rendered, MATH, max_new_tokens=5, eos_ids=eos_token_ids(tokenizer, model), greedy=True
    )
    assert [r["response"] for r in read_jsonl(out / "responses.jsonl")] == [r["response"] for r in direct]


def test_evaluate_an_empty_share_of_the_problems_with_a_reference(tiny_model_dir, tokenizer):
    """A process whose share of the eval problems is empty (fewer problems than processes) still enters the
    reference's scope (under FSDP2 the others gather its parameters there) and returns no records."""
    from rlif.data.answers import get_answer_format
    from rlif.eval.generate import generate_records
    from rlif.models.load import load_model
    from rlif.signals.model import SignalModel

    model = load_model(str(tiny_model_dir)).eval()
    entered = []

    @contextlib.contextmanager
    def reference():
        entered.append(True)
        yield SignalModel(model)

    for greedy in (True, False):
        records = generate_records(model, tokenizer, [], [], get_answer_format("arithmetic"), max_new_tokens=4,
                                   eos_ids=[tokenizer.eos_token_id], greedy=greedy, num_samples=2, reference=reference)
        assert records == []
    assert entered == [True, True]  # the greedy and the sampled pass
