"""Shared pieces of the benchmarks: models at real and CPU-sized shapes, prompts, timing, peak memory.

Every benchmark reports ratios against a baseline measured in the same run (the machines are
noisy): each variant is repeated and the median is taken.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
QWEN_DIR = BENCH_DIR / "qwen2.5"  # Qwen2.5 architectures + tokenizer (Apache-2.0, see NOTICE.md); tokenizer.json gzipped
ARCHITECTURES = {"qwen2.5-0.5b": QWEN_DIR / "qwen2.5-0.5b.json", "qwen2.5-1.5b": QWEN_DIR / "qwen2.5-1.5b.json"}
PROMPTS_FILE = BENCH_DIR / "data" / "gsm8k_test_64.jsonl"  # the first 64 GSM8K test questions (MIT)
SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

# A CPU-sized model with the real Qwen2.5 vocabulary (151,936) and head layout: the lm_head and the
# sampling over 152k tokens cost what they cost at full size; the decoder is shrunk to fit 2 cores.
CPU_TINY = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
# Wide decoder, small vocabulary: 67M decoder parameters, so what happens to their bf16 casts shows in resident memory
CPU_WIDE = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 4, "num_attention_heads": 8,
            "num_key_value_heads": 8, "vocab_size": 1000, "tie_word_embeddings": True}


def versions() -> str:
    import accelerate
    import transformers

    parts = [f"torch {torch.__version__}", f"transformers {transformers.__version__}", f"accelerate {accelerate.__version__}"]
    try:
        import trl

        parts.append(f"trl {trl.__version__}")
    except ImportError:
        parts.append("trl not installed")
    return ", ".join(parts)


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def tokenizer_dir() -> Path:
    """A folder with the Qwen2.5 tokenizer, unpacked once (tokenizer.json is stored gzipped: 2 MB instead of 11 MB)."""
    import gzip
    import shutil
    import tempfile

    folder = Path(tempfile.gettempdir()) / "rlif-bench-qwen2.5-tokenizer"
    if not (folder / "tokenizer.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(QWEN_DIR / name, folder / name)
        part = folder / f"tokenizer.json.part-{os.getpid()}"
        with gzip.open(QWEN_DIR / "tokenizer.json.gz", "rb") as packed, open(part, "wb") as out:
            shutil.copyfileobj(packed, out)
        part.rename(folder / "tokenizer.json")  # atomic: concurrent callers never see half a file
    return folder


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir()))


def build_model(size: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """Random-init Qwen2.5 architecture ("qwen2.5-0.5b", "qwen2.5-1.5b"), "cpu-tiny" (real vocab, tiny decoder) or
    "cpu-wide" (a wide decoder, a small vocabulary)."""
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config

    if size in ("cpu-tiny", "cpu-wide"):
        base = json.loads(ARCHITECTURES["qwen2.5-0.5b"].read_text())
        base.update(CPU_TINY if size == "cpu-tiny" else CPU_WIDE)
        base.pop("architectures", None)
        base.pop("model_type", None)
        base.pop("torch_dtype", None)
        config = Qwen2Config(**base)
    else:
        config = AutoConfig.from_pretrained(str(ARCHITECTURES[size]))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = config.eos_token_id
    return model.eval()


def load_prompts(tokenizer, count: int) -> tuple[list[str], list[list[int]]]:
    """`count` GSM8K questions rendered with the chat template (system prompt of the paper) and their token ids."""
    questions = [json.loads(line)["question"] for line in PROMPTS_FILE.read_text().splitlines()]
    questions = (questions * (count // len(questions) + 1))[:count]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]
    return texts, [tokenizer(t, add_special_tokens=False).input_ids for t in texts]


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float], object]:
    """Median seconds of `fn()` over `repeats` runs after `warmup` runs; (median, all times, last result)."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size since the last `reset_peak_rss` (VmHWM), else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in row] for row in [headers] + rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**28 else f"{num_bytes / 2**20:.0f} MiB"


def profile_call(fn, device: torch.device, top: int = 15) -> dict:
    """One call of `fn` under torch.profiler: wall seconds, the operators the host issued (top-level aten calls), and
    on a GPU the summed CUDA kernel seconds (against the wall time: near 100% means kernel-bound, low means the host
    issuing kernels is the limit) and the top kernels as table rows."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    sync()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        start = time.perf_counter()
        fn()
        sync()
        wall = time.perf_counter() - start
    events = prof.events()
    operators = sum(1 for e in events if e.name.startswith("aten::") and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::")))
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and e.self_device_time_total > 0]
    kernels.sort(key=lambda e: e.self_device_time_total, reverse=True)
    return {"wall": wall, "operators": operators, "kernel_s": sum(e.self_device_time_total for e in kernels) / 1e6,
            "top": [[e.key[:70], str(e.count), f"{e.self_device_time_total / 1e3:.1f} ms", f"{e.self_device_time_total / 1e6 / wall:.1%}"]
                    for e in kernels[:top]]}


def profile_report(profiled: dict, title: str, per: int, unit: str) -> str:
    """`profile_call`'s result as printed lines: wall time and operators per `unit` (`per` of them in the call) and, from
    a GPU, the kernels' share of the wall time and the top kernels."""
    wall, operators = profiled["wall"], profiled["operators"]
    lines = [f"\n{title} under torch.profiler: wall {wall:.2f} s ({wall / per * 1e3:.1f} ms per {unit}), {operators:,} "
             f"operators issued ({operators / per:,.0f} per {unit})"]
    if profiled["top"]:
        lines.append(f"CUDA kernels {profiled['kernel_s']:.2f} s: GPU busy {profiled['kernel_s'] / wall:.0%} of the wall time")
        lines.append(table(["kernel", "calls", "time", "share of wall"], profiled["top"]))
    return "\n".join(lines)
