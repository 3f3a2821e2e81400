"""The batch layout every forward in rlif uses, and batching by length.

Prompts are LEFT-padded to a common width P and responses RIGHT-padded to a common width T, so the
hidden state at column P-1+t predicts response token t for every row; masks, never pad token ids, say
which positions are real (so PAD == EOS is safe).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlif.signals.model import SignalModel
from rlif.signals.tokens import TokenSignals


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
    row order, float32 (float64 for a float64 model: its signals are kept as computed)."""
    parameter = next(signal_model.parameters())
    device, dtype = parameter.device, torch.float64 if parameter.dtype == torch.float64 else torch.float32
    num_rows, width = response_ids.shape
    out = [torch.zeros(num_rows, width, dtype=dtype, device=response_ids.device) for _ in range(3)]
    if batches is None:
        if batch_size < 1:
            raise ValueError(f"score_in_batches: batch_size = {batch_size}: expected a positive integer (or batches)")
        batches = length_batches(prompt_mask, response_mask, batch_size)
    for rows in batches:
        batch = trim_padding(prompt_ids[rows], prompt_mask[rows], response_ids[rows], response_mask[rows])
        signals = signal_model(*(t.to(device) for t in batch), temperature=temperature)
        t = batch[2].shape[1]
        for buffer, values in zip(out, (signals.logprobs, signals.self_certainty, signals.entropy)):
            buffer[rows, :t] = values.to(buffer.dtype).to(buffer.device)
        if progress is not None:
            progress.update(batch[0].shape[0])
    return TokenSignals(*out)


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max((len(s) for s in sequences), default=0)  # none: a process whose share of the problems is empty
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


def right_pad(sequences: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(1, max((len(s) for s in sequences), default=0))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def pad_pairs(prompt_tokens: list[list[int]], response_tokens: list[list[int]], pad_id: int):
    """(prompt_ids, prompt_mask, response_ids, response_mask): prompts left-padded, responses right-padded."""
    return (*left_pad(prompt_tokens, pad_id), *right_pad(response_tokens, pad_id))
