"""One full training step: rlif (INTUITOR and a model-free reward) vs TRL's GRPOTrainer, back to back.

    python bench/step.py                 # CPU: tiny decoder with the real Qwen2.5 vocabulary, 4 prompts x G=4 x 32 tokens
    python bench/step.py --gpu-shape     # random-init Qwen2.5-0.5B, 16 prompts x G=8 x 256 tokens (the issue's TRL shape)

Both trainers get the same model folder (random init, saved once), the same GSM8K chat prompts (system prompt asking for
\\boxed{}), G, response length, temperature 0.9 (top-k off, top-p 1), beta 0.005 with a frozen reference model, one
optimizer update per step, micro-batches of `--micro-batch` sequences, gradient checkpointing on or off in both
(`--gradient-checkpointing`, default on as in TRL's GRPOConfig), float32 weights (bf16 autocast on GPU), and
token-mean loss (TRL's default "dapo" = rlif's). Generation: TRL calls Hugging Face `generate` (dynamic KV cache, no vLLM);
rlif runs its own KV-cache sampler over the same Hugging Face model. A random-init model almost never samples EOS out of
151,936 tokens, so every response has the full length in both.

Runs (each in a fresh subprocess; rounds alternate the order):
  trl           GRPOTrainer, reward = completion length (needs no model)
  trl+sc        GRPOTrainer, reward = self-certainty computed the way a TRL user must: a reward function that runs the
                policy again (bench/step_rewards.py)
  rlif-length   rlif, reward = response length (needs no model)
  rlif          rlif INTUITOR, reward = self-certainty
A suffix picks rlif's decode loop (rollout.decode; default dynamic): rlif@compiled, rlif-length@compiled (static KV cache
and CUDA graphs, for GPUs), rlif@static. Then any of: `+layers` compiles the update's decoder layers
(model.compile_layers), `+offload` keeps the frozen reference in CPU memory between its passes
(model.reference_device: offload), `+mb<rows>` sets rlif's micro-batch (update and reference pass) instead of
--micro-batch: rlif@compiled+layers+mb32. A TRL run takes +mb<rows> too (per_device_train_batch_size): trl+mb32.
Step time is the median over steps 2..S (step 1 warms up); completion tokens/s = completion tokens / step time.
Peak memory: CUDA max_memory_allocated over the run; on CPU the peak resident set size during the run minus the
resident set size after imports (both trainers then hold the same model, reference and optimizer).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlif.sampling import DECODE_MODES

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import SYSTEM_PROMPT, PROMPTS_FILE, build_model, current_rss_bytes, device_name, gib, load_tokenizer, peak_rss_bytes, reset_peak_rss, table, versions  # noqa: E402

RUNS = ["trl", "trl+sc", "rlif-length", "rlif"]
PHASES = ["generate", "score", "update"]  # rlif's step: rollouts (with answer extraction), reference pass, update


def prepare(work: Path, size: str) -> tuple[Path, Path]:
    """Save the random-init model + tokenizer once, and the prompts as rlif JSONL."""
    model_dir = work / "model"
    tokenizer = load_tokenizer()
    tokenizer.save_pretrained(model_dir)
    model = build_model(size)
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.save_pretrained(model_dir)
    data = work / "prompts.jsonl"
    with open(data, "w") as f:
        for line in PROMPTS_FILE.read_text().splitlines():
            f.write(json.dumps({"prompt": json.loads(line)["question"]}) + "\n")
    return model_dir, data


def run_rlif(args, work: Path, reward: str, decode: str, compile_layers: bool = False, reference_device: str = "auto",
             micro_batch: int | None = None) -> dict:
    import yaml

    from rlif.config import load_config
    from rlif.data.jsonl import read_log as read_jsonl
    from rlif.rl.train import train

    out = work / f"rlif-{reward.replace(':', '_')}-{time.time_ns()}"
    raw = {
        "model": {"path": str(args.model_dir), "dtype": "float32", "mixed_precision": "auto",
                  "gradient_checkpointing": args.gradient_checkpointing == "on", "compile_layers": compile_layers,
                  "reference_device": reference_device},
        "data": {"path": str(args.data), "label_field": None, "system_prompt": SYSTEM_PROMPT, "max_prompt_tokens": 2048},
        "rollout": {"group_size": args.group, "temperature": 0.9, "top_p": 1.0, "max_new_tokens": args.tokens,
                    "generation_batch_size": args.prompts * args.group, "decode": decode},
        "train": {"prompts_per_step": args.prompts, "steps": args.steps, "lr": 1e-6, "kl_coef": 0.005,
                  "micro_batch_size": micro_batch or args.micro_batch, "score_batch_size": micro_batch or args.micro_batch},
        "reward": {"name": reward},
        "run": {"output_dir": str(out), "save_every": 10**6, "progress": False, "sample_every": 10**6},
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(raw))
    train(load_config(path))
    metrics = read_jsonl(out / "metrics.jsonl")
    steps = [m for m in metrics if "time/step_s" in m]
    return {"step_s": [m["time/step_s"] for m in steps],
            "tokens": [m["time/tokens_per_s"] * m["time/step_s"] for m in steps],
            "phases": {phase: [m[f"time/{phase}_s"] for m in steps] for phase in PHASES}}


def run_trl(args, work: Path, with_self_certainty: bool, micro_batch: int | None = None) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from step_rewards import trl_completion_length, trl_self_certainty

    tokenizer = load_tokenizer()
    questions = [json.loads(line)["prompt"] for line in Path(args.data).read_text().splitlines()]
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q}]} for q in questions]
    )
    gpu = torch.cuda.is_available()
    micro_batch = micro_batch or args.micro_batch
    config = GRPOConfig(
        output_dir=str(work / f"trl-{time.time_ns()}"),
        per_device_train_batch_size=micro_batch,  # x the accumulation steps: the step's rows, generated at once
        gradient_accumulation_steps=args.prompts * args.group // micro_batch,
        num_generations=args.group,
        max_completion_length=args.tokens,
        temperature=0.9, top_p=1.0, top_k=0,
        beta=0.005, learning_rate=1e-6, num_iterations=1, loss_type="dapo", scale_rewards="group",
        max_steps=args.steps, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=not gpu, bf16=gpu, model_init_kwargs={"dtype": torch.float32},
        gradient_checkpointing=args.gradient_checkpointing == "on",
        disable_dropout=True, log_completions=False, shuffle_dataset=True, seed=0,
    )
    holder: dict = {}
    rewards = [trl_completion_length]
    if with_self_certainty:
        rewards = [trl_self_certainty(holder, tokenizer, micro_batch)]
        rewards[0].__name__ = "self_certainty"

    step_times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            if gpu:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            if gpu:
                torch.cuda.synchronize()
            step_times.append(time.perf_counter() - self.start)

    trainer = GRPOTrainer(model=str(args.model_dir), reward_funcs=rewards, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepTimer()])
    holder["trainer"] = trainer
    trainer.train()
    lengths = [log["completions/mean_length"] for log in trainer.state.log_history if "completions/mean_length" in log]
    return {"step_s": step_times, "tokens": [n * args.prompts * args.group for n in lengths]}


def worker(args) -> dict:
    gpu = torch.cuda.is_available()
    if args.worker.startswith("trl"):
        import trl  # noqa: F401  (imports before the memory baseline)
    import rlif.rl.train  # noqa: F401
    import transformers  # noqa: F401

    work = Path(args.work)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    reset_peak_rss()
    before = current_rss_bytes()
    name, decode, options = split_run(args.worker)
    if name.startswith("trl"):
        result = run_trl(args, work, with_self_certainty=name == "trl+sc", **options)
    else:
        reward = "step_rewards:response_length" if name == "rlif-length" else "self_certainty"
        result = run_rlif(args, work, reward, decode, **options)
    result["peak_bytes"] = torch.cuda.max_memory_allocated() if gpu else peak_rss_bytes() - before
    return result


def split_run(run: str) -> tuple[str, str, dict]:
    """(name, rlif decode, overrides) of a run: `rlif@compiled+layers+mb16` -> ("rlif", "compiled",
    {"compile_layers": True, "micro_batch": 16}); `trl+sc+mb32` -> ("trl+sc", "dynamic", {"micro_batch": 32})."""
    head, *extras = run.split("+")
    name, _, decode = head.partition("@")
    options = {}
    for extra in extras:
        if extra == "sc" and name == "trl":
            name = "trl+sc"
        elif extra == "layers":
            options["compile_layers"] = True
        elif extra == "offload":
            options["reference_device"] = "offload"
        elif extra.startswith("mb") and extra[2:].isdigit() and int(extra[2:]) > 0:
            options["micro_batch"] = int(extra[2:])
        else:
            raise ValueError(f"--runs: unknown run {run!r}: +{extra} is not +layers, +offload or +mb<rows>")
    return name, decode or "dynamic", options


def parse_runs(text: str) -> list[str]:
    """The comma-separated --runs, checked (bench/gpu_check.sh's list is tested against this)."""
    runs = text.split(",")
    for run in runs:
        name, decode, options = split_run(run)
        trl_ok = not name.startswith("trl") or ("@" not in run and set(options) <= {"micro_batch"})
        if name not in RUNS or decode not in DECODE_MODES or not trl_ok:
            raise ValueError(f"--runs: unknown run {run!r}: expected {', '.join(RUNS)}; an rlif run may add @static or "
                             "@compiled (rollout.decode), then +layers (model.compile_layers), +offload (the reference in "
                             "CPU memory, model.reference_device) and +mb<rows> (its micro-batch size); a TRL run +mb<rows>")
    return runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-shape", action="store_true")
    parser.add_argument("--model", default=None, help="cpu-tiny | qwen2.5-0.5b | qwen2.5-1.5b")
    parser.add_argument("--prompts", type=int)
    parser.add_argument("--group", type=int)
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--micro-batch", type=int)
    parser.add_argument("--gradient-checkpointing", choices=["on", "off"], default="on",
                        help="for both trainers (on: GRPOConfig's default)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.gpu_shape:
        defaults = dict(model="qwen2.5-0.5b", prompts=16, group=8, tokens=256, micro_batch=8, steps=4)
    else:
        defaults = dict(model="cpu-tiny", prompts=4, group=4, tokens=32, micro_batch=8, steps=4)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return 0

    try:
        runs = parse_runs(args.runs)
    except ValueError as error:
        parser.error(str(error))
    results = {run: {"step_s": [], "tokens_per_s": [], "peak": [], **{phase: [] for phase in PHASES}} for run in runs}
    failed = set()
    with tempfile.TemporaryDirectory(prefix="rlif-bench-") as tmp:
        work = Path(tmp)
        model_dir, data = prepare(work, args.model)
        common = [f"--work={work}", f"--model-dir={model_dir}", f"--data={data}"] + [
            f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("prompts", "group", "tokens", "micro_batch", "steps", "gradient_checkpointing")
        ]
        for round_index in range(args.rounds):
            for run in runs if round_index % 2 == 0 else runs[::-1]:
                start = time.perf_counter()
                out = subprocess.run([sys.executable, __file__, f"--worker={run}", *common], capture_output=True, text=True, cwd=BENCH)
                lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
                if out.returncode != 0 or not lines:  # reported, and the other runs still go on (one lease, one try)
                    print(f"  round {round_index + 1} {run}: FAILED ({time.perf_counter() - start:.0f} s):\n{out.stderr[-3000:]}", file=sys.stderr)
                    failed.add(run)
                    continue
                record = json.loads(lines[-1][len("RESULT "):])
                timed = list(zip(record["step_s"], record["tokens"]))[1:]  # step 1 warms up
                results[run]["step_s"] += [s for s, _ in timed]
                results[run]["tokens_per_s"] += [n / s for s, n in timed]
                results[run]["peak"].append(record["peak_bytes"])
                for phase, seconds in record.get("phases", {}).items():
                    results[run][phase] += seconds[1:]
                print(f"  round {round_index + 1} {run}: steps {[round(s, 2) for s in record['step_s']]} s, "
                      f"tokens/step {[round(n) for n in record['tokens']]}, peak {gib(record['peak_bytes'])} "
                      f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    for run in failed:
        runs.remove(run)
        del results[run]
    if not runs:
        print("every run failed", file=sys.stderr)
        return 1

    def med(run, key):
        return statistics.median(results[run][key])

    print(f"\nstep: {args.model}, {args.prompts} prompts x G={args.group} x {args.tokens} tokens, micro-batch {args.micro_batch}, "
          f"gradient checkpointing {args.gradient_checkpointing}, beta 0.005, {args.steps} steps x {args.rounds} rounds (step 1 of each run not timed)")
    print(f"device: {device_name()}; {versions()}")
    base = "trl" if "trl" in results else None
    rows = []
    for run in runs:
        row = [run, f"{med(run, 'step_s'):.2f} s", f"{med(run, 'tokens_per_s'):.0f}", gib(max(results[run]["peak"]))]
        if base:
            row += [f"{med(run, 'tokens_per_s') / med(base, 'tokens_per_s'):.2f}x",
                    f"{max(results[run]['peak']) / max(results[base]['peak']):.2f}x"]
        rows.append(row)
    headers = ["run", "s/step (median)", "completion tokens/s", "peak memory"]
    if base:
        headers += ["tokens/s vs trl", "memory vs trl"]
    print(table(headers, rows))
    if base:
        for run in runs:
            if run.startswith("rlif"):
                speed = med(run, "tokens_per_s") / med(base, "tokens_per_s")
                memory = max(results[run]["peak"]) / max(results[base]["peak"])
                verdict = "met" if speed >= 2 and memory <= 1 else "not met"
                print(f"goal >= 2x TRL's completion tokens/s at <= its peak memory, {run}: {verdict} ({speed:.2f}x at {memory:.2f}x)")
    for run in runs:
        if results[run]["generate"]:
            print(f"{run} phases (median s): " + ", ".join(f"{phase} {med(run, phase):.2f}" for phase in PHASES))
    for run in runs:
        if split_run(run)[0] == "rlif":  # INTUITOR; its model-free twin has the same suffixes
            model_free = run.replace("rlif", "rlif-length", 1)
            if model_free in results:
                ratio = med(run, "step_s") / med(model_free, "step_s")
                print(f"INTUITOR step time / model-free step time ({run}): {ratio:.3f}")
    if "trl+sc" in results and "trl" in results:
        print(f"self-certainty by an extra forward / model-free step time (TRL): {med('trl+sc', 'step_s') / med('trl', 'step_s'):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": device_name(), "versions": versions(), "results": results,
                                               "failed": sorted(failed)}, indent=1))
    if failed:
        print(f"failed runs (left out of the table): {', '.join(sorted(failed))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
