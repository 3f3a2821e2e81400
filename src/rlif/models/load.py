"""Loading models and tokenizers from a local folder or a hub id, with clear errors.

A loaded model is checked once, before any work, for what would otherwise fail later and obscurely: weights
holding NaN/inf (a sampling crash), a model that is not a causal LM (a bidirectional encoder such as BERT would
train silently on tokens it can see ahead), and, with its tokenizer, an embedding smaller than the vocabulary.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import logging as hf_logging

from rlif.errors import ModelLoadError
from rlif.models.install import installed_model_path

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}



def resolve_model_path(path: str) -> str:
    """A local folder as is; a registered short name (`rlif models list`) as its installed folder; else a hub id.

    A path that can only be local (absolute, ./ ../ ~, or with more folders than a hub id's owner/name) and does
    not exist is an error here, not a question to the hub."""
    if Path(path).is_dir():
        return path
    if Path(path).exists():
        raise ModelLoadError(f"model path {path} is a file; expected a model folder (config.json, weights, tokenizer)")
    if _looks_local(path):
        raise ModelLoadError(f"model folder {path} does not exist")
    return installed_model_path(path) or path


def _looks_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith(("./", "../", "~")) or path.count("/") > 1 or "\\" in path


def _where(path: str) -> str:
    return f"local folder {path}" if Path(path).is_dir() else f"{path!r} (not a local folder; tried the Hugging Face hub)"


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_model_folder(path: str, tokenizer_only: bool = False) -> None:
    """A local folder must be a Hugging Face model folder (config.json; for a tokenizer, tokenizer files are enough):
    say what it is instead, before transformers blames something else (a missing tokenizer library, a hub lookup)."""
    folder = Path(path)
    if not folder.is_dir() or (folder / "config.json").is_file():
        return
    if tokenizer_only and any((folder / name).is_file() for name in TOKENIZER_FILES):
        return
    if (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir():
        raise ModelLoadError(f"{folder} is a training run folder, not a model folder; use one of its checkpoints "
                             f"({folder / 'checkpoints'}/step_N) or a command that accepts a run (rlif eval, rlif score)")
    raise ModelLoadError(f"{folder} is not a model folder: it has no config.json (expected a Hugging Face save_pretrained folder)")


@contextmanager
def quiet_transformers():
    """transformers' progress bars (loading weights, writing shards) off for the block: rlif draws its own."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """Tokenizer with left padding (rlif's prompt layout) and a pad token (EOS when it has none)."""

    path = resolve_model_path(path)
    check_model_folder(path, tokenizer_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as error:  # transformers raises OSError, ValueError, HTTP errors...
        raise ModelLoadError(f"could not load a tokenizer from {_where(path)}: {error}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        # Masks come from lengths, never from `token == pad`, so PAD == EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"the tokenizer in {_where(path)} has no EOS token: responses could never end")
    return tokenizer


def load_model(path: str, dtype: str = "float32", trust_remote_code: bool = False) -> nn.Module:
    """A causal LM with dropout disabled (RL updates must score with the policy that sampled)."""

    path = resolve_model_path(path)
    check_model_folder(path)
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    except Exception as error:
        raise ModelLoadError(f"could not load a causal LM from {_where(path)}: {error}") from None
    disable_dropout(model)
    check_finite_weights(model, path)
    check_causal(model, path)
    return model


@torch.no_grad()
def check_finite_weights(model: nn.Module, path: str) -> None:
    """ModelLoadError naming the model and its first parameter that holds NaN/inf (one sum per parameter)."""
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter.sum(dtype=torch.float32)) and not torch.isfinite(parameter).all():
            bad = int((~torch.isfinite(parameter)).sum())
            raise ModelLoadError(f"the weights in {_where(path)} hold NaN/inf: {bad} of the {parameter.numel()} values of "
                                 f"{name}; the model files are damaged or were saved from a diverged run")


@torch.no_grad()
def check_causal(model: nn.Module, path: str) -> None:
    """ModelLoadError unless the model is causal: its logits at a position must not depend on later tokens.

    Two 3-token inputs that differ only in the last token go through the model: a causal LM gives the same logits at
    the first two positions, a bidirectional encoder (BERT, RoBERTa without is_decoder) does not. A config flag
    cannot tell them apart (is_decoder is False for Llama too), so the model is asked."""
    vocab = model.get_input_embeddings().num_embeddings
    if vocab < 4:
        return
    device = next(model.parameters()).device
    ids = torch.tensor([[0, 1, 2], [0, 1, 3]], device=device)
    training = model.training
    model.eval()
    try:
        logits = model(input_ids=ids).logits.float()
    finally:
        model.train(training)
    scale = logits[:, :2].abs().max().clamp(min=1e-6)
    if (logits[0, :2] - logits[1, :2]).abs().max() > 1e-3 * scale:
        raise ModelLoadError(
            f"the model in {_where(path)} ({type(model).__name__}) is not a causal language model: its predictions depend "
            "on later tokens (a bidirectional encoder such as BERT); rlif trains decoder-only causal LMs"
        )


def check_vocabulary(model: nn.Module, tokenizer, path: str) -> None:
    """ModelLoadError if the tokenizer can produce token ids the model's embedding has no row for."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ModelLoadError(
            f"the model in {_where(path)} has an embedding of {rows} tokens but its tokenizer has {len(tokenizer)}: "
            f"token ids {rows} and above have no embedding. Use the tokenizer the model was trained with"
        )


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in the backward (non-reentrant); transformers >= 5.2x renamed the method."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability in the model to 0, so train() and eval() compute the same function."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    if config is not None:
        for name, value in vars(config).items():
            if "dropout" in name and isinstance(value, float):
                setattr(config, name, 0.0)


def eos_token_ids(tokenizer, model=None) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS and the model's generation config EOS ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return sorted(i for i in ids if i is not None)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder blocks of a transformers model (its `GradientCheckpointingLayer`s)."""

    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


@contextmanager
def compiled_layers(model: nn.Module, enabled: bool = True):
    """Inside the block (forward and backward: activation checkpointing recomputes through it), each decoder layer of
    `model` runs compiled (`torch.compile`: one graph per layer class serves every layer, its sequence length made
    dynamic at the first new width); outside it the layers run eagerly, so sampling, the compiled decode and
    scoring see the model unchanged. The compiled callables stay on the layers from one block to the next.
    This uses the attribute `nn.Module.compile()` sets (`_compiled_call_impl`), set and cleared here."""
    if not enabled:
        yield
        return
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no transformers decoder layers (GradientCheckpointingLayer) to compile")
    for layer in layers:
        if "_rlif_compiled_call" not in layer.__dict__:
            layer._rlif_compiled_call = torch.compile(layer._call_impl)
        layer._compiled_call_impl = layer._rlif_compiled_call
    try:
        yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None
