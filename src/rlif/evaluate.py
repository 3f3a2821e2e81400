"""Evaluate a model on labeled problems: greedy and sampled answers, correctness, self-certainty.

Signals come from the sampling pass itself (`rlif.sampling.sample(track_signals=True)`): no second forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from rlif.answers import AnswerFormat
from rlif.data import PromptRecord
from rlif.sampling import sample


@dataclass
class EvalResult:
    records: list[dict]  # one per response: problem, sample (-1 = greedy), prompt, label, response, answer, correct, signals
    metrics: dict[str, float] = field(default_factory=dict)


def generate_records(
    model,
    tokenizer,
    problems: Sequence[PromptRecord],
    rendered: Sequence[str],
    answer_format: AnswerFormat,
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    greedy: bool,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    problem_ids: Sequence[int] | None = None,
    progress=None,
) -> list[dict]:
    """Responses to each problem (one greedy, or `num_samples` sampled), each checked and scored."""
    encoded = [tokenizer(text, add_special_tokens=False).input_ids for text in rendered]
    problem_ids = list(problem_ids if problem_ids is not None else range(len(problems)))
    n = 1 if greedy else num_samples
    samples = sample(
        model,
        encoded,
        num_samples=n,
        max_new_tokens=max_new_tokens,
        eos_ids=eos_ids,
        temperature=temperature,
        top_p=top_p,
        greedy=greedy,
        seed=seed,
        prompt_keys=problem_ids,
        batch_size=batch_size,
        track_signals=True,
        progress=progress,
    )
    records = []
    for row, tokens in enumerate(samples.responses):
        i, j = divmod(row, n)
        response = tokenizer.decode(tokens, skip_special_tokens=True)
        answer = answer_format.extract(response)
        records.append(
            {
                "problem": problem_ids[i],
                "sample": -1 if greedy else j,
                "prompt": problems[i].prompt,
                "label": problems[i].label,
                "response": response,
                "answer": answer,
                "correct": answer_format.equivalent(answer, problems[i].label),
                "self_certainty": samples.self_certainty[row].item(),
                "entropy": samples.entropy[row].item(),
                "mean_logprob": samples.logprob[row].item(),
                "num_tokens": len(tokens),
                "truncated": samples.truncated[row],
            }
        )
    return records


def summarize(records: list[dict], prefix: str) -> dict[str, float]:
    """Accuracy, answer rate, self-certainty, entropy, length and truncation of a set of responses."""
    if not records:
        return {}
    mean = lambda key: sum(float(r[key]) for r in records) / len(records)  # noqa: E731
    return {
        f"{prefix}accuracy": mean("correct"),
        f"{prefix}answer_rate": sum(r["answer"] is not None for r in records) / len(records),
        f"{prefix}self_certainty": mean("self_certainty"),
        f"{prefix}entropy": mean("entropy"),
        f"{prefix}len_mean": mean("num_tokens"),
        f"{prefix}truncated": mean("truncated"),
    }


def evaluate(
    model,
    tokenizer,
    problems: Sequence[PromptRecord],
    rendered: Sequence[str],
    answer_format: AnswerFormat,
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    num_samples: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    problem_ids: Sequence[int] | None = None,
) -> EvalResult:
    """Greedy answers (the paper's protocol) plus, when num_samples > 0, sampled ones.

    Metrics: greedy/accuracy, greedy/self_certainty, ... and sampled/accuracy, ... (see `summarize`).
    """
    common = dict(max_new_tokens=max_new_tokens, eos_ids=eos_ids, batch_size=batch_size, problem_ids=problem_ids)
    records = generate_records(model, tokenizer, problems, rendered, answer_format, greedy=True, **common)
    metrics = summarize(records, "greedy/")
    if num_samples > 0:
        sampled = generate_records(
            model, tokenizer, problems, rendered, answer_format, greedy=False, num_samples=num_samples,
            temperature=temperature, top_p=top_p, seed=seed, **common,
        )
        metrics.update(summarize(sampled, "sampled/"))
        records += sampled
    return EvalResult(records=records, metrics=metrics)
