"""rlif.code.extract on answers written the way small base and instruct models write them."""

from __future__ import annotations

import json

from rlif.code import code_from_response, cut_completion, execute, execute_many, program_from_completion, program_from_response
from rlif.code.problems import HUMANEVAL_PATH

PROMPT = 'def add(a: int, b: int) -> int:\n    """Return the sum of a and b.\n    >>> add(2, 3)\n    5\n    """\n'
BODY = "    return a + b\n"
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"

# --- completion style: a base model continuing the prompt --------------------------------------------------

COMPLETIONS = {
    "another function": BODY + "\n\ndef subtract(a: int, b: int) -> int:\n    return a - b\n",
    "a main block": BODY + '\n\nif __name__ == "__main__":\n    import doctest\n    doctest.testmod()\n',
    "prints its own check": BODY + "\n\nprint(add(2, 3))\n",
    "a top-level comment and junk": BODY + "\n\n# Example usage:\n# add(1, 2) -> 3\nadd(1\n",
    "its own asserts": BODY + "\nassert add(1, 1) == 3\n",
    "a class": BODY + "\n\nclass Calculator:\n    pass\n",
    "a decorator": BODY + "\n\n@staticmethod\ndef helper():\n    pass\n",
    "end of text": BODY + "<|endoftext|>def broken(:\n",
    "a closing fence": BODY + "```\n\nThis function adds two numbers.",
}


def test_completions_are_cut_at_the_next_top_level_statement():
    for name, completion in COMPLETIONS.items():
        assert cut_completion(completion).rstrip() == BODY.rstrip(), name
    results = execute_many([(program_from_completion(PROMPT, completion), TESTS) for completion in COMPLETIONS.values()])
    assert [result.status for result in results] == ["passed"] * len(COMPLETIONS)


def test_indented_code_and_multi_line_bodies_are_kept():
    body = ("    total = a\n    # add b to the total\n    if b:\n        total += b\n\n    def inner():\n"
            "        return total\n    print_it = False\n    return inner()\n")
    assert cut_completion(body + "\ndef other():\n    pass\n") == body
    not_a_def = "    defined = 1\n    return defined\n\ndefault = 2\n"
    assert cut_completion(not_a_def) == not_a_def


def test_humaneval_canonical_solutions_survive_the_cut():
    records = [json.loads(line) for line in HUMANEVAL_PATH.read_text(encoding="utf-8").splitlines()]
    assert all(cut_completion(record["canonical_solution"]) == record["canonical_solution"] for record in records)


# --- chat style: an instruct model answering in Markdown ---------------------------------------------------

PROSE_AND_FENCE = """Sure! Here's a simple implementation of the `add` function:

```python
def add(a: int, b: int) -> int:
    return a + b
```

This function takes two integers and returns their sum. For example:

```python
print(add(2, 3))  # Output: 5
```
"""

REVISED = """My first attempt:

```python
def add(a, b):
    return a - b
```

Wait, that subtracts. The correct version is:

```Python
def add(a, b):
    return a + b
```"""

UNTAGGED = """The solution:

```
def add(a, b):
    return a + b
```
"""

NO_FENCES = """def add(a: int, b: int) -> int:
    return a + b"""

UNCLOSED = """Here is the code:

```python
def add(a, b):
    return a + b
"""

TILDES_AND_SHELL = """Install nothing, then:

~~~py
def add(a, b):
    return a + b
~~~

```bash
python add.py
```
"""


# SmolLM2-135M-Instruct's answer to a bare HumanEval prompt (HumanEval/0): code first, a closing fence it never opened
CLOSING_ONLY = """from typing import List

def has_close_elements(numbers: List[float], threshold: float) -> bool:
    return any(num - threshold <= 0 for num in numbers)

# Example usage:
print(has_close_elements([1.0, 2.0, 3.0], 0.5))  # True
```

In this code, the `has_close_elements` function takes a list of numbers and a threshold as input. It returns `True` if
"""


def test_code_that_closes_a_fence_it_never_opened():
    assert code_from_response(CLOSING_ONLY) == CLOSING_ONLY.split("```")[0]
    # an opening fence without a tag after prose is still an opening fence (the text before it is not Python)
    assert code_from_response("Here is the code:\n```\ndef add(a, b):\n    return a + b\n") == "def add(a, b):\n    return a + b\n"
    # both sides Python: CommonMark's reading (the unclosed block after the fence)
    assert code_from_response("x = 1\n```\ny = 2\n") == "y = 2\n"


def test_chat_answers_give_the_intended_code():
    assert code_from_response(PROSE_AND_FENCE) == "print(add(2, 3))  # Output: 5\n"  # the last python block, as documented
    assert code_from_response(REVISED) == "def add(a, b):\n    return a + b\n"
    assert code_from_response(UNTAGGED) == "def add(a, b):\n    return a + b\n"
    assert code_from_response(NO_FENCES) == NO_FENCES
    assert code_from_response(UNCLOSED) == "def add(a, b):\n    return a + b\n"
    assert code_from_response(TILDES_AND_SHELL) == "def add(a, b):\n    return a + b\n"
    assert code_from_response("```python\ndef add(a, b):\n    return a + b\n```<|im_end|>\n```python\nadd = None\n```") == \
        "def add(a, b):\n    return a + b\n"


def test_chat_answers_run_with_the_prompt_before_them():
    responses = (REVISED, UNTAGGED, NO_FENCES, UNCLOSED, TILDES_AND_SHELL)
    results = execute_many([(program_from_response(response, PROMPT), TESTS) for response in responses])
    assert [result.status for result in results] == ["passed"] * len(responses)
    # the last python block alone does not define add: the prompt's body-less add returns None
    assert execute(program_from_response(PROSE_AND_FENCE, PROMPT), TESTS, 5).status == "failed"
    assert execute(program_from_response(PROSE_AND_FENCE), TESTS, 5).status == "error"  # NameError at top level
