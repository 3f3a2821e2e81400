"""Test runners for LiveCodeBench-style cases; problems.py puts this file's source at the top of a problem's
tests, so it runs inside the sandbox (standard library only), after the program.

stdin cases: the program (a script) was not run as such; problems.py made it a string, `rlif_solution_source`,
compiled by the program step into `rlif_solution_code` (so a SyntaxError still counts as "error"). Each case
runs it in a forked process with the case's input as its real standard input (a file, so `open(0)`,
`sys.stdin.buffer` and `input()` all work) and its standard output on a pipe; the output matches when its
lines, each stripped of surrounding whitespace, equal the expected output's (blank lines at either end
ignored). A case whose process exits non-zero (an uncaught exception) fails.

functional cases: each input line is one JSON argument; the function is `Solution().<name>` when the program
defines class Solution (LeetCode's starter code), else the top-level function <name>. The return value goes
through JSON and back before it is compared, so an object with its own __eq__ cannot match.
"""

import builtins
import json
import os
import sys
import traceback


def _lines(text):
    return [line.strip() for line in text.strip().splitlines()]


def _run_with_stdin(code, stdin_text, number):
    """(stdout, exit status) of the solution run in a child process with stdin_text as its standard input."""
    input_path = f"rlif-stdin-{number}.txt"
    with open(input_path, "w", encoding="utf-8") as input_file:
        input_file.write(stdin_text)
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            input_fd = os.open(input_path, os.O_RDONLY)
            os.dup2(input_fd, 0)
            os.dup2(write_fd, 1)
            os.closerange(3, 1 << 20)  # the harness's pipes (the end-of-tests token among them) stay out of reach
            sys.stdin = open(0, "r", encoding="utf-8", closefd=False)
            sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
            exec(code, {"__name__": "__main__", "__builtins__": builtins})
            status = 0
        except SystemExit as exit_request:
            status = 0 if exit_request.code in (None, 0) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
            except BaseException:
                status = 1
            os._exit(status)
    os.close(write_fd)
    chunks = []
    while True:
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    _, wait_status = os.waitpid(pid, 0)
    os.unlink(input_path)
    return b"".join(chunks).decode("utf-8", "replace"), os.waitstatus_to_exitcode(wait_status)


def run_stdin_cases(cases_json, code):
    for number, case in enumerate(json.loads(cases_json)):
        output, status = _run_with_stdin(code, case["input"], number)
        if status != 0:
            raise AssertionError(f"case {number}: the program exited with status {status}")
        if _lines(output) != _lines(case["output"]):
            raise AssertionError(f"case {number}: expected {case['output'][:200]!r}, got {output[:200]!r}")


def run_functional_cases(cases_json, function_name, namespace):
    solution_class = namespace.get("Solution")
    function = getattr(solution_class(), function_name) if isinstance(solution_class, type) else namespace[function_name]
    for number, case in enumerate(json.loads(cases_json)):
        arguments = [json.loads(line) for line in case["input"].split("\n") if line.strip()]
        expected = json.loads(case["output"])
        got = json.loads(json.dumps(function(*arguments)))
        if got != expected:
            raise AssertionError(f"case {number}: expected {case['output'][:200]!r}, got {json.dumps(got)[:200]!r}")
