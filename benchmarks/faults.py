"""Kill runs and resume them: every resumed run must end bit-identical to the uninterrupted one.

Each trial copies a folder where BC and reward pretraining are finished, then runs ``trl-irl ... resume=true`` and
kills it (SIGKILL) ``--kills-per-trial`` times before letting it finish: at a random moment of policy training, or
while a checkpoint is being written (the folder ``checkpoint-N`` exists and its ``COMPLETE`` marker does not yet; the
kill lands a random 0-40 ms after that is seen). The final policy and reward model are then compared with the
uninterrupted run's, tensor by tensor, for exact equality.

    OMP_NUM_THREADS=1 python benchmarks/faults.py --trials 12 --kills-per-trial 2   # 24 kills, about 10 minutes

Writes ``benchmarks/results/faults.json``: kills by kind, where each landed, resumes that ended identical.
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
import time
from pathlib import Path

import torch

from trl_irl.checkpoints import COMPLETE, checkpoint_step, list_checkpoints, read_safetensors

TRL_IRL = str(Path(sys.executable).parent / "trl-irl")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
# 16 prompts, 4 per step: 4 steps an epoch, so resumes cross epoch boundaries; a checkpoint every 2 steps
MAX_STEPS, SAVE_STEPS = 12, 2
ARGS = [
    "recipe=toy",
    "arms=[bc,grpo]",
    "task.num_demonstrations=16",
    f"algo.max_steps={MAX_STEPS}",
    f"algo.save_steps={SAVE_STEPS}",
    "algo.save_total_limit=2",
]


def trl_irl(out: Path, *extra: str) -> subprocess.Popen:
    log = open(out.parent / f"{out.name}.log", "a")
    return subprocess.Popen(
        [TRL_IRL, *ARGS, f"hydra.run.dir={out}", *extra], env=ENV, stdout=log, stderr=subprocess.STDOUT
    )


def writing_checkpoint(stage_dir: Path, at_least: int) -> str | None:
    """The name of a checkpoint of step >= ``at_least`` being written (folder there, marker not), else None."""
    for ckpt in list_checkpoints(stage_dir):
        if checkpoint_step(ckpt) >= at_least and not (ckpt / COMPLETE).exists():
            return ckpt.name
    return None


def kill_once(out: Path, kind: str, rng: random.Random, window_s: float) -> dict:
    """Start a resumed run and kill it; returns where the kill landed (None when the run ended first)."""
    stage_dir = out / "grpo"
    proc = trl_irl(out, "resume=true")
    start = time.perf_counter()
    landed = None
    if kind == "training":
        deadline = start + rng.uniform(0.1, 0.9) * window_s  # start-up, training, evaluation
        while proc.poll() is None and time.perf_counter() < deadline:
            time.sleep(0.01)
        landed = f"{time.perf_counter() - start:.1f}s in"
    else:  # during the write of a checkpoint drawn from those still to come
        done = [checkpoint_step(c) for c in list_checkpoints(stage_dir) if (c / COMPLETE).exists()]
        target = rng.choice(
            [k for k in range(SAVE_STEPS, MAX_STEPS + 1, SAVE_STEPS) if k > max(done, default=0)] or [MAX_STEPS]
        )
        while proc.poll() is None:
            name = writing_checkpoint(stage_dir, target)
            if name:
                time.sleep(rng.uniform(0.0, 0.04))
                landed = f"writing {name}"
                break
            time.sleep(0.002)
    if proc.poll() is not None:
        return {"kind": kind, "landed": None, "finished_first": True}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    torn = [c.name for c in list_checkpoints(stage_dir) if not (c / COMPLETE).exists()]
    return {"kind": kind, "landed": landed, "finished_first": False, "torn_left": torn}


def same_weights(a: Path, b: Path) -> bool:
    for part in ("grpo/final", "grpo/final_reward"):
        wa, wb = read_safetensors(a / part), read_safetensors(b / part)
        if wa.keys() != wb.keys() or any(not torch.equal(wa[k], wb[k]) for k in wa):
            return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--kills-per-trial", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="outputs/faults")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "faults.json"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    reference = work / "reference"
    t0 = time.perf_counter()
    assert trl_irl(reference).wait() == 0, f"the reference run failed: see {reference}.log"
    total_s = time.perf_counter() - t0
    base = work / "base"  # BC and reward pretraining finished, policy training not started
    shutil.copytree(reference, base)
    shutil.rmtree(base / "grpo")
    (base / "metrics.json").unlink()
    timing = work / "timing"  # how long a resumed run takes from there: the window the kills land in
    shutil.copytree(base, timing)
    t0 = time.perf_counter()
    assert trl_irl(timing, "resume=true").wait() == 0, f"the timing run failed: see {timing}.log"
    resumed_s = time.perf_counter() - t0
    shutil.rmtree(timing)

    trials = []
    for trial in range(args.trials):
        out = work / f"trial_{trial}"
        shutil.copytree(base, out)
        kills = []
        for k in range(args.kills_per_trial):
            kind = "checkpoint_write" if (trial + k) % 2 == 0 else "training"
            kills.append(kill_once(out, kind, rng, resumed_s))
        finished = trl_irl(out, "resume=true").wait() == 0
        identical = finished and same_weights(reference, out)
        trials.append({"trial": trial, "kills": kills, "finished": finished, "identical": identical})
        print(json.dumps(trials[-1]), flush=True)
        if identical:
            shutil.rmtree(out)

    landed = [k for t in trials for k in t["kills"] if not k["finished_first"]]
    result = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/faults.py " + " ".join(sys.argv[1:]),
        "run": ARGS,
        "kills_landed": len(landed),
        "kills_landed_during_checkpoint_write": sum(k["kind"] == "checkpoint_write" for k in landed),
        "kills_leaving_a_torn_checkpoint": sum(bool(k.get("torn_left")) for k in landed),
        "runs_finished_before_the_kill": sum(k["finished_first"] for t in trials for k in t["kills"]),
        "trials": len(trials),
        "trials_identical": sum(t["identical"] for t in trials),
        "uninterrupted_run_s": round(total_s, 1),
        "resumed_run_s": round(resumed_s, 1),
        "trials_detail": trials,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(
        f"{result['trials_identical']}/{result['trials']} trials bit-identical after {result['kills_landed']} kills "
        f"({result['kills_landed_during_checkpoint_write']} during checkpoint writes, "
        f"{result['kills_leaving_a_torn_checkpoint']} left a torn checkpoint)"
    )


if __name__ == "__main__":
    main()
