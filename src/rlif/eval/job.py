"""`rlif eval` and `rlif select`: answer a benchmark, check the answers, report accuracy, Best-of-N and calibration.

The output folder of an evaluation:
    settings.json     everything that determines the responses (a resumed evaluation must match it)
    responses.jsonl   one line per response: problem, sample (-1 = greedy), prompt, label, response,
                      answer (extracted), correct, self_certainty, entropy, mean_logprob, num_tokens, truncated
    summary.json      accuracy (greedy, sampled), the Best-of-N table, calibration (AUROC, effect size r)
    selection.jsonl   per problem (when sampling): each Best-of-N rule's pick and whether it is right
    calibration.png   histograms of self-certainty, correct vs incorrect answers

Greedy answers come first (batch_size problems per chunk), then the N samples (batch_size // N problems
per chunk); each chunk's responses are appended as soon as it finishes, so a killed evaluation loses at
most one chunk: rerunning the same command continues with the next unfinished problem (a larger --limit
extends a finished evaluation). Sampling randomness is keyed by (seed, problem, sample,
position), so the resumed responses are the ones an uninterrupted run would have drawn.

When the model is a training run (its folder, or one of its checkpoints), the prompt is rendered exactly
as training rendered it: template, system prompt and chat template come from the run's config.yaml, as do
the sampling temperature, top-p and token limit unless given on the command line.

Code benchmarks (`humaneval`, or a file in the HumanEval, MBPP or LiveCodeBench layout) take the same path:
their answer format (`rlif.code.grading`) runs each chunk's programs against the tests in parallel sandboxes
as part of checking them, and a record gets, besides `correct` (every test passed) and `answer` (the
test-outcome signature, what majority vote and Borda group by), the program, its status and detail,
tests_passed and the isolation its run had. Style: chat (the prompt as a user message in the chat template,
the program from the last fenced python block) when the prompt goes through a chat template (by default
when the tokenizer has one), else completion (the model continues the prompt); `--code-style` chooses.
Without a run's or the command line's settings, a code benchmark has no system prompt, 512 new tokens, and in
chat style the user message `CODE_CHAT_PROMPT_TEMPLATE` (the prompt in a python block, and what to answer with).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from rlif.code.grading import CODE_FORMATS, CodeAnswerFormat
from rlif.config import DEFAULT_SYSTEM_PROMPT, Config, DataConfig, RolloutConfig
from rlif.data import jsonl
from rlif.data.answers import get_answer_format
from rlif.data.benchmarks import get_benchmark
from rlif.data.prompts import is_code_format, read_records, render_prompt
from rlif.errors import EvalError
from rlif.eval.generate import generate_records
from rlif.eval.records import SELECTION_FIELDS, append_records, check_fields, load_finished
from rlif.eval.summary import summarize_records
from rlif.files import sha256, write_text_atomic
from rlif.models.load import check_vocabulary, eos_token_ids, load_model, load_tokenizer
from rlif.rl.checkpoint import find_run
from rlif.runs.plots import plot_calibration
from rlif.sampling import DECODE_MODES, DEFAULT_CPU_THREADS

SETTINGS_FILE = "settings.json"
RESPONSES_FILE = "responses.jsonl"
SUMMARY_FILE = "summary.json"
SELECTION_FILE = "selection.jsonl"
CALIBRATION_PLOT = "calibration.png"


@dataclass
class EvalSettings:
    model: str
    """Model folder, installed model name or hub id; or a training run folder (its latest checkpoint) or one of its checkpoints."""
    benchmark: str
    """`gsm8k`, `math500`, another registered benchmark, or a .jsonl/.parquet file of problems."""
    output_dir: str
    """Folder for settings.json, responses.jsonl, summary.json, selection.jsonl and calibration.png."""
    limit: int = 0
    """Answer the first `limit` problems of the benchmark (0: all)."""
    num_samples: int = 0
    """N sampled responses per problem besides the greedy one (0: greedy only). N >= 2 adds the Best-of-N table."""
    temperature: float = RolloutConfig.temperature
    """Sampling temperature (greedy answers ignore it)."""
    top_p: float = RolloutConfig.top_p
    """Nucleus sampling threshold (1.0: the whole distribution)."""
    max_new_tokens: int = RolloutConfig.max_new_tokens
    """Responses stop at EOS or after this many tokens (then counted as truncated)."""
    seed: int = 0
    """Seeds the sampled responses and the random Best-of-N rule."""
    prompt_field: str | None = None
    """Field holding the problem text (None: the benchmark's own; `prompt` for a file)."""
    label_field: str | None = None
    """Field holding the reference answer (None: the benchmark's own; `answer` for a file)."""
    answer_format: str | None = None
    """How answers are extracted and compared, an `rlif.answers` format (None: the benchmark's own; `math` for a file, `code` for a file in a code layout)."""
    label_format: str | None = None
    """How the reference is read from the label field, as data.label_format: as_is or gsm8k (None: the benchmark's own; the run's for a file)."""
    code_style: str | None = None
    """Code benchmarks: `chat` (the prompt as a user message in the chat template, the program from the last fenced python block) or `completion` (the model continues the prompt, no chat template). None: chat when the tokenizer has a chat template."""
    prompt_template: str | None = DataConfig.prompt_template
    """Template of the user message; `{prompt}` is replaced by the problem text (None, code benchmarks only: `CODE_CHAT_PROMPT_TEMPLATE` in chat style, the bare prompt in completion style)."""
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    """System message for the chat template (None: none)."""
    chat_template: bool | None = None
    """Wrap the user message in the tokenizer's chat template (None: when the tokenizer has one)."""
    borda_p: float | None = None
    """Power of Borda voting (None: 0.3 for N <= 16, 1.2 for N >= 32)."""
    dtype: str = "float32"
    """Dtype the model is loaded in."""
    batch_size: int = 64
    """Sequences per decode batch (speed and memory only: the responses do not depend on it)."""
    decode: str = "dynamic"
    """Decode loop: dynamic, static or compiled (speed only; see rollout.decode)."""
    cpu_threads: int = DEFAULT_CPU_THREADS
    """Torch threads of the decode loop on a CPU (0: torch's default; see rollout.cpu_threads)."""
    progress: bool = True
    """Show a progress bar."""
    run_dir: str | None = None
    """The training run whose prompt settings apply (set by `resolve_settings`; informational)."""


# ---------------------------------------------------------------------------------------------
# Settings: command line > the training run's config > defaults


def load_run_config(path: str | Path) -> Config:
    """The data, rollout and eval sections of a run folder's config.yaml (or of a config file), defaults filled in.

    Only these sections are read: a run whose reward lives in a module not importable here still evaluates.
    """

    path = Path(path)
    file = path / "config.yaml" if path.is_dir() else path
    if not file.is_file():
        raise EvalError(f"{file} does not exist: expected a training run folder or a config file")
    raw = yaml.safe_load(file.read_text()) or {}
    config = Config()
    for section in ("data", "rollout", "eval"):
        values = raw.get(section) or {}
        known = {field.name for field in dataclasses.fields(type(getattr(config, section)))}
        unknown = sorted(set(values) - known)
        if unknown:
            raise EvalError(f"{file}: unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}")
        setattr(config, section, dataclasses.replace(getattr(config, section), **values))
    return config


def resolve_settings(model: str, benchmark: str | None, output_dir: str, *, config: str | None = None, **given) -> EvalSettings:
    """EvalSettings from command-line values (None = not given), the run's config, then defaults.

    `config` names a run folder or config file whose prompt settings apply; by default the run that
    contains `model`, if any.
    """

    model_path, run_dir = find_run(model)
    run_config = load_run_config(config) if config else (load_run_config(run_dir) if run_dir else None)
    from_run: dict = {}
    if run_config is not None:
        data, rollout = run_config.data, run_config.rollout
        from_run = {
            "prompt_template": data.prompt_template,
            "system_prompt": data.system_prompt,
            "chat_template": data.chat_template,
            "temperature": rollout.temperature,
            "top_p": rollout.top_p,
            "max_new_tokens": run_config.eval.max_new_tokens or rollout.max_new_tokens,
            "decode": rollout.decode,
            "cpu_threads": rollout.cpu_threads,
        }
        if benchmark is None:
            benchmark = run_config.eval.path
    if benchmark is None:
        raise EvalError("--benchmark is required (gsm8k, math500 or a .jsonl/.parquet file) unless the model's run has an eval.path")
    # A named benchmark brings its own fields and answer format; a file takes them from the run's data section.
    fields = {key: given.get(key) for key in ("prompt_field", "label_field", "answer_format", "label_format")}
    if run_config is not None and is_benchmark_file(benchmark):
        data = run_config.data
        for key, value in (("prompt_field", data.prompt_field), ("label_field", data.label_field), ("answer_format", data.answer_format),
                           ("label_format", data.label_format)):
            fields[key] = fields[key] if fields[key] is not None else value
    resolved = get_benchmark(benchmark, **fields)
    values = dict(from_run)  # a run's null (no system prompt) is a setting, not a gap
    overridden = []
    for key, value in given.items():
        if value is None or key in fields:
            continue  # None: not given on the command line
        if key == "system_prompt" and not value:
            value = None  # --system-prompt '': no system message
        if key in from_run and from_run[key] != value:
            overridden.append(key)
        values[key] = value
    if overridden:
        print(f"note: overriding the run's settings: {', '.join(overridden)}", file=sys.stderr)
    if is_code_format(resolved.answer_format):
        values = {**CODE_DEFAULTS, **values}
        if fields["answer_format"] is not None:  # a format given (or the run's) says the style too: code_completion
            style = get_answer_format(fields["answer_format"]).style
            if values.get("code_style") not in (None, style):
                raise EvalError(f"answer format {fields['answer_format']} takes {style}-style programs, "
                                f"but --code-style is {values['code_style']}")
            values["code_style"] = style
    values.update(prompt_field=resolved.prompt_field, label_field=resolved.label_field, answer_format=resolved.answer_format,
                  label_format=fields["label_format"])
    settings = EvalSettings(model=model_path, benchmark=benchmark, output_dir=output_dir, run_dir=str(config or run_dir or "") or None)
    for key, value in values.items():
        setattr(settings, key, value)
    validate(settings)
    return settings


# A code benchmark's defaults where neither the command line nor the run says otherwise: no system prompt (the
# default one asks for a \boxed{} answer) and 512 new tokens (HumanEval's functions are short; the chat answers of
# a small model that loops would otherwise run to the rollout default of 3072).
CODE_DEFAULTS = {"system_prompt": None, "max_new_tokens": 512, "prompt_template": None}
# The user message of chat style by default (completion style continues the bare prompt): the prompt in a python
# block and what to answer with. SmolLM2-135M-Instruct given the bare prompt as its user message often answers with
# code, then a closing fence, then prose, and runs to the token limit more often (first 32 HumanEval problems,
# greedy, 384 tokens: 3 passed, 16 truncated, bare; 6 passed, 6 truncated, with an earlier wording of this one).
CODE_CHAT_PROMPT_TEMPLATE = "Complete the following Python code. Write the whole function in one ```python code block.\n\n```python\n{prompt}\n```"


def is_benchmark_file(benchmark: str) -> bool:
    return Path(benchmark).suffix in (".jsonl", ".parquet")


def validate(settings: EvalSettings) -> None:
    checks = [
        (settings.limit >= 0, "--limit", settings.limit, "a non-negative integer"),
        (settings.num_samples >= 0, "--n", settings.num_samples, "a non-negative integer"),
        (0 < settings.temperature < math.inf, "--temperature", settings.temperature, "a positive finite number"),
        (0 < settings.top_p <= 1, "--top-p", settings.top_p, "a number in (0, 1]"),
        (settings.max_new_tokens >= 1, "--max-new-tokens", settings.max_new_tokens, "a positive integer"),
        (settings.batch_size >= 1, "--batch-size", settings.batch_size, "a positive integer"),
        (settings.decode in DECODE_MODES, "--decode", settings.decode, f"one of {', '.join(DECODE_MODES)}"),
        (settings.cpu_threads >= 0, "--cpu-threads", settings.cpu_threads, "0 (torch's default) or a positive integer"),
        (settings.borda_p is None or 0 <= settings.borda_p < math.inf, "--borda-p", settings.borda_p, "a non-negative finite number"),
        (settings.code_style in (None, *CODE_FORMATS), "--code-style", settings.code_style, "chat or completion"),
        (settings.prompt_template is None or "{prompt}" in settings.prompt_template, "--prompt-template", settings.prompt_template, "a template containing {prompt}"),
    ]
    for ok, name, value, expected in checks:
        if not ok:
            raise EvalError(f"{name} = {value!r}: expected {expected}")


def generation_settings(settings: EvalSettings, benchmark, model_path: str) -> dict:
    """What determines the responses: a resumed evaluation must match this exactly (limit may grow)."""
    sampling = settings.num_samples > 0
    local = Path(model_path)
    return {
        "model": str(local.resolve()) if local.is_dir() else model_path,
        "benchmark": benchmark.name,
        "benchmark_sha256": sha256(benchmark.path),
        "prompt_field": benchmark.prompt_field,
        "label_field": benchmark.label_field,
        "answer_format": benchmark.answer_format,
        **({"label_format": settings.label_format} if settings.label_format not in (None, "as_is") else {}),
        "prompt_template": settings.prompt_template,
        "system_prompt": settings.system_prompt,
        "chat_template": settings.chat_template,
        "max_new_tokens": settings.max_new_tokens,
        "num_samples": settings.num_samples,
        "temperature": settings.temperature if sampling else None,
        "top_p": settings.top_p if sampling else None,
        "seed": settings.seed if sampling else None,
        "dtype": settings.dtype,
    }


def check_output_dir(output: Path, generation: dict) -> None:
    """Write settings.json in a new folder; in an existing one, refuse if the generation settings differ."""
    saved_path = output / SETTINGS_FILE
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        differences = [f"{key} (saved {saved.get(key)!r}, now {value!r})" for key, value in generation.items() if saved.get(key) != value]
        if differences:
            raise EvalError(
                f"{output} holds an evaluation with other settings, so it cannot be resumed: {'; '.join(differences)}. "
                "Use another --output folder (or delete this one)"
            )
        return
    if (output / RESPONSES_FILE).exists():
        raise EvalError(f"{output / RESPONSES_FILE} exists without {SETTINGS_FILE}: not an rlif evaluation folder")
    write_text_atomic(saved_path, json.dumps(generation, indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Responses file: appended chunk by chunk, repaired on resume


# ---------------------------------------------------------------------------------------------
# The evaluation


def run_eval(settings: EvalSettings) -> dict:
    """Answer every unfinished problem, then write and return the summary."""

    started = time.perf_counter()
    validate(settings)
    benchmark = get_benchmark(
        settings.benchmark, prompt_field=settings.prompt_field, label_field=settings.label_field, answer_format=settings.answer_format,
        label_format=settings.label_format,
    )
    try:
        answer_format = get_answer_format(benchmark.answer_format)
    except (KeyError, ImportError, AttributeError, TypeError) as error:
        raise EvalError(f"answer format {benchmark.answer_format!r}: {error.args[0] if error.args else error}") from None
    problems = benchmark.load(settings.limit)  # bad data fails before any model file is read
    tokenizer = load_tokenizer(settings.model)
    has_chat_template = bool(getattr(tokenizer, "chat_template", None))
    if isinstance(answer_format, CodeAnswerFormat):  # the style may follow the tokenizer; the problems do not
        answer_format = choose_code_style(settings, answer_format, has_chat_template)
        benchmark = replace(benchmark, answer_format=answer_format.name)
    if settings.chat_template is None:
        settings.chat_template = has_chat_template
    output = Path(settings.output_dir)
    generation = generation_settings(settings, benchmark, settings.model)
    check_output_dir(output, generation)
    n = settings.num_samples
    responses_path = output / RESPONSES_FILE
    finished = load_finished(responses_path, n)
    greedy_done = {r["problem"] for r in finished if r["sample"] < 0}
    sampled_done = {r["problem"] for r in finished if r["sample"] >= 0}
    greedy_todo = [i for i in range(len(problems)) if i not in greedy_done]
    sampled_todo = [i for i in range(len(problems)) if n and i not in sampled_done]

    if greedy_todo or sampled_todo:
        todo = sorted(set(greedy_todo) | set(sampled_todo))
        rendered = {
            i: render_prompt(
                tokenizer,
                problems[i].prompt,
                prompt_template=settings.prompt_template,
                system_prompt=settings.system_prompt,
                chat_template=settings.chat_template,
            )
            for i in todo
        }
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_model(settings.model, settings.dtype).eval().to(device)
        check_vocabulary(model, tokenizer, settings.model)
        eos_ids = eos_token_ids(tokenizer, model)
        if finished:
            print(f"resuming {output}: {len(greedy_todo)} greedy and {len(sampled_todo)} sampled problems to go", file=sys.stderr)
        common = dict(max_new_tokens=settings.max_new_tokens, eos_ids=eos_ids, batch_size=settings.batch_size, decode=settings.decode,
                      cpu_threads=settings.cpu_threads)
        total = len(greedy_todo) + n * len(sampled_todo)
        with tqdm(total=total, desc="eval", unit="response", dynamic_ncols=True, disable=not settings.progress) as bar:
            # Greedy answers first, batch_size problems at a time; then N samples, batch_size // N problems at a time.
            # Each chunk is appended as soon as it is done, so a kill loses at most one chunk.
            right = seen = 0
            for start in range(0, len(greedy_todo), settings.batch_size):
                ids = greedy_todo[start : start + settings.batch_size]
                records = generate_records(
                    model, tokenizer, [problems[i] for i in ids], [rendered[i] for i in ids], answer_format,
                    greedy=True, problem_ids=ids, progress=bar, **common,
                )
                append_records(responses_path, records)
                right, seen = right + sum(r["correct"] for r in records), seen + len(records)
                bar.set_postfix(greedy_acc=f"{right / seen:.3f}", refresh=False)
            right = seen = 0
            problems_per_chunk = max(1, settings.batch_size // max(n, 1))
            for start in range(0, len(sampled_todo), problems_per_chunk):
                ids = sampled_todo[start : start + problems_per_chunk]
                records = generate_records(
                    model, tokenizer, [problems[i] for i in ids], [rendered[i] for i in ids], answer_format,
                    greedy=False, num_samples=n, temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed,
                    problem_ids=ids, progress=bar, **common,
                )
                append_records(responses_path, records)
                right, seen = right + sum(r["correct"] for r in records), seen + len(records)
                bar.set_postfix(sampled_acc=f"{right / seen:.3f}", refresh=False)

    records = [r for r in load_finished(responses_path, n) if r["problem"] < len(problems)]
    records.sort(key=lambda r: (r["problem"], r["sample"]))
    summary = summarize_records(records, answer_format, borda_p=settings.borda_p, seed=settings.seed)
    summary["settings"] = {**generation, "limit": settings.limit, "problems": len(problems), "run_dir": settings.run_dir}
    summary["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_summary(output, records, summary, title=f"{Path(settings.model).name} on {benchmark.name}")
    return summary


def choose_code_style(settings: EvalSettings, answer_format: CodeAnswerFormat, has_chat_template: bool) -> CodeAnswerFormat:
    """The code format of the evaluation's style: `--code-style` (or an explicit `--answer-format`), else chat
    when the prompt goes through a chat template (`--chat-template`, else the tokenizer has one), else
    completion. Sets settings.code_style, settings.answer_format and, when not given, settings.chat_template
    (on for chat style when the tokenizer has one; off for completion style) and settings.prompt_template."""
    if settings.code_style is None:
        templated = settings.chat_template if settings.chat_template is not None else has_chat_template
        settings.code_style = "chat" if templated else "completion"
    if settings.chat_template is None:
        settings.chat_template = settings.code_style == "chat" and has_chat_template
    if settings.prompt_template is None:
        settings.prompt_template = CODE_CHAT_PROMPT_TEMPLATE if settings.code_style == "chat" else "{prompt}"
    if answer_format.style != settings.code_style:
        if answer_format.name not in {fmt.name for fmt in CODE_FORMATS.values()}:
            raise EvalError(f"answer format {answer_format.name!r} takes {answer_format.style}-style programs, "
                            f"but --code-style is {settings.code_style!r}")
        answer_format = CODE_FORMATS[settings.code_style]
    settings.answer_format = answer_format.name
    return answer_format


def write_summary(output: Path, records: list[dict], summary: dict, title: str = "") -> list[Path]:
    """summary.json, selection.jsonl (with Best-of-N) and calibration.png; returns the files written."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    selection = summary.get("best_of_n", {}).get("problems")
    if selection is not None:
        jsonl.write(output / SELECTION_FILE, selection)
        written.append(output / SELECTION_FILE)
    compact = {**summary, "best_of_n": {k: v for k, v in summary["best_of_n"].items() if k != "problems"}} if selection is not None else summary
    written.insert(0, write_text_atomic(output / SUMMARY_FILE, json.dumps(compact, indent=2, ensure_ascii=False) + "\n"))
    if records and plot_calibration(records, output / CALIBRATION_PLOT, title=title) is not None:
        written.append(output / CALIBRATION_PLOT)
    return written


def select_from_file(path: str, *, answer_format: str | None = None, borda_p: float | None = None, seed: int | None = None) -> tuple[dict, Path | None]:
    """Best-of-N and calibration from saved responses: an evaluation folder (its summary files are
    rewritten) or any responses JSONL with problem, sample, answer, correct, self_certainty, mean_logprob
    (e.g. a training run's RUN/eval/step_N.jsonl). Returns (summary, the folder or None, the files rewritten)."""

    source = Path(path)
    folder = source if source.is_dir() else None
    saved = {}
    if folder is not None:
        if not (folder / SETTINGS_FILE).is_file():
            raise EvalError(f"{folder} is not an rlif evaluation folder (no {SETTINGS_FILE})")
        saved = json.loads((folder / SETTINGS_FILE).read_text())
        records = load_finished(folder / RESPONSES_FILE, saved["num_samples"])
    else:
        located = read_records(source)
        check_fields(located, SELECTION_FIELDS)
        records = [record for _, record in located]
    if not records:
        raise EvalError(f"{path}: no responses")
    name = answer_format or saved.get("answer_format") or "math"
    try:
        fmt = get_answer_format(name)
    except (KeyError, ImportError, AttributeError, TypeError) as error:
        raise EvalError(f"answer format {name!r}: {error.args[0] if error.args else error}") from None
    seed = seed if seed is not None else (saved.get("seed") or 0)
    try:
        summary = summarize_records(records, fmt, borda_p=borda_p, seed=seed)
    except ValueError as error:
        raise EvalError(f"{path}: {error}") from None
    if folder is not None:
        summary["settings"] = saved
        title = f"{Path(str(saved.get('model', folder))).name} on {saved.get('benchmark', folder.name)}"
        return summary, folder, write_summary(folder, records, summary, title=title)
    return summary, folder, []
