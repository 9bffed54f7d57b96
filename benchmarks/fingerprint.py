"""Trains each algorithm 3 steps on the toy task (online BT / GAIL / AIRL reward, sequence and token credit) and writes
a hash of every trained tensor (policy, reward model, critic) per run: run it at two commits and diff the files to
show a refactor changed no number.

    OMP_NUM_THREADS=1 python benchmarks/fingerprint.py --out benchmarks/results/fingerprint.txt
"""

import argparse
import hashlib
import os
import tempfile

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
import torch

torch.set_num_threads(1)
from datasets import Dataset

from trl_irl import ALGORITHMS
from trl_irl.models import build_char_tokenizer, build_tiny_causal_lm, load_reward_model, save_model
from trl_irl.tasks import AutomatonTask

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="benchmarks/results/fingerprint.txt")
out = parser.parse_args().out
task = AutomatonTask(n_states=4, n_tokens=6, n_allowed=3, horizon=6, seed=3)
tok = build_char_tokenizer(task.alphabet)
tmp = tempfile.mkdtemp()
path = save_model(
    build_tiny_causal_lm(
        tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=32, seed=0
    ),
    tok,
    tmp + "/p",
)
demos = task.sample_demonstrations(64, seed=1)
ds = Dataset.from_list([{"prompt": d["prompt"], "demonstration": d["completion"]} for d in demos])


def digest(*modules):
    h = hashlib.sha256()
    for m in modules:
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().numpy().tobytes())
    return h.hexdigest()[:16]


runs = [
    ("grpo", "sequence", "bt"),
    ("grpo", "redistribution", "bt"),
    ("ppo", "sequence", "bt"),
    ("ppo", "airl", "airl"),
    ("remax", "sequence", "bt"),
    ("remax", "redistribution", "bt"),
    ("rloo_token", "implicit", "airl"),
    ("reinforce_pp", "sequence", "gail"),
    ("rloo", "sequence", "bt"),
]
lines = []
for algo, credit, objective in runs:
    cfg, cls = ALGORITHMS[algo].config_cls, ALGORITHMS[algo].trainer_cls
    kw = dict(
        output_dir=f"{tmp}/{algo}{credit}",
        per_device_train_batch_size=16,
        num_generations=4,
        max_completion_length=6,
        max_steps=3,
        learning_rate=3e-3,
        beta=0.05 if credit == "implicit" else 0.0,
        use_cpu=True,
        bf16=False,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
        reward_batch_size=8,
        objective=objective,
    )
    if algo != "rloo":
        kw["credit"] = credit
    kind = "lm" if objective == "airl" else "classifier"
    tr = cls(
        model=path, reward_model=load_reward_model(path, kind), args=cfg(**kw), train_dataset=ds, processing_class=tok
    )
    tr.train()
    mods = [tr.model, tr.reward_updater.model] + ([tr.critic] if hasattr(tr, "critic") else [])
    lines.append(f"{algo} {credit} {objective} {digest(*mods)}")
    print(lines[-1], flush=True)
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
print(out)
