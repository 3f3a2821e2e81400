"""The frozen reference policy pi_ref of the KL term (and of offline rewards and evaluation's label-free signals)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from accelerate.utils import fsdp2_prepare_model

from rlif.signals.model import SignalModel

if TYPE_CHECKING:
    from rlif.config import Config


class Reference:
    """The frozen reference policy pi_ref of the KL term.

    Full fine-tuning: a second copy of the initial weights, on the policy's device, offloaded to CPU memory
    between uses, or on a device of its own (`model.reference_device`); under FSDP2 it is sharded like the
    policy. LoRA: the policy itself with its adapters disabled, so no second copy exists.
    """

    def __init__(self, signal_model=None, peft_model=None, device: torch.device | None = None, offload: bool = False,
                 sharded: bool = False):
        self.signal_model = signal_model
        self.peft_model = peft_model
        self.device = device
        self.offload = offload
        self.sharded = sharded
        if offload:  # the host copies, for good: each pass copies them in, and after it the module points back here
            self._host_copies = offloaded_weights(signal_model, pin=device is not None and device.type == "cuda")

    @contextlib.contextmanager
    def scoring(self, policy_signal_model):
        """Yields the module whose forward gives reference signals (inputs go to its own device)."""
        if self.peft_model is not None:
            with self.peft_model.disable_adapter():
                yield policy_signal_model
            return
        if self.offload:
            for tensor, host in self._host_copies:
                tensor.data = host.to(self.device, non_blocking=True)  # from pinned memory: queued, the host goes on
        try:
            yield self.signal_model
        finally:
            if self.offload:  # frozen weights: nothing to copy back, the device copies are dropped
                for tensor, host in self._host_copies:
                    tensor.data = host
            if self.sharded:  # an FSDP2 root keeps its parameters gathered after a forward; free them
                self.signal_model.reshard()


def offloaded_weights(module: torch.nn.Module, pin: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter or buffer, its host copy) for each of `module`'s tensors, the module left pointing at the host
    copies; pinned (page-locked) with `pin`, so copies to a GPU run asynchronously at full bus speed."""
    pairs = []
    for tensor in [*module.parameters(), *module.buffers()]:  # a tied weight is listed once
        host = tensor.data.to("cpu")
        tensor.data = host.pin_memory() if pin else host
        pairs.append((tensor, tensor.data))
    return pairs


def build_reference(config: Config, accelerator, policy, load_model_fn, needed: bool) -> Reference | None:
    """None when nothing needs it (no KL term, no reward reading the initial model)."""

    if not needed:
        return None
    if config.lora.rank > 0:
        return Reference(peft_model=policy)
    where = config.model.reference_device
    offload = where == "offload"
    device = accelerator.device if where in ("auto", "offload") else torch.device(where)
    model = load_model_fn(config.model.path, config.model.dtype, config.model.trust_remote_code).requires_grad_(False)
    signal_model = SignalModel(model, config.train.chunk_tokens).eval()
    if accelerator.is_fsdp2:
        return Reference(fsdp2_prepare_model(accelerator, signal_model), sharded=True)
    return Reference(signal_model.to("cpu" if offload else device), device=device, offload=offload)
