"""Files rlif writes: whole or not at all, flushed where a kill must not lose them; and their checksums."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Replace `path` with `text` by writing a temporary file beside it and renaming it (a kill keeps the old file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)
    return path


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_tree(folder: Path) -> None:
    """Flush every file below `folder`, then the folder itself, to disk."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as file:
                os.fsync(file.fileno())
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_contents(folder: Path) -> None:
    """Delete everything inside `folder` (kept itself) without following a symbolic link anywhere below it: a link
    is unlinked, never descended into, so nothing outside `folder` is touched. Each entry is checked with lstat,
    not with a test that follows links."""
    for entry in os.scandir(folder):
        mode = os.lstat(entry.path).st_mode
        if stat.S_ISDIR(mode):
            remove_contents(Path(entry.path))
            os.rmdir(entry.path)
        else:  # a file, a link (to a file or a folder), a socket...
            os.unlink(entry.path)
