"""Rewrite the generated documentation: docs/configuration.md from the config dataclasses (their field docstrings).

    python scripts/update_docs.py            # rewrite docs/configuration.md
    python scripts/update_docs.py --check    # exit 1 if it is stale (tests/test_config.py runs this check)
"""

from __future__ import annotations

import sys
from pathlib import Path

from rlif.config import config_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

HEADER = """# Configuration reference

A run is one YAML file with one mapping per section (`train: {lr: 1.0e-5}`) plus `section.field=value` overrides on the
command line (`rlif train CONFIG train.lr=1e-5 run.resume=true`). Every field is typed and validated when the config is
loaded, before any model: unknown keys (with the closest known one), duplicate keys, wrong types, non-finite numbers and
out-of-range values are errors that name the file and line (YAML) or the override, the field, the value and what is
allowed. `rlif config show CONFIG [overrides]` prints the resolved config; `rlif config docs` prints this table.

## What a config can execute

A config names code to run in three places, and rlif runs it with your permissions, so read a config you did not write
before training with it, as you would a script:
- `reward.name: package.module:function` imports that module and calls the function on every rollout (the plug-in
  mechanism for your own rewards);
- `data.answer_format: package.module:attribute` imports that module for its answer format;
- `model.trust_remote_code: true` lets transformers run the Python files in the model folder (off by default).
Nothing else in a run folder is executed: checkpoints hold weights in safetensors and the trainer state in a form whose
loading cannot run code (`rlif.rl.checkpoint`), so resuming a run folder someone shares runs no code from it.

## Every field

This table is generated from the config dataclasses (`src/rlif/config.py`) by `python scripts/update_docs.py`; a test
fails when it is stale.

"""


def render() -> str:
    return HEADER + config_reference() + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv[1:]:
        sys.exit(0 if DOC.read_text() == render() else 1)
    DOC.write_text(render())
    print(f"updated {DOC}")
