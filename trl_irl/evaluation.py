"""Per-arm evaluation on a known-expert task, the results table and the plot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .rewards.objectives import RewardObjective, encode


@torch.no_grad()
def sample_completions(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
                       seed: int, desc: str = "sampling") -> list[str]:
    """One completion per prompt at temperature 1 with no truncation of the distribution (top-k/top-p off)."""
    torch.manual_seed(seed)
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True, padding_side="left",
                        add_special_tokens=False).to(device)
        ids = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


@torch.no_grad()
def kl_to_reference(model, reference, tokenizer, prompts: list[str], completions: list[str], batch_size: int) -> float:
    """Exact KL(pi(.|s) || ref(.|s)) summed over the vocabulary, averaged over the states the samples visit."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(prompts), batch_size):
        batch = {k: v.to(device) for k, v in encode(tokenizer, prompts[i : i + batch_size],
                                                      completions[i : i + batch_size]).items()}
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        logp = torch.log_softmax(model(**kwargs).logits[:, :-1].float(), -1)
        logq = torch.log_softmax(reference(**kwargs).logits[:, :-1].float(), -1)
        kl = (logp.exp() * (logp - logq)).sum(-1)  # (B, L-1): KL at the state before each completion token
        mask = batch["completion_mask"][:, 1:].float()
        total += (kl * mask).sum().item()
        count += mask.sum().item()
    return total / max(count, 1.0)


def evaluate_arm(policy, tokenizer, task, heldout: list[dict], *, reference, reward_objective: RewardObjective,
                 reward_model, reward_tokenizer, batch_size: int, seed: int, name: str) -> dict[str, float]:
    """Metrics of one arm on one sample per held-out demonstration prompt.

    success_rate              fraction of samples whose ``horizon`` tokens are all valid
    expert_logprob_per_token  mean expert log p(x_t | prefix) over the samples' valid tokens (fidelity)
    valid_token_rate          fraction of sampled tokens that are valid (the rest follow a first error)
    kl_to_bc                  exact per-state KL(pi || BC) averaged over visited states
    reward_accuracy           reward model ranks the held-out demonstration above this arm's sample
    """
    prompts = [d["prompt"] for d in heldout]
    samples = sample_completions(policy, tokenizer, prompts, task.horizon, batch_size, seed, desc=f"eval {name}")
    token_lp = [task.token_logprobs(p, c) for p, c in zip(prompts, samples)]
    valid = np.concatenate([lp[np.isfinite(lp)] for lp in token_lp])
    n_tokens = sum(len(lp) for lp in token_lp)
    policy_for_reward = policy if reward_objective.needs_policy else None
    r_demo = reward_objective.rewards(reward_model, reward_tokenizer, prompts, [d["completion"] for d in heldout],
                                      policy_for_reward, batch_size)
    r_sample = reward_objective.rewards(reward_model, reward_tokenizer, prompts, samples, policy_for_reward, batch_size)
    return {
        "success_rate": float(np.mean([task.is_success(p, c) for p, c in zip(prompts, samples)])),
        "expert_logprob_per_token": float(valid.mean()) if valid.size else -math.inf,
        "valid_token_rate": float(valid.size / max(n_tokens, 1)),
        "mean_length": float(np.mean([len(task.split(c)) for c in samples])),
        "kl_to_bc": kl_to_reference(policy, reference, tokenizer, prompts, samples, batch_size),
        "reward_accuracy": float((r_demo > r_sample).float().mean()),
        "num_samples": len(samples),
    }


def print_table(metrics: dict, console=None):
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    arms = metrics["arms"]
    table = Table(title="BC vs online IRL")  # metrics as rows, arms as columns: fits any terminal width
    table.add_column("metric")
    for arm in arms:
        table.add_column(arm, justify="right")
    expert = metrics.get("reference", {})
    if expert:
        table.add_column("expert", justify="right")
    for key in next(iter(arms.values())):
        cells = [f"{arms[a][key]:.4g}" if isinstance(arms[a][key], float) else str(arms[a][key]) for a in arms]
        if expert:
            cells.append(f"{expert[key]:.4g}" if key in expert else "")
        table.add_row(key, *cells)
    console.print(table)


def plot(metrics: dict, log_history: list[dict], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = metrics["arms"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key in zip(axes[:2], ["success_rate", "expert_logprob_per_token"]):
        ax.bar(list(arms), [arms[a][key] for a in arms], color=["tab:gray", "tab:blue", "tab:green"][: len(arms)])
        ax.set_title(key)
        if key == "expert_logprob_per_token" and "expert_logprob_per_token" in metrics.get("reference", {}):
            ax.axhline(metrics["reference"]["expert_logprob_per_token"], color="k", ls="--", label="expert")
            ax.legend()
    steps = [h["step"] for h in log_history if "irl/accuracy" in h]
    ax = axes[2]
    if steps:
        ax.plot(steps, [h["irl/accuracy"] for h in log_history if "irl/accuracy" in h], label="reward accuracy (buffer)")
        ax.plot(steps, [h["irl/loss"] for h in log_history if "irl/accuracy" in h], label="reward loss")
        ax.set_xlabel("policy step")
        ax.legend()
    ax.set_title("online reward updates")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
