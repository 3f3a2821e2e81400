"""The few places where the training loop must know that the policy is spread over processes.

rlif adds nothing to the distribution itself: `accelerate` prepares the model (DDP, FSDP2, DeepSpeed
ZeRO-2), `torch.distributed.checkpoint` gathers full state dicts. What is left for rlif:
- start-up checks for the combinations it does not support, with the reason and what to use instead;
- the loss scale: each process divides its token sum by the step's global token count, and DDP, FSDP and
  DeepSpeed then AVERAGE gradients over processes, so the loss is multiplied by the process count;
- sampling calls the inner language model directly (not the FSDP root), so under FSDP2 all parameters
  are gathered for the duration of a rollout;
- checkpoints hold full weights and a full optimizer state keyed by parameter name, so a run resumes on
  any process count that divides the batch.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from accelerate.utils import DistributedType
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from rlif.errors import ConfigError
from rlif.models.lora import is_peft_model

if TYPE_CHECKING:
    from rlif.config import Config


def check_supported_setup(accelerator, config: Config) -> None:
    """Refuse, before any model is loaded, the distributed modes rlif does not support."""
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ConfigError(
            "FSDP version 1 is not supported: set fsdp_version: 2 in the accelerate config "
            "(configs/accelerate/fsdp2.yaml); rlif samples with the full parameters through FSDP2's unshard()"
        )
    if kind == DistributedType.FSDP and config.rollout.decode == "compiled":
        raise ConfigError(
            "config field rollout.decode = 'compiled' is not supported under FSDP2 (its parameters are regathered for "
            "every rollout, which compiled graphs cannot follow); use 'static' or 'dynamic'"
        )
    if kind in (DistributedType.FSDP, DistributedType.DEEPSPEED) and config.model.compile_layers:
        raise ConfigError(
            f"config field model.compile_layers = True is not supported under {'FSDP2' if kind == DistributedType.FSDP else 'DeepSpeed'} "
            "(their hooks around each layer are not traced here); set it to false, or train with one process or DDP"
        )
    if kind == DistributedType.DEEPSPEED:
        stage = accelerator.state.deepspeed_plugin.zero_stage
        if stage == 3:
            raise ConfigError(
                "DeepSpeed ZeRO-3 is not supported: rlif's chunked vocabulary projection reads the lm_head weight "
                "outside that module's forward, where ZeRO-3 keeps it partitioned. FSDP2 shards parameters, gradients "
                "and optimizer state the same way and is supported: configs/accelerate/fsdp2.yaml"
            )
        clipping = accelerator.state.deepspeed_plugin.deepspeed_config.get("gradient_clipping")
        if clipping != config.train.max_grad_norm:  # DeepSpeed clips inside its engine step, with its own setting
            raise ConfigError(
                f"config field train.max_grad_norm = {config.train.max_grad_norm}: under DeepSpeed the gradient is clipped "
                f"by the DeepSpeed config's gradient_clipping ({clipping!r}); set both to the same value"
            )
        if config.run.resume:
            raise ConfigError(
                "config field run.resume = True: resuming under DeepSpeed is not supported (its optimizer state is "
                "partitioned per process and rlif does not save it); resume this run under DDP or FSDP2, or start a "
                "new run from the checkpoint's model folder"
            )
    if accelerator.is_fsdp2 and config.model.reference_device != "auto" and config.lora.rank == 0:
        raise ConfigError(
            f"config field model.reference_device = {config.model.reference_device!r}: under FSDP2 the reference is "
            "sharded over the processes like the policy; use auto"
        )
    if accelerator.num_processes > 1 and config.model.reference_device not in ("auto", "offload") and config.lora.rank == 0:
        raise ConfigError(
            f"config field model.reference_device = {config.model.reference_device!r}: a device of its own is for "
            f"one-process runs (all {accelerator.num_processes} processes would put their reference there); use auto or offload"
        )
    if config.lora.rank > 0 and kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ConfigError(
            f"config field lora.rank = {config.lora.rank}: LoRA runs under DDP or on one device, not under {kind.value} "
            "(the adapters' optimizer state is small; the frozen base weights are not sharded)"
        )


def loss_scale(accelerator) -> float:
    """Factor that undoes the gradient averaging over processes (see the module docstring)."""
    return float(accelerator.num_processes)


def on_any_process(accelerator, flag: bool) -> bool:
    """Whether `flag` holds on some process: every process gets the same answer, so a check that stops training
    stops all of them together, each with the message (one raising alone leaves the others in a collective until the
    launcher tears them down)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "sum") > 0)


def weights_finite(accelerator, model) -> bool:
    """Whether every trainable parameter is finite on every process (the same answer everywhere): one sum per
    parameter (NaN and inf propagate through it) and one host sync; frozen weights were checked when loaded. Under
    FSDP2 each process sums its own shards."""
    sums = [_local(p.detach()).sum(dtype=torch.float32) for p in model.parameters() if p.requires_grad]
    finite = bool(torch.isfinite(torch.stack(sums)).all()) if sums else True
    return not on_any_process(accelerator, not finite)


def _local(tensor):
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def same_batch_count(accelerator, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """This process's micro-batches, split until every process has as many as the one with the most: under FSDP2
    each forward gathers the parameters from all processes, so all must run the same number (token-budget batches,
    `train.micro_batch_tokens` and `train.score_batch_tokens`, differ in number where the processes' answers differ
    in length)."""
    if accelerator.num_processes == 1:
        return batches
    most = int(accelerator.reduce(torch.tensor(len(batches), device=accelerator.device), "max"))
    return split_largest(batches, most)


def split_largest(batches: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """`batches` with the largest one split in two halves, in place of it, until there are `count` (at most the rows)."""
    batches = list(batches)
    while len(batches) < count:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        batches[largest : largest + 1] = batches[largest].tensor_split(2)
    return batches


def init_fsdp_root(accelerator, signal_model) -> None:
    """FSDP2 takes the first module that runs forward as its root; sampling calls the inner LM (a child),
    so one tiny no-grad forward through the real root comes first."""
    if not accelerator.is_fsdp2:
        return
    one = torch.ones(1, 1, dtype=torch.long, device=accelerator.device)
    with torch.no_grad():
        signal_model(one, one, one, one)


@contextlib.contextmanager
def full_parameters(accelerator, signal_model):
    """Gather FSDP2-sharded parameters once for a whole rollout or evaluation (a no-op otherwise).

    Without it every decode step would all-gather every layer again (the inner LM's layers reshard
    after each forward) and the root's parameters (embeddings, lm_head) would stay sharded.
    """
    if not accelerator.is_fsdp2:
        yield
        return

    modules = [m for m in signal_model.modules() if isinstance(m, FSDPModule)]
    signal_model.set_reshard_after_forward(False)  # recursive
    for module in modules:
        module.unshard()
    try:
        yield
    finally:
        layer_setting = bool(accelerator.state.fsdp_plugin.reshard_after_forward)
        for module in modules:
            module.reshard()
            # the root keeps its parameters between forward and backward (FSDP2's own default for a root)
            module.set_reshard_after_forward(layer_setting if module is not signal_model else False, recurse=False)


def sampling_model(accelerator, signal_model):
    """The Hugging Face causal LM to sample with. Under LoRA: peft's base model, whose layers carry the adapters
    in place (peft's wrapper would hide the forward signature the sampler reads)."""
    model = accelerator.unwrap_model(signal_model).model
    return model.get_base_model() if is_peft_model(model) else model


def model_state_dict(accelerator, signal_model) -> dict | None:
    """Full weights of the wrapped causal LM (names as in its own state_dict) on process 0; call on every process."""
    state_dict = accelerator.get_state_dict(signal_model)  # collective under FSDP2
    if not accelerator.is_main_process:
        return None
    return {name.removeprefix("model."): tensor for name, tensor in state_dict.items()}


def optimizer_state_dict(accelerator, signal_model, optimizer) -> dict | None:
    """Full optimizer state keyed by parameter name (resumable on any process count) on process 0; call on every
    process. None under DeepSpeed, whose optimizer state is partitioned (resume is refused there)."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return None
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_optimizer_state_dict(signal_model, _torch_optimizer(optimizer), options=options)
    return state if accelerator.is_main_process else None


def load_optimizer_state_dict(accelerator, signal_model, optimizer, state: dict) -> None:
    """Inverse of `optimizer_state_dict`, after `accelerator.prepare`; process 0's copy is broadcast (sharded under FSDP2)."""
    if state is None:
        raise ConfigError("config field run.resume = True: the checkpoint holds no optimizer state (it was written under "
                          "DeepSpeed); start a new run from its model folder instead")
    distributed = accelerator.num_processes > 1
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=distributed)
    own = state if accelerator.is_main_process or not distributed else {}
    set_optimizer_state_dict(signal_model, _torch_optimizer(optimizer), own, options=options)


def _torch_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


