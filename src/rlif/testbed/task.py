"""The testbed task: multi-digit addition, answered directly or column by column.

A problem is 2-3 operands of 2-4 digits (`Difficulty`), the prompt is the sum written out ("345+678+12").
A response answers in one of two styles and always ends with the same answer line:
    direct          answer: 1035

    step by step    5+8+2=15            (units column; no carry in)
                    4+7+1+1=13          (tens: the digits, then the carry from the column before)
                    3+6+0+1=10          (shorter operands contribute 0)
                    answer: 1035

The final answer is the number after the last "answer:", so both styles are checked the same way
(`ARITHMETIC`, registered as the answer format "arithmetic").

Problems come from a seeded `random.Random`; the held-out test split is `TEST_SIZE` problems drawn with
the fixed `TEST_SEED`, and every other split excludes them.

Worlds (`World`, `WORLDS`): the same problems, prompts, styles and errors, with the column lines written differently.
`columns` (the default, the shipped `base_model/`) writes them as above; `scaffolded` (`base_model_scaffolded/`) adds
predictable non-digit scaffolding, chosen by the rule in `SCAFFOLDED`'s comment (docs/testbed.md, "A second world").
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from rlif.data.answers import AnswerFormat, register_answer_format
from rlif.testbed import PACKAGE_DIR

TEST_SEED = 20_250_519  # fixed forever: the held-out split must never change
TEST_SIZE = 500
TRAIN_SEED = 1
TRAIN_SIZE = 4000  # RL training prompts shipped in rlif/testbed/data/train.jsonl
ANSWER_MARKER = "answer:"
# Every character a prompt or response can contain: the tokenizer's alphabet.
ALPHABET = "0123456789+=:\n answer"


@dataclass(frozen=True)
class Difficulty:
    min_operands: int = 2
    max_operands: int = 3
    min_digits: int = 2
    max_digits: int = 4

    def __post_init__(self):
        if not 2 <= self.min_operands <= self.max_operands:
            raise ValueError(f"operands: need 2 <= min_operands <= max_operands, got {self.min_operands}, {self.max_operands}")
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(f"digits: need 1 <= min_digits <= max_digits, got {self.min_digits}, {self.max_digits}")


Problem = tuple[int, ...]  # the operands, in prompt order


def random_problem(rng: random.Random, difficulty: Difficulty) -> Problem:
    num_operands = rng.randint(difficulty.min_operands, difficulty.max_operands)
    digits = [rng.randint(difficulty.min_digits, difficulty.max_digits) for _ in range(num_operands)]
    return tuple(rng.randint(10 ** (d - 1) if d > 1 else 0, 10**d - 1) for d in digits)


def generate_problems(count: int, seed: int, difficulty: Difficulty = Difficulty(), exclude=frozenset()) -> list[Problem]:
    """`count` distinct problems from a seeded generator, none of them in `exclude`."""
    rng = random.Random(seed)
    seen, problems = set(exclude), []
    for _ in range(100 * count + 1000):
        if len(problems) == count:
            break
        problem = random_problem(rng, difficulty)
        if problem not in seen:
            seen.add(problem)
            problems.append(problem)
    if len(problems) < count:
        raise ValueError(f"{difficulty} has too few distinct problems for {count} (got {len(problems)})")
    return problems


def held_out_problems(difficulty: Difficulty = Difficulty()) -> list[Problem]:
    """The fixed held-out split."""
    return generate_problems(TEST_SIZE, TEST_SEED, difficulty)


def train_problems(count: int, seed: int, difficulty: Difficulty = Difficulty()) -> list[Problem]:
    """Training problems: seeded, disjoint from the held-out split."""
    return generate_problems(count, seed, difficulty, exclude=frozenset(held_out_problems(difficulty)))


def prompt_text(problem: Problem) -> str:
    return "+".join(str(n) for n in problem)


# ---------------------------------------------------------------------------------------------
# Worlds: how the column lines are written

PLACE_NAMES = ("units", "tens", "hundreds", "thousands")  # column labels, units first
CARRY_WORD = "carry"


@dataclass(frozen=True)
class World:
    """How a world writes a column line; everything else (problems, prompts, styles, errors, answer line) is shared.

    Rendering draws nothing from the random stream, so two worlds' pretraining streams hold the same problems, styles
    and errors in the same places. `labels`: the line starts with its column's place name (`tens: `); `carry_word`:
    the carry-in term is written `carry 1`; `spaced`: a space either side of each `+` and `=`.
    """

    name: str
    labels: bool = False
    carry_word: bool = False
    spaced: bool = False
    max_positions: int = 128
    """The model's `max_position_embeddings` (rotary: no parameters depend on it)."""
    eval_max_new_tokens: int = 96
    """Generation budget of pretraining's held-out evaluation."""
    model_folder: str = "base_model"
    """The shipped base model, a folder of the `rlif.testbed` package."""

    @property
    def alphabet(self) -> str:
        """Every character a prompt or response can contain: the tokenizer's alphabet."""
        extra = (" ".join(PLACE_NAMES) if self.labels else "") + (CARRY_WORD if self.carry_word else "")
        return ALPHABET + "".join(sorted(set(extra) - set(ALPHABET)))

    @property
    def model_dir(self) -> Path:
        return PACKAGE_DIR / self.model_folder

    def column_line(self, column: int, terms: list[int], total: int) -> str:
        """The line of `column` (0 = units): its terms (the carry-in last, from the tens on) and their total."""
        plus, equals = (" + ", " = ") if self.spaced else ("+", "=")
        written = [str(t) for t in terms]
        if self.carry_word and column > 0:
            written[-1] = f"{CARRY_WORD} {written[-1]}"
        line = plus.join(written) + equals + str(total)
        if not self.labels:
            return line
        if column >= len(PLACE_NAMES):
            raise ValueError(f"world {self.name!r} labels at most {len(PLACE_NAMES)} columns ({PLACE_NAMES}), got column {column}")
        return f"{PLACE_NAMES[column]}: {line}"


COLUMNS = World("columns")
# The candidates for the second world, in order (each adds scaffolding to every line of the one before); the rule,
# fixed before any was measured: take the first whose step-by-step digit share (correct answers to the 500 held-out
# problems, one token per character plus EOS, pooled) is at most the direct answers' digit share minus 0.05.
SCAFFOLD_LADDER = (
    World("S1", labels=True),
    World("S2", labels=True, carry_word=True),
    World("S3", labels=True, carry_word=True, spaced=True),
)
DIGIT_SHARE_MARGIN = 0.05
# Measured (text only): direct 0.298, S0 (= columns) 0.463, S1 0.280, S2 0.232, S3 0.185, so the rule chose S2:
#   units: 5+8+2=15 / tens: 4+7+1+carry 1=13 / hundreds: 3+6+0+carry 1=10 / answer: 1035
# The longest possible response is 108 tokens with EOS (3 operands of 4 digits; the held-out maximum too), so with the
# 17-token prompt it would fit 128 positions, but not with a generation budget above it: 256 positions, and a held-out
# budget of 192 new tokens (the columns world: 96 for at most 56, the same headroom).
SCAFFOLDED = World("scaffolded", labels=True, carry_word=True, max_positions=256, eval_max_new_tokens=192,
                   model_folder="base_model_scaffolded")
WORLDS = {world.name: world for world in (COLUMNS, SCAFFOLDED)}


def get_world(name: str) -> World:
    if name not in WORLDS:
        raise ValueError(f"unknown testbed world {name!r}; known: {', '.join(WORLDS)}")
    return WORLDS[name]


# ---------------------------------------------------------------------------------------------
# The two answer styles


def direct_response(problem: Problem, answer: int | None = None) -> str:
    return f"{ANSWER_MARKER} {sum(problem) if answer is None else answer}"


def column_steps(problem: Problem, dropped_carry: int | None = None, world: World = COLUMNS) -> tuple[list[str], int]:
    """The column lines (units first) as `world` writes them and the answer they lead to.

    `dropped_carry`: the column whose carry-in is written as 0 (a pretraining error); the rest of the
    work follows consistently from it, so the stated answer is wrong the way the work is.
    """
    width = max(len(str(n)) for n in problem)
    lines, carry, digits = [], 0, []
    for column in range(width):
        terms = [n // 10**column % 10 for n in problem]
        if column == dropped_carry:
            carry = 0
        if column > 0:
            terms.append(carry)
        total = sum(terms)
        lines.append(world.column_line(column, terms, total))
        digits.append(total % 10)
        carry = total // 10
    answer = carry * 10**width + sum(d * 10**i for i, d in enumerate(digits))
    return lines, answer


def step_response(problem: Problem, dropped_carry: int | None = None, world: World = COLUMNS) -> str:
    lines, answer = column_steps(problem, dropped_carry, world)
    return "\n".join(lines + [direct_response(problem, answer)])


def noisy_response(problem: Problem, rng: random.Random, step_by_step: bool, noise: float, world: World = COLUMNS) -> str:
    """A response in the given style; with probability `noise` it holds one error.

    Direct: one digit of the answer replaced by another. Step by step: one carry dropped (the work and
    the answer follow from it); when no column has a carry, the answer digit error of the direct style.
    """
    if rng.random() >= noise:
        return step_response(problem, world=world) if step_by_step else direct_response(problem)
    if step_by_step:
        _, correct = column_steps(problem)
        carried = [c for c in range(1, max(len(str(n)) for n in problem)) if column_steps(problem, c)[1] != correct]
        if carried:
            return step_response(problem, dropped_carry=rng.choice(carried), world=world)
    digits = list(str(sum(problem)))
    position = rng.randrange(len(digits))
    digits[position] = rng.choice([d for d in "0123456789" if d != digits[position] and not (position == 0 and d == "0")] or ["1"])
    wrong = int("".join(digits))
    if step_by_step:
        lines, _ = column_steps(problem, world=world)
        return "\n".join(lines + [direct_response(problem, wrong)])
    return direct_response(problem, wrong)


# ---------------------------------------------------------------------------------------------
# The answer format

_ANSWER = re.compile(re.escape(ANSWER_MARKER) + r" ?(-?\d+)")
# A column line of either world: an optional place label and carry word around the columns world's line. Every label
# and "carry" holds a letter outside the columns world's alphabet, so on that world's responses this is the old test.
_COLUMN_LINE = re.compile(r"^(?:(?:" + "|".join(PLACE_NAMES) + r"): )?\d+(?:\+(?:carry )?\d+)+=\d+$", re.MULTILINE)


def extract_sum(response: str) -> str | None:
    """The number after the last "answer:", canonical (no leading zeros); None when there is none."""
    found = _ANSWER.findall(response)
    return str(int(found[-1])) if found else None


def same_number(predicted: str | None, reference: str | None) -> bool:
    if predicted is None or reference is None:
        return False
    try:
        return int(predicted) == int(reference)
    except ValueError:
        return False


def describe_response(response: str) -> dict:
    """Per-response features the evaluation summaries average: the answer style."""
    return {"step_by_step": bool(_COLUMN_LINE.search(response))}


ARITHMETIC = register_answer_format(AnswerFormat("arithmetic", extract_sum, same_number, describe_response))


# ---------------------------------------------------------------------------------------------
# Prompt files


def write_prompts(path: str | Path, problems: list[Problem]) -> Path:
    """A JSONL prompt file (`prompt`, `answer`) as `rlif train` reads it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for problem in problems:
            file.write(json.dumps({"prompt": prompt_text(problem), "answer": str(sum(problem))}) + "\n")
    return path


def write_split_files(folder: str | Path) -> list[Path]:
    """The shipped prompt files: train.jsonl (TRAIN_SIZE problems, TRAIN_SEED) and the held-out test.jsonl."""
    folder = Path(folder)
    return [
        write_prompts(folder / "train.jsonl", train_problems(TRAIN_SIZE, TRAIN_SEED)),
        write_prompts(folder / "test.jsonl", held_out_problems()),
    ]
