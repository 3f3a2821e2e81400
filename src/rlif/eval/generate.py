"""Answer labeled problems: greedy and sampled responses as evaluation records (`rlif.eval.records`), each checked
and scored.

Signals come from the sampling pass itself (`rlif.sampling.native.sample(track_signals=True)`): no second forward.
Given a `reference` model (the frozen initial policy during training), each answer also gets its mean
log-prob under the reference: with the policy's own log-prob this estimates the KL to the reference, a
label-free signal (as are self-certainty and the agreement of sampled answers) for choosing checkpoints.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from rlif.data import jsonl
from rlif.data.answers import AnswerFormat
from rlif.data.prompts import PromptRecord, TrainingPrompts
from rlif.eval.summary import summarize
from rlif.sampling.keys import seed_for
from rlif.sampling.native import sample
from rlif.signals.batching import left_pad, right_pad, score_in_batches
from rlif.signals.tokens import masked_mean

if TYPE_CHECKING:
    from rlif.config import Config


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
    cpu_threads: int = 0,
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
        cpu_threads=cpu_threads,
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
    responses = [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in samples.responses]
    # all at once: a code format runs the programs in parallel sandboxes
    graded = answer_format.grade(responses, [problems[row // n].label for row in range(len(responses))])
    records = []
    for row, tokens in enumerate(samples.responses):
        i, j = divmod(row, n)
        response = responses[row]
        check = dict(graded[row])
        records.append(
            {
                "problem": problem_ids[i],
                "sample": -1 if greedy else j,
                "prompt": problems[i].prompt,
                "label": problems[i].label,
                "response": response,
                "answer": check.pop("answer"),
                "correct": check.pop("correct"),
                "self_certainty": samples.self_certainty[row].item(),
                "entropy": samples.entropy[row].item(),
                "mean_logprob": samples.logprob[row].item(),
                "num_tokens": len(tokens),
                "truncated": samples.truncated[row],
            }
        )
        records[-1].update(check)  # what else the check gives (code: the program, its status, isolation, ...)
        if ref_logprobs is not None:
            records[-1]["ref_logprob"] = ref_logprobs[row].item()
        if answer_format.describe is not None:
            records[-1]["features"] = answer_format.describe(response)
    return records


def evaluate_in_training(
    accelerator, model, tokenizer, problems: TrainingPrompts, answer_format: AnswerFormat, eos_ids, config: Config,
    run_dir: Path, step: int, reference=None,
) -> dict[str, float]:
    """Greedy answers to the held-out problems and `eval.num_samples` samples each, this process answering its share;
    gathered and written to RUN/eval/step_N.jsonl (records with their step), summarized as `eval/...` metrics.

    With a reference (a SignalModel, or a function returning a context that yields one), answers also get their
    reference log-prob (label-free signals: `kl_ref`, `ref_logprob`).
    """
    shard = list(range(accelerator.process_index, len(problems.records), accelerator.num_processes))
    show = config.run.progress and accelerator.is_main_process
    total = len(shard) * (1 + config.eval.num_samples)
    bar = tqdm(total=total, desc=f"eval step {step}", unit="answer", leave=False, disable=not show, dynamic_ncols=True)
    common = dict(
        max_new_tokens=config.eval.max_new_tokens or config.rollout.max_new_tokens, eos_ids=eos_ids,
        batch_size=config.eval.batch_size, decode=config.rollout.decode, cpu_threads=config.rollout.cpu_threads,
        problem_ids=shard, reference=reference, progress=bar,
    )
    problems_here, rendered_here = [problems.records[i] for i in shard], [problems.rendered[i] for i in shard]
    records = generate_records(model, tokenizer, problems_here, rendered_here, answer_format, greedy=True, **common)
    if config.eval.num_samples > 0:
        records += generate_records(
            model, tokenizer, problems_here, rendered_here, answer_format, greedy=False, num_samples=config.eval.num_samples,
            temperature=config.rollout.temperature, top_p=config.rollout.top_p, seed=seed_for(config.train.seed, step, 1), **common,
        )
    bar.close()
    records = sorted(gather_object(records), key=lambda r: (r["sample"], r["problem"]))
    if accelerator.is_main_process:
        jsonl.write(Path(run_dir) / "eval" / f"step_{step:06d}.jsonl", [{"step": step, **record} for record in records])
    greedy = [r for r in records if r["sample"] < 0]
    sampled = [r for r in records if r["sample"] >= 0]
    summaries = {**summarize(greedy, "greedy/", answer_format), **summarize(sampled, "sampled/", answer_format)}
    return {f"eval/{k}": v for k, v in summaries.items()}
