"""The kill campaign: SIGKILL a short testbed run at random moments of every phase, resume it, and check that the
resumed run ends exactly where an uninterrupted one does.

    OMP_NUM_THREADS=1 python scripts/kill_campaign.py                        # 3 kills per phase (about 20 minutes, 2 CPUs)
    python scripts/kill_campaign.py --kills-per-phase 1 --seed 1 --work /tmp/kills

The run is the README's main job (configs/testbed/intuitor.yaml) cut short: 6 steps of 4 prompts x 4 responses,
evaluations before training and at steps 3 and 6, checkpoints at steps 2, 4 and 6. It runs under a launcher that
notes when each phase starts and ends (generation, scoring by the reference, the update, evaluation, the checkpoint
save, the final report); for each kill it picks a phase, one of its occurrences and a moment inside it (uniform over
that occurrence's duration in the uninterrupted run), and a thread of the run delivers SIGKILL to its own process at
that moment if the phase is still running (a phase that ended sooner is retried with another moment). The killed run
is then resumed with `rlif train CONFIG run.resume=true` and compared with the uninterrupted run: metrics.jsonl (all
but the time/ fields) and samples.jsonl equal, every RUN/eval/step_N.jsonl byte-identical, the final weights and
trainer state identical, the report and plots written, no incomplete checkpoint left. Prints one row per phase and
the totals; exit status 0 when every kill resumed exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
CONFIG = REPO / "configs" / "testbed" / "intuitor.yaml"
OVERRIDES = [
    "train.steps=6", "train.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=40",
    "eval.limit=8", "eval.num_samples=2", "eval.every=3", "eval.max_new_tokens=40",
    "run.save_every=2", "run.keep_checkpoints=2", "run.sample_every=2", "run.progress=false",
    "run.stop_rule=none",  # every phase at every step (the main job's rule may stop it at step 3); tests/test_stop_rule.py resumes stopped runs
]
PHASES = ["generation", "scoring", "update", "evaluation", "checkpoint save", "final report"]

# Runs `rlif train` with each phase's function wrapped: its start and end go to RLIF_PHASE_LOG, and the chosen
# occurrence of the chosen phase gets a thread that SIGKILLs the process RLIF_KILL_DELAY seconds into it.
LAUNCHER = r"""
import os, signal, sys, threading, time
import rlif.rl.step as step, rlif.rl.train as train

log = open(os.environ["RLIF_PHASE_LOG"], "a", buffering=1)
target = os.environ.get("RLIF_KILL_PHASE")
occurrence, delay = int(os.environ.get("RLIF_KILL_OCCURRENCE", "0")), float(os.environ.get("RLIF_KILL_DELAY", "0"))
counts, current = {}, [None]

def phased(name, module, attribute):
    inner = getattr(module, attribute)
    def wrapper(*args, **kwargs):
        counts[name] = n = counts.get(name, 0) + 1
        log.write(f"start\t{name}\t{n}\t{time.perf_counter()}\n")
        current[0] = (name, n)
        if (name, n) == (target, occurrence):
            def kill():
                time.sleep(delay)
                if current[0] == (name, n):
                    os.kill(os.getpid(), signal.SIGKILL)
            threading.Thread(target=kill, daemon=True).start()
        try:
            return inner(*args, **kwargs)
        finally:
            current[0] = None
            log.write(f"end\t{name}\t{n}\t{time.perf_counter()}\n")
    setattr(module, attribute, wrapper)

for name, module, attribute in [("generation", step, "generate_rollout"), ("scoring", step, "reference_signals"),
                                ("update", step, "update"), ("evaluation", train, "evaluate"),
                                ("checkpoint save", train, "save"), ("final report", train, "write_report")]:
    phased(name, module, attribute)
from rlif.cli import main
sys.exit(main(sys.argv[1:]))
"""


def environment(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p),
            **extra}


def launch(run_dir: Path, log: Path, *, phase: str | None = None, occurrence: int = 0, delay: float = 0.0,
           resume: bool = False) -> subprocess.CompletedProcess:
    argv = [str(CONFIG), *OVERRIDES, f"run.output_dir={run_dir}"] + (["run.resume=true"] if resume else [])
    env = environment(RLIF_PHASE_LOG=str(log), RLIF_KILL_PHASE=phase or "", RLIF_KILL_OCCURRENCE=str(occurrence),
                      RLIF_KILL_DELAY=f"{delay:.6f}")
    return subprocess.run([sys.executable, "-c", LAUNCHER, "train", *argv], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=1800, check=False)


def phase_spans(log: Path) -> tuple[dict[tuple[str, int], float], tuple[str, int] | None]:
    """({(phase, occurrence): seconds} of the phases that ended, the phase running when the log stops or None)."""
    starts, spans, running = {}, {}, None
    for line in log.read_text().splitlines():
        kind, name, n, at = line.split("\t")
        key = (name, int(n))
        if kind == "start":
            starts[key], running = float(at), key
        else:
            spans[key], running = float(at) - starts[key], None
    return spans, running


def same_values(a, b) -> bool:
    """Equal trainer states: tensors element for element, tuples and lists alike (torch keeps AdamW's betas as it was
    given them: a tuple in a new run, a list once loaded from a checkpoint)."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_values(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b))
    if hasattr(a, "shape") and hasattr(b, "shape"):  # numpy arrays (the RNG state)
        return a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())
    return type(a) is type(b) and a == b


def compare_runs(run: Path, reference: Path) -> list[str]:
    """What differs between a resumed run and the uninterrupted one (empty: resumed exactly)."""
    import torch
    from safetensors.torch import load_file

    from rlif.data.jsonl import read_log
    from rlif.rl.checkpoint import read_trainer_state

    problems = []
    untimed = lambda records: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]  # noqa: E731
    if untimed(read_log(run / "metrics.jsonl")) != untimed(read_log(reference / "metrics.jsonl")):
        problems.append("metrics.jsonl differs")
    if read_log(run / "samples.jsonl") != read_log(reference / "samples.jsonl"):
        problems.append("samples.jsonl differs")
    evals = sorted(p.name for p in (reference / "eval").glob("*.jsonl"))
    if sorted(p.name for p in (run / "eval").glob("*.jsonl")) != evals:
        problems.append("other evaluation files")
    problems += [f"eval/{name} differs" for name in evals
                 if (run / "eval" / name).is_file() and (run / "eval" / name).read_bytes() != (reference / "eval" / name).read_bytes()]
    checkpoints = sorted(p.name for p in (reference / "checkpoints").iterdir())
    if sorted(p.name for p in (run / "checkpoints").iterdir()) != checkpoints:
        problems.append(f"checkpoints {sorted(p.name for p in (run / 'checkpoints').iterdir())}, expected {checkpoints}")
    final = checkpoints[-1]
    got, want = load_file(run / "checkpoints" / final / "model.safetensors"), load_file(reference / "checkpoints" / final / "model.safetensors")
    if got.keys() != want.keys() or not all(torch.equal(got[k], want[k]) for k in want):
        problems.append(f"{final}: the weights differ")
    state = read_trainer_state(run / "checkpoints" / final)
    if not same_values(state, read_trainer_state(reference / "checkpoints" / final)):
        problems.append(f"{final}: the trainer state differs")
    if not (run / "report.md").is_file() or not (run / "plots" / "training.png").is_file():
        problems.append("no report.md or plots")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills-per-phase", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seeds the choice of phase occurrences and moments")
    parser.add_argument("--attempts", type=int, default=6, help="tries per kill when the phase ends before the moment drawn")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--phases", nargs="+", default=PHASES, choices=PHASES)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="rlif-kills-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    print(f"command: python scripts/kill_campaign.py {' '.join(sys.argv[1:])}".rstrip(), flush=True)

    started = time.perf_counter()
    reference = work / "uninterrupted"
    shutil.rmtree(reference, ignore_errors=True)
    result = launch(reference, work / "uninterrupted.log")
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
        return 1
    spans, _ = phase_spans(work / "uninterrupted.log")
    print(f"uninterrupted run: {time.perf_counter() - started:.0f} s; phase occurrences: "
          + ", ".join(f"{p} {sum(1 for k in spans if k[0] == p)}" for p in args.phases), flush=True)

    rows = []
    for phase in args.phases:
        occurrences = sorted(n for name, n in spans if name == phase)
        for k in range(args.kills_per_phase):
            row = {"phase": phase, "landed": False, "exact": False, "problems": [], "tries": 0}
            run = work / f"{phase.replace(' ', '_')}_{k}"
            for _ in range(args.attempts):
                row["tries"] += 1
                shutil.rmtree(run, ignore_errors=True)
                occurrence = rng.choice(occurrences)
                delay = rng.uniform(0.02, 0.98) * spans[(phase, occurrence)]
                log = run.with_suffix(".log")
                log.unlink(missing_ok=True)
                killed = launch(run, log, phase=phase, occurrence=occurrence, delay=delay)
                _, running = phase_spans(log)
                if killed.returncode == -signal.SIGKILL and running == (phase, occurrence):
                    row.update(landed=True, occurrence=occurrence, delay=delay)
                    break
                if killed.returncode not in (0, -signal.SIGKILL):
                    row["problems"].append(f"the run failed: {killed.stderr.strip().splitlines()[-1:]}")
                    break
            if row["landed"]:
                resumed = launch(run, run.with_suffix(".resume.log"), resume=True)
                if resumed.returncode != 0:
                    row["problems"].append(f"the resume failed: {resumed.stderr.strip().splitlines()[-1:]}")
                else:
                    row["problems"] += compare_runs(run, reference)
                    row["exact"] = not row["problems"]
            rows.append(row)
            where = f"{phase} #{row.get('occurrence')} at {row.get('delay', 0):.3f} s" if row["landed"] else f"{phase}: no kill landed"
            print(f"kill {len(rows)}: {where} (try {row['tries']}): "
                  + ("resumed exactly" if row["exact"] else "; ".join(row["problems"]) or "-"), flush=True)

    print("\n| phase | kills landed in the phase | resumed exactly |\n|---|---|---|")
    for phase in args.phases:
        mine = [r for r in rows if r["phase"] == phase]
        print(f"| {phase} | {sum(r['landed'] for r in mine)} of {len(mine)} | {sum(r['exact'] for r in mine)} |")
    landed, exact = sum(r["landed"] for r in rows), sum(r["exact"] for r in rows)
    print(f"\n{landed} kills, {exact} resumed exactly ({time.perf_counter() - started:.0f} s in all)")
    print(json.dumps({"kills": landed, "resumed_exactly": exact, "attempted": len(rows)}))
    return 0 if exact == landed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
