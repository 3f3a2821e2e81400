"""The colocated vLLM engine (rlif.sampling.vllm_engine) vs rlif's own sampler: start-up, first requests, throughput, weight updates.

    python bench/vllm_rollout.py                       # the testbed base model, 64 prompts x 8 samples x 64 tokens
    python bench/vllm_rollout.py --model PATH --prompts 16 --samples 4 --tokens 128
    python bench/vllm_rollout.py --server              # also one `rlif serve-vllm` on this machine (server mode)

Everything runs in one process (the engine is in-process, VLLM_ENABLE_V1_MULTIPROCESSING=0). The variants alternate
in every round and the table reports medians: completion tokens/s by wall clock and per CPU-second of this process
(`time.process_time`: the machine is shared, so CPU-seconds are the steadier number).
  vllm             VLLMEngine.sample with the sampled-token log-probs (what a rollout would ask for)
  vllm-no-logprobs the same without log-probs
  rlif             rlif.sampling.sample with per-token signals (what the trainer runs; decode="dynamic")
  rlif-no-signals  the same without signals
  hf-generate      Hugging Face model.generate(num_return_sequences=G) sampling from softmax(z / T), top-k off
  vllm-server      (--server) the same engine in an `rlif serve-vllm` process, through rlif.sampling.vllm_server's
                   client (its CPU-seconds are the client's only); its weight update is the broadcast over a process
                   group (gloo here; NCCL between GPUs)
Needs vllm (see .ci/vllm); prints the load average before and after, which these numbers depend on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TESTBED = ROOT / "src" / "rlif" / "testbed"


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


class _Responses:
    def __init__(self, responses):
        self.responses = responses


def hf_generate(model, prompts, tokenizer, seed, *, num_samples, max_new_tokens, eos_ids, temperature):
    """model.generate on the left-padded prompts; responses cut after their first EOS (as the engines return them)."""
    from rlif.signals.batching import left_pad

    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                             max_new_tokens=max_new_tokens, num_return_sequences=num_samples, eos_token_id=list(eos_ids),
                             pad_token_id=tokenizer.pad_token_id)
    rows = out[:, ids.shape[1]:].tolist()
    eos = set(eos_ids)
    return _Responses([row[: next((i + 1 for i, t in enumerate(row) if t in eos), len(row))] for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(TESTBED / "base_model"))
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-model-len", type=int, default=0, help="default: longest prompt + --tokens")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both engines (0: leave as is); "
                        "on a shared 2-core machine 2 threads spin-wait on each other whenever another job takes a core")
    parser.add_argument("--server", action="store_true", help="add server mode: one `rlif serve-vllm` process on this machine")
    parser.add_argument("--json", help="write the measurements here too")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlif.data.prompts import render_prompt
    from rlif.models.load import eos_token_ids
    from rlif.sampling.native import sample

    print(f"load average before: {os.getloadavg()}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    with open(TESTBED / "data" / "test.jsonl") as file:
        texts = [json.loads(line)["prompt"] for line in file][: args.prompts]
    prompts = [tokenizer(render_prompt(tokenizer, text), add_special_tokens=False).input_ids for text in texts]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    eos = eos_token_ids(tokenizer, model)
    shape = f"{args.prompts}x{args.samples}x{args.tokens}"
    results: dict[str, object] = {"shape": shape, "model": args.model, "threads": torch.get_num_threads()}

    _, seconds, _ = timed(lambda: __import__("vllm"))
    results["import_vllm_s"] = seconds
    from rlif.sampling.vllm_engine import VLLMEngine

    max_model_len = args.max_model_len or max(len(p) for p in prompts) + args.tokens
    engine, seconds, cpu = timed(lambda: VLLMEngine(args.model, max_model_len=max_model_len, seed=0, warmup=False))
    results["startup_s"], results["startup_cpu_s"] = seconds, cpu
    results["versions"] = engine.versions
    common = dict(num_samples=args.samples, max_new_tokens=args.tokens, eos_ids=eos, temperature=args.temperature)
    for name in ("first_generate", "second_generate"):
        out, seconds, cpu = timed(lambda: engine.sample(prompts, seed=1, **common))
        results[f"{name}_s"], results[f"{name}_cpu_s"] = seconds, cpu
        print(f"{name}: {seconds:.2f} s ({sum(map(len, out.responses))} tokens)", flush=True)

    server = None
    if args.server:
        from rlif.sampling.vllm_server import VLLMServerClient, launch_server

        (server, address), seconds, _ = timed(lambda: launch_server(args.model, "--max-model-len", str(max_model_len),
                                                                    env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}))
        results["server_startup_s"] = seconds
        client = VLLMServerClient([address], max_model_len=max_model_len)
        client.sample(prompts, seed=1, **common)  # its first request
    variants = {
        **({"vllm-server": lambda seed: client.sample(prompts, seed=seed, **common)} if server else {}),
        "vllm": lambda seed: engine.sample(prompts, seed=seed, **common),
        "vllm-no-logprobs": lambda seed: engine.sample(prompts, seed=seed, logprobs=False, **common),
        "rlif": lambda seed: sample(model, prompts, seed=seed, batch_size=256, track_signals=True, **common),
        "rlif-no-signals": lambda seed: sample(model, prompts, seed=seed, batch_size=256, **common),
        "hf-generate": lambda seed: hf_generate(model, prompts, tokenizer, seed, **common),
    }
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for round_index in range(args.rounds):
        order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
        for name in order:
            out, seconds, cpu = timed(lambda: variants[name](100 + round_index))
            tokens = sum(len(r) for r in out.responses)
            rates[name].append((tokens / seconds, tokens / max(cpu, 1e-9)))
            print(f"round {round_index} {name}: {tokens} tokens, {seconds:.2f} s, {cpu:.2f} CPU-s", flush=True)
    print("\n| variant | completion tokens/s | tokens per CPU-s | vs rlif (wall) |\n|---|---|---|---|")
    base = statistics.median(r[0] for r in rates["rlif"])
    for name, values in rates.items():
        wall, cpu = statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)
        results[f"{name}_tokens_per_s"], results[f"{name}_tokens_per_cpu_s"] = wall, cpu
        print(f"| {name} | {wall:.0f} | {cpu:.0f} | {wall / base:.2f}x |")

    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    updates = [engine.update_weights(state.items()) for _ in range(3)]
    results["update_weights_s"] = statistics.median(updates)
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"rlif-vllm-bench-{os.getpid()}"
    model.save_pretrained(folder, safe_serialization=True)
    results["update_weights_from_folder_s"] = statistics.median(engine.update_weights_from_folder(folder) for _ in range(3))
    print(f"\nupdate_weights (in-process, {len(state)} tensors): {results['update_weights_s']:.3f} s (median of 3: {updates})")
    print(f"update_weights_from_folder: {results['update_weights_from_folder_s']:.3f} s")
    if server:
        pushes = [client.update_weights(state.items()) for _ in range(4)]  # the first also forms the process group
        results["server_update_weights_first_s"], results["server_update_weights_s"] = pushes[0], statistics.median(pushes[1:])
        print(f"server update_weights (broadcast, {client.backend}): {results['server_update_weights_s']:.3f} s "
              f"(median of 3 after the first, {pushes[0]:.3f} s with the group's set-up); server start-up "
              f"{results['server_startup_s']:.1f} s")
        client.close()
        server.terminate()
        server.wait()
    print(f"startup {results['startup_s']:.1f} s, import vllm {results['import_vllm_s']:.1f} s")
    engine.close()
    results["load_average_after"] = os.getloadavg()
    results["threads_after"] = torch.get_num_threads()
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
