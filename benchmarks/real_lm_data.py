"""Writes the real-LM tasks' data, generated offline by reasoning-gym, as the JSONL files a user would bring:
demonstrations (prompt, completion, answer) and, for the RL arms, prompts without demonstrations (prompt, answer).

    pip install reasoning-gym==0.1.25
    python benchmarks/real_lm_data.py                          # word reversal: what recipe=smollm2_word_reversal reads
    python benchmarks/real_lm_data.py --task spiral_matrix     # the benchmark's second task
    python benchmarks/real_lm_data.py --rollout                # + <task>_prompts.jsonl: prompts, no demonstrations

Tasks (reasoning-gym, Apache-2.0); the answer is several tokens and one wrong one ruins it, which is where
imitation's errors compound:
- ``word_sequence_reversal``: reverse a list of 3 to 5 words ("Reverse this list of words: a, b, c" -> "c, b, a").
- ``spiral_matrix``: read a 3x3 grid of digits in spiral order ("For the matrix below, what is the list of elements
  in spiral order?" + the rows -> "6 7 5 0 8 4 7 4 6"): 9 numbers, each read from a position that depends on every
  step before it, so one slip shifts the rest (4x4 grids: BC succeeded on none, on the calibration split).

Each demonstration row holds the prompt (the question's last paragraph), the demonstration (the gold answer) and the
answer column the ``exact`` verifier reads. The rollout file holds the generator's next rows (reasoning-gym seeds row i
with seed + i, so another seed would repeat rows) without any prompt of the demonstration file. Generation is
deterministic in (task, size, seed): rerunning writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "trl_irl" / "data"
# our name -> (reasoning-gym's dataset, its options)
TASKS = {
    "word_reversal": ("word_sequence_reversal", {"min_words": 3, "max_words": 5}),
    "spiral_matrix": ("spiral_matrix", {"min_n": 3, "max_n": 3}),
}


def rows(task: str, size: int, seed: int) -> list[dict]:
    """``size`` rows of ``task`` from reasoning-gym's generator at ``seed``: prompt, completion and answer."""
    import reasoning_gym

    name, options = TASKS[task]
    data = reasoning_gym.create_dataset(name, size=size, seed=seed, **options)
    out = []
    for entry in data:
        prompt = entry["question"].strip().split("\n\n")[-1] + "\n"  # the last paragraph: the instance itself
        assert data.score_answer(entry["answer"], entry) == 1.0
        out.append({"prompt": prompt, "completion": entry["answer"], "answer": entry["answer"]})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="word_reversal", choices=list(TASKS))
    parser.add_argument("--size", type=int, default=2000, help="demonstration rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rollout", action="store_true", help="also write <task>_prompts.jsonl")
    parser.add_argument("--rollout-size", type=int, default=1000)
    parser.add_argument("--out-dir", default=str(DATA), help="where <task>.jsonl and <task>_prompts.jsonl go")
    args = parser.parse_args()
    demos = rows(args.task, args.size, args.seed)
    path = Path(args.out_dir) / f"{args.task}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in demos))
    print(path)
    if args.rollout:
        seen = {r["prompt"] for r in demos}
        prompts = []
        for r in rows(args.task, args.size + 2 * args.rollout_size, args.seed)[args.size :]:
            if r["prompt"] not in seen and len(prompts) < args.rollout_size:
                seen.add(r["prompt"])
                prompts.append({"prompt": r["prompt"], "answer": r["answer"]})
        path = Path(args.out_dir) / f"{args.task}_prompts.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in prompts))
        print(path, len(prompts))


if __name__ == "__main__":
    main()
