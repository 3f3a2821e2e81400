"""A small world where INTUITOR's effects can be measured in minutes on a CPU.

- `task`: multi-digit addition answered directly or column by column; the "arithmetic" answer format; the worlds
  (`columns`, `scaffolded`: how the column lines are written).
- `pretrain`: builds and pretrains the tiny base model (`rlif testbed pretrain`).
- `BASE_MODEL_DIR`: the shipped base model, a normal Hugging Face folder (package data, so any install finds it);
  the scaffolded world's is `base_model_scaffolded/` (`task.SCAFFOLDED.model_dir`).
- `DATA_DIR`: the shipped prompt files: train.jsonl (RL prompts) and test.jsonl (the fixed held-out split).
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BASE_MODEL_DIR = PACKAGE_DIR / "base_model"
DATA_DIR = PACKAGE_DIR / "data"
