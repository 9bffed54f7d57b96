"""Token-level vs sequence-level credit: updates to reach a target success rate on the default task.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/credit.py --quick --out benchmarks/results/credit_quick.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/credit.py --out benchmarks/results/credit.json   # full

For each seed: BC and reward pretraining once (Bradley-Terry for sequence / redistribution / attention, AIRL for
implicit / airl; BT with the prefix loss for redistribution_prefix), then every (algo, credit) pair trains from the
same BC policy and a fresh copy of the same pretrained reward model, learning online. Every ``--eval-every`` updates
the policy samples one completion per held-out prompt (``--n-eval`` of them, temperature 1) and the success rate is
recorded; ``updates_to_target`` is the first update at which it reaches the seed's BC success + ``--target-gain``
(or an absolute ``--target``; ``null`` if never within ``--steps``). ``sec_per_update`` is training time only
(evaluation excluded). Medians over seeds. Writes JSON ``{"rows": [...]}``, a table, and a plot next to the JSON.
Goal: token credit reaches the target in <= 1/2 the updates of sequence-level GRPO at <= 1.10x its
time per update.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trl_irl.evaluation import sample_completions  # noqa: E402
from trl_irl.plan import RunPlan  # noqa: E402
from trl_irl.stages.context import Context, open_context  # noqa: E402
from trl_irl.stages.training import behaviour_cloning, build_policy_trainer, reward_pretraining  # noqa: E402

ALGOS = ["grpo", "rloo", "rloo_token", "remax", "reinforce_pp", "ppo"]
CREDITS = ["sequence", "redistribution", "redistribution_prefix", "attention", "implicit", "airl"]
# benchmark arm -> (credit, reward model, its overrides): redistribution_prefix is redistribution on a BT model that
# also learns the score of every prefix pair (reward.prefix_weight), so the prefix scores it reads are trained
BT, BT_PREFIX, AIRL = (
    ("bt", ["reward=bt"]),
    ("bt_prefix", ["reward=bt", "reward.prefix_weight=1.0"]),
    ("airl", ["reward=airl"]),
)
ARM = {
    "sequence": ("sequence", *BT),
    "redistribution": ("redistribution", *BT),
    "redistribution_prefix": ("redistribution", *BT_PREFIX),
    "attention": ("attention", *BT),
    "implicit": ("implicit", *AIRL),
    "airl": ("airl", *AIRL),
}


class SuccessTracker(TrainerCallback):
    """Success rate on the held-out prompts every ``every`` updates; time spent evaluating is kept apart."""

    def __init__(self, pipeline: Context, every: int, n_eval: int):
        self.p, self.every, self.n_eval = pipeline, every, n_eval
        self.curve: list[tuple[int, float]] = []
        self.eval_seconds = 0.0

    def measure(self, model, step: int):
        start, rng = time.perf_counter(), torch.get_rng_state()
        was_training = model.training
        prompts = [d["prompt"] for d in self.p.data.heldout[: self.n_eval]]
        samples = sample_completions(
            model, self.p.tokenizer, prompts, self.p.plan.task.horizon, 256, seed=7, desc="eval"
        )
        model.train(was_training)
        torch.set_rng_state(rng)  # evaluation must not change the training run's randomness
        rate = sum(self.p.plan.task.is_success(p, s) for p, s in zip(prompts, samples)) / len(prompts)
        self.curve.append((step, rate))
        self.eval_seconds += time.perf_counter() - start

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self.measure(model, state.global_step)


def compose_cfg(overrides: list[str], out: Path) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[*overrides, f"output_dir={out}", "resume=true"])
    return OmegaConf.to_container(cfg, resolve=True)


def run_arm(algo: str, arm: str, seed: int, args, out: Path) -> dict:
    credit, reward_name, reward = ARM[arm]
    cfg = compose_cfg(
        [
            f"algo={algo}",
            f"credit={credit}",
            *reward,
            f"seed={seed}",
            f"task.num_heldout={args.n_eval}",
            f"algo.max_steps={args.steps}",
            f"algo.learning_rate={args.learning_rate}",
            "algo.save_steps=100000",
            *args.override,
        ],
        out / f"seed{seed}_{reward_name}",
    )  # BC and reward pretraining shared by arms with this reward
    p = open_context(RunPlan(cfg))
    bc = behaviour_cloning(p)  # reused from disk after the first arm of this seed (resume=true)
    # likewise: each arm starts from a fresh copy of the same pretrained reward model
    reward = reward_pretraining(p, bc)
    trainer = build_policy_trainer(
        p,
        p.plan.algo,
        bc,
        reward,
        output_dir=str(out / "runs" / f"{algo}_{credit}_{seed}"),
        save_strategy="no",
        logging_steps=max(args.steps, 1),
        disable_tqdm=True,
    )
    tracker = SuccessTracker(p, args.eval_every, args.n_eval)
    tracker.measure(trainer.model, 0)
    trainer.add_callback(tracker)
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start - tracker.eval_seconds
    target = args.target if args.target is not None else tracker.curve[0][1] + args.target_gain
    reached = next((step for step, rate in tracker.curve if rate >= target - 1e-9), None)
    return {
        "updates_to_target": reached,
        "target": round(target, 4),
        "sec_per_update": train_seconds / args.steps,
        "final_success_rate": tracker.curve[-1][1],
        "initial_success_rate": tracker.curve[0][1],
        "curve": tracker.curve,
    }


def median_or_none(values):
    """Median over seeds; a seed that never reached the target counts as +inf (so null if most never did)."""
    finite = [v if v is not None else float("inf") for v in values]
    m = statistics.median(finite)
    return None if m == float("inf") else m


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 60 updates, every algorithm x credit (<10 min)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="policy updates per arm")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument(
        "--n-eval", type=int, default=1024, help="held-out prompts (task.num_heldout) for the success rate"
    )
    parser.add_argument(
        "--target-gain",
        type=float,
        default=0.1,
        help="target = this seed's initial (BC) success rate + gain: seeds start at different levels",
    )
    parser.add_argument("--target", type=float, default=None, help="an absolute success-rate target instead")
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="policy learning rate of every arm")
    parser.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS)
    parser.add_argument("--credits", nargs="+", default=CREDITS, choices=CREDITS)
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every arm")
    parser.add_argument("--work", default="/tmp/trl_irl_credit_bench", help="scratch folder for models")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "credit.json"))
    args = parser.parse_args()
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.steps = args.steps or (60 if args.quick else 150)
    torch.set_num_threads(1)
    work = Path(args.work)

    rows = []
    for algo in args.algos:
        for credit in args.credits:
            if algo == "rloo" and credit != "sequence":
                continue  # TRL's RLOO is sequence-level only; rloo_token carries its token-level rows
            runs = []
            for seed in args.seeds:
                result = run_arm(algo, credit, seed, args, work)
                runs.append(result)
                print(
                    f"{algo:>12} {credit:>14} seed {seed}: to target {result['updates_to_target']}, "
                    f"{result['sec_per_update']:.3f} s/update, success {result['initial_success_rate']:.3f} -> "
                    f"{result['final_success_rate']:.3f}",
                    flush=True,
                )
            rows.append(
                {
                    "algo": algo,
                    "credit": credit,
                    "updates_to_target": median_or_none([r["updates_to_target"] for r in runs]),
                    "sec_per_update": round(statistics.median(r["sec_per_update"] for r in runs), 4),
                    "final_success_rate": round(statistics.median(r["final_success_rate"] for r in runs), 4),
                    "seeds": args.seeds,
                    "per_seed": runs,
                }
            )
    base = next((r for r in rows if r["algo"] == "grpo" and r["credit"] == "sequence"), None)
    for r in rows:
        if base:
            r["time_ratio_vs_grpo_sequence"] = round(r["sec_per_update"] / base["sec_per_update"], 3)
            if base["updates_to_target"] and r["updates_to_target"]:
                r["updates_ratio_vs_grpo_sequence"] = round(r["updates_to_target"] / base["updates_to_target"], 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "target": args.target,
        "target_gain": args.target_gain,
        "steps": args.steps,
        "learning_rate": args.learning_rate,
        "eval_every": args.eval_every,
        "n_eval": args.n_eval,
        "overrides": args.override,
        "threads": 1,
        "torch": torch.__version__,
    }
    out.write_text(json.dumps({"rows": rows, "settings": meta}, indent=2))
    report(rows, out.with_suffix(".png"), f"{args.target}" if args.target is not None else f"BC + {args.target_gain}")
    print(out)


def report(rows, png: Path, target: str):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"updates to success rate {target} (median over seeds)")
    for col in ("algo", "credit", "updates_to_target", "vs grpo/seq", "sec/update", "time vs grpo/seq", "final"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["algo"],
            r["credit"],
            str(r["updates_to_target"]),
            str(r.get("updates_ratio_vs_grpo_sequence", "")),
            f"{r['sec_per_update']:.3f}",
            str(r.get("time_ratio_vs_grpo_sequence", "")),
            f"{r['final_success_rate']:.3f}",
        )
    Console().print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for r in rows:
        steps = [s for s, _ in r["per_seed"][0]["curve"]]
        rates = [statistics.median(run["curve"][i][1] for run in r["per_seed"]) for i in range(len(steps))]
        ax.plot(steps, rates, label=f"{r['algo']}/{r['credit']}", linestyle="-" if r["credit"] == "sequence" else "--")
    ax.set_xlabel("policy updates")
    ax.set_ylabel("success rate (median over seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main()
