"""Run a causal LM over prompt+response token ids and return its per-token signals.

Layout used everywhere in rlif: prompts are LEFT-padded to a common width P and responses
RIGHT-padded to a common width T, so the hidden state at column P-1+t predicts response token t
for every row. Padding never enters the signals: only rows of `response_mask` are scored.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rlif.signals.chunked import hidden_signals
from rlif.signals.tokens import DEFAULT_CHUNK_TOKENS, TokenSignals

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


