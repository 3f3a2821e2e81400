"""LoRA through peft: the policy to train, and its checkpoints.

With `lora.rank > 0` only low-rank adapters are trained. The KL reference is the same model with the
adapters disabled (`peft_model.disable_adapter()`), so the base weights exist once. A checkpoint holds
the adapter in peft format (`CHECKPOINT/adapter/`, what resume reads and what
`PeftModel.from_pretrained(base, CHECKPOINT/adapter)` loads) and, with `lora.save_merged`, the merged
weights as a plain Hugging Face model folder (`AutoModelForCausalLM.from_pretrained(CHECKPOINT)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from rlif.errors import ConfigError
from rlif.models.load import decoder_layers, enable_activation_checkpointing, load_model

if TYPE_CHECKING:
    from rlif.config import Config, LoraConfig

ADAPTER_DIR = "adapter"


def is_peft_model(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def load_policy(config: Config, checkpoint: Path | None = None) -> nn.Module:
    """The model to train: full weights (the checkpoint's when resuming) or the base model with adapters."""
    if config.lora.rank == 0:
        policy = load_model(str(checkpoint) if checkpoint else config.model.path, config.model.dtype, config.model.trust_remote_code)
    else:
        base = load_model(config.model.path, config.model.dtype, config.model.trust_remote_code)
        policy = load_adapter(base, Path(checkpoint) / ADAPTER_DIR) if checkpoint else apply_lora(base, config.lora, config.train.seed)
    if config.model.gradient_checkpointing:
        enable_activation_checkpointing(policy)
    if config.model.compile_layers and not decoder_layers(policy):
        raise ConfigError(
            f"config field model.compile_layers = True: {type(policy).__name__} from {config.model.path} has no transformers "
            "decoder layers (GradientCheckpointingLayer) to compile; set it to false"
        )
    return policy


def apply_lora(model: nn.Module, lora: LoraConfig, seed: int) -> nn.Module:
    """Fresh adapters (B = 0, so the policy starts equal to the base model); dropout 0 as everywhere in rlif.

    A is drawn at random: from `seed`, so every process and every run with that seed starts from the same adapters.
    """
    import peft

    targets = "all-linear" if lora.target_modules == ["all-linear"] else list(lora.target_modules)
    adapter_config = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            peft_model = peft.get_peft_model(model, adapter_config)
    except ValueError as error:  # peft: "Target modules {...} not found in the base model"
        raise ConfigError(f"config field lora.target_modules = {lora.target_modules!r}: {error}") from None
    _check_head_not_adapted(peft_model, lora)
    return peft_model


def load_adapter(model: nn.Module, folder: Path) -> nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(folder), is_trainable=True)


def _check_head_not_adapted(peft_model, lora: LoraConfig) -> None:
    from peft.tuners.lora import LoraLayer

    # rlif's chunked projection reads lm_head.weight directly: an adapter there would be silently ignored.
    if isinstance(peft_model.get_output_embeddings(), LoraLayer):
        raise ConfigError(
            f"config field lora.target_modules = {lora.target_modules!r}: adapts the output head (lm_head), which rlif "
            "does not support (its vocabulary projection reads the head weight directly); name the decoder's modules instead"
        )


@torch.no_grad()
def merged_state_dict(peft_model) -> dict[str, torch.Tensor]:
    """Base weights + adapter deltas under the base model's own parameter names; the live model is untouched
    (merge/unmerge in place would round the weights and break exact resumption)."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    merged = {}
    for name, tensor in base.state_dict().items():
        if ".lora_" not in name:
            merged[name.replace(".base_layer.", ".")] = tensor
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight
            merged[f"{name}.weight"] = weight + module.get_delta_weight(peft_model.active_adapter).to(weight.dtype)
    return merged


def save_lora(peft_model, folder: Path, merged: bool) -> None:
    """Adapter into folder/adapter (peft format); merged weights into folder itself when `merged`."""
    peft_model.save_pretrained(Path(folder) / ADAPTER_DIR)
    if merged:
        peft_model.get_base_model().save_pretrained(folder, state_dict=merged_state_dict(peft_model), safe_serialization=True)
