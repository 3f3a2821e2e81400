"""LoRA (peft): adapters train, the KL reference is the base with adapters disabled (one copy of the weights),
checkpoints load as an adapter and as merged weights, resume repeats the run, bad setups fail early."""

import shutil
from types import SimpleNamespace

import pytest
import torch
import yaml

import rlif.models.lora
import rlif.rl.train
from rlif.config import load_config
from rlif.data.jsonl import read_log as read_jsonl
from rlif.errors import ConfigError
from rlif.rl.checkpoint import latest_checkpoint
from rlif.rl.distributed import check_supported_setup
from rlif.rl.train import train

pytest.importorskip("peft")


def lora_config(tmp_path, model_dir, data_path, **lora):
    raw = {
        "model": {"path": str(model_dir)},
        "data": {"path": str(data_path), "system_prompt": None},
        "rollout": {"group_size": 4, "max_new_tokens": 10, "temperature": 1.0, "generation_batch_size": 16},
        "train": {"prompts_per_step": 4, "steps": 2, "lr": 2e-2, "micro_batch_size": 8, "score_batch_size": 8},
        "lora": {"rank": 4, "alpha": 8.0, **lora},
        "run": {"output_dir": str(tmp_path / "run"), "save_every": 1, "keep_checkpoints": 2, "progress": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_lora_run_reference_checkpoints_and_resume(tmp_path, tiny_model_dir, addition_data, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loads = []
    for module in (rlif.models.lora, rlif.rl.train):  # every full model the run loads
        real = module.load_model
        monkeypatch.setattr(module, "load_model", lambda *a, _real=real, **k: loads.append(a[0]) or _real(*a, **k))
    config_path = lora_config(tmp_path, tiny_model_dir, addition_data)
    run = train(load_config(config_path))
    assert loads == [str(tiny_model_dir)]  # the base model once: no reference copy
    metrics = read_jsonl(run / "metrics.jsonl")
    assert metrics[0]["signals/kl_ref"] == 0.0  # adapters start at B = 0: policy == reference exactly
    assert metrics[-1]["signals/kl_ref"] > 1e-5 and metrics[-1]["loss/kl"] > 0

    checkpoint = latest_checkpoint(run)[1]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    merged = AutoModelForCausalLM.from_pretrained(checkpoint)  # a plain model folder
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), checkpoint / "adapter")
    ids = torch.tensor([[7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        base_logits, merged_logits, adapted_logits = (m(input_ids=ids).logits for m in (base, merged, adapted))
    assert torch.allclose(merged_logits, adapted_logits, atol=1e-5)
    assert (merged_logits - base_logits).abs().max() > 1e-3  # the adapters learned something
    base_weights, merged_weights = base.state_dict(), merged.state_dict()
    assert torch.equal(base_weights["model.embed_tokens.weight"], merged_weights["model.embed_tokens.weight"])  # not adapted

    expected = read_jsonl(run / "metrics.jsonl")
    shutil.rmtree(checkpoint)  # as if killed after step 1's checkpoint
    train(load_config(config_path, ["run.resume=true"]))
    resumed = read_jsonl(run / "metrics.jsonl")
    strip = lambda records: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]
    assert strip(resumed) == strip(expected)


def test_adapter_initialization_follows_the_seed(tiny_model_dir):
    from rlif.config import LoraConfig
    from rlif.models.load import load_model
    from rlif.models.lora import apply_lora

    def adapters(seed):
        model = apply_lora(load_model(str(tiny_model_dir)), LoraConfig(rank=4), seed)
        return {k: v for k, v in model.state_dict().items() if "lora_A" in k}

    first, again, other = adapters(0), adapters(0), adapters(1)
    assert first and all(torch.equal(first[k], again[k]) for k in first)  # every process and run starts alike
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_lora_refuses_the_output_head_and_unknown_modules(tmp_path, tiny_model_dir, addition_data):
    with pytest.raises(ConfigError, match="adapts the output head"):
        train(load_config(lora_config(tmp_path, tiny_model_dir, addition_data, target_modules=["q_proj", "lm_head"])))
    with pytest.raises(ConfigError, match="lora.target_modules = \\['nope_proj'\\]"):
        train(load_config(lora_config(tmp_path, tiny_model_dir, addition_data, target_modules=["nope_proj"]), ["run.overwrite=true"]))


def test_unsupported_distributed_modes_fail_with_the_reason(tmp_path, tiny_model_dir, addition_data):
    """The refusals are decided from the accelerator's mode alone (these modes need GPUs to run for real)."""
    from accelerate.utils import DistributedType

    def accelerator(kind, fsdp2=False, zero_stage=2, clipping=1.0, processes=2):
        plugin = SimpleNamespace(zero_stage=zero_stage, deepspeed_config={"gradient_clipping": clipping})
        return SimpleNamespace(distributed_type=kind, is_fsdp2=fsdp2, num_processes=processes,
                               state=SimpleNamespace(deepspeed_plugin=plugin))

    lora = load_config(lora_config(tmp_path, tiny_model_dir, addition_data))
    full = load_config(lora_config(tmp_path, tiny_model_dir, addition_data), ["lora.rank=0"])
    with pytest.raises(ConfigError, match="FSDP version 1 is not supported"):
        check_supported_setup(accelerator(DistributedType.FSDP), full)
    with pytest.raises(ConfigError, match="DeepSpeed ZeRO-3 is not supported"):
        check_supported_setup(accelerator(DistributedType.DEEPSPEED, zero_stage=3), full)
    with pytest.raises(ConfigError, match="lora.rank = 4: LoRA runs under DDP or on one device"):
        check_supported_setup(accelerator(DistributedType.FSDP, fsdp2=True), lora)
    with pytest.raises(ConfigError, match="model.reference_device = 'offload': under FSDP2"):
        check_supported_setup(accelerator(DistributedType.FSDP, fsdp2=True), load_config(
            lora_config(tmp_path, tiny_model_dir, addition_data), ["lora.rank=0", "model.reference_device=offload"]))
    with pytest.raises(ConfigError, match="resuming under DeepSpeed is not supported"):
        check_supported_setup(accelerator(DistributedType.DEEPSPEED), load_config(
            lora_config(tmp_path, tiny_model_dir, addition_data), ["lora.rank=0", "run.resume=true"]))
    with pytest.raises(ConfigError, match="train.max_grad_norm = 1.0: under DeepSpeed the gradient is clipped"):
        check_supported_setup(accelerator(DistributedType.DEEPSPEED, clipping=0.5), full)
    check_supported_setup(accelerator(DistributedType.DEEPSPEED), full)
    own_device = load_config(lora_config(tmp_path, tiny_model_dir, addition_data), ["lora.rank=0", "model.reference_device=cuda:1"])
    with pytest.raises(ConfigError, match="model.reference_device = 'cuda:1': a device of its own is for one-process runs"):
        check_supported_setup(accelerator(DistributedType.MULTI_CPU), own_device)
    check_supported_setup(accelerator(DistributedType.NO, processes=1), own_device)
    check_supported_setup(accelerator(DistributedType.MULTI_CPU), lora)  # LoRA under DDP is fine
    check_supported_setup(accelerator(DistributedType.FSDP, fsdp2=True), full)
    compiled = load_config(lora_config(tmp_path, tiny_model_dir, addition_data), ["lora.rank=0", "rollout.decode=compiled"])
    with pytest.raises(ConfigError, match="rollout.decode = 'compiled' is not supported under FSDP2"):
        check_supported_setup(accelerator(DistributedType.FSDP, fsdp2=True), compiled)
    check_supported_setup(accelerator(DistributedType.MULTI_CPU), compiled)
    layers = load_config(lora_config(tmp_path, tiny_model_dir, addition_data), ["lora.rank=0", "model.compile_layers=true"])
    with pytest.raises(ConfigError, match="model.compile_layers = True is not supported under FSDP2"):
        check_supported_setup(accelerator(DistributedType.FSDP, fsdp2=True), layers)
    with pytest.raises(ConfigError, match="model.compile_layers = True is not supported under DeepSpeed"):
        check_supported_setup(accelerator(DistributedType.DEEPSPEED), layers)
    check_supported_setup(accelerator(DistributedType.MULTI_CPU), layers)  # DDP


@pytest.mark.parametrize("rank", [0, 4])
def test_gradient_checkpointing_is_on_and_leaves_the_gradients_unchanged(tmp_path, tiny_model_dir, addition_data, rank):
    grads = {}
    for checkpointing in (False, True):
        config = load_config(lora_config(tmp_path, tiny_model_dir, addition_data),
                             [f"lora.rank={rank}", f"model.gradient_checkpointing={str(checkpointing).lower()}"])
        policy = rlif.models.lora.load_policy(config).train()
        on = getattr(policy, "is_activation_checkpointing", None)  # transformers >= 5.2x; older: is_gradient_checkpointing
        assert (policy.is_gradient_checkpointing if on is None else on) == checkpointing
        ids = torch.arange(3, 23)[None] % policy.config.vocab_size
        policy(input_ids=ids, labels=ids).loss.backward()
        grads[checkpointing] = {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys() and len(grads[True]) > 0
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++")), reason="torch.compile on CPU needs a C++ compiler")
def test_lora_with_the_compiled_decode_repeats_the_dynamic_run(tmp_path, tiny_model_dir, addition_data):
    """The compiled decode step runs peft's adapted layers and reads the adapters each update leaves."""
    runs = {}
    for decode in ("dynamic", "compiled"):
        folder = tmp_path / decode
        folder.mkdir()
        train(load_config(lora_config(folder, tiny_model_dir, addition_data), [f"rollout.decode={decode}", "train.steps=3"]))
        runs[decode] = read_jsonl(folder / "run" / "metrics.jsonl")
    for compiled, dynamic in zip(runs["compiled"], runs["dynamic"], strict=True):
        assert compiled["rollout/len_mean"] == dynamic["rollout/len_mean"]
        assert compiled["reward/mean"] == pytest.approx(dynamic["reward/mean"], rel=1e-4)
    assert runs["dynamic"][0]["reward/mean"] != runs["dynamic"][-1]["reward/mean"]
