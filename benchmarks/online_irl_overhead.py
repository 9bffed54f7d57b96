"""Seconds per step: OnlineIRLTrainer (reward model learning every generation batch) vs TRL's GRPOTrainer with the
same reward model frozen; same policy, batch and completion length. Rounds alternate the two so drift hits both.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/online_irl_overhead.py [--rounds 5] [--steps 20] [--out FILE]

Writes ``--out`` (default benchmarks/results/online_irl_overhead.json). Goal: median ratio <= 1.25. Quickest:
``--rounds 1 --steps 2 --batch 16``.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from datasets import Dataset  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from trl_irl import OnlineIRLConfig, OnlineIRLTrainer, make_objective  # noqa: E402
from trl_irl.models import build_char_tokenizer, build_tiny_causal_lm, load_reward_model, save_model  # noqa: E402
from trl_irl.tasks import AutomatonTask  # noqa: E402

hf_logging.set_verbosity_error()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "online_irl_overhead.json"))
    opts = parser.parse_args()

    task = AutomatonTask(horizon=24, transitions="token")
    tokenizer = build_char_tokenizer(task.alphabet)
    workdir = Path(tempfile.mkdtemp())
    policy = save_model(build_tiny_causal_lm(tokenizer, 64, 2, 4, 128, 64, seed=0), tokenizer, workdir / "policy")
    demos = task.sample_demonstrations(512, seed=0)
    dataset = Dataset.from_list([{"prompt": d["prompt"], "demonstration": d["completion"]} for d in demos])
    common = dict(per_device_train_batch_size=opts.batch, num_generations=8, max_completion_length=task.horizon,
                  max_steps=opts.steps, learning_rate=1e-4, beta=0.05, use_cpu=True, bf16=False, report_to="none",
                  save_strategy="no", disable_tqdm=True, logging_steps=10**6, seed=0)
    objective = make_objective("bt")

    def grpo():
        frozen = load_reward_model(policy, "classifier").eval().requires_grad_(False)

        def frozen_reward(prompts, completions, **_):
            return objective.rewards(frozen, tokenizer, prompts, completions).tolist()

        return GRPOTrainer(model=policy, reward_funcs=[frozen_reward], train_dataset=dataset,
                           processing_class=tokenizer, args=GRPOConfig(output_dir=str(workdir / "grpo"), **common))

    def online_irl(update_steps):
        def build():
            return OnlineIRLTrainer(model=policy, reward_model=load_reward_model(policy, "classifier"),
                                    train_dataset=dataset, processing_class=tokenizer,
                                    args=OnlineIRLConfig(output_dir=str(workdir / "irl"), reward_update_steps=update_steps,
                                                         **common))
        return build

    arms = {"grpo_frozen_reward": grpo, "online_irl": online_irl(2), "online_irl_1_update_step": online_irl(1)}
    times = {name: [] for name in arms}
    for _ in range(opts.rounds):
        for name, build in arms.items():
            trainer = build()
            start = time.perf_counter()
            trainer.train()
            times[name].append((time.perf_counter() - start) / opts.steps)
    base = times["grpo_frozen_reward"]
    result = {
        "seconds_per_step": {k: statistics.median(v) for k, v in times.items()},
        "ratio_median_of_rounds": {k: statistics.median([b / a for a, b in zip(base, v)])
                                   for k, v in times.items() if k != "grpo_frozen_reward"},
        "per_round": times,
        "setup": {"rounds": opts.rounds, "steps": opts.steps, "batch": opts.batch, "num_generations": 8,
                  "completion_length": task.horizon, "reward_update": "AdamW steps (2 by default, 1 in the second arm) of 32 pairs per generation batch",
                  "model": "Llama 2x64, char vocab", "threads": 1, "torch": torch.__version__},
    }
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("seconds_per_step", "ratio_median_of_rounds")}))
    print(out)


if __name__ == "__main__":
    main()
