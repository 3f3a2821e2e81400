"""Shared fixtures: a tiny character-level tokenizer and tiny random Llama/Qwen2 models on disk; loading the repository's
scripts and benchmarks as modules."""

import importlib.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels (if the package is installed) run under its interpreter; it must be on before
# triton.language is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from rlif.testbed.tiny import char_tokenizer, save_tiny_model, tiny_causal_lm

ALPHABET = "0123456789+= \n"
REPO = Path(__file__).resolve().parents[1]


def load_repo_module(relative: str):
    """A file of the repository that is not in the package (`scripts/update_docs.py`, `bench/common.py`) as a module,
    registered in sys.modules under `<folder>_<name>` (dataclasses look their module up there)."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(f"{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _quiet_transformers():
    from transformers.utils import logging

    logging.disable_progress_bar()
    yield


@pytest.fixture(scope="session")
def tokenizer():
    return char_tokenizer(ALPHABET)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", ALPHABET, hidden_size=32, num_layers=2)


@pytest.fixture(scope="session")
def peaky_model_dir(tmp_path_factory, tokenizer):
    """A Qwen2 model with an untied, scaled-up lm_head: next-token distributions are very peaked."""
    model = tiny_causal_lm(len(tokenizer), architecture="qwen2", hidden_size=32, tie_embeddings=False, seed=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(400.0)
    folder = tmp_path_factory.mktemp("peaky") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_addition_data(path, n=64, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as file:
        for _ in range(n):
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            file.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    return path


def free_port() -> int:
    """A port nothing listens on now (for a rendezvous or a server: other test runs may share the machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kill_when(command: list[str], path: Path, *, env: dict | None = None, cwd: Path = REPO, timeout_s: float = 600,
              process: subprocess.Popen | None = None) -> None:
    """Run `command` (or watch `process`) until `path` exists (a checkpoint, say), then SIGKILL it; fails if it ended
    or timed out first."""
    process = process or subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd, env=env)
    deadline = time.time() + timeout_s
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    detail = process.stderr.read()[-3000:] if process.poll() is not None and process.stderr else "timed out"
    assert path.exists(), detail
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture
def addition_data(tmp_path):
    return write_addition_data(tmp_path / "data.jsonl")
