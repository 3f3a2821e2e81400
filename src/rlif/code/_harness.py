"""The program that runs inside each sandbox: rlif never imports this module; executor.py sends its source.

Invoked as `python -I -c <this source> PAYLOAD_FD TOKEN_FD RESULT_FD` by an interpreter that may be a different
build from rlif's own (the one an unprivileged user can read), so it uses the standard library only.

1. Reads the payload (program, tests, entry point, limits) from PAYLOAD_FD to its end and closes it: the tests
   are never on disk, in argv or in the environment where the program could read them.
2. Applies the resource limits, then reports "started" (what was applied) on RESULT_FD.
3. Runs the program in a fresh `__main__` module. A SyntaxError or an exception is reported as "error";
   SystemExit (sys.exit, exit()) as "program-exited" (counts as failed: the tests never ran).
4. Undoes what the program may have done to fake the tests: restores the builtins and every module that was
   loaded before it ran, drops modules it imported (the tests import fresh ones), clears trace and profile
   hooks, runs the tests in their own namespace without the program's globals that shadow builtins, and wraps
   the entry point so that it may only return plain data (an object with its own __eq__ cannot pass).
5. Runs the tests. Only when they ran to their end does it read the token from TOKEN_FD (the parent wrote it
   there before the start; it is not in this process's memory while the program runs) and write
   "pass <token>" on RESULT_FD, then leaves with os._exit so that nothing the program registered runs after.
"""

import builtins
import json
import os
import resource
import sys
import traceback
import types

_write = os.write
_read = os.read
_close = os.close
_exit = os._exit
_type = type
_id = id
_dumps = json.dumps
_modules = sys.modules  # the interpreter's own dict, even if the program rebinds sys.modules
_importer_cache = sys.path_importer_cache
_PLAIN_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})
_PLAIN_CONTAINERS = frozenset({list, tuple, set, frozenset, dict})
_QUALNAME = type.__dict__["__qualname__"].__get__  # reads a class's name without running a metaclass property


def _report(result_fd, event, **fields):
    """One JSON line on the result pipe; a closed pipe (the program closed it) is the program's loss."""
    fields["event"] = event
    try:
        _write(result_fd, (_dumps(fields) + "\n").encode())
    except OSError:
        pass


def _read_all(fd):
    chunks = []
    while True:
        chunk = _read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    _close(fd)
    return b"".join(chunks)


def _apply_limits(limits):
    """Lower the hard and soft limits together, so the program cannot raise them again."""
    applied = []
    # CPU: soft == hard, so the kernel sends SIGKILL at the limit; SIGXCPU alone is ignored by a pid
    # namespace's init, which is what this process is under bubblewrap and unshare.
    wanted = [
        ("rlimit-cpu", resource.RLIMIT_CPU, limits.get("cpu_s")),
        ("rlimit-as", resource.RLIMIT_AS, limits.get("address_space_bytes")),
        ("rlimit-nproc", resource.RLIMIT_NPROC, limits.get("processes")),
        ("rlimit-nofile", resource.RLIMIT_NOFILE, limits.get("open_files")),
        ("rlimit-fsize", resource.RLIMIT_FSIZE, limits.get("file_bytes")),
        ("rlimit-core", resource.RLIMIT_CORE, 0),
    ]
    for name, which, value in wanted:
        if value is None:
            continue
        try:
            resource.setrlimit(which, (value, value))
            applied.append(name)
        except (ValueError, OSError):
            pass
    os.umask(0o077)
    return applied


def _snapshot_modules():
    """Each loaded module's attributes, and the import machinery's lists, as they are before the program."""
    modules = {}
    for name, module in list(_modules.items()):
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict):
            modules[name] = (module, dict(namespace))
    lists = {name: list(getattr(sys, name)) for name in ("path", "meta_path", "path_hooks")}
    return modules, lists


def _restore_modules(modules, lists):
    """Put back every attribute the program changed on a module that was loaded before it, and drop the
    modules it imported: an `import math` in the tests then gets a fresh module, not one the program patched."""
    for name in [name for name in _modules if name not in modules]:
        del _modules[name]
    for name, (module, attributes) in modules.items():
        _modules[name] = module
        namespace = module.__dict__
        for key in [key for key in namespace if key not in attributes]:
            del namespace[key]
        for key, value in attributes.items():
            if key not in namespace or namespace[key] is not value:
                namespace[key] = value
    for name, saved in lists.items():
        getattr(sys, name)[:] = saved
    _importer_cache.clear()


def _ensure_plain(value, entry_point):
    """Raise unless value is made only of the built-in data types (exact types, no subclasses), so that the
    tests compare values whose == the program did not write."""
    stack = [value]
    seen = set()
    while stack:
        item = stack.pop()
        item_type = _type(item)
        if item_type in _PLAIN_SCALARS:
            continue
        if item_type in _PLAIN_CONTAINERS:
            if _id(item) in seen:
                continue
            seen.add(_id(item))
            if item_type is dict:
                stack.extend(dict.keys(item))
                stack.extend(dict.values(item))
            else:
                stack.extend(item)
            continue
        raise TypeError(
            f"{entry_point}() returned an object of type {_QUALNAME(item_type)!s}: only plain data (int, float, complex, "
            "str, bytes, bool, None and list/tuple/set/frozenset/dict of them) is compared by the tests")


def _guarded(function, entry_point):
    def guarded(*args, **kwargs):
        result = function(*args, **kwargs)
        _ensure_plain(result, entry_point)
        return result

    guarded.__name__ = entry_point
    guarded.__qualname__ = entry_point
    guarded.__doc__ = getattr(function, "__doc__", None)
    return guarded


def _tests_namespace(program_namespace, pristine_builtins, entry_point):
    """The program's names minus those that shadow a builtin (a global `abs = lambda x: 0` must not reach the
    tests) and minus its own __builtins__; the entry point wrapped when it is a function."""
    namespace = {key: value for key, value in program_namespace.items()
                 if key not in pristine_builtins or key == entry_point}
    namespace["__builtins__"] = builtins
    namespace["__name__"] = "__main__"
    if entry_point and entry_point in namespace:
        candidate = namespace[entry_point]
        if callable(candidate) and not isinstance(candidate, type):
            namespace[entry_point] = _guarded(candidate, entry_point)
    return namespace


def _flush(streams):
    for stream in streams:
        try:
            stream.flush()
        except Exception:
            pass


def _describe(error):
    try:
        return f"{_QUALNAME(_type(error))}: {str(error)[:500]}"
    except Exception:
        return _QUALNAME(_type(error))


def main():
    payload_fd, token_fd, result_fd = (int(argument) for argument in sys.argv[1:4])
    payload = json.loads(_read_all(payload_fd))
    streams = (sys.stdout, sys.stderr)
    print_traceback = traceback.print_exc

    def print_exception():
        try:
            print_traceback(file=streams[1])
        except Exception:
            pass

    settrace, setprofile = sys.settrace, sys.setprofile
    entry_point = payload.get("entry_point")
    applied = _apply_limits(payload["limits"])
    tests_code = compile(payload["tests"], "tests.py", "exec")
    try:
        program_code = compile(payload["program"], "program.py", "exec")
    except (SyntaxError, ValueError) as error:  # ValueError: a NUL byte in the source
        _report(result_fd, "started", rlimits=applied, python=sys.version.split()[0])
        _report(result_fd, "program-syntax-error", error=_describe(error))
        print_exception()
        _flush(streams)
        _exit(1)
    program_module = types.ModuleType("__main__")
    _modules["__main__"] = program_module
    pristine_builtins = dict(builtins.__dict__)
    modules, lists = _snapshot_modules()
    del modules["__main__"]  # the program's own module keeps what the program defined
    del payload
    _report(result_fd, "started", rlimits=applied, python=sys.version.split()[0])
    try:
        exec(program_code, program_module.__dict__)
    except SystemExit as error:
        _report(result_fd, "program-exited", code=str(error.code)[:100])
        _flush(streams)
        _exit(1)
    except BaseException as error:
        _report(result_fd, "program-raised", error=_describe(error))
        print_exception()
        _flush(streams)
        _exit(1)
    settrace(None)
    setprofile(None)
    builtins_namespace = builtins.__dict__
    for key in [key for key in builtins_namespace if key not in pristine_builtins]:
        del builtins_namespace[key]
    builtins_namespace.update(pristine_builtins)
    _restore_modules(modules, lists)
    tests_namespace = _tests_namespace(program_module.__dict__, pristine_builtins, entry_point)
    _report(result_fd, "tests-started")
    try:
        exec(tests_code, tests_namespace)
    except BaseException as error:
        _report(result_fd, "tests-raised", error=_describe(error))
        print_exception()
        _flush(streams)
        _exit(1)
    _flush(streams)
    try:
        token = _read(token_fd, 256)
    except OSError:
        token = b""
    if not token:
        _report(result_fd, "token-missing")
        _exit(1)
    try:
        _write(result_fd, b"pass " + token + b"\n")
    except OSError:
        _exit(1)
    _exit(0)


if __name__ == "__main__":
    main()
