"""`rlif score`: self-certainty, entropy and mean log-prob of given responses under a model.

For each row {"prompt", "response", ...} the scored tokens are exactly
`tokenizer(response, add_special_tokens=False)` appended to the prompt's tokens; the prompt is the
chat-templated user message (with a generation prompt) or, without the chat template,
`tokenizer(prompt, add_special_tokens=False)`.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from rlif.data import jsonl
from rlif.data.prompts import read_records, render_prompt
from rlif.errors import DataError
from rlif.models.load import check_vocabulary, load_model, load_tokenizer
from rlif.signals.batching import pad_pairs, score_in_batches
from rlif.signals.model import SignalModel
from rlif.signals.tokens import masked_mean


def encode_pairs(tokenizer, prompts: list[str], responses: list[str], *, chat_template: bool, system_prompt: str | None = None):
    """(prompt_ids, prompt_mask, response_ids, response_mask): prompts left-padded, responses right-padded."""
    prompt_tokens, response_tokens = [], []
    for prompt, response in zip(prompts, responses):
        text = render_prompt(tokenizer, prompt, system_prompt=system_prompt, chat_template=chat_template)
        prompt_tokens.append(tokenizer(text, add_special_tokens=False).input_ids)
        response_tokens.append(tokenizer(response, add_special_tokens=False).input_ids)
    return pad_pairs(prompt_tokens, response_tokens, tokenizer.pad_token_id)


def score_texts(
    model,
    tokenizer,
    prompts: list[str],
    responses: list[str],
    *,
    chat_template: bool = True,
    system_prompt: str | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> list[dict]:
    """Per response: self_certainty, entropy, mean_logprob (temperature 1) and num_tokens.

    An empty response has nothing to score: its three signals are None.
    """
    device = next(model.parameters()).device
    signal_model = SignalModel(model).to(device)
    tensors = encode_pairs(tokenizer, prompts, responses, chat_template=chat_template, system_prompt=system_prompt)
    with tqdm(total=len(prompts), desc="score", unit="row", disable=not progress) as bar:
        signals = score_in_batches(signal_model, *tensors, batch_size=batch_size, progress=bar)  # batched by length
    mask = tensors[3]
    values = {
        "self_certainty": masked_mean(signals.self_certainty, mask),
        "entropy": masked_mean(signals.entropy, mask),
        "mean_logprob": masked_mean(signals.logprobs, mask),
    }
    results = []
    for row in range(len(prompts)):
        num_tokens = int(mask[row].sum())
        record = {name: float(v[row]) if num_tokens else None for name, v in values.items()}
        results.append({**record, "num_tokens": num_tokens})
    return results


def score_file(
    model_path: str,
    input_path: str,
    output_path: str,
    *,
    chat_template: bool | None = None,
    system_prompt: str | None = None,
    batch_size: int = 8,
    dtype: str = "float32",
    progress: bool = True,
) -> int:
    """Score every row of a JSONL file; returns the number of rows written."""
    records = read_records(input_path)
    for where, record in records:
        for name in ("prompt", "response"):
            if name not in record:
                raise DataError(f"{where}: missing field {name!r} (fields: {', '.join(sorted(record)) or 'none'}); "
                                "each row needs a prompt and a response")
            if not isinstance(record[name], str):
                raise DataError(f"{where}: field {name!r} must be a string, got {record[name]!r:.80}")
        if not record["prompt"]:
            raise DataError(f"{where}: field 'prompt' is empty (the first response token needs a context)")
    tokenizer = load_tokenizer(model_path)
    if chat_template is None:
        chat_template = bool(getattr(tokenizer, "chat_template", None))
    model = load_model(model_path, dtype).eval().to("cuda" if torch.cuda.is_available() else "cpu")
    check_vocabulary(model, tokenizer, model_path)
    scores = score_texts(
        model,
        tokenizer,
        [r["prompt"] for _, r in records],
        [r["response"] for _, r in records],
        chat_template=chat_template,
        system_prompt=system_prompt,
        batch_size=batch_size,
        progress=progress,
    )
    jsonl.write(output_path, [{**record, **scored} for (_, record), scored in zip(records, scores)])
    return len(records)
