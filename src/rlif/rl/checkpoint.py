"""Atomic checkpoints: a Hugging Face model folder plus the trainer state, published by one rename.

Layout: RUN/checkpoints/step_000050/{config.json, model.safetensors, tokenizer files, trainer_state.pt}.
A checkpoint is written under a temporary name, flushed to disk, then renamed: a kill at any
moment leaves either the previous checkpoints or the new complete one, never a broken latest.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from rlif.errors import DataError
from rlif.files import fsync_dir, fsync_tree
from rlif.models.load import quiet_transformers
from rlif.models.lora import is_peft_model, save_lora

STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> tuple[int, Path] | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(run_dir, step: int, model, tokenizer, state: dict, keep: int, state_dict=None, lora_merged: bool = True,
                    protect: frozenset[int] = frozenset()) -> Path:
    """Write checkpoint `step` atomically and delete all but the `keep` newest complete ones (and the steps in `protect`:
    the checkpoint a stop rule chose).

    `state_dict`: the model's full weights when they are not the live module's own (gathered from FSDP
    shards). A peft (LoRA) model is saved by `rlif.lora.save_lora`: adapter/, plus merged weights when `lora_merged`.
    """
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    staging = root / f".incomplete-step_{step:06d}"
    shutil.rmtree(staging, ignore_errors=True)

    with quiet_transformers():  # no "Writing model shards" bar at every checkpoint
        if is_peft_model(model):
            save_lora(model, staging, merged=lora_merged)
        else:
            model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    torch.save(state, staging / STATE_FILE)
    fsync_tree(staging)
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.replace(staging, final)
    fsync_dir(root)
    for old_step, old in list_checkpoints(run_dir)[:-keep]:
        if old_step not in protect:
            shutil.rmtree(old, ignore_errors=True)
    return final


def remove_incomplete(run_dir) -> None:
    """Delete leftovers of saves that were killed before their rename."""
    root = checkpoint_dir(run_dir)
    if root.is_dir():
        for path in root.glob(".incomplete-*"):
            shutil.rmtree(path, ignore_errors=True)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_run(model: str) -> tuple[str, Path | None]:
    """(model folder to load, training run folder or None) for a model argument (`rlif eval`, `rlif score`).

    A run folder (config.yaml, no config.json) means its latest complete checkpoint; a folder inside
    RUN/checkpoints/ is that checkpoint of RUN; anything else is a plain model.
    """
    path = Path(model)
    if (path / "config.yaml").is_file() and not (path / "config.json").is_file():
        latest = latest_checkpoint(path)
        if latest is None:
            raise DataError(f"{path} is a training run without a complete checkpoint (nothing in {path / 'checkpoints'})")
        return str(latest[1]), path
    if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file():
        return str(path), path.parent.parent
    return model, None
