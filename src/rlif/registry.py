"""Short names for models installed into rlif's cache (see `rlif models`)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where installed models live: $RLIF_CACHE, else ~/.cache/rlif."""
    return Path(os.environ.get("RLIF_CACHE") or Path.home() / ".cache" / "rlif")


def installed_model_path(name: str) -> str | None:
    """The folder of an installed model called `name`, or None."""
    folder = cache_dir() / "models" / name
    return str(folder) if (folder / "config.json").is_file() else None
