"""Writes the real-LM task's demonstrations, generated offline by reasoning-gym, as the JSONL a user would bring.

    pip install reasoning-gym==0.1.25
    python benchmarks/real_lm_data.py            # -> trl_irl/data/word_reversal.jsonl (what recipe=smollm2_word_reversal reads)

The task is reasoning-gym's ``word_sequence_reversal`` (Apache-2.0): reverse a list of 3 to 5 words. The answer is
several tokens and one wrong word ruins it, which is where imitation's errors compound. Each row holds the prompt
(the question's last line), the demonstration (the gold answer) and the answer column the ``exact`` verifier reads.
Generation is deterministic in (size, seed): rerunning writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rows(size: int, seed: int, min_words: int, max_words: int) -> list[dict]:
    import reasoning_gym

    data = reasoning_gym.create_dataset("word_sequence_reversal", size=size, seed=seed, min_words=min_words,
                                        max_words=max_words)
    out = []
    for entry in data:
        prompt = entry["question"].strip().splitlines()[-1] + "\n"  # "Reverse this list of words: a, b, c"
        assert data.score_answer(entry["answer"], entry) == 1.0
        out.append({"prompt": prompt, "completion": entry["answer"], "answer": entry["answer"]})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-words", type=int, default=3)
    parser.add_argument("--max-words", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "trl_irl" / "data" / "word_reversal.jsonl"))
    args = parser.parse_args()
    text = "".join(json.dumps(r) + "\n" for r in rows(args.size, args.seed, args.min_words, args.max_words))
    Path(args.out).write_text(text)
    print(args.out)


if __name__ == "__main__":
    main()
