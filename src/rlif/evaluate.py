"""Evaluate a model on labeled problems: greedy and sampled answers, correctness, self-certainty.

Signals come from the sampling pass itself (`rlif.sampling.sample(track_signals=True)`): no second forward.
Given a `reference` model (the frozen initial policy during training), each answer also gets its mean
log-prob under the reference: with the policy's own log-prob this estimates the KL to the reference, a
label-free signal (as are self-certainty and the agreement of sampled answers) for choosing checkpoints.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Sequence

import torch

from rlif.answers import AnswerFormat, agreement
from rlif.data import PromptRecord
from rlif.rollout import left_pad, right_pad
from rlif.sampling import sample
from rlif.scoring import score_in_batches
from rlif.signals import masked_mean


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
    decode: str = "dynamic",
    problem_ids: Sequence[int] | None = None,
    progress=None,
    reference=None,
) -> list[dict]:
    """Responses to each problem (one greedy, or `num_samples` sampled), each checked and scored.

    `reference`: a `SignalModel`, or a function returning a context that yields one (entered only for the
    scoring, after sampling: LoRA's reference is the policy with its adapters disabled); when given, each
    record gets `ref_logprob`, the mean log-prob of the response under it at the same temperature as
    `mean_logprob`.
    """
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
        decode=decode,
        track_signals=True,
        progress=progress,
    )
    ref_logprobs = None
    if reference is not None:
        prompt_ids, prompt_mask = left_pad([encoded[row // n] for row in range(len(samples.responses))], tokenizer.pad_token_id)
        response_ids, response_mask = right_pad(samples.responses, tokenizer.pad_token_id)
        scope = contextlib.nullcontext(reference) if isinstance(reference, torch.nn.Module) else reference()
        with scope as reference_model:
            ref_signals = score_in_batches(
                reference_model, prompt_ids, prompt_mask, response_ids, response_mask, batch_size=batch_size,
                temperature=1.0 if greedy else temperature,
            )
        ref_logprobs = masked_mean(ref_signals.logprobs, response_mask)  # (rows,)
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
        if ref_logprobs is not None:
            records[-1]["ref_logprob"] = ref_logprobs[row].item()
        if answer_format.describe is not None:
            records[-1]["features"] = answer_format.describe(response)
    return records


def summarize(records: list[dict], prefix: str, answer_format: AnswerFormat | None = None) -> dict[str, float]:
    """Accuracy, answer rate, self-certainty, entropy, length and truncation of a set of responses.

    Also, when the records have them: `ref_logprob` and `kl_ref` (mean of mean_logprob - ref_logprob: for
    sampled answers the usual estimate of the per-token KL to the reference); each task feature's mean
    (`features`, e.g. step_by_step) and, for a boolean feature, the accuracy with and without it
    (`accuracy/step_by_step`, `accuracy/not_step_by_step`); `sc_auroc`, how well self-certainty ranks
    correct answers above incorrect ones (`rlif.calibration.separation`); and, given the `answer_format`
    and several samples per problem, `agreement`: the mean share of a problem's samples that give its
    most common answer (label-free).
    """
    if not records:
        return {}
    mean = lambda key, rows=records: sum(float(r[key]) for r in rows) / len(rows)  # noqa: E731
    metrics = {
        f"{prefix}accuracy": mean("correct"),
        f"{prefix}answer_rate": sum(r["answer"] is not None for r in records) / len(records),
        f"{prefix}self_certainty": mean("self_certainty"),
        f"{prefix}entropy": mean("entropy"),
        f"{prefix}len_mean": mean("num_tokens"),
        f"{prefix}truncated": mean("truncated"),
    }
    if all("ref_logprob" in r for r in records):
        metrics[f"{prefix}ref_logprob"] = mean("ref_logprob")
        metrics[f"{prefix}kl_ref"] = sum(r["mean_logprob"] - r["ref_logprob"] for r in records) / len(records)
    features = sorted({key for r in records for key in r.get("features", {})})
    for feature in features:
        values = [r["features"].get(feature) for r in records if isinstance(r.get("features", {}).get(feature), (bool, int, float))]
        if values:
            metrics[f"{prefix}{feature}"] = sum(float(v) for v in values) / len(values)
        if values and all(isinstance(v, bool) for v in values):
            for name, wanted in ((feature, True), (f"not_{feature}", False)):
                rows = [r for r in records if r.get("features", {}).get(feature) is wanted]
                if rows:
                    metrics[f"{prefix}accuracy/{name}"] = mean("correct", rows)
    from rlif.calibration import separation

    calibration = separation([r["self_certainty"] for r in records], [r["correct"] for r in records])
    if calibration is not None:
        metrics[f"{prefix}sc_auroc"] = calibration.auroc
    by_problem: dict = {}
    for r in records:
        by_problem.setdefault(r["problem"], []).append(r["answer"])
    if answer_format is not None and any(len(answers) > 1 for answers in by_problem.values()):
        shares = [agreement(answers, answer_format.equivalent) for answers in by_problem.values()]
        metrics[f"{prefix}agreement"] = sum(shares) / len(shares)
    return metrics


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
    decode: str = "dynamic",
    problem_ids: Sequence[int] | None = None,
    reference=None,
    progress=None,
) -> EvalResult:
    """Greedy answers (the paper's protocol) plus, when num_samples > 0, sampled ones.

    Metrics: greedy/accuracy, greedy/self_certainty, ... and sampled/accuracy, ... (see `summarize`).
    """
    common = dict(
        max_new_tokens=max_new_tokens, eos_ids=eos_ids, batch_size=batch_size, decode=decode, problem_ids=problem_ids,
        reference=reference, progress=progress,
    )
    records = generate_records(model, tokenizer, problems, rendered, answer_format, greedy=True, **common)
    metrics = summarize(records, "greedy/", answer_format)
    if num_samples > 0:
        sampled = generate_records(
            model, tokenizer, problems, rendered, answer_format, greedy=False, num_samples=num_samples,
            temperature=temperature, top_p=top_p, seed=seed, **common,
        )
        metrics.update(summarize(sampled, "sampled/", answer_format))
        records += sampled
    return EvalResult(records=records, metrics=metrics)
