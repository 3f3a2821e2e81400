"""`rlif score` end to end against an independent float64 (50-digit for entropy) computation."""

import copy
import json

import pytest
import torch
from reference import reference_exact

from rlif.cli import main
from rlif.data.jsonl import read_log as read_jsonl
from rlif.models.load import load_model, load_tokenizer

ROWS = [
    {"prompt": "12+3=", "response": "15</s>", "id": "a"},
    {"prompt": "1+1=", "response": "2", "id": "b"},  # one token
    {"prompt": "123+456=", "response": "5 7 9\n= 579</s>", "id": "c"},
]


def expected_scores(model_dir, row, chat_template):
    """Tokens exactly as specified, full float64 logits, signals from their definitions."""
    tokenizer = load_tokenizer(str(model_dir))
    model64 = copy.deepcopy(load_model(str(model_dir))).double().eval()
    if chat_template:
        prompt_text = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False, add_generation_prompt=True)
    else:
        prompt_text = row["prompt"]
    prompt = tokenizer(prompt_text, add_special_tokens=False).input_ids
    response = tokenizer(row["response"], add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model64(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
    logprobs, sc, entropy = reference_exact(logits, torch.tensor(response))
    return {"self_certainty": sc.mean().item(), "entropy": entropy.mean().item(), "mean_logprob": logprobs.mean().item(), "num_tokens": len(response)}


@pytest.mark.parametrize("chat_template", [True, False])
@pytest.mark.parametrize("model_dir, dtype", [("tiny_model_dir", "float32"), ("peaky_model_dir", "float32"), ("peaky_model_dir", "float64")])
def test_score_matches_reference(tmp_path, request, chat_template, model_dir, dtype):
    path = request.getfixturevalue(model_dir)
    input_path, output_path = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    input_path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    flag = "--chat-template" if chat_template else "--no-chat-template"
    args = ["score", "--model", str(path), "--input", str(input_path), "--output", str(output_path), flag, "--batch-size", "2", "--dtype", dtype]
    assert main(args) == 0
    scored = read_jsonl(output_path)
    assert [r["id"] for r in scored] == ["a", "b", "c"]  # rows keep their order and fields
    for row, got in zip(ROWS, scored):
        expected = expected_scores(path, row, chat_template)
        assert got["num_tokens"] == expected["num_tokens"]
        for key in ("self_certainty", "mean_logprob", "entropy"):
            assert got[key] == pytest.approx(expected[key], rel=1e-4), (key, row)
    assert scored[0]["num_tokens"] == 3  # "15</s>": two digits and EOS, all scored


def test_score_bad_rows(tmp_path, tiny_model_dir, capsys):
    input_path = tmp_path / "in.jsonl"
    input_path.write_text(json.dumps({"prompt": "1+1="}) + "\n")
    assert main(["score", "--model", str(tiny_model_dir), "--input", str(input_path), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert f"{input_path}:1: missing field 'response' (fields: prompt)" in capsys.readouterr().err
