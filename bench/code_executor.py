"""Sandboxed programs per second through rlif.code.execute_many, for each sandbox that works on this machine.

    python bench/code_executor.py                      # every working sandbox, workers = the CPUs this process may use
    python bench/code_executor.py --sandboxes bubblewrap --workers 1 2 --rounds 3

Sets, each run through execute_many:
  humaneval   the 164 canonical HumanEval solutions against their tests (entry point's returns checked), all pass
  trivial     164 copies of `x = 1` / `assert x == 1`: the sandbox's own cost per program
  hostile     tests/test_code_sandbox.py's hostile programs (loops, fork and memory bombs, 1 GB of output, exits,
              faked passes...); several run into their 1-8 s limits, so this is mostly the limits' wall time
Each (sandbox, workers, set) is run --rounds times; the table shows the median programs/s and the statuses of the
last round. Also prints the median wall time of one trivial run on its own (latency, not throughput).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from rlif.code import execute, execute_many, load_humaneval, sandbox_info
from rlif.code.executor import SANDBOXES, available_cpus


def load_hostile_suite():
    """tests/test_code_sandbox.py, loaded as a module for its hostile programs and the world they attack."""
    spec = importlib.util.spec_from_file_location("hostile_suite", REPO / "tests" / "test_code_sandbox.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def job_sets(sandbox: str, world, suite) -> dict[str, list[dict]]:
    humaneval = [{"program": problem.prompt + problem.canonical_solution, "tests": problem.tests,
                  "entry_point": problem.entry_point, "timeout_s": 20, "sandbox": sandbox} for problem in load_humaneval()]
    trivial = [{"program": "x = 1\n", "tests": "assert x == 1\n", "sandbox": sandbox}] * len(humaneval)
    hostile = [{"program": case.program, "tests": case.tests, "timeout_s": case.timeout_s, "sandbox": sandbox, **case.limits}
               for case in suite.hostile_programs(world)]
    return {"humaneval": humaneval, "trivial": trivial, "hostile": hostile}


def measure(jobs: list[dict], workers: int, rounds: int) -> tuple[float, collections.Counter]:
    rates, statuses = [], collections.Counter()
    for _ in range(rounds):
        started = time.monotonic()
        results = execute_many(jobs, workers=workers)
        rates.append(len(jobs) / (time.monotonic() - started))
        statuses = collections.Counter(result.status for result in results)
    return statistics.median(rates), statuses


def latency(sandbox: str, repeats: int = 20) -> float:
    walls = []
    for _ in range(repeats):
        started = time.monotonic()
        execute("x = 1\n", "assert x == 1\n", sandbox=sandbox)
        walls.append(time.monotonic() - started)
    return statistics.median(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sandboxes", nargs="+", default=list(SANDBOXES), choices=SANDBOXES)
    parser.add_argument("--workers", nargs="+", type=int, default=[available_cpus()])
    parser.add_argument("--rounds", type=int, default=1)
    sets = ["humaneval", "trivial", "hostile"]
    parser.add_argument("--sets", nargs="+", default=sets, choices=sets)
    arguments = parser.parse_args()

    suite = load_hostile_suite()
    root = Path(tempfile.mkdtemp(prefix="rlif-bench-world-"))
    root.chmod(0o755)
    world = suite._make_world(root)
    stop = threading.Event()
    server = suite._serve(world, stop)
    print(f"machine: {platform.node()}, {available_cpus()} CPUs usable, load average {os.getloadavg()[0]:.1f}, "
          f"Python {platform.python_version()}, running as uid {os.geteuid()}")
    rows = []
    try:
        for sandbox in arguments.sandboxes:
            try:
                info = sandbox_info(sandbox)
            except RuntimeError as error:
                print(f"{sandbox}: not available ({error})")
                continue
            isolation = execute("x = 1\n", "assert x == 1\n", sandbox=sandbox).isolation
            print(f"{sandbox}: interpreter {info.interpreter}; isolation: {', '.join(isolation)}")
            print(f"{sandbox}: one trivial run alone, median of 20: {latency(sandbox) * 1000:.0f} ms")
            sets = job_sets(sandbox, world, suite)
            for workers in arguments.workers:
                for name in arguments.sets:
                    rate, statuses = measure(sets[name], workers, arguments.rounds)
                    rows.append((sandbox, workers, name, len(sets[name]), rate, dict(sorted(statuses.items()))))
    finally:
        stop.set()
        server.join(5)
        world.victim.kill()
        world.victim.wait()
        shutil.rmtree(root, ignore_errors=True)
        for path in world.escape_paths:
            path.unlink(missing_ok=True)
    print()
    print("| sandbox | workers | set | programs | programs/s | statuses |")
    print("|---|---|---|---|---|---|")
    for sandbox, workers, name, count, rate, statuses in rows:
        shown = ", ".join(f"{status} {number}" for status, number in statuses.items())
        print(f"| {sandbox} | {workers} | {name} | {count} | {rate:.1f} | {shown} |")


if __name__ == "__main__":
    main()
