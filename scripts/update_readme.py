"""Rewrite the generated parts of README.md: the config reference (from the config dataclasses)."""

from pathlib import Path

from rlif.config import config_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def replace_between(text: str, name: str, content: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{content}\n{end}{tail}"


if __name__ == "__main__":
    README.write_text(replace_between(README.read_text(), "config-reference", config_reference()))
    print(f"updated {README}")
