"""bench/gpu_check.py in its CPU smoke mode: the same code path the GPU check runs, on a tiny Qwen2 with the real
Qwen2.5 tokenizer (the measurement itself needs a GPU)."""

import json
from pathlib import Path

from conftest import load_repo_module

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_mode(tmp_path):
    """The script's steps are `rlif train`'s steps: the same config trained by `train` logs the same rewards and losses."""
    gpu_check = load_repo_module("bench/gpu_check.py")
    output = tmp_path / "report.json"
    work = tmp_path / "work"
    report = gpu_check.main(["--smoke", "--output", str(output), "--work", str(work)])
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    from rlif.config import load_config
    from rlif.data.jsonl import read_log
    from rlif.rl.train import train

    trained = read_log(train(load_config(work / "config.yaml", [f"run.output_dir={tmp_path / 'trained'}"])) / "metrics.jsonl")
    for step, logged in zip(report["steps"], trained):
        assert (step["reward_mean"], step["loss_policy"], step["kl"]) == (logged["reward/mean"], logged["loss/policy"], logged["signals/kl_ref"])
    assert report["mode"].startswith("smoke") and report["parameters"] > 151936 * 64  # the real vocabulary
    assert [s["step"] for s in report["steps"]] == [1, 2]
    for step in report["steps"]:
        assert step["step_s"] > 0 and step["tokens_per_s"] > 0
        assert step["step_s"] >= step["generate_s"] + step["score_s"] + step["update_s"] - 1e-6
        assert 1 <= step["response_len_mean"] <= 8
    assert [r["micro_batch"] for r in report["micro_batches"]] == [1, 2]
    assert all(r["fits"] and r["tokens_per_s"] > 0 for r in report["micro_batches"])
    assert report["largest_micro_batch"] == 2


def load_bench(name):
    return load_repo_module(f"bench/{name}.py")


def test_the_gpu_script_asks_the_benchmarks_for_what_they_know():
    """A typo in bench/gpu_check.sh's variant or run lists would cost a GPU lease: check them here."""
    import re

    import pytest

    script = (REPO / "bench" / "gpu_check.sh").read_text()
    (variants,) = re.findall(r"--variants (\S+)", script)
    assert "fused@2048#2048x4" in load_bench("signals").parse_variants(variants)
    (rlif_runs,) = re.findall(r"^RLIF_RUNS=(\S+)$", script, flags=re.MULTILINE)
    (default_runs,) = re.findall(r"DEFAULT_RUNS=(trl\S+);", script)
    step = load_bench("step")
    assert step.parse_runs(default_runs.replace("$RLIF_RUNS", rlif_runs)) == [
        "trl", "rlif@compiled+mb32+offload", "rlif@compiled+mb16+offload", "rlif-length@compiled+mb16+offload",
        "rlif@compiled+layers+mb16+offload"]
    assert step.split_run("rlif@compiled+layers") == ("rlif", "compiled", {"compile_layers": True})
    assert step.split_run("rlif-length") == ("rlif-length", "dynamic", {})
    assert step.split_run("rlif@compiled+mb32+offload") == ("rlif", "compiled", {"micro_batch": 32, "reference_device": "offload"})
    assert step.split_run("trl+sc+mb4") == ("trl+sc", "dynamic", {"micro_batch": 4})
    for bad in ("trl@compiled", "trl+layers", "trl+offload", "rlif+sc", "rlif@fast", "rlif+layers@compiled", "rlif+mb0",
                "rlif+mbx", "rlif+fast"):
        with pytest.raises(ValueError, match=f"unknown run '{re.escape(bad)}'"):
            step.parse_runs(bad)
    with pytest.raises(ValueError, match="unknown variant 'fused#4096'"):
        load_bench("signals").parse_variants("fused#4096")


def test_the_rollout_bench_profiles_a_variant_the_gpu_script_names(capsys):
    import re

    script = (REPO / "bench" / "gpu_check.sh").read_text()
    (profiled,) = re.findall(r"rollout.py .*--static --profile (\S+)", script)
    rollout = load_bench("rollout")
    assert profiled in rollout.VARIANTS
    assert rollout.main(["--rounds", "1", "--prompts", "1", "--group", "2", "--tokens", "3", "--profile", "rlif"]) == 0
    assert re.search(r"rlif under torch.profiler: wall .* ms per decode step\), [\d,]+ operators issued \([\d,]+ per decode step\)",
                     capsys.readouterr().out)
