"""The figures the README and docs/testbed.md show for the main job are what `rlif train configs/testbed/intuitor.yaml`
computes now: the test runs the main job (about a minute on 2 idle cores) and renders the figures again
(`scripts/update_docs.py --main-job RUN` writes them)."""

from pathlib import Path

from conftest import load_repo_module

REPO = Path(__file__).resolve().parents[1]


def test_main_job_figures_in_the_docs_are_what_the_main_job_computes(tmp_path, monkeypatch):
    update_docs = load_repo_module("scripts/update_docs.py")
    from rlif.config import load_config
    from rlif.rl.train import train

    monkeypatch.chdir(REPO)  # the config's paths are relative to the repository root, where the README runs it
    main_job = REPO / "configs" / "testbed" / "intuitor.yaml"
    stopped = train(load_config(main_job, [f"run.output_dir={tmp_path / 'main'}", "run.progress=false"]))
    full = train(load_config(main_job, [f"run.output_dir={tmp_path / 'full'}", "run.progress=false", "run.stop_rule=none"]))
    rendered = update_docs.render_main_job(stopped, full)
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path.name}: the main job's figures are stale: run the main job, then " \
                                         "python scripts/update_docs.py --main-job runs/testbed-intuitor runs/testbed-intuitor-full"
