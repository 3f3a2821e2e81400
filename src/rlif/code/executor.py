"""Run an untrusted program and its tests in a sandboxed child process: `execute` and `execute_many`.

Each run gets its own child process (never rlif's interpreter), started in a new session, in a fresh temporary
directory that is removed afterwards, with an empty environment, under the strongest of three sandboxes that
works on the machine (probed once, see `sandbox_info`):

  bubblewrap  `bwrap` (as the run's own uid when rlif is root): new user, pid, network, ipc and uts namespaces
              and a mount namespace that shows only /usr, /lib*, the interpreter and the run's directory
              (mounted on /tmp), a fresh /proc and a minimal /dev
  unshare     root only: util-linux `unshare` gives new pid, network, ipc and uts namespaces and a fresh /proc,
              then drops to the run's uid; the rest of the filesystem is visible (as that uid sees it)
  basic       the child process, the run's uid when rlif is root, and the resource limits; no namespaces

When rlif runs as root, every run gets a uid (and gid) of its own, drawn from UID_BASE..UID_BASE+UID_SPAN and
used by nothing else: RLIMIT_NPROC then counts only that run's processes, a program cannot signal another
run's processes, and whatever it left behind (processes, files in world-writable folders) is found by owner
and removed. Inside, the harness (_harness.py) applies CPU, address-space, process, open-file, file-size and
core limits before the program runs, and reports the end of the tests with a random token that it reads only
once the tests have finished (see its docstring for what it does against faked passes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

Status = Literal["passed", "failed", "timeout", "error"]
SANDBOXES = ("bubblewrap", "unshare", "basic")
UID_BASE = 1_900_000_000  # above systemd's container range (ends 0x6FFF0000), below its foreign range (0x7FFE0000)
UID_SPAN = 100_000_000
HARNESS_SOURCE = Path(__file__).with_name("_harness.py").read_text(encoding="utf-8")
RESULT_CHANNEL_CAP = 64 * 1024  # the harness writes a few short lines; more is the program writing there
DRAIN_GRACE_S = 1.0  # after the child is gone, how long to wait for the rest of its output
WORLD_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # swept when the run shares the host's
BWRAP_TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
PROBE_PROGRAM = "import math\n\n\ndef root(number):\n    return math.isqrt(number)\n"
PROBE_TESTS = "assert root(16) == 4\n"
_SWEEP_SOURCE = "import os\ntry:\n    os.kill(-1, 9)\nexcept OSError:\n    pass\n"


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
    """What one run did. `isolation` names the mechanisms that applied to this run (the resource limits as the
    harness reported them); `checks` the harness's defences against faked passes."""

    status: Status
    detail: str
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    exit_code: int | None
    signal: int | None
    wall_s: float
    cpu_s: float
    isolation: tuple[str, ...]
    checks: tuple[str, ...]
    sandbox: str
    interpreter: str
    uid: int | None  # the run's own uid (rlif as root), else None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclasses.dataclass(frozen=True)
class SandboxInfo:
    """The sandbox `execute` uses, the interpreter it runs, and why each stronger choice was turned down."""

    mode: str
    interpreter: str
    rejected: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout_s: float
    cpu_s: float
    memory_mb: int
    max_processes: int
    max_open_files: int
    max_file_mb: int
    max_output_bytes: int

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if not getattr(self, field.name) > 0:
                raise ValueError(f"{field.name} must be positive, got {getattr(self, field.name)!r}")


def available_cpus() -> int:
    return len(os.sched_getaffinity(0))


def _running_as_root() -> bool:
    return os.geteuid() == 0


# --- processes and uids -------------------------------------------------------------------------------------

def _process_real_uids(include_zombies: bool = True) -> dict[int, int]:
    """pid -> real uid of every process, from /proc/PID/status (the folder's owner follows the effective uid
    and turns to root for a process that made itself non-dumpable, so it is not used). A zombie has finished
    and holds nothing but its pid until its parent reaps it: it cannot be killed, only left out."""
    uids = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as status:
                text = status.read()
        except OSError:  # gone meanwhile
            continue
        if not include_zombies and b"\nState:\tZ" in text:
            continue
        start = text.find(b"\nUid:")
        if start >= 0:
            uids[int(entry.name)] = int(text[start + 5:].split(None, 1)[0])
    return uids


def processes_of_uid(uid: int) -> list[int]:
    """The live (not zombie) processes whose real uid is uid."""
    return [pid for pid, real_uid in _process_real_uids(include_zombies=False).items() if real_uid == uid]


def _cpu_seconds_of(pids: Iterable[int]) -> float:
    """User + system CPU of these processes and of the children they reaped, from /proc/PID/stat."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        ticks += sum(int(field) for field in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


_uids_in_use: set[int] = set()
_uid_lock = threading.Lock()


def _allocate_uid() -> int:
    busy = set(_process_real_uids().values())
    with _uid_lock:
        while True:
            uid = UID_BASE + secrets.randbelow(UID_SPAN)
            if uid not in busy and uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


def _kill_uid(uid: int, interpreter: str) -> None:
    """Kill every process of uid: a helper running as uid calls kill(-1, SIGKILL), which reaches them all at
    once (a fork bomb cannot outrun it as it can a scan-and-kill loop)."""
    for _ in range(5):
        if not processes_of_uid(uid):
            return
        try:
            subprocess.run([interpreter, "-I", "-S", "-c", _SWEEP_SOURCE], user=uid, group=uid, extra_groups=[],
                           env={}, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):  # an interpreter uid cannot run: kill one by one as root
            for pid in processes_of_uid(uid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.01)


def _remove_files_of_uid(uid: int) -> None:
    """Delete what uid created at the top of the world-writable folders (the only host places it can write)."""
    for folder in WORLD_WRITABLE_DIRS:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- the sandbox commands -----------------------------------------------------------------------------------

def _interpreter_candidates() -> list[str]:
    """rlif's own interpreter first, then the system's of the same version: a root-only interpreter (pyenv
    under /root) cannot be run once the child has dropped to its own uid."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    paths = [sys.executable, getattr(sys, "_base_executable", ""), f"/usr/bin/python{version}",
             f"/usr/local/bin/python{version}", "/usr/bin/python3"]
    candidates: list[str] = []
    for path in paths:
        real = os.path.realpath(path) if path else ""
        if real and os.path.isfile(real) and real not in candidates:
            candidates.append(real)
    return candidates


def _interpreter_prefix(interpreter: str) -> str:
    return os.path.dirname(os.path.dirname(interpreter))


_bwrap_help: str | None = None


def _bwrap_supports(option: str) -> bool:
    global _bwrap_help
    if _bwrap_help is None:
        completed = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, check=False)
        _bwrap_help = completed.stdout + completed.stderr
    return option in _bwrap_help


def _bubblewrap_prefix(interpreter: str, workdir: Path) -> list[str]:
    command = ["bwrap", "--unshare-user", "--unshare-pid", "--as-pid-1", "--unshare-net", "--unshare-ipc",
               "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv",
               "--hostname", "sandbox", "--cap-drop", "ALL"]
    if _bwrap_supports("--disable-userns"):
        command.append("--disable-userns")
    command += ["--ro-bind", "/usr", "/usr"]
    for top in BWRAP_TOP_LEVEL:
        if os.path.islink(top):
            command += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            command += ["--ro-bind", top, top]
    prefix = _interpreter_prefix(interpreter)
    if not any(prefix == top or prefix.startswith(top + "/") for top in ("/usr", *BWRAP_TOP_LEVEL)):
        command += ["--ro-bind", prefix, prefix]
    return command + ["--proc", "/proc", "--dev", "/dev", "--bind", str(workdir), "/tmp", "--chdir", "/tmp", "--"]


def _unshare_prefix(uid: int) -> list[str]:
    return ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--ipc", "--uts",
            f"--setgid={uid}", f"--setuid={uid}", "--"]


_NAMESPACES = {
    "bubblewrap": ("bubblewrap", "userns", "pidns", "netns", "ipcns", "utsns", "mountns"),
    "unshare": ("pidns", "netns", "ipcns", "utsns", "mountns"),
    "basic": (),
}


def _mode_unavailable(mode: str) -> str | None:
    if mode == "bubblewrap" and shutil.which("bwrap") is None:
        return "bwrap is not installed (Debian: apt-get install bubblewrap)"
    if mode == "unshare":
        if not _running_as_root():
            return "needs root (namespaces and the uid switch need CAP_SYS_ADMIN and CAP_SETUID)"
        if shutil.which("unshare") is None:
            return "util-linux unshare is not installed"
    if mode not in SANDBOXES:
        raise ValueError(f"unknown sandbox {mode!r}: expected 'auto' or one of {SANDBOXES}")
    return None


# --- one run ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Capture:
    """What came back on the child's pipes, each capped."""

    chunks: dict[int, bytearray]
    caps: dict[int, int]
    truncated: set[int]

    def take(self, fd: int, data: bytes) -> bool:
        """Keep data up to the cap; False once past it (the caller then closes the pipe)."""
        buffer = self.chunks[fd]
        room = self.caps[fd] - len(buffer)
        buffer += data[:room]
        if len(data) > room:
            self.truncated.add(fd)
            return False
        return True


def _exchange(pid: int, payload_fd: int, payload: bytes, read_fds: Sequence[int], capture: _Capture,
              deadline: float) -> tuple[bool, selectors.BaseSelector]:
    """Send the payload and collect output until the child exits or the deadline passes (True: timed out)."""
    selector = selectors.DefaultSelector()
    for fd in read_fds:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    os.set_blocking(payload_fd, False)
    selector.register(payload_fd, selectors.EVENT_WRITE)
    pidfd = os.pidfd_open(pid)
    selector.register(pidfd, selectors.EVENT_READ)
    pending = memoryview(payload)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True, selector
            for key, _ in selector.select(remaining):
                if key.fd == pidfd:
                    return False, selector
                if key.fd == payload_fd:
                    pending = _send(selector, payload_fd, pending)
                else:
                    _receive(selector, key.fd, capture)
    finally:
        selector.unregister(pidfd)
        os.close(pidfd)
        if payload_fd in selector.get_map():
            selector.unregister(payload_fd)
            os.close(payload_fd)


def _send(selector: selectors.BaseSelector, fd: int, pending: memoryview) -> memoryview:
    try:
        pending = pending[os.write(fd, pending[:1 << 16]):]
    except BlockingIOError:
        return pending
    except BrokenPipeError:  # the child is gone or closed it
        pending = pending[:0]
    if not pending:
        selector.unregister(fd)
        os.close(fd)
    return pending


def _receive(selector: selectors.BaseSelector, fd: int, capture: _Capture) -> None:
    try:
        data = os.read(fd, 1 << 16)
    except BlockingIOError:
        return
    if not data or not capture.take(fd, data):  # end of stream, or past the cap: closing breaks the writer's pipe
        selector.unregister(fd)
        os.close(fd)


def _drain(selector: selectors.BaseSelector, capture: _Capture, grace_s: float) -> None:
    """Read what is left once every writer is dead; a writer that survived (only possible without an own uid
    or pid namespace) gets grace_s, then its pipes are closed."""
    deadline = time.monotonic() + grace_s
    while selector.get_map():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for key, _ in selector.select(remaining):
            _receive(selector, key.fd, capture)
    for fd in list(selector.get_map()):
        selector.unregister(fd)
        os.close(fd)
    selector.close()


def _parse_channel(data: bytes, token: str) -> tuple[dict | None, list[dict], bool]:
    """(the harness's "started" report, the events after it, whether the end-of-tests token came)."""
    lines = data.split(b"\n")
    passed = (b"pass " + token.encode()) in lines
    events = []
    for line in lines:
        if line.startswith(b"{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
    started = events[0] if events and events[0].get("event") == "started" else None
    return started, events[1:] if started else [], passed


def _exit_status(mode: str, wait_status: int) -> tuple[int | None, int | None]:
    """(exit code, signal) of the sandboxed process. bwrap reports a child killed by signal N as exit 128+N;
    unshare re-raises the child's signal except SIGKILL, which it reports as exit 1."""
    if os.WIFSIGNALED(wait_status):
        return None, os.WTERMSIG(wait_status)
    code = os.WEXITSTATUS(wait_status)
    if mode == "bubblewrap" and 128 < code <= 128 + 64:
        return None, code - 128
    return code, None


def _classify(started: dict | None, events: list[dict], passed: bool, timed_out: bool, cpu_exhausted: bool,
              limits: Limits, exit_code: int | None, signal_number: int | None) -> tuple[Status, str]:
    if passed:
        return "passed", "the tests ran to their end"
    if timed_out:
        return "timeout", f"wall-clock limit of {limits.timeout_s:g} s"
    phase = next((event for event in events if event.get("event") in
                  ("program-syntax-error", "program-raised", "program-exited", "tests-raised", "token-missing")), None)
    kind = phase.get("event") if phase else None
    if kind is None and cpu_exhausted:
        return "timeout", f"CPU-time limit of {max(1, math.ceil(limits.cpu_s))} s"
    if started is None:
        return "error", f"the sandbox did not start the harness (exit code {exit_code}, signal {signal_number})"
    if kind == "program-syntax-error":
        return "error", f"the program does not compile: {phase.get('error')}"
    if kind == "program-raised":
        return "error", f"the program raised before the tests: {phase.get('error')}"
    if kind == "program-exited":
        return "failed", f"the program exited (SystemExit {phase.get('code')}) before the tests ran"
    if kind == "tests-raised":
        return "failed", f"a test failed: {phase.get('error')}"
    if kind == "token-missing":
        return "failed", "the end-of-tests token had been taken from its pipe (by the program)"
    return "failed", (f"the process ended before the tests finished (exit code {exit_code}, signal {signal_number}): "
                      "an os._exit, a signal, or a crash")


def _work_root() -> str:
    """The temp folder, unless a folder above it is closed to other users (TMPDIR under /root): the run's uid
    must reach its directory, so then /tmp."""
    folder = Path(tempfile.gettempdir()).resolve()
    if all(path.stat().st_mode & 0o001 for path in (folder, *folder.parents)):
        return str(folder)
    return "/tmp"


def _run(mode: str, interpreter: str, program: str, tests: str, limits: Limits, entry_point: str | None) -> ExecutionResult:
    uid = _allocate_uid() if _running_as_root() else None
    workdir = Path(tempfile.mkdtemp(prefix="rlif-code-", dir=_work_root()))
    finished = False
    try:
        if uid is not None:
            os.chown(workdir, uid, uid)
        result = _run_in(mode, interpreter, workdir, uid, program, tests, limits, entry_point)
        finished = True
        return result
    finally:
        if uid is not None:
            if not finished:  # _run_in sweeps the uid itself when it gets that far
                _kill_uid(uid, interpreter)
            if mode != "bubblewrap":
                _remove_files_of_uid(uid)
            _release_uid(uid)
        shutil.rmtree(workdir, ignore_errors=True)


def _run_in(mode: str, interpreter: str, workdir: Path, uid: int | None, program: str, tests: str, limits: Limits,
            entry_point: str | None) -> ExecutionResult:
    own_processes = uid is not None or mode == "bubblewrap"  # RLIMIT_NPROC counts only this run's processes
    rlimits = {"cpu_s": max(1, math.ceil(limits.cpu_s)), "address_space_bytes": limits.memory_mb << 20,
               "processes": limits.max_processes if own_processes else None, "open_files": limits.max_open_files,
               "file_bytes": limits.max_file_mb << 20}
    payload = json.dumps({"program": program, "tests": tests, "entry_point": entry_point, "limits": rlimits}).encode()
    token = secrets.token_hex(16)
    payload_r, payload_w = os.pipe()
    token_r, token_w = os.pipe()
    result_r, result_w = os.pipe()
    stdout_fd, stdout_w = os.pipe()
    stderr_fd, stderr_w = os.pipe()
    os.write(token_w, token.encode())
    os.close(token_w)
    harness = [interpreter, "-I", "-c", HARNESS_SOURCE, str(payload_r), str(token_r), str(result_w)]
    if mode == "bubblewrap":
        command = _bubblewrap_prefix(interpreter, workdir) + harness
    elif mode == "unshare":
        assert uid is not None
        command = _unshare_prefix(uid) + harness
    else:
        command = harness
    as_user: dict[str, Any] = {}
    if uid is not None and mode != "unshare":  # unshare switches uid itself, after making its namespaces
        as_user = {"user": uid, "group": uid, "extra_groups": []}
    isolation = ["subprocess", "session", "tempdir", "empty-env", "isolated-interpreter", "wall-timeout", "output-cap"]
    isolation += _NAMESPACES[mode]
    if uid is not None:
        isolation += ["own-uid", "uid-sweep"]
    started_at = time.monotonic()
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout_w, stderr=stderr_w,
                                   pass_fds=(payload_r, token_r, result_w), env={}, cwd=workdir,
                                   start_new_session=True, **as_user)
    except OSError as error:
        for fd in (payload_w, result_r, stdout_fd, stderr_fd):
            os.close(fd)
        return ExecutionResult("error", f"could not start the sandbox: {error}", "", "", False, False, None, None,
                               0.0, 0.0, tuple(isolation), (), mode, interpreter, uid)
    finally:
        for fd in (payload_r, token_r, result_w, stdout_w, stderr_w):
            os.close(fd)
    capture = _Capture({fd: bytearray() for fd in (stdout_fd, stderr_fd, result_r)},
                       {stdout_fd: limits.max_output_bytes, stderr_fd: limits.max_output_bytes,
                        result_r: RESULT_CHANNEL_CAP}, set())
    timed_out, selector = _exchange(process.pid, payload_w, payload, (stdout_fd, stderr_fd, result_r), capture,
                                    started_at + limits.timeout_s)
    cpu_before_kill = 0.0
    if timed_out and uid is not None:  # what a kill takes with it is never reaped by us, so never in the rusage
        cpu_before_kill = _cpu_seconds_of(processes_of_uid(uid))
    _kill_group(process.pid)  # on a timeout, and any straggler of the session either way
    _, wait_status, usage = os.wait4(process.pid, 0)
    wall_s = time.monotonic() - started_at
    process.returncode = os.waitstatus_to_exitcode(wait_status)  # reaped here, for the rusage; Popen must not wait
    if uid is not None:
        _kill_uid(uid, interpreter)  # what left the session (setsid) and so escaped the group kill
    _drain(selector, capture, DRAIN_GRACE_S)
    cpu_s = max(usage.ru_utime + usage.ru_stime, cpu_before_kill)
    exit_code, signal_number = _exit_status(mode, wait_status)
    started, events, passed = _parse_channel(bytes(capture.chunks[result_r]), token)
    applied = list(started.get("rlimits", [])) if started else []
    # the kernel's RLIMIT_CPU clock and the rusage differ a little: 0.1 s of slack
    cpu_exhausted = "rlimit-cpu" in applied and cpu_s >= rlimits["cpu_s"] - 0.1
    status, detail = _classify(started, events, passed, timed_out, cpu_exhausted, limits, exit_code, signal_number)
    checks = ["end-token", "pristine-builtins", "fresh-modules", "hooks-cleared", "tests-namespace"]
    if entry_point:
        checks.append("plain-returns")
    return ExecutionResult(
        status=status, detail=detail,
        stdout=capture.chunks[stdout_fd].decode("utf-8", "replace"),
        stderr=capture.chunks[stderr_fd].decode("utf-8", "replace"),
        stdout_truncated=stdout_fd in capture.truncated, stderr_truncated=stderr_fd in capture.truncated,
        exit_code=exit_code, signal=signal_number, wall_s=wall_s, cpu_s=cpu_s,
        isolation=tuple(isolation + applied), checks=tuple(checks) if started else (), sandbox=mode,
        interpreter=interpreter, uid=uid)


# --- choosing the sandbox -----------------------------------------------------------------------------------

_chosen: dict[str, SandboxInfo] = {}
_choice_lock = threading.Lock()


def sandbox_info(sandbox: str = "auto") -> SandboxInfo:
    """The sandbox and interpreter `execute` uses, found once per process by running a small program and its
    test through each sandbox in turn (strongest first) with each candidate interpreter until one passes."""
    with _choice_lock:
        if sandbox in _chosen:
            return _chosen[sandbox]
        modes = SANDBOXES if sandbox == "auto" else (sandbox,)
        rejected: list[str] = []
        probe_limits = Limits(timeout_s=30.0, cpu_s=30.0, memory_mb=1024, max_processes=16, max_open_files=64,
                              max_file_mb=1, max_output_bytes=4096)
        for mode in modes:
            reason = _mode_unavailable(mode)
            if reason:
                rejected.append(f"{mode}: {reason}")
                continue
            for interpreter in _interpreter_candidates():
                result = _run(mode, interpreter, PROBE_PROGRAM, PROBE_TESTS, probe_limits, "root")
                if result.passed:
                    _chosen[sandbox] = SandboxInfo(mode, interpreter, tuple(rejected))
                    return _chosen[sandbox]
                rejected.append(f"{mode} with {interpreter}: {result.detail}; stderr: {result.stderr.strip()[-300:]}")
        raise RuntimeError("no sandbox can run programs here: " + " | ".join(rejected))


# --- the public calls ---------------------------------------------------------------------------------------

def execute(program: str, tests: str, timeout_s: float = 10.0, *, cpu_s: float | None = None, memory_mb: int = 1024,
            max_processes: int = 16, max_open_files: int = 64, max_file_mb: int = 16,
            max_output_bytes: int = 64 * 1024, entry_point: str | None = None, sandbox: str = "auto") -> ExecutionResult:
    """Run program, then tests (Python source run after it in the same process, e.g. HumanEval's `check` and
    `check(candidate)`), in a sandboxed child process.

    status: "passed" only when the tests ran to their end; "failed" when a test raised, or the program exited,
    was killed or killed itself before the tests finished; "error" when the program did not compile or raised
    before the tests; "timeout" when the wall-clock limit (timeout_s) or the CPU-time limit (cpu_s, default
    timeout_s, rounded up to whole seconds: RLIMIT_CPU counts seconds) ran out.

    memory_mb: address space (RLIMIT_AS); max_processes: processes of the run (RLIMIT_NPROC, applied when the
    run has its own uid or user namespace; bubblewrap's own two processes do not count inside its namespace);
    max_open_files: RLIMIT_NOFILE; max_file_mb: largest file written (RLIMIT_FSIZE); max_output_bytes: kept of
    stdout and of stderr each; past it the pipe is closed, so a program that goes on printing gets
    BrokenPipeError. entry_point: the function under test; its return values must then be plain data (the
    known reward hack of returning an object whose __eq__ always says True fails). sandbox: "auto" (the
    strongest that works), or "bubblewrap", "unshare", "basic" to insist on one.
    """
    limits = Limits(timeout_s=timeout_s, cpu_s=timeout_s if cpu_s is None else cpu_s, memory_mb=memory_mb,
                    max_processes=max_processes, max_open_files=max_open_files, max_file_mb=max_file_mb,
                    max_output_bytes=max_output_bytes)
    if not isinstance(program, str) or not isinstance(tests, str):
        raise TypeError("program and tests must be Python source strings")
    try:
        compile(tests, "tests.py", "exec")
    except (SyntaxError, ValueError) as error:
        raise ValueError(f"the tests do not compile (a benchmark bug, not the program's): {error}") from error
    chosen = sandbox_info(sandbox)
    return _run(chosen.mode, chosen.interpreter, program, tests, limits, entry_point)


def _job_arguments(job: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
    if isinstance(job, Mapping):
        return dict(job)
    if isinstance(job, Sequence) and not isinstance(job, str) and len(job) in (2, 3):
        return dict(zip(("program", "tests", "timeout_s"), job))
    raise TypeError(f"a job is a mapping of execute's arguments or a (program, tests[, timeout_s]) tuple, got {job!r}")


def execute_many(jobs: Iterable[Mapping[str, Any] | Sequence[Any]], workers: int | None = None) -> list[ExecutionResult]:
    """Run many jobs, at most `workers` (default: the CPUs this process may use) at a time; results in order.

    The pool is of threads, each waiting on its own sandboxed child process, so at most `workers` programs
    run at once: the waiting is I/O, and forking rlif's own process (which may hold a CUDA context) into a
    ProcessPoolExecutor would be unsafe and slow. Each job is a mapping of `execute`'s arguments or a
    (program, tests[, timeout_s]) tuple.
    """
    arguments = [_job_arguments(job) for job in jobs]
    if not arguments:
        return []
    for sandbox in {job.get("sandbox", "auto") for job in arguments}:
        sandbox_info(sandbox)  # probe once, before the threads start
    count = min(workers or available_cpus(), len(arguments))
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda job: execute(**job), arguments))
