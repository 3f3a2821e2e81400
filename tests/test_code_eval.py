"""`rlif eval` / `rlif select` on code benchmarks, end to end on a tiny model with a Python-code vocabulary:
records of sandboxed runs, pass@k, Best-of-N by outcome signature, styles, resuming, the bundled HumanEval."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest

from rlif.cli import main
from rlif.code import execute
from rlif.code.extract import cut_completion
from rlif.code.grading import CODE, CODE_COMPLETION
from rlif.code.passk import mean_pass_at_k
from rlif.code.problems import CodeProblem
from rlif.data.jsonl import read_log as read_jsonl
from rlif.eval.job import CODE_CHAT_PROMPT_TEMPLATE, resolve_settings
from rlif.testbed.tiny import save_tiny_model

CODE_ALPHABET = string.printable.replace("\r", "").replace("\x0b", "").replace("\x0c", "")
PROBLEMS = [
    {"task_id": "T/0", "prompt": 'def add(a, b):\n    """Return a + b."""\n', "entry_point": "add",
     "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n"},
    {"task_id": "T/1", "prompt": 'def twice(x):\n    """Return 2 * x."""\n', "entry_point": "twice",
     "test": "def check(candidate):\n    assert candidate(2) == 4\n"},
    {"task_id": "T/2", "prompt": 'def first(items):\n    """The first item, or None."""\n', "entry_point": "first",
     "test": "def check(candidate):\n    assert candidate([]) is None\n    assert candidate([3]) == 3\n"},
]
RECORD_FIELDS = {"problem", "sample", "prompt", "label", "response", "answer", "correct", "self_certainty", "entropy",
                 "mean_logprob", "num_tokens", "truncated", "program", "status", "detail", "tests_passed", "isolation",
                 "sandbox"}


@pytest.fixture(scope="module")
def code_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("code") / "model", CODE_ALPHABET, hidden_size=32, num_layers=2,
                           max_positions=2048)


@pytest.fixture
def code_file(tmp_path) -> Path:
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in PROBLEMS))
    return path


def run_eval(model, benchmark, out, *extra) -> int:
    args = ["eval", "--model", str(model), "--benchmark", str(benchmark), "--output", str(out), "--max-new-tokens", "12",
            "--no-progress", "--batch-size", "4"]
    return main(args + [str(a) for a in extra])


def test_code_eval_runs_every_answer_in_the_sandbox(tmp_path, code_model, code_file, capsys):
    out = tmp_path / "eval"
    assert run_eval(code_model, code_file, out, "--n", 2) == 0
    settings = json.loads((out / "settings.json").read_text())
    # the tiny tokenizer has a chat template: chat style, no system prompt
    assert (settings["answer_format"], settings["chat_template"], settings["system_prompt"]) == ("code", True, None)
    assert settings["label_field"] == "tests" and settings["prompt_template"] == CODE_CHAT_PROMPT_TEMPLATE
    records = read_jsonl(out / "responses.jsonl")
    assert len(records) == 9 and all(set(r) == RECORD_FIELDS for r in records)
    for r in records:  # each record is re-derivable: its program is the answer's, its status that program's run
        problem = CodeProblem.from_label(r["label"])
        assert r["program"] == CODE.programs([problem], [r["response"]])[0]
        rerun = execute(r["program"], problem.tests, 10.0, entry_point=problem.entry_point)
        assert rerun.status == r["status"] and r["correct"] == (r["status"] == "passed")
        assert r["answer"] == {"passed": "passed", "timeout": "timeout", "error": None}.get(r["status"], r["answer"])
        assert r["status"] != "failed" or r["answer"].startswith("failed:")
        assert "subprocess" in r["isolation"] and r["sandbox"] in ("bubblewrap", "unshare", "basic")
    summary = json.loads((out / "summary.json").read_text())
    sampled = [r for r in records if r["sample"] >= 0]
    counts = [(2, sum(r["correct"] for r in sampled if r["problem"] == p)) for p in range(3)]
    assert summary["pass_at_k"] == {"pass@1": pytest.approx(mean_pass_at_k(counts, 1))}  # n = 2: only k = 1
    assert summary["metrics"]["greedy/accuracy"] == pytest.approx(sum(r["correct"] for r in records if r["sample"] < 0) / 3)
    assert summary["best_of_n"]["num_samples"] == 2
    assert sum(summary["execution"]["statuses"].values()) == 9 and "subprocess" in summary["execution"]["isolation"]
    assert summary["calibration"]["sampled"]["responses"] == 6
    printed = capsys.readouterr().out
    assert "programs run:" in printed and "isolation of every run:" in printed and "unbiased pass@k" in printed
    # rlif select groups the saved answers (signatures) again, without running anything
    before = summary["best_of_n"]["accuracy"]
    assert main(["select", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["best_of_n"]["accuracy"] == before


def test_completion_style_and_resuming(tmp_path, code_model, code_file):
    out = tmp_path / "completion"
    assert run_eval(code_model, code_file, out, "--code-style", "completion", "--limit", 1) == 0
    assert run_eval(code_model, code_file, out, "--code-style", "completion", "--limit", 3) == 0  # resumes: 2 more
    settings = json.loads((out / "settings.json").read_text())
    assert (settings["answer_format"], settings["chat_template"], settings["prompt_template"]) == ("code_completion", False, "{prompt}")
    records = read_jsonl(out / "responses.jsonl")
    assert [r["problem"] for r in records] == [0, 1, 2]
    for r in records:
        assert r["program"] == PROBLEMS[r["problem"]]["prompt"] + cut_completion(r["response"])
    whole = tmp_path / "whole"
    assert run_eval(code_model, code_file, whole, "--answer-format", "code_completion") == 0
    assert [(r["response"], r["answer"]) for r in read_jsonl(whole / "responses.jsonl")] == [(r["response"], r["answer"]) for r in records]
    # another style is another evaluation
    assert run_eval(code_model, code_file, out, "--code-style", "chat") == 2
    assert run_eval(code_model, code_file, tmp_path / "x", "--code-style", "chat", "--answer-format", "code_completion") == 2
    assert CODE_COMPLETION.name == "code_completion"


def test_bundled_humaneval(tmp_path, code_model):
    settings = resolve_settings(str(code_model), "humaneval", str(tmp_path / "unused"))
    assert (settings.answer_format, settings.max_new_tokens, settings.system_prompt) == ("code", 512, None)
    out = tmp_path / "humaneval"
    assert run_eval(code_model, "humaneval", out, "--limit", 2) == 0
    records = read_jsonl(out / "responses.jsonl")
    assert [CodeProblem.from_label(r["label"]).task_id for r in records] == ["HumanEval/0", "HumanEval/1"]
    assert all(r["program"].startswith(r["prompt"].rstrip()) for r in records)  # chat style: the prompt, then the code
