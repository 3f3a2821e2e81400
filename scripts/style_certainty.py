"""Why INTUITOR prefers direct answers on the testbed: self-certainty and entropy of both answer styles, per token kind.

    python scripts/style_certainty.py                 # the shipped base model, the first 200 held-out problems
    python scripts/style_certainty.py --model runs/testbed-intuitor/checkpoints/step-000060
    python scripts/style_certainty.py --world scaffolded   # the second world's answers under its base model

Scores the *correct* response of each style (`rlif.testbed.task.direct_response` / `step_response` as the world
writes it, followed by EOS) to the same problems under the model, with the prompts rendered as the main job renders them, and reports per style:
the sequence self-certainty (the INTUITOR reward: mean over the response's tokens) and entropy, and self-certainty, entropy and
share of tokens split into digits and everything else (`+`, `=`, `answer:`, newlines, EOS; in the scaffolded world
also the place labels and `carry`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rlif.config import load_config
from rlif.models.load import load_model, load_tokenizer
from rlif.signals.batching import score_in_batches
from rlif.signals.model import SignalModel
from rlif.signals.score import encode_pairs
from rlif.signals.tokens import masked_mean
from rlif.testbed.task import WORLDS, World, direct_response, get_world, held_out_problems, prompt_text, step_response

REPO = Path(__file__).resolve().parents[1]


CONFIGS = {"columns": "configs/testbed/intuitor.yaml", "scaffolded": "configs/testbed/intuitor-scaffolded.yaml"}


def style_table(model_path: str, config_path: Path, limit: int, world: World = WORLDS["columns"]) -> list[dict]:
    config = load_config(config_path)
    tokenizer, model = load_tokenizer(model_path), load_model(model_path).eval()
    problems = held_out_problems()[:limit]
    prompts = [prompt_text(p) for p in problems]
    signal_model = SignalModel(model)
    digit_ids = torch.tensor([i for i in range(len(tokenizer)) if tokenizer.decode([i]).strip().isdigit()])
    rows = []
    for style, respond in (("direct", direct_response), ("step by step", lambda p: step_response(p, world=world))):
        responses = [respond(p) + tokenizer.eos_token for p in problems]
        prompt_ids, prompt_mask, response_ids, response_mask = encode_pairs(
            tokenizer, prompts, responses, chat_template=config.data.chat_template, system_prompt=config.data.system_prompt
        )
        with torch.no_grad():
            signals = score_in_batches(signal_model, prompt_ids, prompt_mask, response_ids, response_mask, batch_size=64)
        digit = torch.isin(response_ids, digit_ids) & response_mask.bool()
        other = ~digit & response_mask.bool()
        row = {"style": style, "sequence_self_certainty": masked_mean(signals.self_certainty, response_mask).mean().item(),
               "tokens": response_mask.sum(1).float().mean().item(),
               "entropy": masked_mean(signals.entropy, response_mask).mean().item(), "digit_share": (digit.sum() / response_mask.sum()).item()}
        for kind, mask in (("digits", digit), ("other", other)):
            row[f"self_certainty_{kind}"] = signals.self_certainty[mask].mean().item()
            row[f"entropy_{kind}"] = signals.entropy[mask].mean().item()
        rows.append(row)
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="columns", choices=list(WORLDS), help="how the step-by-step answers are written")
    parser.add_argument("--model", default=None, help="default: the world's shipped base model")
    parser.add_argument("--config", type=Path, default=None, help="prompt rendering (default: the world's main job)")
    parser.add_argument("--limit", type=int, default=200, help="held-out problems")
    args = parser.parse_args(argv)
    world = get_world(args.world)
    model = args.model or str(REPO / "src/rlif/testbed" / world.model_folder)
    rows = style_table(model, args.config or REPO / CONFIGS[world.name], args.limit, world)
    print(f"{model} (world {world.name}): correct responses to the first {args.limit} held-out problems, EOS included\n")
    print("| style | sequence self-certainty (the reward) | tokens | entropy | digit share | SC digits | SC other | entropy digits | entropy other |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['style']} | {r['sequence_self_certainty']:.3f} | {r['tokens']:.1f} | {r['entropy']:.3f} | {r['digit_share']:.2f} | "
              f"{r['self_certainty_digits']:.2f} | {r['self_certainty_other']:.2f} | {r['entropy_digits']:.3f} | {r['entropy_other']:.3f} |")
    return rows


if __name__ == "__main__":
    main()
