"""The code domain: run model-written programs against tests in a sandbox (executor), get the program out of a
completion or a chat answer (extract), read code benchmarks (problems), and estimate pass@k (passk)."""

from rlif.code.executor import ExecutionResult, SandboxInfo, execute, execute_many, sandbox_info
from rlif.code.extract import code_from_response, cut_completion, program_from_completion, program_from_response
from rlif.code.passk import mean_pass_at_k, pass_at_k
from rlif.code.problems import CodeProblem, load_humaneval, load_problems, partial_credit, run_answer

__all__ = [
    "CodeProblem", "ExecutionResult", "SandboxInfo", "code_from_response", "cut_completion", "execute", "execute_many",
    "load_humaneval", "load_problems", "mean_pass_at_k", "partial_credit", "pass_at_k", "program_from_completion",
    "program_from_response", "run_answer", "sandbox_info",
]
