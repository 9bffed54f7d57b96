"""Per-arm evaluation on the held-out rows of any task, the results table and the plot.

Every arm is scored on ``eval.num_samples`` samples per held-out prompt (temperature 1, the distribution it was
trained to match; one by default):

    success_rate         the task's verifier on the samples (tasks without a verifier: absent)
    pass@k               with several samples a prompt: the chance one of k is right (k = 2, 4, ... up to them)
    success_greedy       the verifier on the greedy completion (temperature 0)
    demo_nll_per_token   -log pi(demonstration) per token (EOS included): how well the arm still imitates
    kl_to_bc             exact per-state KL(pi || BC), averaged over the states the samples visit
    reward_accuracy      the online-IRL reward model ranks the held-out demonstration above this arm's sample,
                         over the pairs that are not ties; reward_ties: the fraction of ties (a sample identical to
                         its demonstration, or equal rewards). Absent when no reward model was trained
    mean_length          generated tokens per sample (EOS excluded)
    distinct_2           distinct token bigrams / all token bigrams over the samples (1: no repetition)
    (task metrics)       what only this task can compute, e.g. the automaton's exact expert log-probabilities

``gap_closed[arm] = (success(arm) - success(bc)) / (success(oracle) - success(bc))``: the share of the BC-to-RL-ceiling
gap an arm closes. The ``bc@T*`` arm is BC sampled at the temperature of ``eval.temperatures`` that does best on the
validation rows (chosen there, never on held-out rows): RL sharpens a policy, and a colder BC sharpens it for free, so
an arm that beats ``bc`` but not ``bc@T*`` has not shown that it learned more than a temperature.

``reward_diagnostics`` (``rerank``; ``stages/evaluate.reward_diagnostics``): does the learned reward know a good
completion from a bad one? BC samples ``eval.rerank_samples`` completions per held-out prompt; the reward as reward
pretraining left it and as the online-IRL arm left it picks one: best-of-n success against a random pick's, with a
paired interval, and the reward's AUC against the verifier.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .precision import cpu_autocast
from .rewards.objectives import RewardObjective, completion_logps, encode, pair_accuracy
from .statistics import DRAWS, compare_arms


@torch.no_grad()
def sample_completions(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    desc: str = "sampling",
    with_ids: bool = False,
    bf16: bool = False,
    temperature: float = 1.0,
):
    """One completion per prompt at ``temperature`` (1: the policy's own distribution; 0: greedy) with no truncation
    of the distribution (top-k/top-p off). ``with_ids``: also the generated token ids of each (EOS and padding
    removed); ``bf16``: sampled under bf16 autocast on CPU (``precision.py``; what is scored stays fp32)."""
    torch.manual_seed(seed)
    model.eval()
    device = next(model.parameters()).device
    texts, ids_out = [], []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False, disable=None):  # no bar when piped
        enc = tokenizer(
            prompts[i : i + batch_size],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        ).to(device)
        decoding = (
            dict(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
            if temperature > 0
            else dict(do_sample=False, temperature=None, top_k=None, top_p=None)
        )
        with cpu_autocast(bf16, device):
            ids = model.generate(**enc, **decoding, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        generated = ids[:, enc["input_ids"].shape[1] :]
        texts += tokenizer.batch_decode(generated, skip_special_tokens=True)
        for row in generated.tolist():  # up to the first EOS; padding (a pad token that is not EOS) dropped
            row = row[: row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
            ids_out.append([t for t in row if t != tokenizer.pad_token_id])
    return (texts, ids_out) if with_ids else texts


def sample_and_score(
    model,
    tokenizer,
    verifier,
    rows: list[dict],
    n: int,
    *,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    desc: str,
    bf16: bool = False,
    temperature: float = 1.0,
    with_ids: bool = False,
):
    """``n`` completions of each row's prompt (``sample_completions``), each prompt's side by side, and the
    verifier's score of each as a (rows, n) array (None without a verifier). Returns (prompts, samples, scores),
    ``prompts`` repeated as the samples are; with ``with_ids`` also the samples' token ids, last."""
    prompts = [r["prompt"] for r in rows for _ in range(n)]
    out = sample_completions(
        model,
        tokenizer,
        prompts,
        max_new_tokens,
        batch_size,
        seed,
        desc=desc,
        with_ids=with_ids,
        bf16=bf16,
        temperature=temperature,
    )
    samples = out[0] if with_ids else out
    scores = (
        None
        if verifier is None
        else np.array(
            [verifier(p, s, row) for p, s, row in zip(prompts, samples, [r for r in rows for _ in range(n)])],
            dtype=float,
        ).reshape(len(rows), n)
    )
    return (prompts, samples, scores, out[1]) if with_ids else (prompts, samples, scores)


@torch.no_grad()
def kl_to_reference(model, reference, tokenizer, prompts: list[str], completions: list[str], batch_size: int) -> float:
    """Exact KL(pi(.|s) || ref(.|s)) summed over the vocabulary, averaged over the states the samples visit (0 without
    a forward pass when the policy is the reference: BC's own row)."""
    if model is reference:
        return 0.0
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(prompts), batch_size):
        batch = {
            k: v.to(device)
            for k, v in encode(tokenizer, prompts[i : i + batch_size], completions[i : i + batch_size]).items()
        }
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        mask = batch["completion_mask"][:, 1:].bool()  # the states before each completion token
        logp = torch.log_softmax(model(**kwargs).logits[:, :-1][mask].float(), -1)  # (N, V)
        logq = torch.log_softmax(reference(**kwargs).logits[:, :-1][mask].float(), -1)
        total += (logp.exp() * (logp - logq)).sum().item()
        count += mask.sum().item()
    return total / max(count, 1.0)


@torch.no_grad()
def demonstration_nlls(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int):
    """Per demonstration: (-sum log pi(y_t | x, y_<t) over its tokens and its EOS, that number of tokens), as arrays."""
    device = next(model.parameters()).device
    sums, counts = [], []
    for i in range(0, len(prompts), batch_size):
        batch = {
            k: v.to(device)
            for k, v in encode(tokenizer, prompts[i : i + batch_size], completions[i : i + batch_size]).items()
        }
        sums += (-completion_logps(model, batch).sum(-1)).tolist()
        counts += batch["completion_mask"].sum(-1).tolist()
    return np.array(sums, dtype=float), np.array(counts, dtype=float)


def distinct_2(token_ids: list[list[int]]) -> float | None:
    """Distinct bigrams over all bigrams of the samples (None when no sample has two tokens)."""
    bigrams = [tuple(ids[j : j + 2]) for ids in token_ids for j in range(len(ids) - 1)]
    return len(set(bigrams)) / len(bigrams) if bigrams else None


def samples_file(arm: str) -> str:
    """The name of an arm's ``samples_<arm>.jsonl`` (``bc@T*``'s: ``samples_bc_best_T.jsonl``, no glob characters)."""
    return f"samples_{arm.replace('@T*', '_best_T')}.jsonl"


def pass_at_k(n: int, c: int, k: int) -> float:
    """The chance that at least one of k samples drawn without replacement from n, c of them right, is right
    (Chen et al. 2021's unbiased estimator: 1 - C(n - c, k) / C(n, k))."""
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def evaluate_arm(
    policy,
    tokenizer,
    task,
    heldout: list[dict],
    *,
    max_new_tokens: int,
    reference,
    reward_objective: RewardObjective | None,
    reward_model,
    batch_size: int,
    seed: int,
    name: str,
    bf16: bool = False,
    demonstration_rewards: torch.Tensor | None = None,
    num_samples: int = 1,
    temperature: float = 1.0,
    greedy: bool = True,
) -> tuple[dict, list[dict]]:
    """The metrics of one arm (module docstring) and a record per held-out prompt, for a person to read and for the
    intervals (``intervals``): ``{prompt, sample, demonstration, score}`` (``score``: the verifier's mean over the
    prompt's samples, None without one), the reward model's ``reward`` of the sample and ``demonstration_reward``
    where a reward model was trained, ``demonstration_nll`` (-log pi of the demonstration, summed) over
    ``demonstration_tokens``, ``greedy_score`` (the greedy completion's), and with ``num_samples`` > 1 ``samples``
    and ``scores``. ``bf16``: samples and rewards under bf16 autocast on CPU (as in training); log-probabilities and
    KL stay fp32. ``demonstration_rewards``: the reward of each held-out demonstration where it is the same for every
    arm (a reward that does not read the policy), scored once by the caller (None: scored here).
    ``num_samples`` completions per prompt at ``temperature`` (``pass@k`` for k = 2, 4, ... up to it); ``greedy``:
    also ``success_greedy``, the greedy completion's success."""
    prompts, demos = [d["prompt"] for d in heldout], [d["completion"] for d in heldout]
    n = num_samples
    common = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, bf16=bf16)
    every, samples, scores, sample_ids = sample_and_score(
        policy,
        tokenizer,
        task.verifier,
        heldout,
        n,
        desc=f"eval {name}",
        temperature=temperature,
        with_ids=True,
        **common,
    )
    metrics = {}
    greedy_scores = None
    if scores is not None:
        metrics["success_rate"] = float(scores.mean())
        for k in [2**i for i in range(1, n.bit_length()) if 2**i <= n]:
            metrics[f"pass@{k}"] = float(np.mean([pass_at_k(n, int((row > 0.5).sum()), k) for row in scores]))
        if greedy:
            greedy_scores = sample_and_score(
                policy, tokenizer, task.verifier, heldout, 1, desc=f"greedy {name}", temperature=0.0, **common
            )[2][:, 0].tolist()
            metrics["success_greedy"] = float(np.mean(greedy_scores))
    nll, tokens = demonstration_nlls(policy, tokenizer, prompts, demos, batch_size)
    metrics["demo_nll_per_token"] = float(nll.sum() / max(tokens.sum(), 1))
    metrics["kl_to_bc"] = kl_to_reference(policy, reference, tokenizer, every, samples, batch_size)
    r_demo = r_sample = None
    if reward_model is not None:
        policy_for_reward = policy if reward_objective.needs_policy else None
        with cpu_autocast(bf16):  # the reward is scored as it was trained and used
            if demonstration_rewards is None:
                demonstration_rewards = reward_objective.rewards(
                    reward_model, tokenizer, prompts, demos, policy_for_reward, batch_size
                )
            r_sample = reward_objective.rewards(reward_model, tokenizer, every, samples, policy_for_reward, batch_size)
        r_demo = demonstration_rewards
        accuracy, ties = pair_accuracy(
            r_demo.repeat_interleave(n),
            r_sample,
            [s.strip() == d.strip() for s, d in zip(samples, [d for d in demos for _ in range(n)])],
        )
        metrics |= {"reward_accuracy": accuracy, "reward_ties": ties}
        r_demo, r_sample = r_demo.tolist(), r_sample.tolist()
    metrics["mean_length"] = float(np.mean([len(ids) for ids in sample_ids]))
    metrics["distinct_2"] = distinct_2(sample_ids)
    metrics |= task.metrics(every, samples)
    metrics["num_samples"] = len(samples)
    metrics["temperature"] = float(temperature)
    if n > 1:
        metrics["samples_per_prompt"] = n
    records = [
        {
            "prompt": p,
            "sample": samples[i * n],
            "demonstration": d,
            "score": None if scores is None else float(scores[i].mean()),
            **({} if r_sample is None else {"reward": r_sample[i * n], "demonstration_reward": r_demo[i]}),
            "demonstration_nll": float(nll[i]),
            "demonstration_tokens": int(tokens[i]),
            **({} if greedy_scores is None else {"greedy_score": greedy_scores[i]}),
            **(
                {}
                if n == 1
                else {"samples": samples[i * n : (i + 1) * n], "scores": None if scores is None else scores[i].tolist()}
            ),
        }
        for i, (p, d) in enumerate(zip(prompts, demos))
    ]
    return metrics, records


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """The probability that a positive's score beats a negative's, a tie counting one half (the Mann-Whitney form
    of the ROC AUC); None without both classes."""
    scores, labels = np.asarray(scores, dtype=float).ravel(), np.asarray(labels, dtype=bool).ravel()
    negatives = np.sort(scores[~labels])
    positives = scores[labels]
    if len(negatives) == 0 or len(positives) == 0:
        return None
    below = np.searchsorted(negatives, positives, side="left")
    tied = np.searchsorted(negatives, positives, side="right") - below
    return float((below + 0.5 * tied).sum() / (len(positives) * len(negatives)))


def rerank(scores: np.ndarray, rewards: np.ndarray, sizes=(1, 4, 8), seed: int = 0) -> dict:
    """How well a learned reward tells a good completion from a bad one among a policy's samples.

    Args:
        scores: (prompts, N) the verifier's score of each sample (in [0, 1]; over 0.5 counts as correct for AUC).
        rewards: (prompts, N) the reward of each sample.
        sizes: the best-of-n sizes, those up to N (N itself is added).

    Returns:
        ``{"best_of": {n: {"reward_pick", "random_pick", "lift": {"value", "ci95"}}}, "per_prompt": {"reward_pick",
        "random_pick"}, "auc", "samples_per_prompt", "prompts"}``. ``reward_pick``: the success of the sample the reward
        ranks first among each prompt's first n (a tie for first: the mean of the tied, a random pick's expectation);
        ``random_pick``: the mean of the first n (a uniform pick's expectation); ``lift``: their difference with its
        paired bootstrap 95% interval over prompts (``statistics.compare_arms``). ``per_prompt``: both picks per prompt
        at n = N, so that runs over seeds can be pooled (``benchmarks/real_lm.py``). ``auc``: the reward against the
        verifier over all samples pooled.
    """

    scores, rewards = np.asarray(scores, dtype=float), np.asarray(rewards, dtype=float)
    n_max = scores.shape[1]
    out = {"samples_per_prompt": n_max, "prompts": scores.shape[0], "best_of": {}}
    for n in sorted({k for k in sizes if k <= n_max} | {n_max}):
        s, r = scores[:, :n], rewards[:, :n]
        first = r == r.max(axis=1, keepdims=True)
        picked = (s * first).sum(axis=1) / first.sum(axis=1)
        random = s.mean(axis=1)
        stats = compare_arms({"reward_pick": picked, "random_pick": random}, reference="random_pick", seed=seed)
        out["best_of"][str(n)] = {
            "reward_pick": float(picked.mean()),
            "random_pick": float(random.mean()),
            "lift": stats["minus_random_pick"]["reward_pick"],
        }
    out["per_prompt"] = {"reward_pick": picked.tolist(), "random_pick": random.tolist()}  # n = N, the loop's last
    out["auc"] = auc(rewards, scores > 0.5)
    return out


def intervals(records: dict[str, list[dict]], seed: int = 0) -> dict:
    """How sure the table is (``statistics.compare_arms``, a paired bootstrap over the held-out prompts): per metric
    with a value per prompt (success, and the demonstrations' NLL per token), each arm's 95% interval, its difference
    from BC and ``gap_closed``, each with its interval."""

    arms = list(records)
    out = {
        "method": f"95% paired bootstrap over the {len(records[arms[0]])} held-out prompts ({DRAWS} draws, seed "
        f"{seed}); null: undefined (a value), unbounded (an interval)"
    }
    if all(r["score"] is not None for arm in arms for r in records[arm]):
        out["success_rate"] = compare_arms({a: [r["score"] for r in records[a]] for a in arms}, seed=seed)
    if all("greedy_score" in r for arm in arms for r in records[arm]):
        out["success_greedy"] = compare_arms({a: [r["greedy_score"] for r in records[a]] for a in arms}, seed=seed)
    out["demo_nll_per_token"] = compare_arms(
        {a: [r["demonstration_nll"] for r in records[a]] for a in arms},
        {a: [r["demonstration_tokens"] for r in records[a]] for a in arms},
        seed=seed,
    )
    return out


def demonstration_reference(task, heldout: list[dict], tokenizer) -> dict:
    """The held-out demonstrations' own figures (the column the arms are read against), plus the task's."""
    prompts, demos = [d["prompt"] for d in heldout], [d["completion"] for d in heldout]
    ids = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in demos]
    out = {}
    if task.verifier is not None:
        out["success_rate"] = float(np.mean([task.verifier(p, d, row) for p, d, row in zip(prompts, demos, heldout)]))
    out |= {"mean_length": float(np.mean([len(i) for i in ids])), "distinct_2": distinct_2(ids)}
    return out | task.reference()


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _with_interval(entry: dict, signed: bool = False) -> str:
    """``value [low, high]`` (``[-]``: unbounded), from ``{"value", "ci95"}``."""
    value, ci = entry["value"], entry["ci95"]
    if value is None:
        return "-"
    form = "{:+.3f}" if signed else "{:.3f}"
    return f"{form.format(value)} " + (f"[{form.format(ci[0])}, {form.format(ci[1])}]" if ci else "[-]")


def title(cfg: dict | None) -> str:
    """The table's title: what ran (the algorithm, its credit and the reward objective)."""
    if not cfg or "algo" not in cfg:
        return "BC vs online IRL"
    return (
        f"BC vs online IRL: algo={cfg['algo']['name']}, credit={cfg['credit']['name']}, "
        f"reward={cfg['reward']['objective']}"
    )


def print_table(metrics: dict, console=None):
    """Metrics as rows, arms as columns (fits any terminal width), the held-out demonstrations' own figures beside;
    then each arm's 95% interval, its difference from BC and ``gap_closed`` with theirs, and how to read them."""

    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 200)  # piped: whole lines
    arms = metrics["arms"]
    reference = metrics.get("reference", {})
    table = Table(title=title(metrics.get("config")))
    table.add_column("metric")
    for arm in arms:
        table.add_column(arm, justify="right")
    if reference:
        table.add_column("demos", justify="right")

    def row(label: str, cells: list[str], demos: str = ""):
        table.add_row(label, *cells, *([demos] if reference else []))

    for key in dict.fromkeys(k for values in arms.values() for k, v in values.items() if not isinstance(v, dict)):
        row(key, [_cell(arms[a].get(key)) for a in arms], _cell(reference[key]) if key in reference else "")
    spans = metrics.get("intervals", {})
    for key, label in (
        ("success_rate", "success_rate"),
        ("success_greedy", "success_greedy"),
        ("demo_nll_per_token", "demo_nll"),
    ):
        if key in spans:
            ci = spans[key]["ci95"]
            row(f"{label} 95%", [f"[{ci[a][0]:.3f}, {ci[a][1]:.3f}]" if ci.get(a) else "-" for a in arms])
            diffs = spans[key].get("minus_bc", {})
            if diffs:
                row(f"{label} - bc", [_with_interval(diffs[a], signed=True) if a in diffs else "" for a in arms])
    gaps = spans.get("success_rate", {}).get("gap_closed") or {
        a: {"value": v, "ci95": None} for a, v in metrics.get("gap_closed", {}).items()
    }
    if gaps:
        row("gap_closed", [_with_interval(gaps[a]) if a in gaps else "" for a in arms])
    console.print(table)
    for line in table_notes(metrics):
        console.print(line, style="dim", highlight=False, markup=False)  # "[low, high]" is not a style


def table_notes(metrics: dict) -> list[str]:
    """What the table cannot say by itself: where its intervals come from, and how ``gap_closed`` reads."""
    lines = []
    samples = [
        values.get("num_samples", 0) // values.get("samples_per_prompt", 1) for values in metrics["arms"].values()
    ]
    if metrics.get("intervals") and samples and samples[0]:
        lines.append(
            f"[low, high]: 95% paired bootstrap interval over the {samples[0]} held-out prompts; [-]: "
            "unbounded (where the oracle does not beat BC in over 2.5% of the draws)"
        )
    if metrics.get("gap_closed"):
        lines.append("gap_closed = (arm - bc) / (oracle - bc) on success; - where oracle <= bc")
    for name, found in metrics.get("reward_diagnostics", {}).items():
        n = found["samples_per_prompt"]
        best = found["best_of"][str(n)]
        lines.append(
            f"reward as {name} left it: picks among {n} BC samples a prompt succeed {best['reward_pick']:.3f} "
            f"vs a random pick's {best['random_pick']:.3f} (lift {_with_interval(best['lift'], signed=True)}); "
            f"AUC against the verifier {_cell(found['auc'])}"
        )
    return lines


def plot(metrics: dict, log_history: list[dict], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = metrics["arms"]
    reference = metrics.get("reference", {})
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    colors = ["tab:gray", "tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple"]
    for ax, key in zip(axes[:2], ["success_rate", "demo_nll_per_token"]):
        names = [a for a in arms if arms[a].get(key) is not None]
        ax.bar(names, [arms[a][key] for a in names], color=colors[: len(names)])
        ax.set_title(key)
        if key in reference:
            ax.axhline(reference[key], color="k", ls="--", label="demonstrations")
            ax.legend()
        if not names:
            ax.text(0.5, 0.5, "the task has no verifier", ha="center", transform=ax.transAxes)
    steps = [h["step"] for h in log_history if "irl/accuracy" in h]
    ax = axes[2]
    if steps:
        ax.plot(
            steps, [h["irl/accuracy"] for h in log_history if "irl/accuracy" in h], label="reward accuracy (buffer)"
        )
        ax.plot(steps, [h["irl/loss"] for h in log_history if "irl/accuracy" in h], label="reward loss")
        ax.set_xlabel("policy step")
        ax.legend()
    ax.set_title("online reward updates")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
