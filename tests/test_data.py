"""Prompt files: clear errors naming file and line; Parquet; prompt rendering."""

import json

import pytest

from rlif.data.prompts import load_prompts, render_prompt
from rlif.errors import DataError


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_jsonl_with_labels(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps({"prompt": "1+1=", "answer": 2}), "", json.dumps({"prompt": "2+2=", "answer": "4"})])
    records = load_prompts(path, "prompt", "answer")
    assert [(r.prompt, r.label) for r in records] == [("1+1=", "2"), ("2+2=", "4")]
    assert records[1].source.endswith("d.jsonl:3")


@pytest.mark.parametrize(
    "line, label_field, message",
    [
        ('{"prompt": "a", "answer": "1"', "answer", "d.jsonl:2: invalid JSON"),
        ('["a"]', None, "d.jsonl:2: expected a JSON object, got list"),
        ('{"question": "a"}', None, "d.jsonl:2: missing field 'prompt' (fields: question)"),
        ('{"prompt": ""}', None, "d.jsonl:2: field 'prompt' must be a non-empty string"),
        ('{"prompt": 3}', None, "d.jsonl:2: field 'prompt' must be a non-empty string"),
        ('{"prompt": "a"}', "answer", "d.jsonl:2: missing label field 'answer'"),
        ('{"prompt": "a", "answer": [1]}', "answer", "d.jsonl:2: label field 'answer' must be a string or a number"),
    ],
)
def test_malformed_line_is_named(tmp_path, line, label_field, message):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps({"prompt": "ok", "answer": "1"}), line])
    with pytest.raises(DataError) as error:
        load_prompts(path, "prompt", label_field)
    assert message in str(error.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no records"):
        load_prompts(write_lines(tmp_path / "empty.jsonl", []))


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"question": ["1+1=", "2+3="], "answer": ["2", "5"]}), path)
    records = load_prompts(path, "question", "answer")
    assert [(r.prompt, r.label) for r in records] == [("1+1=", "2"), ("2+3=", "5")]
    pq.write_table(pa.table({"question": ["1+1=", None]}), path)
    with pytest.raises(DataError, match=r"d.parquet:row 1: field 'question' must be a non-empty string"):
        load_prompts(path, "question")


def test_render_prompt(tokenizer):
    text = render_prompt(tokenizer, "1+2=", prompt_template="Q: {prompt} {x}", system_prompt="be brief", chat_template=True)
    assert text == "<|system|>be brief\n<|user|>Q: 1+2= {x}\n<|assistant|>"
    assert render_prompt(tokenizer, "1+2=", chat_template=False) == "1+2="


def test_render_prompt_without_chat_template(tokenizer):
    import copy

    no_template = copy.deepcopy(tokenizer)
    no_template.chat_template = None
    with pytest.raises(DataError, match="has no chat template; set data.chat_template=false"):
        render_prompt(no_template, "1+2=", chat_template=True)
