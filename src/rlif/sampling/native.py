"""Sampling responses with a KV cache: the rollout and evaluation engine.

Why not `model.generate`:
- Each prompt is prefilled once and its cache repeated for its n samples (generate prefills n copies).
- Finished sequences leave the batch at once, so they stop costing compute (decode="dynamic"); on a GPU
  decode="compiled" instead keeps shapes fixed for CUDA graphs (a StaticCache; finished rows ride along).
- Randomness is keyed, not streamed: the uniform number that picks token t of sample j of a prompt is a hash
  of (seed, prompt key, j, t), and the token is the inverse-CDF draw from softmax(z / T) at that number. A
  sample therefore does not depend on batch size, prompt order, which rows already finished, the decode
  loop, or how many processes share the batch: one process and K processes draw the same responses.
- Self-certainty, entropy and log-prob of every sampled token come out of the sampling pass itself, so
  Best-of-N selection needs no second forward.
The sampler draws from exactly softmax(z / T), optionally restricted to the top-p nucleus; nothing in the
model's generation_config (top-k, repetition penalty, ...) applies.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache, StaticCache

from rlif.sampling import DECODE_MODES
from rlif.sampling.keys import row_stream, uniform_at
from rlif.signals.batching import left_pad
from rlif.signals.tokens import TokenSignals, block_signals


def draw_tokens(logits: Tensor, uniforms: Tensor, temperature: float, top_p: float = 1.0) -> Tensor:
    """Inverse-CDF draw from softmax(logits / T) (restricted to the top-p nucleus when top_p < 1).

    logits: (A, V); uniforms: (A,) in [0, 1). Returns (A,) token ids.
    """
    z = logits.float()  # (A, V)
    weights = (z - z.max(dim=-1, keepdim=True).values).mul_(1.0 / temperature).exp_()  # (A, V)
    return draw_from_weights(weights, uniforms, top_p)


def draw_from_weights(
    weights: Tensor, uniforms: Tensor, top_p: float = 1.0, cdf_out: Tensor | None = None, host_check: bool = True
) -> Tensor:
    """Inverse-CDF draw from unnormalized weights (A, V) >= 0 (the draw scales by their total); `weights` is kept.

    `cdf_out` (A, V), when given, holds the CDF (a reused block: on CPU a fresh one costs page faults).
    `host_check=False` never waits for the device (the static decode loop): the rare-case fix below
    then always runs instead of only when a check on the host finds it needed.
    """
    probs, order = weights, None
    if top_p < 1.0:
        probs = weights / weights.sum(-1, keepdim=True)  # the nucleus threshold is on normalized mass
        probs, order = probs.sort(dim=-1, descending=True)  # (A, V)
        mass_before = probs.cumsum(-1) - probs  # (A, V): mass of strictly more likely tokens
        probs = probs.masked_fill(mass_before >= top_p, 0.0)  # the most likely token always stays
    cdf = torch.cumsum(probs, -1, out=cdf_out) if cdf_out is not None else probs.cumsum(-1)  # (A, V)
    target = uniforms.to(cdf.dtype)[:, None] * cdf[:, -1:]  # (A, 1), scaled: no renormalization needed
    tokens = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1)  # (A, 1)
    tokens = _skip_zero_mass(tokens, probs, host_check)
    if order is not None:
        tokens = order.gather(-1, tokens)
    return tokens.squeeze(-1)


def _skip_zero_mass(tokens: Tensor, probs: Tensor, host_check: bool = True) -> Tensor:
    """searchsorted can land on a zero-probability entry when the CDF is flat at the draw; step back."""
    chosen = probs.gather(-1, tokens)  # (A, 1)
    if host_check and bool((chosen > 0).all()):
        return tokens
    nonzero = probs > 0  # (A, V)
    positions = torch.arange(probs.shape[-1], device=probs.device).expand_as(probs)
    last_nonzero_before = torch.where(nonzero & (positions <= tokens), positions, -1).max(-1, keepdim=True).values
    return torch.where(chosen > 0, tokens, last_nonzero_before)


@dataclass
class Samples:
    """n samples per prompt; sample j of prompt i is row i * n + j."""

    responses: list[list[int]]  # generated tokens, up to and including the first EOS
    truncated: list[bool]  # hit max_new_tokens without EOS
    num_samples: int  # n
    self_certainty: Tensor | None = None  # (rows,) mean over response tokens, temperature 1
    entropy: Tensor | None = None  # (rows,)
    logprob: Tensor | None = None  # (rows,) mean log-prob of the sampled tokens at the sampling temperature
    token_signals: TokenSignals | None = None  # (rows, longest response) per token, 0 after each response

    def response_mask(self) -> Tensor:
        """(rows, longest response) 1 on the tokens of each response, as `token_signals` is laid out."""
        lengths = torch.tensor([len(r) for r in self.responses])  # (rows,)
        width = max(1, int(lengths.max())) if len(self.responses) else 1
        return (torch.arange(width)[None, :] < lengths[:, None]).long()  # (rows, width)


def _cache_argument(model) -> str:
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


# The static loop asks the device whether every row has finished once per this many steps (one sync each).
FINISH_CHECK_EVERY = 16


@contextlib.contextmanager
def decode_threads(device: torch.device, count: int):
    """Torch's intra-op threads set to `count` while decoding on a CPU (count 0, or another device: unchanged).

    A decode step is many small operations; on a CPU shared with other work, torch's default of one thread per core
    made generation 10-25x slower than one thread (docs/performance.md), and the threads' results are the same draws.
    """
    if device.type != "cpu" or count <= 0 or count == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def sample(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    num_samples: int = 1,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
    prompt_keys: Sequence[int] | None = None,
    batch_size: int = 64,
    track_signals: bool = False,
    decode: str = "dynamic",
    progress=None,
    cpu_threads: int = 0,
) -> Samples:
    """Sample `num_samples` responses to each prompt (token id lists, unpadded).

    `prompt_keys` (default: the prompt's index) names each prompt in the random stream: give the same key
    to the same prompt and you get the same samples wherever it is batched. `batch_size` counts sequences
    per decode batch (prompts per batch = batch_size // num_samples, at least 1).

    `decode` picks the decode loop; all three draw the same tokens from the same uniforms:
    - "dynamic": a growing cache; finished rows leave the batch at once (the fastest on CPU).
    - "static": a preallocated cache of fixed shape, reused across batches and calls; finished rows
      ride along until the whole batch is done, and the loop never waits for the device.
    - "compiled": "static" with the decode forward compiled (`torch.compile`, CUDA graphs on GPU), for
      GPUs, where a small model's decode step is bound by kernel launches.
    `cpu_threads` > 0 sets torch's threads for the call when the model is on a CPU (`decode_threads`).
    """
    if decode not in DECODE_MODES:
        raise ValueError(f"decode={decode!r}: expected one of {', '.join(DECODE_MODES)}")
    device = next(model.parameters()).device
    with decode_threads(device, cpu_threads):
        keys = torch.as_tensor(prompt_keys if prompt_keys is not None else range(len(prompts)), dtype=torch.long)
        rows = len(prompts) * num_samples
        tokens_out = torch.zeros(rows, max_new_tokens, dtype=torch.long)  # (rows, max_new_tokens)
        lengths = torch.zeros(rows, dtype=torch.long)  # (rows,)
        truncated = torch.zeros(rows, dtype=torch.bool)  # (rows,)
        per_token = torch.zeros(rows, max_new_tokens, 3) if track_signals else None  # logprob, self-certainty, entropy
        pick = _Picker(temperature, top_p, greedy, track_signals)
        eos = torch.tensor(list(eos_ids), device=device)
        cache_kw = _cache_argument(model)  # the forward's name for the KV cache
        prompts_per_batch = max(1, batch_size // num_samples)
        static = None
        if decode != "dynamic":
            width = max(len(p) for p in prompts) if prompts else 1
            # Compiled graphs are kept: one batch shape for every call (short calls fill it with copies).
            prompts_in_batch = prompts_per_batch if decode == "compiled" else min(prompts_per_batch, len(prompts))
            static = _StaticDecoder.get(model, prompts_in_batch * num_samples, width + max_new_tokens, decode == "compiled")
        was_training = model.training
        model.eval()

        # Similar lengths share a batch: little left padding.
        by_length = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(by_length), prompts_per_batch):
            batch = by_length[start : start + prompts_per_batch]
            input_ids, attention = (t.to(device) for t in left_pad([prompts[i] for i in batch], pad_id=0))  # (B, W); masked
            positions = (attention.cumsum(-1) - 1).clamp(min=0)  # (B, W)

            # ---- prefill once per prompt; its cache serves all of the prompt's samples ----
            cache = DynamicCache()
            out = model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{cache_kw: cache},
            )
            row_ids = torch.tensor([i * num_samples + j for i in batch for j in range(num_samples)])  # (A,) output rows
            batch_rows = _BatchRows(
                logits=out.logits[:, -1].repeat_interleave(num_samples, 0),  # (A, V)
                attention=attention.repeat_interleave(num_samples, 0),  # (A, W)
                # each row's random stream: seed, prompt key, sample id (the position is mixed in per token)
                streams=row_stream(seed, keys[batch].repeat_interleave(num_samples), torch.arange(num_samples).repeat(len(batch))).to(device),
            )
            if static is None:
                cache.batch_repeat_interleave(num_samples)
                record = _decode_dynamic(model, cache_kw, cache, batch_rows, pick, eos, max_new_tokens)
            else:
                record = static.decode(model, cache_kw, cache, num_samples, batch_rows, pick, eos, max_new_tokens)
            tokens, batch_lengths, batch_truncated, signals = record
            tokens_out[row_ids, : tokens.shape[1]] = tokens
            lengths[row_ids], truncated[row_ids] = batch_lengths, batch_truncated
            if track_signals:
                per_token[row_ids, : signals.shape[1]] = signals
            if progress is not None:
                progress.update(len(row_ids))
        model.train(was_training)

        responses = [tokens_out[r, :n].tolist() for r, n in enumerate(lengths.tolist())]
        samples = Samples(responses=responses, truncated=truncated.tolist(), num_samples=num_samples)
        if track_signals:
            width = max(1, int(lengths.max())) if rows else 1
            per_token = per_token[:, :width]  # (rows, T), zero after each response
            samples.token_signals = TokenSignals(per_token[..., 0], per_token[..., 1], per_token[..., 2])
            means = (per_token.double().sum(1) / lengths.clamp(min=1)[:, None]).float()  # (rows, 3)
            samples.logprob, samples.self_certainty, samples.entropy = means[:, 0], means[:, 1], means[:, 2]
        return samples


@dataclass
class _BatchRows:
    """The A = prompts x samples rows of one decode batch, sample j of prompt i at row i * n + j."""

    logits: Tensor  # (A, V) the prefill's last-position logits
    attention: Tensor  # (A, W) 1 on prompt tokens (left-padded)
    streams: Tensor  # (A,) int64 state of each row's random stream (`row_stream`)

    def select(self, keep: Tensor) -> _BatchRows:
        return _BatchRows(self.logits[keep], self.attention[keep], self.streams[keep])


@dataclass
class _Picker:
    """Draws (or takes the argmax of) each row's next token; with `track_signals`, also scores it."""

    temperature: float
    top_p: float
    greedy: bool
    track_signals: bool
    scratch: Tensor | None = None  # (2, A, V) float32 reused by every step: the draw's weights and CDF

    def __call__(self, logits: Tensor, streams: Tensor, t: int, host_check: bool = True):
        """logits (A, V) of step t (overwritten). Returns tokens (A,) and signals (A, 3) or None."""
        if self.greedy:
            tokens = logits.argmax(-1)  # (A,)
        else:
            uniforms = uniform_at(streams, t)  # (A,)
        if not self.track_signals:
            return (tokens if self.greedy else draw_tokens(logits, uniforms, self.temperature, self.top_p)), None
        # One exp((z - max) / T) serves the draw and the log-prob; on CPU a fresh (A, V) block per step
        # would cost more in page faults than the exp itself.
        num_rows, vocab_size = logits.shape
        if self.scratch is None or self.scratch.shape[1] < num_rows or self.scratch.device != logits.device:
            self.scratch = torch.empty(2, num_rows, vocab_size, device=logits.device)
        weights, cdf = self.scratch[0, :num_rows], self.scratch[1, :num_rows]
        draw = tokens if self.greedy else (lambda w: draw_from_weights(w, uniforms, self.top_p, cdf, host_check))
        step = block_signals(logits.float(), draw, 1.0 if self.greedy else self.temperature, scratch=weights)
        return step.targets, torch.stack([step.logprobs, step.self_certainty, step.entropy], -1)


def _decode_dynamic(model, cache_kw: str, cache, rows: _BatchRows, pick: _Picker, eos: Tensor, max_new_tokens: int):
    """Decode with a growing cache; finished rows leave the batch at once. Returns CPU tensors:
    tokens (A, T), lengths (A,), truncated (A,), signals (A, T, 3) or None."""
    num_rows = rows.logits.shape[0]
    tokens_out = torch.zeros(num_rows, max_new_tokens, dtype=torch.long)
    signals_out = torch.zeros(num_rows, max_new_tokens, 3) if pick.track_signals else None
    lengths = torch.zeros(num_rows, dtype=torch.long)
    truncated = torch.zeros(num_rows, dtype=torch.bool)
    live = torch.arange(num_rows)  # (A',) output rows still decoding
    logits, attention, streams = rows.logits, rows.attention, rows.streams
    next_position = attention.sum(-1, keepdim=True)  # (A', 1) position id of the next token
    for t in range(max_new_tokens):
        tokens, signals = pick(logits, streams, t)
        tokens_out[live, t] = tokens.cpu()
        if signals is not None:
            signals_out[live, t] = signals.cpu()
        lengths[live] = t + 1
        finished = torch.isin(tokens, eos)  # (A',)
        if t == max_new_tokens - 1:
            truncated[live] = ~finished.cpu()
            break
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(-1)  # (A'',)
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            # the prefill's logits are not needed again: only the rows' streams, not the (A, V) block, are narrowed
            streams, tokens, attention, next_position = streams[keep], tokens[keep], attention[keep], next_position[keep]
            live = live[keep.cpu()]
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)  # (A', W + t + 1)
        out = model(
            input_ids=tokens[:, None],
            attention_mask=attention,
            position_ids=next_position,
            use_cache=True,
            **{cache_kw: cache},
        )
        logits = out.logits[:, -1]  # (A', V)
        next_position = next_position + 1
    return tokens_out, lengths, truncated, signals_out


_COMPILED_DECODERS = weakref.WeakKeyDictionary()  # model -> {batch rows: compiled _StaticDecoder}


class _StaticDecoder:
    """A `StaticCache` of fixed rows x length and the decode step over it, kept per model and reused
    across batches and calls (compiled graphs stay valid only while the cache's tensors stay put)."""

    @classmethod
    def get(cls, model, num_rows: int, length: int, compiled: bool) -> _StaticDecoder:
        """A decoder for `model`. Compiled ones are kept per model and batch rows (their graphs read this
        cache; a longer one replaces a shorter one); plain static ones last one `sample` call."""
        length = -(-length // 256) * 256  # rounded up: nearby lengths share one cache and one graph
        if not compiled:
            return cls(model.config, num_rows, length, compiled)
        kept = _COMPILED_DECODERS.setdefault(model, {})  # rows -> decoder
        if num_rows not in kept or kept[num_rows].length < length:
            kept[num_rows] = cls(model.config, num_rows, length, compiled)
        return kept[num_rows]

    def __init__(self, config, num_rows: int, length: int, compiled: bool):
        self.config, self.num_rows, self.length, self.compiled = config, num_rows, length, compiled
        self.cache = self._new_cache()
        if any(getattr(layer, "is_sliding", False) for layer in self.cache.layers):
            raise ValueError(
                f"decode={'compiled' if compiled else 'static'!r} needs full-attention layers; {config.model_type} has "
                "sliding-window layers: use decode='dynamic'"
            )

    def _new_cache(self):
        return StaticCache(config=self.config, max_cache_len=self.length)  # allocated by its first update

    def decode(
        self, model, cache_kw: str, prefill_cache, num_samples: int, rows: _BatchRows, pick: _Picker, eos: Tensor, max_new_tokens: int
    ):
        """Decode one batch (at most `num_rows` rows; the rest of the fixed batch repeats them and is
        dropped). Same outputs as `_decode_dynamic`."""
        real_rows, device = rows.logits.shape[0], rows.logits.device
        fill = torch.arange(self.num_rows, device=device) % real_rows  # (R,) the rows that fill the batch
        rows = rows.select(fill)
        width = rows.attention.shape[1]
        first, prefilled = self.cache.layers[0], prefill_cache.layers[0]
        if getattr(first, "is_initialized", False) and (first.keys.dtype, first.values.dtype) != (prefilled.keys.dtype, prefilled.values.dtype):
            self.cache = self._new_cache()  # the same model sampled with and without autocast: another cache
        self.cache.reset()
        source = fill // num_samples  # (R,) prompt i's cache row serves its samples: row r reads prompt fill[r] // n
        for layer_index, layer in enumerate(prefill_cache.layers):
            self.cache.update(layer.keys[source], layer.values[source], layer_index)
        attention = torch.zeros(self.num_rows, self.length, dtype=torch.long, device=device)  # (R, L)
        attention[:, :width] = rows.attention
        attention[:, width : width + max_new_tokens] = 1  # the causal mask hides what is not written yet
        next_position = rows.attention.sum(-1, keepdim=True)  # (R, 1)
        tokens_out = torch.zeros(self.num_rows, max_new_tokens, dtype=torch.long, device=device)
        signals_out = torch.zeros(self.num_rows, max_new_tokens, 3, device=device) if pick.track_signals else None
        lengths = torch.zeros(self.num_rows, dtype=torch.long, device=device)
        running = torch.ones(self.num_rows, dtype=torch.bool, device=device)  # no EOS drawn yet
        logits = rows.logits
        # compiled once and kept on the model by transformers; looked up once per batch, not per step
        forward = model.get_compiled_call(None) if self.compiled else model
        for t in range(max_new_tokens):
            tokens, signals = pick(logits, rows.streams, t, host_check=False)
            tokens_out[:, t] = tokens
            if signals is not None:
                signals_out[:, t] = signals * running[:, None]  # zero after each response
            lengths += running
            running &= ~torch.isin(tokens, eos)
            if t == max_new_tokens - 1 or ((t + 1) % FINISH_CHECK_EVERY == 0 and not bool(running.any())):
                break
            if self.compiled:
                torch.compiler.cudagraph_mark_step_begin()  # this step's outputs replace the last step's
            out = forward(
                input_ids=tokens[:, None],
                attention_mask=attention,
                position_ids=next_position + t,
                use_cache=True,
                logits_to_keep=1,
                **{cache_kw: self.cache},
            )
            logits = out.logits[:, -1].to(torch.float32, copy=True)  # (R, V), ours: the graph reuses its output
        end = int(lengths.max())
        signals = None if signals_out is None else signals_out[:real_rows, :end].cpu()
        return tokens_out[:real_rows, :end].cpu(), lengths[:real_rows].cpu(), running[:real_rows].cpu(), signals
