"""Experiment trackers, offline and local: after the testbed's main job at a tiny budget, what TensorBoard's event files,
W&B's offline run, an MLflow file store and trackio's local store hold, read back with each tracker's own reader,
equals the run folder's metrics.jsonl (every step, every metric), config and samples.jsonl. run.report_to's names
are checked before any model loads; a resumed run continues the same tracker runs; two processes log once."""

import importlib.machinery
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import free_port

from rlif.cli import main
from rlif.config import load_config
from rlif.data.jsonl import read_log
from rlif.errors import ConfigError
from rlif.rl.train import build_accelerator
from rlif.runs import trackers
from rlif.runs.trackers import TRACKERS, flatten_config, resolve

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/testbed/intuitor.yaml"
TINY = [CONFIG, "train.steps=2", "eval.limit=8", "eval.every=1", "eval.num_samples=0", "run.stop_rule=none", "run.progress=false",
        "run.sample_every=1", "run.num_samples=2"]
LOCAL = ("tensorboard", "wandb", "mlflow", "trackio")  # the trackers that log without a server


def installed_local() -> list[str]:
    return [name for name in LOCAL if trackers.installed(name)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Every tracker offline, into this module's folder; the current folder is the repository (the config's paths)."""
    root = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        patch.setenv("MLFLOW_TRACKING_URI", (root / "mlruns").as_uri())
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store for those who ask for it
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine
        patch.setenv("DO_NOT_TRACK", "true")
        patch.setenv("TRACKIO_DIR", str(root / "trackio"))
        for module in [m for m in sys.modules if m == "trackio" or m.startswith("trackio.")]:
            patch.delitem(sys.modules, module)  # trackio reads TRACKIO_DIR when it is imported
        yield root


@pytest.fixture(scope="module")
def run(stores):
    """The main job, 2 steps with an evaluation before, after each, and samples at both, into every local tracker."""
    names = installed_local()
    if not names:
        pytest.skip("none of tensorboard, wandb, mlflow, trackio is installed (pip install -e '.[test]')")
    assert main(["train", *TINY, f"run.output_dir={stores / 'run'}", f"run.report_to=[{','.join(names)}]"]) == 0
    return stores / "run"


def metrics_of(run_dir: Path) -> list[dict]:
    return read_log(run_dir / "metrics.jsonl")


def per_step(records: list[dict], key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in records if isinstance(r.get(key), (int, float))}


def numbers(record: dict) -> dict:
    """A metrics.jsonl record's numbers (it writes a NaN as the string "nan")."""
    return {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}


def samples_of(run_dir: Path, step: int) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "step"} for r in read_log(run_dir / "samples.jsonl") if r["step"] == step]


def saved_config(run_dir: Path) -> dict:
    return flatten_config(yaml.safe_load((run_dir / "config.yaml").read_text()))


def run_ids(run_dir: Path) -> dict:
    return json.loads((run_dir / "trackers.json").read_text())


# ---------------------------------------------------------------------------------------------
# TensorBoard


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every (step, value) of each tag, as TensorBoard shows them (events of a restart's purged steps left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "rlif"), size_guidance={"scalars": 0}).Reload()  # 0: keep every event
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def as_float32(values: dict[int, float]) -> list[tuple[int, float]]:
    """metrics.jsonl's values as TensorBoard keeps them (float32 scalars), in step order."""
    return [(step, np.float32(value)) for step, value in sorted(values.items())]


def test_tensorboard_events_equal_metrics_jsonl(run):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    metrics = metrics_of(run)
    assert [r["step"] for r in metrics] == [0, 1, 2]
    scalars = tensorboard_scalars(run)
    keys = {k for r in metrics for k in numbers(r)}
    assert set(scalars) == keys and {"reward/mean", "loss/kl", "eval/greedy/accuracy/step_by_step"} <= keys
    for key in keys:
        assert scalars[key] == as_float32(per_step(metrics, key)), key
    assert [s for s, _ in scalars["reward/mean"]] == [1, 2] and [s for s, _ in scalars["eval/greedy/accuracy"]] == [0, 1, 2]

    # the config as hparams (TensorBoard's plugin data), flattened: numbers (bools too) and strings only
    folder = next((run / "rlif").glob("*/events.out.tfevents.*")).parent
    content = EventAccumulator(str(folder)).Reload().SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    got = {key: getattr(value, value.WhichOneof("kind")) for key, value in hparams.items()}
    assert got == {k: v if isinstance(v, str) else float(v) for k, v in saved_config(run).items()}
    assert got["train.lr"] == 1e-4 and got["data.system_prompt"] == "null" and got["train.adam_betas"] == "[0.9, 0.999]"


# ---------------------------------------------------------------------------------------------
# Weights & Biases, offline


def wandb_records(path: Path):
    """The records of an offline run's .wandb file. wandb-core (Go) writes it and wandb no longer ships a Python
    reader: the file is a LevelDB-style log (a 7-byte header, then 32 KiB blocks of chunks, each with a 7-byte
    header: checksum, length, kind = full/first/middle/last) of wandb's own protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        if kind in (1, 2):
            pending = chunk
        elif kind in (3, 4):
            pending += chunk
        if kind in (1, 4):
            yield wandb_internal_pb2.Record.FromString(pending)


def wandb_run(offline_dir: Path) -> tuple[str, dict, dict[int, dict]]:
    """(run id, config, history by step) of one offline run folder."""
    (path,) = offline_dir.glob("run-*.wandb")
    run_id, config, history = None, {}, {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(row["_step"], {}).update(row)
    config.pop("_wandb", None)
    return run_id, config, history


def test_wandb_offline_run_holds_the_metrics_config_and_samples(run):
    pytest.importorskip("wandb", reason="wandb is not installed")
    (offline,) = (run / "wandb").glob("offline-run-*")  # W&B's files go into the run folder
    run_id, config, history = wandb_run(offline)
    assert run_id == run_ids(run)["wandb"]["id"] and offline.name.endswith(run_id)
    assert config == saved_config(run)
    metrics = metrics_of(run)
    assert sorted(history) == [r["step"] for r in metrics]
    for record in metrics:
        row = history[record["step"]]
        assert {k: row[k] for k in numbers(record)} == numbers(record)
    for step in (1, 2):  # the samples table of each step: samples.jsonl's records
        table = json.loads((offline / "files" / history[step]["samples/path"]).read_text())
        assert [dict(zip(table["columns"], row)) for row in table["data"]] == samples_of(run, step)
        assert len(table["data"]) == 2


# ---------------------------------------------------------------------------------------------
# MLflow, a local file store


def mlflow_key(key: str) -> str:
    """The file store's name of a metric: slashes after the first become dots (docs/trackers.md)."""
    namespace, _, rest = key.partition("/")
    return f"{namespace}/{rest.replace('/', '.')}"


def test_mlflow_file_store_holds_the_metrics_params_and_samples(run):
    pytest.importorskip("mlflow", reason="mlflow is not installed")
    from mlflow import MlflowClient

    client = MlflowClient()
    run_id = run_ids(run)["mlflow"]["run_id"]
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    assert logged.data.params == {k: str(v) for k, v in saved_config(run).items()}  # MLflow keeps params as text
    metrics = metrics_of(run)
    keys = {k for r in metrics for k in numbers(r)}
    assert set(logged.data.metrics) == {mlflow_key(k) for k in keys}
    assert {"reward/mean", "eval/greedy.accuracy", "eval/greedy.accuracy.step_by_step"} <= set(logged.data.metrics)
    for key in keys:
        history = client.get_metric_history(run_id, mlflow_key(key))
        assert sorted((m.step, m.value) for m in history) == sorted(per_step(metrics, key).items()), key
    assert [f.path for f in client.list_artifacts(run_id, "samples")] == ["samples/step_000001.json", "samples/step_000002.json"]
    for step in (1, 2):
        table = json.loads(Path(client.download_artifacts(run_id, f"samples/step_{step:06d}.json")).read_text())
        assert [dict(zip(table["columns"], row)) for row in table["data"]] == samples_of(run, step)


# ---------------------------------------------------------------------------------------------
# trackio, its local store


def trackio_logs(name: str) -> tuple[dict, dict[int, dict]]:
    """(config, logged values by step) of the trackio run `name` in project rlif."""
    import trackio
    from trackio.sqlite_storage import SQLiteStorage

    (logged,) = [r for r in trackio.Api().runs("rlif") if r.name == name]
    by_step = {}
    for row in SQLiteStorage.get_logs("rlif", run=name, run_id=logged.id):
        by_step.setdefault(row["step"], {}).update({k: v for k, v in row.items() if v is not None})
    return {k: v for k, v in logged.config.items() if not k.startswith("_")}, by_step


def test_trackio_local_store_holds_the_metrics_config_and_samples(run):
    pytest.importorskip("trackio", reason="trackio is not installed")
    assert run_ids(run)["trackio"]["name"] == "run"
    config, by_step = trackio_logs("run")
    assert config == saved_config(run)
    metrics = metrics_of(run)
    assert sorted(by_step) == [r["step"] for r in metrics]
    for record in metrics:
        row = by_step[record["step"]]
        assert {k: row[k] for k in numbers(record)} == numbers(record)
    for step in (1, 2):
        assert by_step[step]["samples"]["_value"] == samples_of(run, step)


# ---------------------------------------------------------------------------------------------
# Resuming, several processes


def test_a_resumed_run_continues_the_same_tracker_runs(stores):
    """Killed after step 3 was logged, before its checkpoint: the resumed run logs step 3 again into the same W&B,
    MLflow and trackio runs; TensorBoard drops the first step 3 (purge_step), so it holds each step once."""
    names = installed_local()
    if not names:
        pytest.skip("none of tensorboard, wandb, mlflow, trackio is installed (pip install -e '.[test]')")
    run_dir = stores / "resumed"
    overrides = ["train.steps=3", "run.save_every=2", f"run.output_dir={run_dir}", f"run.report_to=[{','.join(names)}]"]
    assert main(["train", *TINY, *overrides]) == 0
    first = run_ids(run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_000003")  # as if killed while saving step 3
    assert main(["train", *TINY, *overrides, "run.resume=true"]) == 0
    assert run_ids(run_dir) == first
    metrics = metrics_of(run_dir)
    assert [r["step"] for r in metrics] == [0, 1, 2, 3]
    last = numbers(metrics[-1])
    if "tensorboard" in names:
        scalars = tensorboard_scalars(run_dir)
        for key in scalars:  # time/... too: the second step 3 alone
            assert scalars[key] == as_float32(per_step(metrics, key)), key
    if "wandb" in names:
        runs = [wandb_run(offline) for offline in sorted((run_dir / "wandb").glob("offline-run-*"))]
        assert [r[0] for r in runs] == [first["wandb"]["id"]] * 2  # the second start resumed the same run id
        assert sorted(runs[1][2]) == [3] and {k: runs[1][2][3][k] for k in last} == last
    if "mlflow" in names:
        from mlflow import MlflowClient

        client = MlflowClient()
        assert client.get_run(first["mlflow"]["run_id"]).info.status == "FINISHED"
        history = client.get_metric_history(first["mlflow"]["run_id"], "reward/mean")
        assert sorted(m.step for m in history) == [1, 2, 3, 3]  # step 3 before the kill, and again
        assert max(history, key=lambda m: m.timestamp).value == last["reward/mean"]
        assert len(client.search_runs([client.get_run(first["mlflow"]["run_id"]).info.experiment_id],
                                      "attributes.run_name = 'resumed'")) == 1
    if "trackio" in names:
        _, by_step = trackio_logs("resumed")
        assert set(by_step) == {0, 1, 2, 3} and by_step[3]["reward/mean"] == last["reward/mean"]


def test_two_processes_log_once(stores):
    """Under accelerate launch only the main process starts trackers: one TensorBoard event file, one W&B run, and
    their values are metrics.jsonl's (gathered over both processes)."""
    names = [name for name in ("tensorboard", "wandb") if trackers.installed(name)]
    if not names:
        pytest.skip("neither tensorboard nor wandb is installed")
    run_dir = stores / "ddp"
    port = free_port()
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu", "--main_process_port", str(port),
               "-m", "rlif.cli", "train", *TINY, "eval.path=null", f"run.output_dir={run_dir}",
               f"run.report_to=[{','.join(names)}]"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-20000:]
    metrics = metrics_of(run_dir)
    if "tensorboard" in names:
        assert len(list((run_dir / "rlif").glob("events.out.tfevents.*"))) == 1
        scalars = tensorboard_scalars(run_dir)
        assert scalars["reward/mean"] == as_float32(per_step(metrics, "reward/mean"))
    if "wandb" in names:
        (offline,) = (run_dir / "wandb").glob("offline-run-*")
        history = wandb_run(offline)[2]
        assert {s: history[s]["reward/mean"] for s in (1, 2)} == per_step(metrics, "reward/mean")


# ---------------------------------------------------------------------------------------------
# run.report_to: names, installs, all


@pytest.fixture
def pretend_installed(monkeypatch):
    """Make exactly the given trackers look installed (importlib.util.find_spec, which the check asks)."""
    real = importlib.util.find_spec
    modules = {module for names, _ in TRACKERS.values() for module in names}

    def install(*names):
        present = {module for name in names for module in TRACKERS[name][0][:1]}

        def find_spec(name, package=None):
            top = name.split(".")[0]
            if top in modules:
                return importlib.machinery.ModuleSpec(name, None) if top in present else None
            return real(name, package)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return install


def config_with(*overrides):
    return load_config(REPO / CONFIG, list(overrides))


def test_report_to_is_one_name_or_a_list(pretend_installed):
    pretend_installed("tensorboard", "mlflow")
    assert config_with().run.report_to == ["none"]
    assert config_with("run.report_to=tensorboard").run.report_to == ["tensorboard"]
    assert config_with("run.report_to=[tensorboard, mlflow]").run.report_to == ["tensorboard", "mlflow"]
    assert config_with("run.report_to=none").run.report_to == ["none"]
    assert resolve(config_with("run.report_to=none").run.report_to) == []
    assert resolve(config_with("run.report_to=[mlflow,mlflow]").run.report_to) == ["mlflow"]


def test_all_is_exactly_the_installed_trackers(pretend_installed):
    pretend_installed("wandb", "trackio", "dvclive")
    assert resolve(config_with("run.report_to=all").run.report_to) == ["wandb", "trackio", "dvclive"]
    assert resolve(["all", "wandb"]) == ["wandb", "trackio", "dvclive"]
    pretend_installed()
    assert resolve(config_with("run.report_to=all").run.report_to) == []


def test_accelerate_gets_the_resolved_trackers(tmp_path, pretend_installed):
    names = installed_local()
    if not names:
        pytest.skip("none of tensorboard, wandb, mlflow, trackio is installed")
    pretend_installed(*names[:1])  # the others look missing: `all` is the first alone
    accelerator = build_accelerator(config_with("run.report_to=all", f"run.output_dir={tmp_path}"))
    assert [str(t) for t in accelerator.log_with] == names[:1]
    assert build_accelerator(config_with(f"run.output_dir={tmp_path}")).log_with == []


def test_a_tracker_that_is_not_installed_is_refused_before_any_model_loads(tmp_path, pretend_installed, capsys):
    pretend_installed("tensorboard")
    run_dir = tmp_path / "run"
    assert main(["train", str(REPO / CONFIG), f"run.output_dir={run_dir}", "run.report_to=[tensorboard,mlflow]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("rlif train: error: config field run.report_to = ['tensorboard', 'mlflow']: mlflow is not installed "
                   "(pip install mlflow)")
    assert not run_dir.exists()  # refused while loading the config: no folder, no model
    with pytest.raises(ConfigError, match=r"comet_ml and trackio are not installed \(pip install comet-ml trackio\)$"):
        config_with("run.report_to=[comet_ml,trackio]")


def test_unknown_names_and_none_with_others_are_refused(pretend_installed):
    pretend_installed("tensorboard")
    with pytest.raises(ConfigError, match=r"run.report_to = \['tensorbord'\]: unknown tracker 'tensorbord' \(did you mean "
                                          r"'tensorboard'\?\); expected a list of tensorboard, wandb, mlflow, trackio, "):
        config_with("run.report_to=tensorbord")
    with pytest.raises(ConfigError, match="'none' cannot be combined with trackers"):
        config_with("run.report_to=[none,tensorboard]")
    with pytest.raises(ConfigError, match="run.report_to = 3: expected a list"):
        config_with("run.report_to=3")


def test_the_names_are_accelerates():
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    assert set(TRACKERS) == set(LOGGER_TYPE_TO_CLASS)


def test_flatten_config_gives_values_every_tracker_accepts():
    nested = {"train": {"lr": 1e-4, "adam_betas": [0.9, 0.999], "steps": 2}, "eval": {"path": None},
              "reward": {"name": "weighted", "weights": {"intuitor": 1.0, "grpo": 0.5}}, "lora": {"options": {}},
              "run": {"resume": True}}
    assert flatten_config(nested) == {
        "train.lr": 1e-4, "train.adam_betas": "[0.9, 0.999]", "train.steps": 2, "eval.path": "null",
        "reward.name": "weighted", "reward.weights.intuitor": 1.0, "reward.weights.grpo": 0.5, "lora.options": "{}",
        "run.resume": True,
    }
