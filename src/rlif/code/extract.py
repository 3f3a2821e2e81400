"""Get the program out of what a model wrote.

Completion style (a base model continues a HumanEval prompt): the program is the prompt plus the completion cut
at the first stop sequence. rlif uses the Codex paper's stop sequences (Chen et al. 2021: "\\nclass", "\\ndef",
"\\n#", "\\nif", "\\nprint"), with the space after the keyword so that a top-level name such as `define = ...`
does not stop it, plus three that small models need: "\\n@" (a decorator opening the next definition),
"\\nassert " (the model writing its own tests) and "\\n```" (a chat-tuned model closing a fence). Each begins
with a newline followed by no indentation, so only a line at the top level stops the completion: the function
body, being indented, never does. As in the Codex evaluation, a helper function the model defines after the
body is cut off too; so is an `if __name__ == "__main__":` block.

Chat style (an instruct model answers in prose and Markdown): the program is the last fenced block tagged
python (or py, python3), else the last fenced block of any language, else the whole response. A fence the
model opened but never closed (it ran out of tokens) counts as a block up to the end of the response. One
more case, from SmolLM2-135M-Instruct given a bare HumanEval prompt: the response starts with the code and
closes a fence it never opened (code, then a lone ```, then prose). So when a response has a single fence
line, without a language tag, and the text before it compiles as Python while the text after it does not,
the code is the text before it.
"""

from __future__ import annotations

import re

CODEX_STOP_SEQUENCES = ("\nclass ", "\ndef ", "\n#", "\nif ", "\nprint")
STOP_SEQUENCES = CODEX_STOP_SEQUENCES + ("\n@", "\nassert ", "\n```")
END_OF_TEXT = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "</s>")  # when the text was decoded with special tokens
PYTHON_TAGS = frozenset({"python", "py", "python3"})
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*([^`\n]*)$", re.MULTILINE)


def cut_completion(completion: str, stop_sequences: tuple[str, ...] = STOP_SEQUENCES) -> str:
    """The completion up to (not including) the first stop sequence or end-of-text marker."""
    end = len(completion)
    for marker in stop_sequences + END_OF_TEXT:
        position = completion.find(marker)
        if position != -1:
            end = min(end, position)
    return completion[:end]


def program_from_completion(prompt: str, completion: str, stop_sequences: tuple[str, ...] = STOP_SEQUENCES) -> str:
    """The program a completion-style answer makes: the prompt (imports, signature, docstring) and the body."""
    return prompt + cut_completion(completion, stop_sequences)


def fenced_blocks(response: str) -> list[tuple[str, str]]:
    """(info string, content) of each fenced block, in order. A closing fence is a line of the same fence
    character at least as long as the opening one with nothing after it (CommonMark)."""
    blocks = []
    position = 0
    while True:
        opening = _FENCE.search(response, position)
        if opening is None:
            return blocks
        fence, info = opening.group(1), opening.group(2).strip()
        start = opening.end() + 1
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.MULTILINE).search(response, start)
        if closing is None:
            blocks.append((info, response[start:]))
            return blocks
        blocks.append((info, response[start:closing.start()]))
        position = closing.end()


def code_from_response(response: str) -> str:
    """The code in a chat-style answer: the last python block, else the last block, else the whole text."""
    for marker in END_OF_TEXT:
        response = response.split(marker, 1)[0]
    closing_only = _code_before_a_lone_fence(response)
    if closing_only is not None:
        return closing_only
    blocks = fenced_blocks(response)
    python_blocks = [content for info, content in blocks if (info.split() or [""])[0].lower() in PYTHON_TAGS]
    if python_blocks:
        return python_blocks[-1]
    if blocks:
        return blocks[-1][1]
    return response


def _compiles(source: str) -> bool:
    try:
        compile(source, "<response>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def _code_before_a_lone_fence(response: str) -> str | None:
    """The text before the response's only fence line when that fence has no language tag and closes code
    (the text before compiles, the text after does not); else None."""
    fences = list(_FENCE.finditer(response))
    if len(fences) != 1 or fences[0].group(2).strip():
        return None
    before, after = response[:fences[0].start()], response[fences[0].end():]
    if before.strip() and _compiles(before) and not _compiles(after):
        return before
    return None


def program_from_response(response: str, prefix: str = "") -> str:
    """The program a chat-style answer makes: prefix (for HumanEval the prompt, so that its imports and helper
    functions exist; the answer's own definition replaces the prompt's body-less one), then the code."""
    return with_prefix(prefix, code_from_response(response))


def with_prefix(prefix: str, code: str) -> str:
    """prefix, two blank lines, then the code (the code alone without a prefix)."""
    return f"{prefix.rstrip()}\n\n\n{code}" if prefix else code
