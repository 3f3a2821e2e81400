"""Loading models and tokenizers from a local folder or a hub id, with clear errors."""

from __future__ import annotations

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
    """A local folder as is; a registered short name (`rlif models list`) as its installed folder; else a hub id."""
    if Path(path).is_dir():
        return path
    return installed_model_path(path) or path


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
    return model


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
