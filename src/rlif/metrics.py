"""Every metric name rlif logs (metrics.jsonl, trackers), with the words and units plots and reports use for it.

Training steps log `reward/`, `rollout/`, `signals/`, `loss/`, `optim/` and `time/` keys; evaluations log
`eval/greedy/<field>` and `eval/sampled/<field>` (`eval_key`), where a field is one of EVAL_FIELDS or a task feature
(an `AnswerFormat.describe` key, e.g. step_by_step, and `accuracy/<feature>`, `accuracy/not_<feature>`).
"""

from __future__ import annotations

REWARD_MEAN, REWARD_STD = "reward/mean", "reward/std"
ROLLOUT_ACCURACY, ROLLOUT_AGREEMENT = "rollout/accuracy", "rollout/agreement"
LEN_MEAN, LEN_MAX, TRUNCATED = "rollout/len_mean", "rollout/len_max", "rollout/truncated"
# |engine log-prob - trainer log-prob| of the sampled tokens (when the trainer scores the rollout): mean, max
LOGPROB_MISMATCH_MEAN, LOGPROB_MISMATCH_MAX = "rollout/logprob_mismatch_mean", "rollout/logprob_mismatch_max"
SELF_CERTAINTY, ENTROPY, LOGPROB = "signals/self_certainty", "signals/entropy", "signals/logprob"
KL_REF, REF_SELF_CERTAINTY = "signals/kl_ref", "signals/ref_self_certainty"
LOSS_POLICY, LOSS_KL, CLIP_FRAC = "loss/policy", "loss/kl", "loss/clip_frac"
GRAD_NORM, LR = "optim/grad_norm", "optim/lr"
STEP_S, GENERATE_S, SCORE_S, UPDATE_S, TOKENS_PER_S = "time/step_s", "time/generate_s", "time/score_s", "time/update_s", "time/tokens_per_s"
SYNC_S = "time/sync_s"  # weights into the vLLM engine after the update (part of time/update_s)

# Evaluation fields (`rlif.eval.summary.summarize`): (words, unit) for reports and plot axes
EVAL_FIELDS = {
    "accuracy": ("accuracy", "share correct"),
    "answer_rate": ("answered", "share"),
    "self_certainty": ("self-certainty", "nats per token"),
    "entropy": ("entropy", "nats per token"),
    "len_mean": ("response length", "tokens"),
    "truncated": ("truncated at the token limit", "share"),
    "sc_auroc": ("self-certainty AUROC for correctness", "AUROC"),
    "agreement": ("agreement with the problem's most common answer", "share"),
    "ref_logprob": ("log-prob under the initial model", "nats per token"),
    "kl_ref": ("KL to the initial model", "nats per token"),
}


def eval_key(decoding: str, field: str) -> str:
    """`eval/greedy/accuracy` and the like; decoding is "greedy" or "sampled"."""
    return f"eval/{decoding}/{field}"


GREEDY_ACCURACY = eval_key("greedy", "accuracy")
SAMPLED_AGREEMENT = eval_key("sampled", "agreement")
SAMPLED_SELF_CERTAINTY = eval_key("sampled", "self_certainty")
SAMPLED_KL_REF = eval_key("sampled", "kl_ref")


def feature_words(feature: str) -> str:
    """A task feature's name for people: step_by_step -> "step by step"."""
    return feature.replace("_", " ")
