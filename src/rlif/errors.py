"""The errors rlif reports to a user as one line (the CLI prints them without a traceback, exit code 2).

Each names the file, line or field at fault and what was expected. They live here, apart from the code that
raises them, so the command line can catch them without importing torch.
"""


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range."""


class DataError(ValueError):
    """A data file is missing or a record in it is malformed."""


class EvalError(DataError):
    """The evaluation cannot start as asked (bad option, mismatched output folder, missing checkpoint)."""


class ModelLoadError(RuntimeError):
    """The model or tokenizer could not be loaded from the given path."""


class ModelInstallError(RuntimeError):
    """A packaged model could not be installed or converted."""


class TrainingDiverged(RuntimeError):
    """A loss, reward or gradient became NaN/inf; the run stopped before the bad update (exit code 1)."""


USER_ERRORS = (ConfigError, DataError, ModelLoadError, ModelInstallError)
