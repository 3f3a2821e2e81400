"""The testbed's worlds: the columns world is unchanged, the scaffolded world writes the same work with labels and carry words."""

import json
import random
import re
from pathlib import Path

import pytest

from rlif.testbed import BASE_MODEL_DIR
from rlif.testbed.task import (
    ALPHABET,
    ARITHMETIC,
    COLUMNS,
    DIGIT_SHARE_MARGIN,
    SCAFFOLD_LADDER,
    SCAFFOLDED,
    WORLDS,
    Difficulty,
    column_steps,
    describe_response,
    direct_response,
    extract_sum,
    generate_problems,
    get_world,
    held_out_problems,
    noisy_response,
    prompt_text,
    random_problem,
    step_response,
)

REPO = Path(__file__).resolve().parents[1]


def test_columns_world_responses_are_unchanged():
    assert step_response((345, 678, 12)) == "5+8+2=15\n4+7+1+1=13\n3+6+0+1=10\nanswer: 1035"
    assert step_response((345, 678, 12), world=COLUMNS) == step_response((345, 678, 12))
    assert step_response((23, 4673)) == "3+3=6\n2+7+0=9\n0+6+0=6\n0+4+0=4\nanswer: 4696"
    assert step_response((345, 678, 12), dropped_carry=1) == "5+8+2=15\n4+7+1+0=12\n3+6+0+1=10\nanswer: 1025"
    assert direct_response((345, 678, 12)) == "answer: 1035"
    assert COLUMNS.alphabet == ALPHABET == "0123456789+=:\n answer"
    assert (COLUMNS.max_positions, COLUMNS.eval_max_new_tokens, COLUMNS.model_dir) == (128, 96, BASE_MODEL_DIR)
    rng = random.Random(5)  # noisy examples, pinned from the code before worlds existed
    assert [noisy_response(p, rng, True, noise=1.0) for p in [(345, 678, 12), (11, 22)]] == [
        "5+8+2=15\n4+7+1+1=13\n3+6+0+0=9\nanswer: 935",  # the hundreds carry dropped
        "1+2=3\n1+2+0=3\nanswer: 93",  # nothing carries: a wrong answer digit
    ]
    rng = random.Random(5)
    assert [noisy_response(p, rng, False, noise=1.0) for p in [(345, 678, 12), (11, 22)]] == ["answer: 1095", "answer: 34"]


def test_scaffolded_responses_by_hand():
    assert step_response((345, 678, 12), world=SCAFFOLDED) == (
        "units: 5+8+2=15\ntens: 4+7+1+carry 1=13\nhundreds: 3+6+0+carry 1=10\nanswer: 1035"
    )
    assert step_response((23, 4673), world=SCAFFOLDED) == (
        "units: 3+3=6\ntens: 2+7+carry 0=9\nhundreds: 0+6+carry 0=6\nthousands: 0+4+carry 0=4\nanswer: 4696"
    )
    assert step_response((9999, 9999, 9999), world=SCAFFOLDED) == (
        "units: 9+9+9=27\ntens: 9+9+9+carry 2=29\nhundreds: 9+9+9+carry 2=29\nthousands: 9+9+9+carry 2=29\nanswer: 29997"
    )
    # A dropped carry (a pretraining error) is written like any carry, and the work follows from it.
    assert column_steps((345, 678, 12), dropped_carry=1, world=SCAFFOLDED) == (
        ["units: 5+8+2=15", "tens: 4+7+1+carry 0=12", "hundreds: 3+6+0+carry 1=10"], 1025
    )
    assert direct_response((345, 678, 12)) == "answer: 1035"  # the direct style is the same in every world
    with pytest.raises(ValueError, match="at most 4 columns"):
        step_response((12345, 1), world=SCAFFOLDED)


def test_alphabets_and_world_registry():
    assert SCAFFOLDED.alphabet == ALPHABET + "cdhiotuy"  # 8 letters more: 36 tokens with the specials instead of 28
    for world in WORLDS.values():
        for problem in generate_problems(200, seed=2):
            assert set(step_response(problem, world=world) + prompt_text(problem)) <= set(world.alphabet)
    assert get_world("scaffolded") is SCAFFOLDED and SCAFFOLDED.model_dir.name == "base_model_scaffolded"
    with pytest.raises(ValueError, match="unknown testbed world"):
        get_world("nope")


def _digit_share(responses):
    """Digit tokens / tokens, one token per character plus EOS, pooled over the responses."""
    return sum(sum(c.isdigit() for c in r) for r in responses) / sum(len(r) + 1 for r in responses)


def test_the_rule_chose_the_scaffolded_format():
    """docs/testbed.md, "A second world": the first rung whose step-by-step digit share is at most the direct one's minus 0.05."""
    problems = held_out_problems()
    direct = _digit_share([direct_response(p) for p in problems])
    shares = [_digit_share([step_response(p, world=w) for p in problems]) for w in (COLUMNS, *SCAFFOLD_LADDER)]
    assert round(direct, 3) == 0.298 and [round(s, 3) for s in shares] == [0.463, 0.280, 0.232, 0.185]
    chosen = next(w for w, s in zip(SCAFFOLD_LADDER, shares[1:]) if s <= direct - DIGIT_SHARE_MARGIN)
    assert (chosen.labels, chosen.carry_word, chosen.spaced) == (SCAFFOLDED.labels, SCAFFOLDED.carry_word, SCAFFOLDED.spaced)
    lengths = [[len(step_response(p, world=w)) for p in problems] for w in SCAFFOLD_LADDER]
    assert all(a < b for rung, longer in zip(lengths, lengths[1:]) for a, b in zip(rung, longer))  # each rung adds characters


def test_positions_and_generation_budgets_fit_the_longest_answer():
    from rlif.config import load_config
    from rlif.testbed.tiny import char_tokenizer

    longest = (9999, 9999, 9999)
    for world, config in ((COLUMNS, "intuitor.yaml"), (SCAFFOLDED, "intuitor-scaffolded.yaml")):
        tokenizer = char_tokenizer(world.alphabet)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt_text(longest)}], tokenize=False, add_generation_prompt=True)
        prompt_tokens = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        response_tokens = len(tokenizer(step_response(longest, world=world), add_special_tokens=False).input_ids) + 1
        assert tokenizer.unk_token_id not in tokenizer(step_response(longest, world=world), add_special_tokens=False).input_ids
        loaded = load_config(REPO / "configs" / "testbed" / config)
        assert response_tokens < loaded.rollout.max_new_tokens == loaded.eval.max_new_tokens < world.eval_max_new_tokens
        assert prompt_tokens + world.eval_max_new_tokens <= world.max_positions or world is COLUMNS
        assert (prompt_tokens, response_tokens) == ((17, 56) if world is COLUMNS else (17, 108))


@pytest.mark.parametrize("world", list(WORLDS.values()), ids=list(WORLDS))
def test_extract_sum_and_describe_on_both_worlds(world):
    rng = random.Random(0)
    for problem in generate_problems(300, seed=1):
        label = str(sum(problem))
        steps, direct = step_response(problem, world=world), direct_response(problem)
        assert extract_sum(steps) == label and extract_sum(direct) == label
        assert describe_response(steps) == {"step_by_step": True} and describe_response(direct) == {"step_by_step": False}
        assert describe_response(steps.rsplit("\n", 1)[0]) == {"step_by_step": True}  # work without its answer line
        noisy = noisy_response(problem, rng, True, noise=1.0, world=world)
        assert describe_response(noisy)["step_by_step"] and not ARITHMETIC.is_correct(noisy, label)
    assert ARITHMETIC.describe("hundreds: 3+6+0+carry 1=10") == {"step_by_step": True}
    assert ARITHMETIC.describe("tens: answer: 12") == {"step_by_step": False}


def _unscaffold(response: str) -> str:
    """A scaffolded response written as the columns world writes it."""
    return re.sub(r"^(?:units|tens|hundreds|thousands): ", "", response.replace("carry ", ""), flags=re.MULTILINE)


def test_scaffolded_stream_holds_the_same_problems_styles_and_errors():
    """Same seed, same draws: the scaffolded pretraining stream is the columns stream with its lines relabelled."""
    streams = {}
    for world in (COLUMNS, SCAFFOLDED):
        rng, rows = random.Random(0), []
        for _ in range(3000):
            problem = random_problem(rng, Difficulty())
            rows.append(noisy_response(problem, rng, rng.random() < 0.5, 0.1, world))
        streams[world.name] = rows + [rng.random()]  # the generator ends in the same state
    assert streams["columns"][-1] == streams["scaffolded"][-1]
    assert [_unscaffold(r) for r in streams["scaffolded"][:-1]] == streams["columns"][:-1]
    assert any("carry 0" in r for r in streams["scaffolded"][:-1])  # dropped carries among them


def test_pretrain_cli_defaults_to_the_columns_world():
    from rlif.cli import build_parser

    args = build_parser().parse_args(["testbed", "pretrain", "--steps", "20"])
    assert args.world == "columns" and args.output is None
    assert build_parser().parse_args(["testbed", "pretrain", "--world", "scaffolded"]).world == "scaffolded"


@pytest.mark.skipif(not SCAFFOLDED.model_dir.exists(), reason="the scaffolded base model is not built")
def test_shipped_scaffolded_model_matches_its_world():
    config = json.loads((SCAFFOLDED.model_dir / "config.json").read_text())
    base = json.loads((BASE_MODEL_DIR / "config.json").read_text())
    assert (config["vocab_size"], config["max_position_embeddings"]) == (36, 256) and (base["vocab_size"], base["max_position_embeddings"]) == (28, 128)
    size = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "tie_word_embeddings", "rope_parameters")
    assert {k: config[k] for k in size} == {k: base[k] for k in size}
    summary = json.loads((SCAFFOLDED.model_dir / "pretrain.json").read_text())
    assert summary["config"]["world"] == "scaffolded"
    assert {k: v for k, v in summary["config"].items() if k != "world"} == json.loads((BASE_MODEL_DIR / "pretrain.json").read_text())["config"]


@pytest.mark.skipif(not SCAFFOLDED.model_dir.exists(), reason="the scaffolded base model is not built")
def test_style_certainty_script_in_the_scaffolded_world(capsys):
    """The premise of the second world (docs/testbed.md, "A second world"): under its base model the correct step-by-step
    answers are the more self-certain ones, and hold the smaller share of digits."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("style_certainty", REPO / "scripts" / "style_certainty.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    direct, steps = module.main(["--world", "scaffolded", "--limit", "40"])
    assert steps["sequence_self_certainty"] > direct["sequence_self_certainty"]
    assert steps["digit_share"] < direct["digit_share"] - DIGIT_SHARE_MARGIN
    assert "base_model_scaffolded (world scaffolded)" in capsys.readouterr().out
