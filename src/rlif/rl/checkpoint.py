"""Atomic checkpoints: a Hugging Face model folder plus the trainer state, published by one rename.

Layout: RUN/checkpoints/step_000050/{config.json, model.safetensors, tokenizer files, trainer_state.json,
trainer_state.safetensors}. A checkpoint is written under a temporary name, flushed to disk, then renamed: a kill
at any moment leaves either the previous checkpoints or the new complete one, never a broken latest.

The trainer state (optimizer moments, schedule, every process's random number generators) is stored so that
loading it cannot run code: its tensors in safetensors, everything else as JSON (tuples and numpy arrays tagged),
so resuming a run folder someone shared executes nothing from it. rlif <= 0.2.0 pickled it (trainer_state.pt);
such checkpoints are refused for resuming (their weights are a model folder a new run can start from).
A checkpoint whose files do not load (truncated, damaged) counts as incomplete: resuming takes the one before.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rlif.errors import ConfigError, DataError, OutputError
from rlif.files import fsync_dir, fsync_tree, write_text_atomic
from rlif.models.load import quiet_transformers
from rlif.models.lora import is_peft_model, save_lora

STATE_JSON = "trainer_state.json"  # everything but tensors; written last
STATE_TENSORS = "trainer_state.safetensors"
LEGACY_STATE_FILE = "trainer_state.pt"  # rlif <= 0.2.0: a pickle, never loaded
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
        if match and ((path / STATE_JSON).is_file() or (path / LEGACY_STATE_FILE).is_file()):
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
    final = root / f"step_{step:06d}"
    staging = root / f".incomplete-step_{step:06d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        with quiet_transformers():  # no "Writing model shards" bar at every checkpoint
            if is_peft_model(model):
                save_lora(model, staging, merged=lora_merged)
            else:
                model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(staging)
        write_trainer_state(staging, state)
        fsync_tree(staging)
    except (OSError, SafetensorError) as error:  # a full disk, a read-only or vanished file system
        shutil.rmtree(staging, ignore_errors=True)  # free what the partial save took
        raise OutputError(save_failed_message(run_dir, step, error)) from None
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.replace(staging, final)
    fsync_dir(root)
    prune_checkpoints(run_dir, keep, protect)
    return final


def prune_checkpoints(run_dir, keep: int, protect: frozenset[int] = frozenset()) -> None:
    """Delete all but the `keep` newest complete checkpoints, never the steps in `protect`."""
    for old_step, old in list_checkpoints(run_dir)[:-keep]:
        if old_step not in protect:
            shutil.rmtree(old, ignore_errors=True)


def save_failed_message(run_dir, step: int, error: Exception) -> str:
    """What a user needs after a failed save: why, and which checkpoint to resume from (it is untouched)."""
    latest = latest_checkpoint(run_dir)
    kept = f"the last complete checkpoint is {latest[1]} (intact)" if latest else "no checkpoint was written before it"
    # safetensors reports a failed write as "Error while serializing: I/O error: No space left on device (os error 28)"
    reason = error.strerror if isinstance(error, OSError) and error.strerror else re.sub(r"^.*I/O error: ", "", str(error))
    return (f"step {step}: could not write checkpoint step_{step:06d} in {checkpoint_dir(run_dir)} ({reason}); training "
            f"stopped, {kept}. Free space or make the folder writable, then resume with run.resume=true")


def write_trainer_state(folder: Path, state: dict) -> None:
    """`state` (nested dicts, lists, tuples, numbers, strings, tensors, numpy arrays) as STATE_TENSORS + STATE_JSON."""
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(state, tensors, "state")
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}, Path(folder) / STATE_TENSORS)
    write_text_atomic(Path(folder) / STATE_JSON, json.dumps(encoded))


class CheckpointUnreadable(Exception):
    """A checkpoint's files do not load (truncated, damaged, or not what rlif writes)."""


def read_trainer_state(folder: Path) -> dict:
    """The state `write_trainer_state` wrote, read without unpickling anything; CheckpointUnreadable if it cannot be."""
    folder = Path(folder)
    if not (folder / STATE_JSON).is_file() and (folder / LEGACY_STATE_FILE).is_file():
        raise ConfigError(legacy_message(folder))
    try:
        encoded = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
        tensors = load_file(folder / STATE_TENSORS)
        return _decode(encoded, tensors)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, SafetensorError) as error:
        raise CheckpointUnreadable(f"{type(error).__name__}: {error}") from None


def legacy_message(folder: Path) -> str:
    return (
        f"cannot resume from {folder}: its trainer state is {LEGACY_STATE_FILE}, the pickle file of rlif <= 0.2.0, "
        "which rlif no longer loads (unpickling a file can run code). Its weights are a plain model folder: start a new "
        f"run from them with model.path={folder} and another run.output_dir"
    )


def check_weight_files(folder: Path) -> None:
    """Raise CheckpointUnreadable if a weights file of the checkpoint is cut short or its config does not parse.

    Reads only each safetensors header (the data's extent), not the weights: cheap next to loading them."""
    folder = Path(folder)
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("adapter/*.safetensors"))
    if not any(path.name != STATE_TENSORS for path in weights):
        raise CheckpointUnreadable("no weights file (*.safetensors)")
    for path in weights:
        _check_safetensors_extent(path)
    for config in (folder / "config.json", folder / "adapter" / "adapter_config.json"):
        if config.exists():
            try:
                json.loads(config.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as error:
                raise CheckpointUnreadable(f"{config.name}: {error}") from None


def _check_safetensors_extent(path: Path) -> None:
    size = path.stat().st_size
    try:
        with open(path, "rb") as file:
            (header_length,) = struct.unpack("<Q", file.read(8))
            if header_length > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(file.read(header_length))
        end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, KeyError, TypeError, IndexError) as error:
        raise CheckpointUnreadable(f"{path.name} is not a readable safetensors file ({error})") from None
    if size != 8 + header_length + end:
        raise CheckpointUnreadable(f"{path.name} is cut short ({size} bytes, its header describes {8 + header_length + end})")


def loadable_checkpoint(run_dir, note=print) -> tuple[int, Path, dict] | None:
    """(step, folder, trainer state) of the newest checkpoint that loads, None when the run has none.

    A checkpoint that does not load is reported through `note` and passed over for the one before it; when
    none loads the run cannot resume (ConfigError). A checkpoint of rlif <= 0.2.0 is refused (`legacy_message`)."""
    checkpoints = list_checkpoints(run_dir)
    for step, folder in reversed(checkpoints):
        try:
            state = read_trainer_state(folder)
            check_weight_files(folder)
            return step, folder, state
        except CheckpointUnreadable as error:
            note(f"checkpoint {folder} does not load ({error}): treating it as incomplete")
    if checkpoints:
        raise ConfigError(
            f"config field run.resume = True: no checkpoint of {run_dir} loads (see above); delete the damaged "
            f"folders in {checkpoint_dir(run_dir)} to restart from step 0, or start a new run"
        )
    return None


_TAGS = ("__tensor__", "__tuple__", "__ndarray__", "__items__")


def _encode(value, tensors: dict, path: str):
    """JSON-able form of `value`; its tensors go into `tensors` under their path (named in the JSON)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        tensors[path] = value
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in value):
            return {k: _encode(v, tensors, f"{path}/{k}") for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors, f"{path}/key{i}"), _encode(v, tensors, f"{path}/{i}")]
                              for i, (k, v) in enumerate(value.items())]}
    raise TypeError(f"trainer state: cannot store {type(value).__name__} at {path}")


def _decode(value, tensors: dict):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__ndarray__" in value:
        return np.array(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
    if "__items__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def remove_incomplete(run_dir) -> None:
    """Delete leftovers of saves that were killed before their rename."""
    root = checkpoint_dir(run_dir)
    if root.is_dir():
        for path in root.glob(".incomplete-*"):
            shutil.rmtree(path, ignore_errors=True)


def seed_global_rngs(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (each starts from entropy in a new process). rlif draws
    nothing from them (its randomness is keyed: `rlif.sampling.keys`), but a reward of one's own may: seeded, such a
    run repeats, and its resumption (which restores them from the checkpoint) equals the uninterrupted run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
