"""The run folder: what marks it as rlif's, what `run.overwrite` may delete, whether it can be written.

`run.overwrite=true` empties the folder before a new run. It deletes only a folder rlif made: one holding the
`.rlif-run` marker every new run writes (with the rlif version), or, for runs of rlif <= 0.2.0, config.yaml and
metrics.jsonl. Anything else given as run.output_dir (a folder of one's own files) is refused. Deleting never
follows a symbolic link: a link inside the run folder is removed, not what it points to.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import rlif
from rlif.errors import ConfigError
from rlif.files import remove_contents, write_text_atomic

MARKER = ".rlif-run"


def mark_run(run_dir: Path) -> None:
    """Write the marker that lets a later `run.overwrite=true` delete this folder."""
    write_text_atomic(Path(run_dir) / MARKER, json.dumps({"rlif": rlif.__version__}) + "\n")


def is_rlif_run(run_dir: Path) -> bool:
    """Whether rlif made this folder: its marker, or (older runs) config.yaml and metrics.jsonl."""
    run_dir = Path(run_dir)
    if (run_dir / MARKER).is_file():
        return True
    return (run_dir / "config.yaml").is_file() and (run_dir / "metrics.jsonl").is_file()


def remove_run_contents(run_dir: Path) -> None:
    """Empty a folder `is_rlif_run` accepted (links inside it are unlinked, never followed)."""
    remove_contents(Path(run_dir))


def check_writable(run_dir: Path) -> None:
    """Create `run_dir` if needed and write a byte there (then remove it); ConfigError naming why not.

    Catches, before any model is loaded, an output path under a regular file, a read-only file system, a folder
    without write permission and a disk with no space left."""
    run_dir = Path(run_dir)
    for folder in (run_dir, *run_dir.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise ConfigError(f"config field run.output_dir = {str(run_dir)!r}: {folder} is a file, not a folder",
                                  field="run.output_dir")
            break
    probe = run_dir / f".rlif-write-check-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as file:
            file.write(b"\0")
            file.flush()
            os.fsync(file.fileno())
    except OSError as error:
        raise ConfigError(f"config field run.output_dir = {str(run_dir)!r}: cannot write there ({error.strerror})",
                          field="run.output_dir") from None
    finally:
        if probe.exists():
            probe.unlink()


def moved_from(saved_config: dict, run_dir: Path) -> str | None:
    """The saved run.output_dir when the run folder is now elsewhere (copied or moved), else None."""
    saved = (saved_config.get("run") or {}).get("output_dir")
    if not saved or Path(saved).resolve() == Path(run_dir).resolve():
        return None
    return str(saved)
