"""rlif.code.execute: ordinary outcomes, and a suite of hostile programs run through each sandbox this machine
has, each asserted harmless; the figure "hostile programs tried / escapes / leftover processes or files"."""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rlif.code import ExecutionResult, execute, execute_many, sandbox_info
from rlif.code.executor import SANDBOXES, WORLD_WRITABLE_DIRS, processes_of_uid

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")
NONCE = secrets.token_hex(6)
REPO = Path(__file__).resolve().parents[1]
FAILING_TESTS = "assert 1 == 2, 'the tests this program would fail'\n"


# --- ordinary outcomes -------------------------------------------------------------------------------------

def test_passed_failed_error_and_timeouts():
    program = "def add(a, b):\n    return a + b\n"
    passed = execute(program, "assert add(2, 3) == 5\n", 5)
    assert passed.status == "passed" and passed.passed, passed
    failed = execute(program, "assert add(2, 3) == 6\n", 5)
    assert failed.status == "failed" and "AssertionError" in failed.detail and "AssertionError" in failed.stderr
    syntax = execute("def add(a, b) return a + b\n", "assert add(2, 3) == 5\n", 5)
    assert syntax.status == "error" and "SyntaxError" in syntax.detail
    raised = execute("import no_such_module_here\n", "pass\n", 5)
    assert raised.status == "error" and "ModuleNotFoundError" in raised.detail
    missing = execute("def plus(a, b):\n    return a + b\n", "assert add(2, 3) == 5\n", 5)
    assert missing.status == "failed" and "NameError" in missing.detail
    wall = execute("import time\ntime.sleep(60)\n", "pass\n", 1.0)
    assert wall.status == "timeout" and "wall-clock" in wall.detail and wall.wall_s < 4
    cpu = execute("while True:\n    pass\n", "pass\n", 8.0, cpu_s=1)
    assert cpu.status == "timeout" and "CPU-time" in cpu.detail and 0.9 <= cpu.cpu_s < 3 and cpu.wall_s < 7


def test_output_is_captured_and_capped():
    result = execute("print('hello from the program')\nimport sys\nprint('to stderr', file=sys.stderr)\n",
                     "print('hello from the tests')\n", 5)
    assert result.passed
    assert result.stdout == "hello from the program\nhello from the tests\n"
    assert result.stderr == "to stderr\n" and not result.stdout_truncated
    capped = execute("print('x' * 5000)\n", "pass\n", 5, max_output_bytes=1000)
    assert capped.stdout == "x" * 1000 and capped.stdout_truncated and capped.status == "passed"


def test_every_run_has_a_fresh_directory_and_an_empty_environment():
    write = execute("import os\nopen('state.txt', 'w').write('left')\nprint(os.getcwd(), sorted(os.environ))\n", "pass\n", 5)
    read = execute("import os\nprint(os.path.exists('state.txt'), sorted(os.listdir('.')))\n", "pass\n", 5)
    assert write.passed and read.passed and read.stdout.startswith("False")
    workdir = write.stdout.split()[0]
    assert "[]" in write.stdout or "'LC_CTYPE'" in write.stdout  # Python's own C-locale coercion, nothing inherited
    if write.sandbox != "bubblewrap":  # there the directory is mounted on /tmp
        assert not Path(workdir).exists()


def test_exit_inside_the_tests_is_a_failure():
    result = execute("def f():\n    return 1\n", "import sys\nif f() != 2:\n    sys.exit(0)\n", 5)
    assert result.status == "failed"


def test_tests_that_do_not_compile_are_refused():
    with pytest.raises(ValueError, match="do not compile"):
        execute("x = 1\n", "assert x ==\n", 5)
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        execute("x = 1\n", "pass\n", 0)


def test_isolation_names_what_applied():
    result = execute("x = 1\n", "assert x == 1\n", 5)
    info = sandbox_info()
    assert result.sandbox == info.mode and result.interpreter == info.interpreter
    for name in ("subprocess", "session", "tempdir", "empty-env", "wall-timeout", "output-cap", "rlimit-cpu",
                 "rlimit-as", "rlimit-nofile", "rlimit-fsize"):
        assert name in result.isolation
    if os.geteuid() == 0:
        assert "own-uid" in result.isolation and "rlimit-nproc" in result.isolation and result.uid is not None
        assert info.mode in ("bubblewrap", "unshare")  # as root, at least unshare's namespaces are expected
        assert "netns" in result.isolation and "pidns" in result.isolation
    if info.mode == "bubblewrap":
        assert {"bubblewrap", "userns", "mountns"} <= set(result.isolation)
    if subprocess.run(["sh", "-c", "command -v bwrap"], capture_output=True, check=False).returncode == 0:
        assert info.mode == "bubblewrap" or any(reason.startswith("bubblewrap") for reason in info.rejected)


def test_execute_many_keeps_the_order_and_bounds_the_workers():
    jobs = [{"program": f"import time\ntime.sleep(0.4)\nvalue = {number}\n", "tests": f"print(value)\nassert value == {number}\n",
             "timeout_s": 10} for number in range(4)]
    started = time.monotonic()
    results = execute_many(jobs, workers=2)
    elapsed = time.monotonic() - started
    assert [result.stdout.strip() for result in results] == ["0", "1", "2", "3"]
    assert all(result.passed for result in results)
    assert elapsed >= 0.8  # two at a time: two rounds of 0.4 s
    assert execute_many([("x = 1\n", "assert x == 2\n")])[0].status == "failed"
    assert execute_many([]) == []


# --- the hostile suite -------------------------------------------------------------------------------------

@dataclasses.dataclass
class World:
    """Things a hostile program must not reach: a canary file, a fake ssh key, a secret environment variable,
    a local TCP and UDP server, a victim process, paths it must not create."""

    canary: Path
    canary_text: str
    key: Path
    secret: str
    tcp_port: int
    udp_port: int
    victim: subprocess.Popen
    escape_paths: tuple[Path, ...]
    connections: list[str]


@dataclasses.dataclass
class Hostile:
    name: str
    program: str
    harmed: Callable[[ExecutionResult, World], str | None]  # what harm was done, or None
    tests: str = FAILING_TESTS
    timeout_s: float = 3.0
    limits: dict = dataclasses.field(default_factory=dict)
    contained_by: tuple[str, ...] = ()  # isolation names of which one must be present for the harm to be contained


def faked_pass(result: ExecutionResult, world: World) -> str | None:
    return "counted as passed" if result.passed else None


def stdout_contains(text: str) -> Callable[[ExecutionResult, World], str | None]:
    def harmed(result: ExecutionResult, world: World) -> str | None:
        return f"output shows {text!r}" if text in result.stdout or text in result.stderr else None
    return harmed


def printed_count_reaches(prefix: str, limit: int) -> Callable[[ExecutionResult, World], str | None]:
    def harmed(result: ExecutionResult, world: World) -> str | None:
        lines = [line for line in result.stdout.splitlines() if line.startswith(prefix)]
        if not lines:
            return f"no '{prefix}' line: {result.detail}"
        count = int(lines[-1].split()[-1])
        return f"{prefix} {count} >= {limit}" if count >= limit else None
    return harmed


def files_touched(result: ExecutionResult, world: World) -> str | None:
    if not world.canary.exists() or world.canary.read_text() != world.canary_text:
        return "the canary was changed or removed"
    if world.canary.stat().st_mode & 0o777 != 0o644:
        return "the canary's permissions changed"
    return None


def victim_killed(result: ExecutionResult, world: World) -> str | None:
    return "the victim process was killed" if world.victim.poll() is not None else None


def not_stopped(seconds: float) -> Callable[[ExecutionResult, World], str | None]:
    def harmed(result: ExecutionResult, world: World) -> str | None:
        if result.status != "timeout":
            return f"status {result.status}, not timeout"
        return f"ran {result.wall_s:.1f} s" if result.wall_s > seconds else None
    return harmed


def output_not_capped(result: ExecutionResult, world: World) -> str | None:
    if len(result.stdout) > 65536 or len(result.stderr) > 65536:
        return "more output than the cap came back"
    if result.wall_s > 8:
        return f"took {result.wall_s:.1f} s"
    return None if (result.stdout_truncated or result.stderr_truncated) else "the output was not cut"


def memory_not_limited(result: ExecutionResult, world: World) -> str | None:
    return None if result.status == "error" and "MemoryError" in result.detail else f"{result.status}: {result.detail}"


def source(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


LEFTOVER_SLEEPER = source("""
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    time.sleep(120)
    """)
ALWAYS_EQUAL = source("""
    class AlwaysEqual:
        def __eq__(self, other):
            return True

        def __ne__(self, other):
            return False

        def __bool__(self):
            return True
    """)


def hostile_programs(world: World) -> list[Hostile]:
    escapes = ", ".join(repr(str(path)) for path in world.escape_paths)
    exits_and_fakes = [
        Hostile("os-exit-0", "import os\nos._exit(0)\n", faked_pass),
        Hostile("sys-exit-0", "import sys\nsys.exit(0)\n", faked_pass),
        Hostile("exit-builtin", "exit()\n", faked_pass),
        Hostile("kill-self", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", faked_pass),
        Hostile("abort", "import os\nos.abort()\n", faked_pass),
        Hostile("sigterm-self", "import signal\nsignal.raise_signal(signal.SIGTERM)\n", faked_pass),
        Hostile("exit-in-thread", source("""
            import os, threading, time
            threading.Thread(target=lambda: (time.sleep(0.05), os._exit(0))).start()
            time.sleep(1)
            """), faked_pass),
        Hostile("forged-markers", source("""
            import os, sys
            print('pass', '0' * 32)
            print('passed')
            sys.stderr.write('OK\\n')
            for fd in range(3, 1024):
                try:
                    os.write(fd, b'pass ' + b'0' * 32 + b'\\n{"event": "tests-started"}\\n')
                except OSError:
                    pass
            os._exit(0)
            """), faked_pass),
        Hostile("closed-fds", "import os\nos.closerange(3, 1 << 16)\n", faked_pass),
        Hostile("print-redefined", "import builtins\nbuiltins.print = lambda *args, **kwargs: None\n", faked_pass,
                tests="print('pass')\nassert 1 == 2\n"),
        Hostile("builtins-patched", source("""
            import builtins
            builtins.abs = lambda number: 0
            builtins.isinstance = lambda *args: True
            def f(x):
                return 0
            """), faked_pass, tests="assert abs(f(1) - 2) < 1e-6\nassert isinstance(f(1), str)\n", limits={"entry_point": "f"}),
        Hostile("helpers-shadowed", source("""
            abs = lambda number: 0
            __builtins__ = {'abs': abs}
            AssertionError = Warning
            def check(candidate):
                pass
            def f(x):
                return 0
            """), faked_pass, tests="def check(candidate):\n    assert abs(candidate(1) - 2) < 1e-6\n\ncheck(f)\n",
                limits={"entry_point": "f"}),
        Hostile("always-equal", ALWAYS_EQUAL + "def f(x):\n    return AlwaysEqual()\n", faked_pass,
                tests="assert f(1) == 2\nassert f(1) == [3]\n", limits={"entry_point": "f"}),
        Hostile("int-subclass-eq", source("""
            class Sneaky(int):
                def __eq__(self, other):
                    return True
                __hash__ = int.__hash__
            def f(x):
                return Sneaky(0)
            """), faked_pass, tests="assert f(1) == 2\n", limits={"entry_point": "f"}),
        Hostile("nested-eq", ALWAYS_EQUAL + "def f(x):\n    return [1, (2, AlwaysEqual())]\n", faked_pass,
                tests="assert f(1) == [1, (2, 3)]\n", limits={"entry_point": "f"}),
        Hostile("module-patched", "import math\nmath.isclose = lambda *args, **kwargs: True\ndef f(x):\n    return 0\n",
                faked_pass, tests="import math\nassert math.isclose(f(1), 2)\n"),
        Hostile("module-replaced", source("""
            import sys, types
            fake = types.ModuleType('math')
            fake.isclose = lambda *args, **kwargs: True
            sys.modules['math'] = fake
            def f(x):
                return 0
            """), faked_pass, tests="import math\nassert math.isclose(f(1), 2)\n"),
        Hostile("trace-skips-asserts", source("""
            import sys

            def tracer(frame, event, arg):
                if event == 'line' and frame.f_code.co_filename == 'tests.py' and frame.f_lineno % 2 == 0:
                    try:
                        frame.f_lineno = frame.f_lineno + 1
                    except Exception:
                        pass
                return tracer

            sys.settrace(tracer)
            """), faked_pass, tests="x = 1\nassert x == 2\ny = 2\nassert y == 3\nz = 3\n"),
    ]
    resources = [
        Hostile("infinite-loop", "while True:\n    pass\n", not_stopped(6), timeout_s=1.5),
        Hostile("sleep-forever", "import time\ntime.sleep(3600)\n", not_stopped(5), timeout_s=1.0),
        Hostile("fork-bomb", source("""
            import os
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
            """), faked_pass, timeout_s=2.0, contained_by=("rlimit-nproc",)),
        Hostile("process-limit", source("""
            import os, time
            children = 0
            for _ in range(200):
                try:
                    pid = os.fork()
                except OSError:
                    break
                if pid == 0:
                    time.sleep(60)
                    os._exit(0)
                children += 1
            print('children', children)
            """), printed_count_reaches("children", 8), tests="pass\n", limits={"max_processes": 8},
                contained_by=("rlimit-nproc",)),
        Hostile("memory-bomb", "blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))\n", memory_not_limited,
                timeout_s=5, limits={"memory_mb": 256}, contained_by=("rlimit-as",)),
        Hostile("output-1GB-stdout", "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n",
                output_not_capped, timeout_s=8),
        Hostile("output-1GB-fd2", "import os\nchunk = b'y' * (1 << 20)\nfor _ in range(1024):\n    os.write(2, chunk)\n",
                output_not_capped, timeout_s=8),
        Hostile("big-file", source("""
            import os
            try:
                with open('big.bin', 'wb') as big:
                    for _ in range(64):
                        big.write(b'z' * (1 << 20))
            except OSError as error:
                print(error)
            print('size', os.path.getsize('big.bin'))
            """), printed_count_reaches("size", (16 << 20) + 1), tests="pass\n", limits={"max_file_mb": 16},
                contained_by=("rlimit-fsize",)),
        Hostile("open-files", source("""
            handles = []
            try:
                for _ in range(1000):
                    handles.append(open('/dev/null'))
            except OSError:
                pass
            print('handles', len(handles))
            """), printed_count_reaches("handles", 64), tests="pass\n", contained_by=("rlimit-nofile",)),
    ]
    reach = [
        Hostile("files-outside", source(f"""
            import os, shutil
            for path in [{escapes}]:
                try:
                    open(path, 'w').write('escaped')
                except OSError as error:
                    print('blocked', error)
            canary = {str(world.canary)!r}
            attempts = [lambda: open(canary, 'w').write('overwritten'), lambda: os.chmod(canary, 0o777),
                        lambda: os.rename(canary, canary + '.moved'), lambda: os.remove(canary),
                        lambda: shutil.rmtree(os.path.dirname(canary))]
            for attempt in attempts:
                try:
                    attempt()
                except OSError as error:
                    print('blocked', error)
            """), files_touched, contained_by=("own-uid", "bubblewrap")),
        Hostile("environment-secrets", source("""
            import os
            print(dict(os.environ))
            for name in os.listdir('/proc'):
                if name.isdigit() or name == 'self':
                    try:
                        print(open(f'/proc/{name}/environ', 'rb').read())
                    except OSError:
                        pass
            """), stdout_contains(world.secret), limits={"max_output_bytes": 4 << 20}, contained_by=("own-uid", "pidns")),
        Hostile("ssh-key", source(f"""
            import os
            for path in [{str(world.key)!r}, '/root/.ssh/id_rsa', '/root/.ssh/id_ed25519', os.path.expanduser('~/.ssh/id_rsa')]:
                try:
                    print(open(path).read())
                except OSError as error:
                    print('blocked', error)
            try:
                print(os.listdir('/root'))
            except OSError as error:
                print('blocked', error)
            """), stdout_contains(f"FAKE-KEY-{NONCE}"), contained_by=("own-uid", "bubblewrap")),
        Hostile("network", source(f"""
            import socket
            try:
                connection = socket.create_connection(('127.0.0.1', {world.tcp_port}), timeout=1)
                connection.sendall(b'ESCAPED')
                print('connected')
            except OSError as error:
                print('blocked', error)
            try:
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'ESCAPED', ('127.0.0.1', {world.udp_port}))
            except OSError as error:
                print('blocked', error)
            """), lambda result, world: f"the server got {world.connections}" if world.connections else None,
                contained_by=("netns",)),
        Hostile("kill-parent", source(f"""
            import os, signal
            for pid in (os.getppid(), {world.victim.pid}, {os.getpid()}):
                for attempt in (lambda: os.kill(pid, signal.SIGKILL), lambda: os.killpg(os.getpgid(pid), signal.SIGKILL)):
                    try:
                        attempt()
                    except OSError as error:
                        print('blocked', error)
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError as error:
                print('blocked', error)
            """), victim_killed, contained_by=("own-uid", "pidns")),
        Hostile("background-process", source(f"""
            import os, sys
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execv(sys.executable, [sys.executable, '-c', {LEFTOVER_SLEEPER!r}, 'rlif-leftover-{NONCE}'])
                os._exit(0)
            os.wait()
            """), lambda result, world: None, tests="pass\n", contained_by=("own-uid", "pidns")),
    ]
    return resources + reach + exits_and_fakes


def _make_world(root: Path) -> World:
    canary_dir = root / "canary"
    canary_dir.mkdir(mode=0o755)
    canary = canary_dir / "canary.txt"
    canary_text = f"canary {NONCE}\n"
    canary.write_text(canary_text)
    canary.chmod(0o644)
    ssh = root / "home" / ".ssh"
    ssh.mkdir(parents=True, mode=0o700)
    (root / "home").chmod(0o755)
    key = ssh / "id_ed25519"
    key.write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\nFAKE-KEY-{NONCE}\n-----END OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)
    victim = subprocess.Popen(["sleep", "300"], start_new_session=True)
    escape_paths = tuple(Path(folder) / f"rlif-escape-{NONCE}" for folder in (*WORLD_WRITABLE_DIRS, str(REPO), str(root)))
    return World(canary, canary_text, key, f"secret-{NONCE}", 0, 0, victim, escape_paths, [])


def _serve(world: World, stop: threading.Event) -> threading.Thread:
    """A TCP and a UDP server on 127.0.0.1 that note every contact, until stop is set."""
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    world.tcp_port, world.udp_port = tcp.getsockname()[1], udp.getsockname()[1]
    tcp.settimeout(0.1)
    udp.settimeout(0.1)

    def loop() -> None:
        while not stop.is_set():
            try:
                connection, address = tcp.accept()
                world.connections.append(f"tcp from {address}")
                connection.close()
            except TimeoutError:
                pass
            try:
                world.connections.append(f"udp {udp.recvfrom(64)}")
            except TimeoutError:
                pass
        tcp.close()
        udp.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _marker_processes(marker: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _files_of(uids: set[int]) -> list[str]:
    found = []
    for folder in WORLD_WRITABLE_DIRS:
        try:
            found += [entry.path for entry in os.scandir(folder) if entry.stat(follow_symlinks=False).st_uid in uids]
        except OSError:
            pass
    return found


def _run_dirs() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("rlif-code-")}


@dataclasses.dataclass
class SuiteOutcome:
    mode: str
    isolation: tuple[str, ...]
    harms: dict[str, str | None]  # case -> harm
    not_contained: list[str]  # cases this sandbox cannot contain (skipped from the figure)
    leftovers: list[str]
    results: dict[str, ExecutionResult]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = Path(tempfile.mkdtemp(prefix=f"rlif-hostile-{NONCE}-"))
    root.chmod(0o755)
    world = _make_world(root)
    stop = threading.Event()
    server = _serve(world, stop)
    os.environ["RLIF_TEST_SECRET"] = world.secret
    try:
        yield world
    finally:
        os.environ.pop("RLIF_TEST_SECRET", None)
        stop.set()
        server.join(5)
        world.victim.kill()
        world.victim.wait()
        subprocess.run(["rm", "-rf", str(root)], check=False)


_outcomes: dict[str, SuiteOutcome] = {}


def run_suite(mode: str, world: World) -> SuiteOutcome:
    """Run every hostile program through one sandbox (two at a time), then look for what they left."""
    if mode in _outcomes:
        return _outcomes[mode]
    try:
        sandbox_info(mode)
    except RuntimeError as error:
        pytest.skip(f"sandbox {mode} does not work here: {error}")
    cases = hostile_programs(world)
    # The runs' working directories go into a folder of this suite's own, so that another process's runs (another
    # test session, an evaluation) are not taken for leftovers of these.
    private = tempfile.mkdtemp(prefix="rlif-suite-")
    os.chmod(private, 0o711)  # each run's uid must reach its directory inside
    saved_tempdir, tempfile.tempdir = tempfile.tempdir, private
    dirs_before = _run_dirs()
    world.connections.clear()
    jobs = [{"program": case.program, "tests": case.tests, "timeout_s": case.timeout_s, "sandbox": mode, **case.limits}
            for case in cases]
    results = execute_many(jobs, workers=2)
    time.sleep(0.2)  # the server thread notes a late contact
    isolation = results[0].isolation
    harms, not_contained = {}, []
    for case, result in zip(cases, results):
        if case.contained_by and not set(case.contained_by) & set(result.isolation):
            not_contained.append(case.name)
            continue
        harms[case.name] = case.harmed(result, world)
    uids = {result.uid for result in results if result.uid is not None}
    leftovers = [f"process {pid} of uid {uid}" for uid in uids for pid in processes_of_uid(uid)]
    leftovers += [f"process {pid} (background-process)" for pid in _marker_processes(f"rlif-leftover-{NONCE}")]
    leftovers += [f"file {path}" for path in _files_of(uids)]
    leftovers += [f"file {path}" for path in world.escape_paths if path.exists()]
    leftovers += [f"run directory {name}" for name in _run_dirs() - dirs_before]
    tempfile.tempdir = saved_tempdir
    if not leftovers:
        os.rmdir(private)
    _outcomes[mode] = SuiteOutcome(mode, isolation, harms, not_contained, leftovers, dict(zip((c.name for c in cases), results)))
    return _outcomes[mode]


@pytest.mark.parametrize("mode", SANDBOXES)
def test_hostile_programs_are_harmless(mode, world):
    outcome = run_suite(mode, world)
    escapes = {name: harm for name, harm in outcome.harms.items() if harm}
    tried = len(outcome.harms)
    print(f"\n[{mode}] hostile programs tried / escapes / leftover processes or files: "
          f"{tried} / {len(escapes)} / {len(outcome.leftovers)}"
          f"  (not containable here, so not tried: {outcome.not_contained or 'none'}; isolation: {', '.join(outcome.isolation)})")
    details = {name: (outcome.results[name].status, outcome.results[name].detail) for name in escapes}
    assert escapes == {}, details
    assert outcome.leftovers == []
    if os.geteuid() == 0 and mode != "basic":
        assert outcome.not_contained == []  # as root every hostile program is tried under the namespaced sandboxes


def test_exits_and_fakes_are_failures_not_errors(world):
    """The program ran fine and then cut the run short or faked a pass: that is "failed" (or "error" where the
    program raised itself), never "passed"; the plain-returns check names the type."""
    outcome = run_suite(sandbox_info().mode, world)
    for name in ("os-exit-0", "sys-exit-0", "exit-builtin", "forged-markers", "closed-fds", "helpers-shadowed",
                 "builtins-patched", "module-patched", "module-replaced", "trace-skips-asserts"):
        assert outcome.results[name].status == "failed", (name, outcome.results[name].detail)
    assert "AlwaysEqual" in outcome.results["always-equal"].detail
    assert "before the tests ran" in outcome.results["sys-exit-0"].detail
    assert outcome.results["background-process"].status == "passed"  # it is not a fake; what it left is checked


def test_the_suite_sees_harm_done_without_a_sandbox(tmp_path):
    """The harm checks can fail: the same programs run as a bare child process of this one (same user, its
    environment, its network) do reach the secret, the key, the server and the canary."""
    root = tmp_path / "naked"
    root.mkdir()
    world = _make_world(root)
    stop = threading.Event()
    server = _serve(world, stop)
    wanted = ("environment-secrets", "ssh-key", "network", "files-outside")
    try:
        os.environ["RLIF_TEST_SECRET"] = world.secret
        for case in [case for case in hostile_programs(world) if case.name in wanted]:
            completed = subprocess.run([sys.executable, "-c", case.program], capture_output=True, text=True, timeout=20,
                                       cwd=root, check=False)
            naked = ExecutionResult("failed", "", completed.stdout, completed.stderr, False, False, completed.returncode,
                                    None, 0.0, 0.0, (), (), "none", sys.executable, None)
            time.sleep(0.3)
            assert case.harmed(naked, world), case.name
    finally:
        os.environ.pop("RLIF_TEST_SECRET", None)
        stop.set()
        server.join(5)
        world.victim.kill()
        world.victim.wait()
        for path in world.escape_paths:
            path.unlink(missing_ok=True)
