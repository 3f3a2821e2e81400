"""Experiment trackers (TensorBoard, W&B, MLflow, trackio, ...) through accelerate's trackers: which names
`run.report_to` accepts and which are installed, what each tracker is given, and which tracker run a resumed run
continues (the ids are kept in RUN/trackers.json). The run folder's metrics.jsonl stays the record; trackers get a
copy of each step's numbers, the config flattened (`train.lr`, ...) and the sample completions as a table where the
tracker has tables. Only the main process logs: accelerate starts the trackers there alone.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
from pathlib import Path
from urllib.parse import urlparse

from rlif.errors import ConfigError
from rlif.files import write_text_atomic

# accelerate's tracker names (accelerate.tracking.LOGGER_TYPE_TO_CLASS; a test keeps them equal) -> the modules that
# make it available (any one) and the package pip installs. Not imported here: validating a config stays cheap.
TRACKERS = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
    "trackio": (("trackio",), "trackio"),
    "comet_ml": (("comet_ml",), "comet-ml"),
    "aim": (("aim",), "aim"),
    "clearml": (("clearml",), "clearml"),
    "dvclive": (("dvclive",), "dvclive"),
    "swanlab": (("swanlab",), "swanlab"),
}
PROJECT = "rlif"  # the W&B / trackio project and MLflow experiment (MLFLOW_EXPERIMENT_NAME overrides it)
RUN_IDS = "trackers.json"  # in the run folder: the tracker runs a resumed run continues


def installed(name: str) -> bool:
    return any(importlib.util.find_spec(module) is not None for module in TRACKERS[name][0])


def check_report_to(names: list[str]) -> None:
    """Raise ConfigError unless every name is a tracker accelerate supports and is installed, `all` or `none`."""
    where = f"config field run.report_to = {names!r}"
    for name in names:
        if name not in TRACKERS and name not in ("all", "none"):
            close = difflib.get_close_matches(name, [*TRACKERS, "all", "none"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown tracker {name!r}{hint}; expected a list of {', '.join(TRACKERS)}, all "
                              "(every installed one) or none")
    if "none" in names and len(names) > 1:
        raise ConfigError(f"{where}: 'none' cannot be combined with trackers")
    missing = [name for name in dict.fromkeys(names) if name in TRACKERS and not installed(name)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ConfigError(f"{where}: {' and '.join(missing)} {verb} not installed "
                          f"(pip install {' '.join(TRACKERS[name][1] for name in missing)})")


def resolve(names: list[str]) -> list[str]:
    """The trackers to start: `all` is every installed one, `none` none (a checked `run.report_to`)."""
    if "all" in names:
        return [name for name in TRACKERS if installed(name)]
    return [name for name in dict.fromkeys(names) if name != "none"]


def flatten_config(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """`{"train": {"lr": 1e-4}}` -> `{"train.lr": 1e-4}`, with only values every tracker accepts (TensorBoard's
    hparams take bool, int, float and str): None, lists and empty mappings become their JSON text."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = json.dumps(value)
    return flat


def start(accelerator, config, run_dir: Path, first_step: int) -> None:
    """Start the trackers accelerate was built with, on the main process. A resumed run (`run.resume`) continues the
    W&B, MLflow and trackio runs recorded in RUN/trackers.json, and TensorBoard hides what was logged from
    `first_step` on (the steps after the checkpoint, logged again now)."""
    names = resolve(config.run.report_to)
    if not names or not accelerator.is_main_process:
        return
    ids_file = Path(run_dir) / RUN_IDS
    stored = json.loads(ids_file.read_text()) if config.run.resume and ids_file.exists() else {}
    continued = {name for name in stored if name in names} if config.run.resume else set()
    if "mlflow" in continued and stored["mlflow"].get("tracking_uri") != _mlflow_tracking_uri():
        continued.discard("mlflow")  # another MLflow store: its run id would not be found there
    flat = flatten_config(config.to_dict())
    run_name = Path(run_dir).resolve().name
    accelerator.init_trackers(PROJECT, config=None, init_kwargs=_init_kwargs(
        names, Path(run_dir), run_name, stored, continued, first_step if config.run.resume else None, flat))
    for tracker in accelerator.trackers:
        # trackio got the config at init; an MLflow run's params are immutable (a resume with other batching
        # settings would be refused), so a continued run keeps its first params (config.yaml has the current ones)
        if tracker.name != "trackio" and not (tracker.name == "mlflow" and "mlflow" in continued):
            tracker.store_init_configuration(flat)
    write_text_atomic(ids_file, json.dumps({**stored, **_run_ids(accelerator)}, indent=2) + "\n")
    accelerator.print(f"trackers: {', '.join(names)}" + (f" (continuing {', '.join(sorted(continued))})" if continued else ""))


def _init_kwargs(names, run_dir: Path, run_name: str, stored: dict, continued: set, purge_from: int | None, flat: dict):
    kwargs = {}
    if "tensorboard" in names and purge_from is not None:
        kwargs["tensorboard"] = {"purge_step": purge_from}  # events at steps >= purge_from from before are dropped
    if "wandb" in names:
        kwargs["wandb"] = {"name": run_name}
        if not os.environ.get("WANDB_DIR"):
            kwargs["wandb"]["dir"] = str(run_dir)  # RUN/wandb/ (W&B's own default is the current folder)
        if "wandb" in continued:
            kwargs["wandb"].update(id=stored["wandb"]["id"], resume="allow")
    if "mlflow" in names:
        kwargs["mlflow"] = {"run_name": run_name}
        if "mlflow" in continued:
            kwargs["mlflow"]["run_id"] = stored["mlflow"]["run_id"]
    if "trackio" in names:
        name = stored["trackio"]["name"] if "trackio" in continued else run_name
        kwargs["trackio"] = {"name": name, "resume": "allow" if "trackio" in continued else "never", "config": flat}
    return kwargs


def _run_ids(accelerator) -> dict:
    ids = {}
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            ids["wandb"] = {"id": tracker.run.id, "project": tracker.run.project}
        elif tracker.name == "mlflow":
            info = tracker.active_run.info
            ids["mlflow"] = {"run_id": info.run_id, "experiment_id": info.experiment_id, "tracking_uri": _mlflow_tracking_uri()}
        elif tracker.name == "trackio":
            ids["trackio"] = {"name": tracker.run.name, "project": PROJECT}
    return ids


def _mlflow_tracking_uri() -> str | None:
    if importlib.util.find_spec("mlflow") is None:
        return None
    import mlflow

    return mlflow.get_tracking_uri()


def log(accelerator, step: int, metrics: dict) -> None:
    """The step's numbers under their own names (`reward/mean`, `eval/greedy/accuracy`, ...) at `step`."""
    if not accelerator.trackers:  # none configured, or not the main process
        return
    values = {key: (value.item() if hasattr(value, "item") else value) for key, value in metrics.items()}
    values = {key: value for key, value in values.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    for tracker in accelerator.trackers:  # what accelerator.log does, but for MLflow's file store
        tracker.log(_file_store_keys(values) if tracker.name == "mlflow" and _mlflow_file_store() else values, step=step)


def _file_store_keys(values: dict) -> dict:
    """MLflow's file store (./mlruns, file:) keeps a metric as a file named by its key, so it cannot hold both
    eval/greedy/accuracy and eval/greedy/accuracy/step_by_step: there the slashes after the first (the namespace,
    which the MLflow UI groups by) become dots, eval/greedy.accuracy.step_by_step. Database stores keep the names."""
    return {"/".join(part.replace("/", ".") for part in key.split("/", 1)): value for key, value in values.items()}


def _mlflow_file_store() -> bool:
    """Whether MLflow logs to its file store: a path or file: URI (a one-letter scheme is a Windows drive)."""
    uri = _mlflow_tracking_uri() or ""
    scheme = urlparse(uri).scheme
    return not uri.startswith("databricks") and (scheme == "file" or len(scheme) <= 1)


def log_samples(accelerator, step: int, records: list[dict]) -> None:
    """samples.jsonl's records of `step` as a table: W&B and trackio tables (`samples`), an MLflow artifact
    samples/step_000010.json of {"columns", "data"} (pandas' "split" layout; mlflow.log_table would need pandas)."""
    if not accelerator.trackers or not records:
        return
    columns = list(dict.fromkeys(key for record in records for key in record))
    rows = [[record.get(column) for column in columns] for record in records]
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            import wandb

            tracker.run.log({"samples": wandb.Table(columns=columns, data=rows)}, step=step)
        elif tracker.name == "trackio":
            import trackio

            tracker.run.log({"samples": trackio.Table(columns=columns, data=rows)}, step=step)
        elif tracker.name == "mlflow":
            import mlflow

            mlflow.log_dict({"columns": columns, "data": rows}, f"samples/step_{step:06d}.json")
