"""Prompt datasets (JSONL or Parquet) and prompt rendering.

Every record is checked when the file is loaded, before any model is touched: a malformed line
fails with the file, the line number and what was expected. With a code answer format the file is a
code benchmark (HumanEval, MBPP or LiveCodeBench layout) whose tests are the labels (`load_code_prompts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rlif.code.grading import CodeAnswerFormat
from rlif.code.problems import EXPECTED_LAYOUTS, LAYOUTS, layout_of
from rlif.data import jsonl
from rlif.data.answers import get_answer_format
from rlif.errors import DataError

CODE_LABEL_FIELD = "tests"  # the label of a code problem: its tests

if TYPE_CHECKING:
    from rlif.config import DataConfig


@dataclass(frozen=True)
class PromptRecord:
    prompt: str  # the raw prompt text from the file
    label: str | None  # the reference answer, or None when the dataset has no labels
    source: str  # "file:line" (or "file:row N" for Parquet), for error messages and samples


def read_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(location, record) pairs of a .jsonl or .parquet file; a malformed file or line raises DataError."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"data file {path} is a directory; expected a .jsonl or .parquet file")
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # only for Parquet files

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as error:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{path}: not a readable Parquet file ({error})") from None
        return [(f"{path}:row {i}", row) for i, row in enumerate(rows)]
    return [(f"{path}:{number}", record) for number, record in jsonl.read_objects(path)]


def gsm8k_reference(solution: str) -> str:
    """GSM8K's answer field is a worked solution ending in '#### N': the reference is N."""
    if "####" not in solution:
        raise DataError(f"a GSM8K answer must end with '#### <number>', got {solution[-80:]!r}")
    return solution.rsplit("####", 1)[1].strip()


# data.label_format: how the reference answer is read from the label field (None: the field as it is)
LABEL_FORMATS: dict[str, Callable[[str], str] | None] = {"as_is": None, "gsm8k": gsm8k_reference}


def load_prompts(
    path: str | Path,
    prompt_field: str = "prompt",
    label_field: str | None = None,
    *,
    reference: Callable[[str], str] | None = None,
    label_hint: str = "set data.label_field=null for unlabeled data",
) -> list[PromptRecord]:
    """Validated prompts (and labels when `label_field` is given) of a JSONL or Parquet file.

    `reference` reads the reference answer from the label field (`LABEL_FORMATS`; None: as is); `label_hint` is
    what a missing label field's message advises (the option that names the field where it is read)."""
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no records")
    prompts = []
    for where, record in records:
        prompt = record.get(prompt_field)
        if prompt_field not in record:
            raise DataError(f"{where}: missing field {prompt_field!r} (fields: {', '.join(sorted(record)) or 'none'})")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: field {prompt_field!r} must be a non-empty string, got {prompt!r:.80}")
        label = None
        if label_field is not None:
            if label_field not in record:
                raise DataError(f"{where}: missing label field {label_field!r} (fields: {', '.join(sorted(record))}; {label_hint})")
            value = record[label_field]
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise DataError(f"{where}: label field {label_field!r} must be a string or a number, got {value!r:.80}")
            label = str(value)
            if reference is not None:
                try:
                    label = reference(label)
                except DataError as error:
                    raise DataError(f"{where}: label field {label_field!r}: {error}") from None
        prompts.append(PromptRecord(prompt=prompt, label=label, source=where))
    return prompts


def load_task_prompts(path: str | Path, prompt_field: str, label_field: str | None, answer_format: str,
                      **options) -> list[PromptRecord]:
    """`load_prompts` (with its `options`), or with a code answer format `load_code_prompts` (the tests are the labels)."""
    if is_code_format(answer_format):
        return load_code_prompts(path, prompt_field, label_field)
    return load_prompts(path, prompt_field, label_field, **options)


def is_code_format(name: str) -> bool:
    """Whether the answer format `name` runs programs (`code`, `code_completion` or a CodeAnswerFormat of one's own)."""
    try:
        return isinstance(get_answer_format(name), CodeAnswerFormat)
    except (KeyError, ImportError, AttributeError, TypeError):
        return False


def is_code_file(path: str | Path) -> bool:
    """Whether a .jsonl/.parquet file is in a code benchmark layout (HumanEval, MBPP or LiveCodeBench), by its first record."""
    records = read_records(path)
    return bool(records) and layout_of(set(records[0][1])) is not None


def load_code_prompts(path: str | Path, prompt_field: str = "prompt", label_field: str | None = CODE_LABEL_FIELD) -> list[PromptRecord]:
    """The problems of a file in a code layout (HumanEval, MBPP or LiveCodeBench: `rlif.code.problems`) as prompts:
    the prompt is the problem's (HumanEval's prompt; MBPP's text and asserts; LiveCodeBench's question and starter
    code), the label its tests (`CodeProblem.to_label`), or none with label_field null. With label_field null a file
    in no code layout is read as plain prompts (`prompt_field`): code prompts without tests, for label-free rewards."""
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no records")
    layout = layout_of(set(records[0][1]))
    if layout is None and label_field is None:
        return load_prompts(path, prompt_field, None)
    if layout is None:
        raise DataError(f"{records[0][0]}: not a code benchmark (fields: {', '.join(sorted(records[0][1]))}); expected "
                        f"{EXPECTED_LAYOUTS}, or label_field null for prompts without tests")
    if prompt_field != "prompt" or label_field not in (CODE_LABEL_FIELD, None):
        raise DataError(f"{path} ({layout} layout): a code problem's prompt is its statement and its label its tests: "
                        f"expected prompt_field 'prompt' and label_field {CODE_LABEL_FIELD!r} (or null: no labels), "
                        f"got {prompt_field!r} and {label_field!r}")
    make = LAYOUTS[layout][1]
    prompts = []
    for where, record in records:
        try:
            problem = make(record)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise DataError(f"{where}: not a {layout} problem: {error!r}") from None
        prompts.append(PromptRecord(prompt=problem.prompt, label=problem.to_label() if label_field else None, source=where))
    return prompts


def render_prompt(
    tokenizer,
    prompt: str,
    *,
    prompt_template: str = "{prompt}",
    system_prompt: str | None = None,
    chat_template: bool = True,
) -> str:
    """The exact text the model is conditioned on (tokenize it with add_special_tokens=False)."""
    user_message = prompt_template.replace("{prompt}", prompt)
    if not chat_template:
        return user_message
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
            "set data.chat_template=false (or pass --no-chat-template) to use the plain prompt text"
        )
    messages = [{"role": "user", "content": user_message}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass
class TrainingPrompts:
    records: list[PromptRecord]  # prompts that fit max_prompt_tokens
    rendered: list[str]  # the exact text the model is conditioned on, per record
    dropped: int  # prompts longer than max_prompt_tokens


def prepare_prompts(data: DataConfig, tokenizer, path: str, limit: int = 0) -> TrainingPrompts:
    """Load, validate and render the prompts of `path` as the data section says; drop overlong ones."""
    records = load_task_prompts(path, data.prompt_field, data.label_field, data.answer_format,
                                reference=LABEL_FORMATS[data.label_format])
    if limit:
        records = records[:limit]
    kept, rendered = [], []
    for record in records:
        text = render_prompt(
            tokenizer,
            record.prompt,
            prompt_template=data.prompt_template,
            system_prompt=data.system_prompt,
            chat_template=data.chat_template,
        )
        if len(tokenizer(text, add_special_tokens=False).input_ids) <= data.max_prompt_tokens:
            kept.append(record)
            rendered.append(text)
    if not kept:
        raise DataError(f"{path}: every prompt is longer than data.max_prompt_tokens={data.max_prompt_tokens}")
    return TrainingPrompts(kept, rendered, len(records) - len(kept))


def worked_solution_warning(records: list[PromptRecord], data: DataConfig) -> str | None:
    """A warning when the labels of a math run look like worked solutions rather than final answers (the math
    format compares a response's final answer with the whole label, so every response would be scored wrong);
    None otherwise."""
    labels = [r.label for r in records if r.label is not None]
    if data.answer_format != "math" or data.label_format != "as_is" or not labels:
        return None
    where = f"{data.path} (field {data.label_field!r})"
    marked = sum("####" in label for label in labels)
    if marked * 2 >= len(labels):
        return (f"{marked} of the {len(labels)} labels of {where} hold a worked solution ending in '#### <answer>' "
                "(GSM8K's format); every response will be scored against the whole text. Set data.label_format=gsm8k "
                "to compare with the answer after ####")
    long = sum("\n" in label.strip() or len(label) > 100 for label in labels)
    if long * 2 >= len(labels):
        return (f"{long} of the {len(labels)} labels of {where} span several lines or over 100 characters: they look "
                "like worked solutions, not final answers; the math answer format compares a response's final answer "
                "with the whole label")
    return None
