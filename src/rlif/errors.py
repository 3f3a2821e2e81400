"""The errors rlif reports to a user as one line (the CLI prints them without a traceback, exit code 2).

Each names the file, line or field at fault and what was expected. They live here, apart from the code that
raises them, so the command line can catch them without importing torch.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range.

    `field` ("train.lr") names the config field at fault when there is one: loading a YAML file then adds the file
    and line the value came from."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class DataError(ValueError):
    """A data file is missing or a record in it is malformed."""


class EvalError(DataError):
    """The evaluation cannot start as asked (bad option, mismatched output folder, missing checkpoint)."""


class ModelLoadError(RuntimeError):
    """The model or tokenizer could not be loaded from the given path."""


class ModelInstallError(RuntimeError):
    """A packaged model could not be installed or converted."""


class OutputError(RuntimeError):
    """Results cannot be written (a full disk, a read-only file system); what was already written is intact."""


class TrainingDiverged(RuntimeError):
    """A loss, reward or gradient became NaN/inf; the run stopped before the bad update (exit code 1)."""


class VLLMServerError(RuntimeError):
    """A vLLM server (`rlif serve-vllm`) cannot be reached, refused the connection, serves another model, or failed a
    request (its own message is included)."""


USER_ERRORS = (ConfigError, DataError, ModelLoadError, ModelInstallError, OutputError, VLLMServerError)
