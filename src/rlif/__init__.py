"""rlif: reinforcement learning of language models from internal feedback (INTUITOR: self-certainty as the reward).

The packages follow the pipeline (docs/development.md has the tree with one line per module):
    data/      prompts, answer checking, benchmarks        models/   loading, LoRA, installs from PyPI
    sampling/  generation engines, keyed randomness        signals/  self-certainty, entropy, log-probs
    rl/        rollout, rewards, loss, the step, the loop  eval/     benchmark evaluation, Best-of-N, calibration
    runs/      logs, reports, plots, comparisons           testbed/  the arithmetic world and tiny models
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.2.0"

# Modules that moved in 0.2.0: the old path still imports, with a DeprecationWarning, until 0.3.0.
MOVED = {
    "rlif.answers": "rlif.data.answers", "rlif.benchmarks": "rlif.data.benchmarks", 
    "rlif.lora": "rlif.models.lora", "rlif.registry": "rlif.models.install", "rlif.triton_signals": "rlif.signals.triton_kernels",
    "rlif.scoring": "rlif.signals.batching", "rlif.score": "rlif.signals.score", "rlif.rollout": "rlif.rl.rollout",
    "rlif.rewards": "rlif.rl.rewards", "rlif.grpo": "rlif.rl.loss", "rlif.parallel": "rlif.rl.distributed",
    "rlif.checkpoint": "rlif.rl.checkpoint", "rlif.train": "rlif.rl.train", "rlif.evaluate": "rlif.eval.generate",
    "rlif.selection": "rlif.eval.best_of_n", "rlif.calibration": "rlif.eval.calibration", "rlif.eval_job": "rlif.eval.job",
    "rlif.runlog": "rlif.runs.log", "rlif.report": "rlif.runs.report", "rlif.plots": "rlif.runs.plots",
    "rlif.checkpoint_choice": "rlif.runs.checkpoint_choice", "rlif.compare": "rlif.runs.compare", "rlif.tiny": "rlif.testbed.tiny",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as the module's new home (one module object under two names)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}; the old path goes away in rlif 0.3", DeprecationWarning, stacklevel=4)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
