"""The `rlif` command line."""

from __future__ import annotations

import argparse
import json
import sys

from rlif.config import ConfigError
from rlif.data import DataError
from rlif.models import ModelLoadError

# Errors that describe bad input: printed as one line, exit code 2, no traceback.
USER_ERRORS = (ConfigError, DataError, ModelLoadError)


def cmd_train(args) -> None:
    from rlif.config import load_config
    from rlif.train import train

    config = load_config(args.config, args.overrides)
    run_dir = train(config)
    print(f"run directory: {run_dir}")


def cmd_score(args) -> None:
    from rlif.score import score_file

    rows = score_file(
        args.model,
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
    from rlif.config import config_reference, load_config, save_config

    if args.action == "docs":
        print(config_reference())
        return
    config = load_config(args.config, args.overrides)
    import yaml

    print(yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True), end="")


def cmd_rewards(_args) -> None:
    from rlif.rewards import REWARDS

    for name, reward in sorted(REWARDS.items()):
        doc = (reward.__doc__ or "").strip().splitlines()[0]
        print(f"{name:<24} {'labels' if reward.uses_labels else 'label-free':<11} {doc}")
    print(f"{'weighted':<24} {'either':<11} Weighted sum of group-normalized rewards named in reward.weights (labels if any uses them).")


def cmd_plot(args) -> None:
    from rlif.plots import plot_run

    for path in plot_run(args.run_dir):
        print(path)


def cmd_report(args) -> None:
    from rlif.report import write_report

    print(write_report(args.run_dir))


def cmd_compare(args) -> None:
    from rlif.compare import aggregate, load_comparison, run_comparison

    comparison = load_comparison(args.config, args.overrides)
    out = aggregate(comparison) if args.aggregate_only else run_comparison(comparison, args.only, progress=not args.no_progress)
    print(f"comparison: {out / 'comparison.md'}")


def cmd_testbed(args) -> None:
    from rlif.testbed import BASE_MODEL_DIR, DATA_DIR

    if args.action == "data":
        from rlif.testbed.task import write_split_files

        for path in write_split_files(args.output or DATA_DIR):
            print(path)
        return
    from dataclasses import fields

    from rlif.testbed.pretrain import PretrainConfig, pretrain

    values = {f.name: getattr(args, f.name) for f in fields(PretrainConfig) if getattr(args, f.name, None) is not None}
    summary = pretrain(args.output or BASE_MODEL_DIR, PretrainConfig(**values), progress=not args.no_progress)
    print(json.dumps(summary["held_out_greedy"]))
    print(f"model: {args.output or BASE_MODEL_DIR}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlif", description="Reinforcement learning from internal feedback (INTUITOR).")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model (INTUITOR by default) from a YAML config")
    train.add_argument("config", help="YAML config file (see `rlif config docs`)")
    train.add_argument("overrides", nargs="*", help="section.field=value overrides, e.g. train.lr=1e-5 run.resume=true")
    train.set_defaults(func=cmd_train)

    score = commands.add_parser("score", help="self-certainty, entropy and mean log-prob of given responses")
    score.add_argument("--model", required=True, help="model folder, installed model name or hub id")
    score.add_argument("--input", required=True, help="JSONL with 'prompt' and 'response' per row")
    score.add_argument("--output", required=True, help="JSONL written with the scores added to each row")
    score.add_argument(
        "--chat-template",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap the prompt in the tokenizer's chat template (default: when the tokenizer has one)",
    )
    score.add_argument("--system-prompt", default=None, help="system message for the chat template (default: none)")
    score.add_argument("--batch-size", type=int, default=8)
    score.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    score.add_argument("--no-progress", action="store_true")
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

    report = commands.add_parser("report", help="write RUN/report.md and RUN/plots/*.png for a training run")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)

    compare = commands.add_parser("compare", help="train several methods x seeds with one budget; one table and plot")
    compare.add_argument("config", help="comparison YAML (base config, seeds, methods; see rlif.compare)")
    compare.add_argument("overrides", nargs="*", help="section.field=value applied to every run, e.g. train.steps=10")
    compare.add_argument("--only", nargs="+", metavar="METHOD", help="train only these methods (the table shows all that exist)")
    compare.add_argument("--aggregate-only", action="store_true", help="only rebuild the table and plot from existing runs")
    compare.add_argument("--no-progress", action="store_true")
    compare.set_defaults(func=cmd_compare)

    testbed = commands.add_parser("testbed", help="the arithmetic testbed: prompt files and the base model")
    testbed_commands = testbed.add_subparsers(dest="action", required=True)
    data = testbed_commands.add_parser("data", help="write the testbed's train.jsonl and held-out test.jsonl")
    data.add_argument("--output", default=None, help="folder (default: the package's shipped data folder)")
    data.set_defaults(func=cmd_testbed)
    pretrain = testbed_commands.add_parser("pretrain", help="pretrain the testbed's base model (default: overwrite the shipped one)")
    pretrain.add_argument("--output", default=None, help="model folder (default: the package's shipped base_model)")
    pretrain.add_argument("--steps", type=int, default=None)
    pretrain.add_argument("--seed", type=int, default=None)
    pretrain.add_argument("--eval-every", dest="eval_every", type=int, default=None)
    pretrain.add_argument("--no-progress", action="store_true")
    pretrain.set_defaults(func=cmd_testbed)
    return parser
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # rlif draws its own bars; weight-loading bars are noise here
    try:
        args.func(args)
    except USER_ERRORS as error:
        print(f"rlif {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        from rlif.train import TrainingDiverged

        if isinstance(error, TrainingDiverged):
            print(f"rlif {args.command}: training stopped: {error}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
