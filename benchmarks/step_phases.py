"""Where a policy step's time goes: py-spy's raw (collapsed) samples of a training run, summed by phase.

    py-spy record -r 20 -f raw -o profile.txt -- python benchmarks/online_irl_overhead.py --model smollm2_135m ...
    python benchmarks/step_phases.py profile.txt [--out phases.json]

A sample's phase is the first rule (in PHASES' order) whose frame appears in its stack, so the reward update's
backward counts as the reward update, not as the policy's backward. Shares are of the samples inside
``Trainer._inner_training_loop`` (model loading and start-up are left out).
"""

import argparse
import json
from pathlib import Path

# (phase, function name, a piece of its file), in order: the first that a sample's stack holds is its phase, so the
# reward update's backward counts as the reward update, not as the policy's backward
PHASES = [
    ("reward update: backward", "backward", "autograd"),
    ("reward update: optimizer", "step", "optim"),
    ("reward update: forward", "pair_loss", "objectives"),
    ("reward scoring", "rewards", "objectives"),
    ("generation", "generate", "generation"),
    ("policy loss: backward", "backward", "autograd"),
    ("policy optimizer", "step", "optim"),
    ("policy loss: forward", "compute_loss", "trainer"),
    ("old/reference log-probs", "_get_per_token_logps_and_entropies", "grpo_trainer"),  # outside the loss
    ("checkpoint", "_save_checkpoint", "trainer"),
]
INSIDE = {"_inner_training_loop"}


def parse(frame: str) -> tuple[str, str]:
    """ "Class.method (path/file.py:line)" -> ("method", "path/file.py")."""
    name, _, where = frame.partition(" (")
    return name.rsplit(".", 1)[-1], where.rsplit(":", 1)[0]


def phase_of(frames: list[tuple[str, str]]) -> str:
    in_update = any(name == "update" and "rewards/online" in path for name, path in frames)
    for phase, function, path_part in PHASES:
        if phase.startswith("reward update") == in_update and any(
            name == function and path_part in path for name, path in frames
        ):
            return phase
    return "reward update: other" if in_update else "other"


def summarise(path: str) -> dict:
    counts: dict[str, int] = {}
    for line in Path(path).read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [parse(f) for f in stack.split(";")]
        if not any(name in INSIDE for name, _ in frames):
            continue
        phase = phase_of(frames)
        counts[phase] = counts.get(phase, 0) + int(n)
    total = sum(counts.values()) or 1
    return {"samples": total, "share": {k: round(v / total, 3) for k, v in sorted(counts.items(), key=lambda x: -x[1])}}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("profile")
    parser.add_argument("--out")
    opts = parser.parse_args()
    result = summarise(opts.profile)
    text = json.dumps(result, indent=2)
    print(text)
    if opts.out:
        Path(opts.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
