"""Token signals: the formulas (`tokens`), the chunked batch computation (`chunked`, `triton_kernels`), the model
wrapper that produces them (`model`), batching (`batching`) and the `rlif score` command (`score`)."""

import importlib
import warnings

_OLD_NAMES = {"TokenSignals": "rlif.signals.tokens", "logit_signals": "rlif.signals.tokens", "block_signals": "rlif.signals.tokens",
              "masked_mean": "rlif.signals.tokens", "hidden_signals": "rlif.signals.chunked"}


def __getattr__(name):  # rlif < 0.2 had these in the module rlif.signals
    if name in _OLD_NAMES:
        warnings.warn(f"rlif.signals.{name} moved to {_OLD_NAMES[name]}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_OLD_NAMES[name]), name)
    raise AttributeError(f"module 'rlif.signals' has no attribute {name!r}")
