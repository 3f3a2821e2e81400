"""The command line given wrong paths, the wrong kind of folder, or asked for help: one clear line, never a traceback."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from rlif.cli import build_parser, main
from rlif.data.jsonl import write as write_jsonl


def tiny_run(tmp_path, model_dir, data_path):
    """A finished two-step training run (no evaluation) of the tiny model."""
    from rlif.config import load_config
    from rlif.rl.train import train

    raw = {"model": {"path": str(model_dir)}, "data": {"path": str(data_path), "system_prompt": None},
           "rollout": {"group_size": 2, "max_new_tokens": 4, "temperature": 1.0},
           "train": {"prompts_per_step": 2, "steps": 2, "lr": 1e-3},
           "run": {"output_dir": str(tmp_path / "run"), "save_every": 1, "progress": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    return train(load_config(tmp_path / "run.yaml"))


@pytest.mark.parametrize("command", ["plot", "report"])
def test_plot_and_report_of_a_missing_folder(tmp_path, command, capsys):
    assert main([command, str(tmp_path / "nonexistent")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nonexistent'}: no such folder; expected a training run folder" in err and "Traceback" not in err


def test_report_of_an_eval_folder_says_what_it_is(tmp_path, capsys):
    folder = tmp_path / "evals" / "x"
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text("{}")
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "not a training run folder, no config.yaml or metrics.jsonl" in err and "`rlif eval` folder" in err
    assert not (folder / "report.md").exists()


def test_score_accepts_a_run_folder_and_refuses_a_folder_that_is_no_model(tmp_path, tiny_model_dir, addition_data, capsys):
    run = tiny_run(tmp_path, tiny_model_dir, addition_data)
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"prompt": "1+2=", "response": "3"}])
    assert main(["score", "--model", str(run), "--input", str(rows), "--output", str(tmp_path / "out.jsonl"), "--no-progress"]) == 0
    assert "step_000002" in capsys.readouterr().err  # its latest checkpoint
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    assert main(["score", "--model", str(empty), "--input", str(rows), "--output", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{empty} is not a model folder: it has no config.json" in err and "sentencepiece" not in err


def test_select_on_greedy_answers_says_what_it_wrote(tmp_path, tiny_model_dir, addition_data, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_model_dir), "--benchmark", str(addition_data), "--output", str(out),
                 "--limit", "3", "--max-new-tokens", "4", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["select", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no Best-of-N table" in printed and "selection.jsonl" not in printed
    assert "rewritten in" in printed and "summary.json" in printed and not (out / "selection.jsonl").exists()


def test_help_texts():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    train_help = commands["train"].format_help()
    assert "configs/testbed" in train_help and "rlif train configs/testbed/intuitor.yaml" in train_help
    for command in ("eval", "score"):
        for action in commands[command]._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"rlif {command} {action.option_strings[0]} has no help"


def test_help_does_not_import_torch():
    code = "import sys; from rlif.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_the_progress_bar_counts_optimizer_steps(tmp_path):
    from rlif.runs.log import RunLogger

    accelerator = SimpleNamespace(is_main_process=True, trackers=[])  # no tracker started
    logger = RunLogger(tmp_path, accelerator, total_steps=3, start_step=0, progress=True)
    logger.log(0, {"eval/greedy/accuracy": 0.5})  # the evaluation before training
    assert logger.bar.n == 0
    for step in (1, 2, 3):
        logger.log(step, {"reward/mean": 1.0})
    assert (logger.bar.n, logger.bar.total) == (3, 3)
    logger.close()


def test_library_calls_print_no_transformers_progress_bars(tmp_path, tiny_model_dir, capfd):
    from rlif.models.load import load_model

    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # as in a fresh Python session (the test suite's conftest turns them off)
    try:
        load_model(str(tiny_model_dir))
        err = capfd.readouterr().err
        assert "Loading weights" not in err
        assert hf_logging.is_progress_bar_enabled()  # put back as it was
    finally:
        hf_logging.disable_progress_bar()
