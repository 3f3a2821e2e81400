"""A reward for tests/test_parallel.py's launched processes (importable there: the launch puts tests/ on PYTHONPATH)."""

import os

from rlif.rl.rewards import self_certainty_reward

CALLS = {"n": 0}


def nan_on_the_second_process_at_step_2(rollout):
    """INTUITOR's reward, but NaN on process 1 (only) at its second call."""
    CALLS["n"] += 1
    values = self_certainty_reward(rollout)
    return values * float("nan") if CALLS["n"] == 2 and os.environ.get("RANK") == "1" else values
