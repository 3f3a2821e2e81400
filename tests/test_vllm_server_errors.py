"""Server mode's errors that need no vLLM server (they run everywhere; the server itself is tested in
tests/test_vllm_server.py): a missing or malformed address, no server listening, an open listening address without
a key, vLLM missing on the server's side. Each is one line (exit code 2), before any model loads."""

import importlib.util
from pathlib import Path

import pytest
from conftest import free_port

from rlif.cli import main
from rlif.config import load_config
from rlif.errors import ConfigError, VLLMServerError
from rlif.sampling.vllm_server import VLLMServerClient
from rlif.testbed.task import get_world

REPO = Path(__file__).resolve().parents[1]
MAIN_JOB = str(REPO / "configs" / "testbed" / "intuitor.yaml")


def test_the_servers_are_checked_with_the_config():
    with pytest.raises(ConfigError, match=r"rollout.vllm_servers = \[\]: expected the host:port of at least one `rlif serve-vllm`"):
        load_config(MAIN_JOB, ["rollout.engine=vllm-server"])
    with pytest.raises(ConfigError, match=r"rollout.vllm_servers\[1\] = 'gpu-node': expected host:port"):
        load_config(MAIN_JOB, ["rollout.engine=vllm-server", "rollout.vllm_servers=[localhost:8765,gpu-node]"])
    config = load_config(MAIN_JOB, ["rollout.engine=vllm-server", "rollout.vllm_servers=localhost:8765"])
    assert config.rollout.vllm_servers == ["localhost:8765"]  # one address for a one-item list


def test_no_server_listening_is_one_line_before_the_run_folder_is_made(tmp_path, capsys):
    address = f"127.0.0.1:{free_port()}"
    code = main(["train", MAIN_JOB, "rollout.engine=vllm-server", f"rollout.vllm_servers=[{address}]",
                 f"run.output_dir={tmp_path / 'run'}"])
    assert code == 2
    assert f"rlif train: error: no vLLM server at {address} (connection refused): start one with `rlif serve-vllm" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(VLLMServerError, match="no vLLM server at"):
        VLLMServerClient([address], max_model_len=64)


def test_a_server_open_beyond_this_machine_needs_a_key(monkeypatch, capsys):
    monkeypatch.delenv("RLIF_VLLM_KEY", raising=False)
    assert main(["serve-vllm", str(get_world("columns").model_dir), "--host", "0.0.0.0"]) == 2
    assert "rlif serve-vllm: error: --host 0.0.0.0: set RLIF_VLLM_KEY to a secret" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_serving_without_vllm_says_how_to_install_it(capsys):
    assert main(["serve-vllm", str(get_world("columns").model_dir), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "rlif serve-vllm: error: rlif serve-vllm needs vLLM: pip install 'rlif[vllm]'" in err
