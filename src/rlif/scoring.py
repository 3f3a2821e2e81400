"""Run a causal LM over prompt+response token ids and return its per-token signals.

Layout used everywhere in rlif: prompts are LEFT-padded to a common width P and responses
RIGHT-padded to a common width T, so the hidden state at column P-1+t predicts response token t
for every row. Padding never enters the signals: only rows of `response_mask` are scored.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rlif.signals import DEFAULT_CHUNK_TOKENS, TokenSignals, hidden_signals

# Config attributes that change logits after the lm_head matmul; the chunked head does not apply them.
_UNSUPPORTED_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")


def check_supported(model: nn.Module) -> None:
    """Raise a clear error for models whose logits are not `hidden @ lm_head.weight.T (+ bias)`."""
    config = getattr(model, "config", None)
    for name in _UNSUPPORTED_LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value not in (None, 0, 1, 1.0):
            raise NotImplementedError(
                f"{type(model).__name__} sets config.{name}={value!r}: rlif computes logits from the final "
                "hidden states and the lm_head weight and does not apply this transform yet"
            )
    if model.get_output_embeddings() is None:
        raise NotImplementedError(f"{type(model).__name__} has no output embeddings (lm_head)")


def trim_padding(prompt_ids, prompt_mask, response_ids, response_mask):
    """Drop prompt columns that are padding in every row (left) and response columns likewise (right)."""
    prompt_start = int((prompt_mask.sum(0) > 0).nonzero()[0]) if prompt_mask.any() else prompt_mask.shape[1] - 1
    response_end = int(response_mask.sum(1).max().clamp(min=1))
    return (
        prompt_ids[:, prompt_start:],
        prompt_mask[:, prompt_start:],
        response_ids[:, :response_end],
        response_mask[:, :response_end],
    )


class SignalModel(nn.Module):
    """Wraps a Hugging Face causal LM; `forward` returns `TokenSignals` at response positions.

    Going through this module's forward (rather than the LM's) lets DDP/FSDP wrappers see the
    whole computation while the vocabulary projection stays chunked.
    """

    def __init__(self, model: nn.Module, chunk_size: int = DEFAULT_CHUNK_TOKENS):
        super().__init__()
        check_supported(model)
        self.model = model
        self.chunk_size = chunk_size

    @property
    def _no_split_modules(self):  # accelerate's FSDP auto-wrap reads this: one FSDP unit per decoder layer
        return getattr(self.model, "_no_split_modules", None)

    def forward(
        self,
        prompt_ids: Tensor,  # (B, P) left-padded
        prompt_mask: Tensor,  # (B, P)
        response_ids: Tensor,  # (B, T) right-padded
        response_mask: Tensor,  # (B, T)
        temperature: float = 1.0,
        logprobs_only: bool = False,
    ) -> TokenSignals:
        """Signals at response positions; with `logprobs_only`, self-certainty and entropy are None (cheaper)."""
        input_ids = torch.cat([prompt_ids, response_ids], dim=1)  # (B, P+T)
        attention_mask = torch.cat([prompt_mask, response_mask], dim=1)  # (B, P+T)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P+T), as `generate` numbers them
        decoder = self.model.get_decoder()
        # use_cache=False: nothing reads this pass's keys and values again (the config's default would keep them all)
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).last_hidden_state
        num_prompt = prompt_ids.shape[1]
        hidden = hidden[:, num_prompt - 1 : -1]  # (B, T, d): column P-1+t predicts response token t
        rows = response_mask.bool()  # (B, T)
        head = self.model.get_output_embeddings()
        dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else None
        logprobs, self_certainty, entropy = hidden_signals(
            hidden[rows],  # (n, d)
            head.weight,  # (V, d)
            response_ids[rows],  # (n,)
            bias=head.bias,
            temperature=temperature,
            chunk_size=self.chunk_size,
            compute_dtype=dtype,
            logprobs_only=logprobs_only,
        )
        return TokenSignals(*(None if values is None else _scatter_rows(values, rows) for values in (logprobs, self_certainty, entropy)))


def _scatter_rows(values: Tensor, rows: Tensor) -> Tensor:
    out = torch.zeros(rows.shape, dtype=values.dtype, device=values.device)  # (B, T)
    return out.masked_scatter(rows, values)


def length_batches(prompt_mask: Tensor, response_mask: Tensor, batch_size: int, max_tokens: int = 0) -> list[Tensor]:
    """Row indices in batches, longest rows first: a batch trimmed of its padding (`trim_padding`) then carries
    little, where batches in row order pad every row to the longest response among them.

    Batches of `batch_size` rows; with `max_tokens` > 0 instead as many rows as fit `max_tokens` token cells once
    trimmed (rows x (longest prompt + longest response) among them), so short rows share a batch in larger numbers
    (a row longer than that on its own gets a batch of its own).
    """
    prompt_lengths, response_lengths = prompt_mask.sum(1), response_mask.sum(1)  # (B,)
    order = torch.sort(prompt_lengths + response_lengths, descending=True, stable=True).indices
    if max_tokens <= 0:
        return list(order.split(batch_size)) if len(order) else []
    batches, rows, width = [], [], (0, 0)
    for row, p, r in zip(order.tolist(), prompt_lengths[order].tolist(), response_lengths[order].tolist()):
        grown = (max(width[0], p, 1), max(width[1], r, 1))  # trim_padding keeps at least one column of each
        if rows and (len(rows) + 1) * sum(grown) > max_tokens:
            batches.append(torch.tensor(rows))
            rows, grown = [], (max(p, 1), max(r, 1))
        rows.append(row)
        width = grown
    return batches + [torch.tensor(rows)] if rows else batches


@torch.no_grad()
def score_in_batches(
    signal_model: SignalModel,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    *,
    batch_size: int = 0,
    batches: list[Tensor] | None = None,
    temperature: float = 1.0,
    progress=None,
) -> TokenSignals:
    """`signal_model` over rows in batches of similar length (padding trimmed per batch): `batch_size` rows each,
    or the given `batches` of row indices (`length_batches`); (B, T) signals on the inputs' device, in the inputs'
    row order."""
    device = next(signal_model.parameters()).device
    num_rows, width = response_ids.shape
    out = [torch.zeros(num_rows, width, device=response_ids.device) for _ in range(3)]
    if batches is None:
        if batch_size < 1:
            raise ValueError(f"score_in_batches: batch_size = {batch_size}: expected a positive integer (or batches)")
        batches = length_batches(prompt_mask, response_mask, batch_size)
    for rows in batches:
        batch = trim_padding(prompt_ids[rows], prompt_mask[rows], response_ids[rows], response_mask[rows])
        signals = signal_model(*(t.to(device) for t in batch), temperature=temperature)
        t = batch[2].shape[1]
        for buffer, values in zip(out, (signals.logprobs, signals.self_certainty, signals.entropy)):
            buffer[rows, :t] = values.float().to(buffer.device)
        if progress is not None:
            progress.update(batch[0].shape[0])
    return TokenSignals(*out)
