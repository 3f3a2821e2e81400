"""vLLM in server mode: rollouts on other GPUs or nodes (`rlif serve-vllm`), weights pushed over NCCL (gloo on CPU).

For runs whose generation needs more devices than the update: each `rlif serve-vllm MODEL --port P` process holds one
`VLLMEngine` (tensor parallel 1) on its own device, and the trainer (`rollout.engine: vllm-server`,
`rollout.vllm_servers: [host:port, ...]`) sends it token ids and gets token ids and log-probs back. What is sampled is
exactly what the colocated engine samples (the same engine code, the same per-request seeds), so the server count and
how the prompts are split among the servers change nothing but the speed.

The arrangement:
- requests and replies are JSON objects over `multiprocessing.connection` (length-prefixed messages, HMAC
  challenge with the key in RLIF_VLLM_KEY on both sides); nothing received is unpickled;
- every training process sends its share of the prompts to its servers (servers[p::processes], or one server
  servers[p % len] when there are fewer servers than processes), split into contiguous parts, one per server, sent
  before any reply is read, so the servers sample at the same time;
- after every optimizer update process 0 pushes the full weights to every server at once: one torch process group
  of process 0 (rank 0, holding its TCPStore) and the servers (ranks 1..S), NCCL when the trainer and every server
  are on CUDA, gloo otherwise; the names, dtypes and shapes go first as a request, then each tensor as one broadcast,
  which each server streams into vLLM's `reload_weights` as it arrives (no second copy of the model); then every
  process waits at a barrier, so no process samples from weights older than its update;
- a server serves one training run at a time: a new run's weight group replaces the one before (so a killed
  trainer's resume works against the same servers), and a trainer whose group was replaced joins again before its
  next push.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from multiprocessing.connection import Client, Connection, Listener

import torch
import torch.distributed as dist
from torch import Tensor
from transformers import AutoConfig

from rlif.errors import VLLMServerError
from rlif.sampling import DEFAULT_VLLM_PORT, VLLM_KEY_VARIABLE as KEY_VARIABLE, parse_address
from rlif.sampling.native import Samples
from rlif.sampling.vllm_engine import VLLMEngine, VLLMUnavailableError, VLLMVersionError, check_versions, samples_from

DEFAULT_KEY = b"rlif-vllm-server"  # for a server on the loopback interface only; set RLIF_VLLM_KEY elsewhere
WEIGHTS_TIMEOUT_S = 600  # a weight broadcast that waits longer than this for the other side fails (a dead trainer)
RESUME_HINT = ("a training run resumes from its last checkpoint with run.resume=true once its servers are up "
               "(rollout.vllm_servers may name others then)")
DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


def authkey() -> bytes:
    return os.environ.get(KEY_VARIABLE, "").encode() or DEFAULT_KEY


def send(connection: Connection, message: dict) -> None:
    connection.send_bytes(json.dumps(message).encode())


def receive(connection: Connection, address: str) -> dict:
    """The next reply from the server at `address`; its error as a VLLMServerError."""
    try:
        reply = json.loads(connection.recv_bytes())
    except (EOFError, OSError) as error:
        raise VLLMServerError(f"vLLM server {address} closed the connection ({type(error).__name__}: {error}); "
                              f"is `rlif serve-vllm` still running there? {RESUME_HINT}") from None
    if "error" in reply:
        raise VLLMServerError(f"vLLM server {address}: {reply['error']}")
    return reply


def samples_to_json(samples: Samples) -> dict:
    lengths = [len(r) for r in samples.responses]
    table = samples.token_signals.logprobs if samples.token_signals is not None else None
    return {
        "responses": samples.responses,
        "truncated": samples.truncated,
        "logprobs": None if table is None else [table[row, :n].tolist() for row, n in enumerate(lengths)],
    }


def weights_group(host: str, port: int, rank: int, world_size: int, backend: str, store=None):
    """A torch process group of the trainer's process 0 (rank 0, whose TCPStore is at host:port) and the servers,
    apart from any default group (the trainer's DDP group stays as it is)."""
    timeout = datetime.timedelta(seconds=WEIGHTS_TIMEOUT_S)
    if store is None:
        store = dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    prefixed = dist.PrefixStore("rlif-weights", store)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(prefixed, rank, world_size, timeout)
    return dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)


# ---------------------------------------------------------------------------------------------------------- server


class Server:
    """`rlif serve-vllm`: one VLLMEngine behind a listening socket; a thread per connection, one request at a time
    on the engine."""

    def __init__(self, engine, host: str, port: int, info: dict):
        self.engine, self.info = engine, info
        self.lock = threading.Lock()  # the engine: one sample or weight update at a time
        self.group, self.group_backend, self.group_token = None, None, None
        self.listener = Listener((host, port), authkey=authkey())
        self.address = "%s:%d" % self.listener.address[:2]

    def serve_forever(self) -> None:
        while True:
            try:
                connection = self.listener.accept()
            except (OSError, EOFError) as error:  # a client with the wrong key, or one that left during the handshake
                print(f"rlif serve-vllm: refused a connection ({type(error).__name__}: {error})", file=sys.stderr, flush=True)
                continue
            threading.Thread(target=self.handle, args=(connection,), daemon=True).start()

    def handle(self, connection: Connection) -> None:
        with connection:
            while True:
                try:
                    request = json.loads(connection.recv_bytes())
                except (EOFError, OSError):
                    return
                try:
                    reply = getattr(self, "op_" + str(request.pop("op", "")))(**request)
                except Exception as error:  # reported to the client, which raises it there; the server goes on
                    reply = {"error": f"{type(error).__name__}: {error}"}
                try:
                    send(connection, reply)
                except OSError:
                    return

    def op_info(self) -> dict:
        return self.info

    def op_sample(self, **settings) -> dict:
        with self.lock:
            return samples_to_json(self.engine.sample(**settings))

    def op_join_weights(self, host: str, port: int, rank: int, world_size: int, backend: str, token: str) -> dict:
        """Join the weight group of a trainer (replacing the group of a run before it); `token` names the group."""
        if backend == "nccl" and self.info["device"] != "cuda":
            raise ValueError(f"the trainer asked for NCCL but this server runs on {self.info['device']}")
        group = weights_group(host, port, rank, world_size, backend)  # blocks until every rank has joined
        self.group, self.group_backend, self.group_token = group, backend, token
        return {"rank": rank}

    def op_weights_group(self) -> dict:
        """The token of the weight group this server is in (None before any): a trainer whose group was replaced
        (by another run on this server) joins again."""
        return {"token": self.group_token}

    def op_update_weights(self, specs: list) -> dict:
        """Receive the tensors `specs` ([name, dtype, shape] each, in order) by broadcast from rank 0, streaming them
        into the engine; every announced tensor is received even if loading fails (the sender would wait otherwise)."""
        if self.group is None:
            raise RuntimeError("update_weights before join_weights")
        device = "cuda" if self.group_backend == "nccl" else "cpu"
        received = 0

        def tensors():
            nonlocal received
            for name, dtype, shape in specs:
                tensor = torch.empty(shape, dtype=DTYPES[dtype], device=device)
                self.group.broadcast(tensor, 0).wait()
                received += 1
                yield name, tensor

        stream = tensors()
        with self.lock:
            begin = time.perf_counter()
            try:
                self.engine.update_weights(stream)
            finally:
                for _ in stream:  # the ones vLLM did not ask for (or all after an error)
                    pass
        return {"seconds": time.perf_counter() - begin, "tensors": received}


def serve(model: str, host: str = "127.0.0.1", port: int = DEFAULT_VLLM_PORT, **engine_settings) -> None:
    """Start a VLLMEngine for `model` and serve it until the process is stopped (`rlif serve-vllm`; port 0: any free
    port, the one chosen is in the "ready at HOST:PORT" line)."""
    if host not in ("127.0.0.1", "localhost") and not os.environ.get(KEY_VARIABLE):
        raise VLLMServerError(f"--host {host}: set {KEY_VARIABLE} to a secret (the same on the trainer's side) before "
                              "listening beyond this machine")
    try:
        check_versions()
    except (VLLMUnavailableError, VLLMVersionError) as error:
        raise VLLMServerError(str(error).replace("rollout.engine=vllm needs", "rlif serve-vllm needs")) from None
    config = AutoConfig.from_pretrained(model, trust_remote_code=engine_settings.get("trust_remote_code", False))
    config = getattr(config, "text_config", None) or config
    if engine_settings.get("max_model_len") is None:
        engine_settings["max_model_len"] = getattr(config, "max_position_embeddings", None) or 4096
    engine = VLLMEngine(model, **engine_settings)
    info = {"model": str(model), "max_model_len": engine.max_model_len, "vocab_size": getattr(config, "vocab_size", None),
            "device": "cpu" if engine.on_cpu else "cuda", "dtype": engine.settings["dtype"], "versions": engine.versions,
            "startup_s": engine.timings.get("startup_s")}
    server = Server(engine, host, port, info)
    print(f"rlif serve-vllm: ready at {server.address} ({model}, max_model_len {engine.max_model_len}, "
          f"{info['device']}, started in {info['startup_s']:.0f} s)", flush=True)
    try:
        server.serve_forever()
    finally:
        engine.close()


def launch_server(model: str, *options: str, stderr=None, env: dict | None = None, timeout_s: float = 600):
    """`rlif serve-vllm MODEL --port 0 OPTIONS...` as a child process on this machine (tests, benchmarks, one-machine
    runs); returns (the process, the "host:port" its ready line names). Raises VLLMServerError if it does not start."""
    process = subprocess.Popen([sys.executable, "-m", "rlif.cli", "serve-vllm", str(model), "--port", "0", *options],
                               stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    found = threading.Event()

    def read_output():  # all of it, for as long as the server runs: vLLM logs to stdout, and a full pipe would stop it
        sink = stderr if hasattr(stderr, "write") else sys.stderr if stderr is None else None  # where stderr goes
        for line in process.stdout:
            if not found.is_set() and (match := re.search(r"ready at (\S+:\d+)", line)):
                process.address = match.group(1)
                found.set()
            elif sink is not None:
                try:
                    sink.write(line)
                    sink.flush()
                except (ValueError, OSError):  # closed by the caller: drain only
                    sink = None

    threading.Thread(target=read_output, daemon=True).start()
    if not found.wait(timeout=timeout_s):
        process.kill()
        raise VLLMServerError(f"rlif serve-vllm {model} did not start within {timeout_s:.0f} s (exit code {process.wait()})")
    return process, process.address


# ---------------------------------------------------------------------------------------------------------- client


class VLLMServerClient:
    """The trainer's side: what `VLLMEngine` offers (`sample`, `update_weights`, `sleep`, `wake_up`, `close`), with
    the engines on `rlif serve-vllm` servers. Does not import vLLM (the trainer's environment need not have it)."""

    shared = True  # one copy of the weights for every training process: update_weights is followed by a barrier

    def __init__(self, addresses: Sequence[str], *, process_index: int = 0, num_processes: int = 1,
                 device: torch.device | str = "cpu", max_model_len: int, vocab_size: int | None = None,
                 dtype: str | None = None):
        if not addresses:
            raise ValueError("rollout.vllm_servers is empty: give the host:port of at least one `rlif serve-vllm`")
        self.addresses = [f"{h}:{p}" for h, p in map(parse_address, addresses)]
        self.process_index, self.device = process_index, torch.device(device)
        if len(self.addresses) >= num_processes:
            self.mine = self.addresses[process_index::num_processes]
        else:
            self.mine = [self.addresses[process_index % len(self.addresses)]]
        wanted = self.addresses if process_index == 0 else self.mine  # process 0 pushes the weights to every server
        self.connections = {address: self.connect(address) for address in wanted}
        self.infos = {address: self.request(address, {"op": "info"}) for address in self.connections}
        for address, info in self.infos.items():
            if info["max_model_len"] < max_model_len:
                raise VLLMServerError(
                    f"vLLM server {address} serves {info['model']} with max_model_len {info['max_model_len']}, but this run "
                    f"needs {max_model_len} (data.max_prompt_tokens + rollout.max_new_tokens): restart it with "
                    f"`rlif serve-vllm ... --max-model-len {max_model_len}`")
            if vocab_size is not None and info["vocab_size"] not in (None, vocab_size):
                raise VLLMServerError(
                    f"vLLM server {address} serves {info['model']} (vocabulary {info['vocab_size']}), but the model trained "
                    f"has a vocabulary of {vocab_size}: serve the run's model.path")
            if dtype is not None and info["dtype"] != dtype and process_index == 0:
                print(f"note: vLLM server {address} samples in {info['dtype']}, the trainer scores in {dtype}: their log-probs "
                      "differ more (rollout/logprob_mismatch; train.tis_cap corrects for it)", file=sys.stderr)
        self.max_model_len = min(info["max_model_len"] for info in self.infos.values())
        self.versions = self.infos[self.mine[0]]["versions"]
        self.timings: dict[str, float] = {}
        self.group, self.token, self.backend = None, None, None  # the weight group, once process 0 first pushes

    @staticmethod
    def connect(address: str) -> Connection:
        try:
            return Client(parse_address(address), authkey=authkey())
        except ConnectionRefusedError:
            raise VLLMServerError(f"no vLLM server at {address} (connection refused): start one with "
                                  f"`rlif serve-vllm MODEL --port {parse_address(address)[1]}` on that machine") from None
        except Exception as error:  # multiprocessing.AuthenticationError, socket errors
            hint = f" (the key: {KEY_VARIABLE} must be the same on both sides)" if "digest" in str(error).lower() else ""
            raise VLLMServerError(f"vLLM server {address}: {type(error).__name__}: {error}{hint}") from None

    def send(self, address: str, message: dict) -> None:
        try:
            send(self.connections[address], message)
        except OSError as error:  # the server went away since the last reply
            raise VLLMServerError(f"vLLM server {address} is gone ({type(error).__name__}: {error}); {RESUME_HINT}") from None

    def request(self, address: str, message: dict) -> dict:
        self.send(address, message)
        return receive(self.connections[address], address)

    def replies(self, addresses: Sequence[str]) -> list[dict]:
        """One reply from each server in turn, every one read before the first error is raised (so that each
        connection stays in step with its requests)."""
        replies, failures = [], []
        for address in addresses:
            try:
                replies.append(receive(self.connections[address], address))
            except VLLMServerError as error:
                failures.append(error)
        if failures:
            raise failures[0]
        return replies

    def sample(self, prompts: Sequence[Sequence[int]], *, num_samples: int = 1, prompt_keys: Sequence[int] | None = None,
               logprobs: bool = True, **settings) -> Samples:
        """As `VLLMEngine.sample`: this process's prompts split among its servers, sampled at the same time."""
        keys = list(prompt_keys) if prompt_keys is not None else list(range(len(prompts)))
        if len(keys) != len(prompts):
            raise ValueError(f"{len(keys)} prompt_keys for {len(prompts)} prompts")
        if not prompts:
            return Samples(responses=[], truncated=[], num_samples=num_samples)
        parts = torch.tensor_split(torch.arange(len(prompts)), min(len(self.mine), len(prompts)))
        used = self.mine[: len(parts)]
        for address, part in zip(used, parts):  # every part is sent before any reply is read
            self.send(address, {"op": "sample", "prompts": [list(prompts[i]) for i in part.tolist()],
                                "prompt_keys": [keys[i] for i in part.tolist()], "num_samples": num_samples,
                                "logprobs": logprobs, **settings})
        responses, truncated, token_logprobs = [], [], []
        for reply in self.replies(used):
            responses += reply["responses"]
            truncated += reply["truncated"]
            token_logprobs += reply["logprobs"] or []
        return samples_from(responses, truncated, token_logprobs if logprobs else None, num_samples)

    def update_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> float:
        """Process 0 broadcasts the weights to every server (the others have nothing to send). Returns the seconds."""
        begin = time.perf_counter()
        if self.process_index != 0:
            for _ in named_tensors:  # consumed the same way on every process
                pass
            return 0.0
        tokens = {self.request(address, {"op": "weights_group"})["token"] for address in self.addresses}
        if self.group is None or tokens != {self.token}:  # the first push, or another run took a server's group since
            self.group = self.join_weights_group()
        device = self.device if self.backend == "nccl" else torch.device("cpu")
        tensors = [(name, tensor.detach().to(device).contiguous()) for name, tensor in named_tensors]
        specs = [[name, str(t.dtype).removeprefix("torch."), list(t.shape)] for name, t in tensors]
        for address in self.addresses:
            self.send(address, {"op": "update_weights", "specs": specs})
        try:
            for _, tensor in tensors:
                self.group.broadcast(tensor, 0).wait()
        except RuntimeError as error:  # a server died during the push (gloo: "Connection closed by peer"; NCCL: a timeout)
            self.group = None
            raise VLLMServerError(f"the weight broadcast to the vLLM servers {', '.join(self.addresses)} failed "
                                  f"({str(error).splitlines()[0][:300]}); {RESUME_HINT}") from None
        self.replies(self.addresses)
        self.timings["update_weights_s"] = seconds = time.perf_counter() - begin
        return seconds

    def join_weights_group(self):
        """A process group of this process (rank 0) and every server, NCCL where all are on CUDA, else gloo."""
        everyone_on_cuda = self.device.type == "cuda" and all(i["device"] == "cuda" for i in self.infos.values())
        backend = "nccl" if everyone_on_cuda else "gloo"
        host = self.local_address(self.addresses[0])
        world_size, self.token = 1 + len(self.addresses), uuid.uuid4().hex
        store = dist.TCPStore(host, 0, world_size, is_master=True, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=WEIGHTS_TIMEOUT_S))
        for rank, address in enumerate(self.addresses, start=1):
            self.send(address, {"op": "join_weights", "host": host, "port": store.port, "rank": rank,
                                "world_size": world_size, "backend": backend, "token": self.token})
        group = weights_group(host, store.port, 0, world_size, backend, store=store)
        self.replies(self.addresses)
        self.store, self.backend = store, backend  # the store lives as long as the group
        return group

    def local_address(self, address: str) -> str:
        """This machine's address on the route to the server at `address` (where the servers reach the TCPStore)."""
        with socket.socket(fileno=os.dup(self.connections[address].fileno())) as connection:
            return connection.getsockname()[0]

    def sleep(self, level: int = 1) -> None:
        """Nothing to free: the engines are on the servers' devices."""

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Nothing to wake: the engines are on the servers' devices."""

    def close(self) -> None:
        for connection in self.connections.values():
            with contextlib.suppress(OSError):
                connection.close()
        self.connections, self.group = {}, None
