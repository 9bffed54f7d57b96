"""The compounding-error study (issue 6): how the cost of each arm grows with the horizon T.

For each setting and seed: one automaton, N expert demonstrations of length T_max (the longest horizon), one BC
policy, and every other arm trained from that BC policy at T_max. Each trained policy is then rolled out
``eval_rollouts`` times at T_max and scored on its prefixes of length T in ``horizons``. One policy scored at
every T is what the bounds speak of (Ross & Bagnell: a policy with per-step error eps costs up to T^2 eps);
training a new policy per T would change eps with the amount of data as well.

cost(T) is the errors that count, per rollout:
    recoverable       every invalid action:  E[#errors in the first T steps]
    non-recoverable   the cumulative hazard of the first error:  -log P(no error in the first T steps)
Both are exactly linear in T when every step has the same error rate, so the fitted exponent b of
cost ~ a T^b (least squares on log cost vs log T, seed means) is 1 for a constant per-token leak and above 1 when
the error rate grows along the rollout: compounding. (The failure rate 1 - success saturates at 1 and would bend
every exponent below 1.) Confidence intervals resample seeds (bootstrap, percentile).

A setting is ``task/errors/capacity/demos``:
    task      plain: the random automaton;  rare: plus a sticky sub-automaton entered through rare door tokens
    errors    nonrecoverable: the first invalid token ends the rollout;  recoverable: it is one error, the state stays
    capacity  realisable: a GRU large enough for the expert;  small: a GRU too small to track the state (misspecified)
    demos     small | large: the number of demonstrations
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..tasks import AutomatonTask
from . import arms as A
from .env import Automaton, GRUPolicy, metrics

ARMS = ("bc", "bc_loss_only", "online_irl_bt", "online_irl_airl", "oracle_rl", "dagger")
AXES = {"task": ("plain", "rare"), "errors": ("nonrecoverable", "recoverable"), "capacity": ("realisable", "small"),
        "demos": ("small", "large")}
GOAL_SETTING = "rare/nonrecoverable/small/small"  # the goal: non-recoverable, misspecified
METRICS = ("success_rate", "invalid_per_rollout", "expert_logprob_per_token", "errors_per_rollout", "cost")


@dataclass
class StudyConfig:
    """What the study runs; ``quick()`` and ``full()`` are the two presets, any field can be overridden."""

    settings: list[str] = field(default_factory=lambda: [GOAL_SETTING, "rare/recoverable/small/small"])
    """``task/errors/capacity/demos`` strings (see the module docstring)."""
    horizons: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    """Evaluation horizons; the arms train at the largest."""
    seeds: int = 2
    """Seeds 0..seeds-1: each draws its own automaton, demonstrations and training randomness."""
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    n_states: int = 16
    n_tokens: int = 16
    n_allowed: int = 4
    rare_states: int = 4
    """Sub-automaton size of the ``rare`` task."""
    rare_prob: float = 0.01
    """The expert's door probability per main state (``rare`` task)."""
    rare_exit_prob: float = 0.02
    """The expert's probability of leaving the sub-automaton per step: small = sticky (``rare`` task)."""
    start_states: int = 1
    """Rollouts start in this many states. With one, the first positions are the best-covered contexts; with every
    start state, position 0 has the fewest examples per context (N / 12) and BC's first-step leak (about 0.18 at
    N=200) dominates short horizons, which hides how the error rate evolves along the rollout."""
    hidden: dict = field(default_factory=lambda: {"realisable": 64, "small": 16})
    """GRU width per capacity."""
    demos: dict = field(default_factory=lambda: {"small": 200, "large": 1000})
    """Number of demonstrations per ``demos`` level."""
    heldout: int = 100
    """Held-out demonstrations: BC's early stopping, DAgger's refits and online IRL's reward gate."""
    eval_rollouts: int = 2000
    bc_learning_rate: float = 3e-3
    bc_patience: int = 10
    rl: dict = field(default_factory=lambda: {"iterations": 300, "learning_rate": 3e-3, "bc_weight": 0.5,
                                              "reward_steps": 1, "reward_learning_rate": 3e-3})
    """``arms.RLSettings`` fields for every RL arm (and DAgger's rounds). Chosen on seed 0 of the goal setting
    (T=64): policy lr 3e-3 lifts the oracle from 0.32 to 0.77 in the same time; online IRL's extra BC loss (0.5)
    kept Bradley-Terry from collapsing at that lr; one reward step at lr 3e-3 matched two at 1e-3 in 30% less time."""
    bootstrap: int = 2000

    @classmethod
    def quick(cls, **overrides) -> "StudyConfig":
        return replace(cls(), **overrides)

    @classmethod
    def full(cls, **overrides) -> "StudyConfig":
        """Horizons up to 128, 3 seeds, and one factor at a time changed from the goal setting."""
        settings = [GOAL_SETTING, "rare/recoverable/small/small", "plain/nonrecoverable/small/small",
                    "rare/nonrecoverable/realisable/small", "rare/nonrecoverable/small/large",
                    "plain/recoverable/realisable/small"]
        return replace(cls(), settings=settings, horizons=[8, 16, 32, 64, 128], seeds=3, **overrides)

    def check(self):
        """Every bad value names its field, before any training."""
        for name in self.settings:
            parts = name.split("/")
            if len(parts) != 4 or any(p not in choices for p, choices in zip(parts, AXES.values())):
                raise ValueError(f"compounding.settings: {name!r} is not task/errors/capacity/demos with "
                                 + ", ".join(f"{k} in {v}" for k, v in AXES.items()))
        if unknown := set(self.arms) - set(ARMS):
            raise ValueError(f"compounding.arms: unknown {sorted(unknown)}; choose from {ARMS}")
        if "bc" not in self.arms:
            raise ValueError("compounding.arms must include bc: every other arm starts from it")
        if not self.horizons or sorted(self.horizons) != list(self.horizons) or self.horizons[0] < 1:
            raise ValueError(f"compounding.horizons must be increasing positive integers, got {self.horizons}")
        if self.seeds < 1:
            raise ValueError("compounding.seeds must be >= 1")
        if unknown := set(self.rl) - {f.name for f in fields(A.RLSettings)}:
            raise ValueError(f"compounding.rl: unknown {sorted(unknown)}; fields of arms.RLSettings are "
                             f"{[f.name for f in fields(A.RLSettings)]}")
        for key, levels in (("hidden", AXES["capacity"]), ("demos", AXES["demos"])):
            if missing := set(levels) - set(getattr(self, key)):
                raise ValueError(f"compounding.{key} needs a value for {sorted(missing)}")
        self.task("rare/recoverable/small/small", 0)  # the task's own checks (rare_prob, ...)
        return self

    def task(self, setting: str, seed: int) -> AutomatonTask:
        kind, errors, _, _ = setting.split("/")
        rare = dict(rare_states=self.rare_states, rare_prob=self.rare_prob, rare_exit_prob=self.rare_exit_prob)
        return AutomatonTask(n_states=self.n_states, n_tokens=self.n_tokens, n_allowed=self.n_allowed,
                             horizon=max(self.horizons), seed=seed, transitions="random",
                             recoverable=errors == "recoverable", **(rare if kind == "rare" else {}))


def cost(m: dict, recoverable: bool, n_rollouts: int) -> float:
    """Errors that count per rollout: the error count (recoverable) or -log P(success), floored at 1/(2n)."""
    if recoverable:
        return m["errors_per_rollout"]
    return -math.log(max(m["success_rate"], 1.0 / (2 * n_rollouts)))


def fit_exponent(horizons, costs) -> float:
    """b of cost = a T^b: least squares on (log T, log cost)."""
    x, y = np.log(np.asarray(horizons, float)), np.log(np.maximum(np.asarray(costs, float), 1e-12))
    return float(np.polyfit(x, y, 1)[0])


def bootstrap_ci(per_seed: np.ndarray, statistic, n: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of ``statistic(rows)`` over resamples (with replacement) of the rows of ``per_seed``."""
    rng = np.random.default_rng(seed)
    values = [statistic(per_seed[rng.integers(len(per_seed), size=len(per_seed))]) for _ in range(n)]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def train_arms(cfg: StudyConfig, setting: str, seed: int, log=print) -> list[dict]:
    """One setting and seed: BC, then every other arm from it; per-seed rows of every metric at every horizon."""
    _, errors, capacity, demos = setting.split("/")
    task, horizon = cfg.task(setting, seed), max(cfg.horizons)
    env = Automaton(task, n_starts=cfg.start_states)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data, heldout = env.demonstrations(cfg.demos[demos], horizon, g), env.demonstrations(cfg.heldout, horizon, g)
    s = A.RLSettings(**cfg.rl)
    start = time.perf_counter()
    bc = A.behaviour_cloning(GRUPolicy(env.n_starts, env.n_actions, cfg.hidden[capacity]), data, heldout, g,
                             learning_rate=cfg.bc_learning_rate, patience=cfg.bc_patience)
    trainers = {"bc": lambda: bc,
                "bc_loss_only": lambda: A.online_irl(bc, env, data, heldout, horizon, "none", s, g),
                "online_irl_bt": lambda: A.online_irl(bc, env, data, heldout, horizon, "bt", s, g),
                "online_irl_airl": lambda: A.online_irl(bc, env, data, heldout, horizon, "airl", s, g),
                "oracle_rl": lambda: A.oracle_rl(bc, env, horizon, s, g),
                "dagger": lambda: A.dagger(bc, env, data, heldout, horizon, s, g)}
    rows, evaluation = [], torch.Generator().manual_seed(10_000 + seed)
    for arm in cfg.arms:
        if arm != "bc":
            start = time.perf_counter()
        policy = trainers[arm]()
        seconds = time.perf_counter() - start
        rollouts = policy.sample(env, cfg.eval_rollouts, horizon, evaluation)
        for h in cfg.horizons:
            m = metrics(rollouts.prefix(h), h)
            m["cost"] = cost(m, task.recoverable, cfg.eval_rollouts)
            rows.append({"setting": setting, "arm": arm, "seed": seed, "horizon": h, **m,
                         "train_seconds": round(seconds, 2)})
        log(f"{setting} seed {seed} {arm}: success@{horizon} {rows[-1]['success_rate']:.3f}, "
            f"cost {rows[-1]['cost']:.3f} ({seconds:.1f} s)")
    return rows


def summarise(cfg: StudyConfig, rows: list[dict]) -> dict:
    """Seed means with bootstrap CIs per (setting, arm, horizon); exponents per (setting, arm); the goals."""
    summary, exponents, gaps = [], {}, {}
    for setting in cfg.settings:
        exponents[setting] = {}
        for arm in cfg.arms:
            per_seed = {h: {r["seed"]: r for r in rows if (r["setting"], r["arm"], r["horizon"]) == (setting, arm, h)}
                        for h in cfg.horizons}
            seeds = sorted(per_seed[cfg.horizons[0]])
            for h in cfg.horizons:
                entry = {"setting": setting, "arm": arm, "horizon": h, "seeds": len(seeds)}
                for key in METRICS:
                    values = np.array([per_seed[h][s][key] for s in seeds])
                    entry[key] = float(values.mean())
                    entry[f"{key}_ci95"] = bootstrap_ci(values[:, None], lambda v: v.mean(), cfg.bootstrap)
                summary.append(entry)
            costs = np.array([[per_seed[h][s]["cost"] for h in cfg.horizons] for s in seeds])  # (seeds, horizons)
            exponents[setting][arm] = {
                "b": fit_exponent(cfg.horizons, costs.mean(0)),
                "ci95": bootstrap_ci(costs, lambda c: fit_exponent(cfg.horizons, c.mean(0)), cfg.bootstrap),
                "per_seed": [fit_exponent(cfg.horizons, c) for c in costs]}
        gaps[setting] = gap_closed(cfg, setting, summary)
    return {"summary": summary, "exponents": exponents, "gap_closed": gaps, "goals": goals(cfg, exponents, gaps)}


def gap_closed(cfg: StudyConfig, setting: str, summary: list[dict]) -> dict:
    """(success(arm) - success(bc)) / (success(oracle) - success(bc)) at the longest horizon, per arm."""
    at = {e["arm"]: e["success_rate"] for e in summary if e["setting"] == setting and e["horizon"] == max(cfg.horizons)}
    if "oracle_rl" not in at:
        return {}
    gap = at["oracle_rl"] - at["bc"]
    # None where the oracle does not beat BC: there is no gap to close
    return {arm: (at[arm] - at["bc"]) / gap if gap > 0 else None for arm in at if arm not in ("bc", "oracle_rl")}


def goals(cfg: StudyConfig, exponents: dict, gaps: dict) -> dict:
    irl = [a for a in ("online_irl_bt", "online_irl_airl") if a in cfg.arms]
    out = {}
    if GOAL_SETTING in gaps and gaps[GOAL_SETTING]:
        closed = {a: gaps[GOAL_SETTING][a] for a in irl}
        out["online_irl_closes_half_the_gap"] = {"setting": GOAL_SETTING, "horizon": max(cfg.horizons), **closed,
                                                 "met": {a: v is not None and v >= 0.5 for a, v in closed.items()}}
    out["exponents_on_rare_task"] = {
        setting: {"bc_b": e["bc"]["b"], "bc_above_1": e["bc"]["b"] > 1,
                  **{f"{a}_b": e[a]["b"] for a in irl}, **{f"{a}_at_most_1": e[a]["b"] <= 1 for a in irl},
                  # separated: the CIs of BC's exponent and online IRL's do not overlap
                  **{f"{a}_separated_from_bc": e[a]["ci95"][1] < e["bc"]["ci95"][0] for a in irl}}
        for setting, e in exponents.items() if setting.startswith("rare/")}
    return out


def run_study(cfg: StudyConfig, log=print) -> dict:
    cfg.check()
    torch.set_num_threads(1)  # a GRU at batch 64: one thread is fastest and its timings are steady
    start, rows = time.perf_counter(), []
    for setting in cfg.settings:
        for seed in range(cfg.seeds):
            rows += train_arms(cfg, setting, seed, log)
    result = {"config": asdict(cfg), "rows": rows, **summarise(cfg, rows),
              "wall_seconds": round(time.perf_counter() - start, 1)}
    return result


def run(cfg: dict, out: Path) -> Path:
    """``trl-irl recipe=compounding_error``: the study, its JSON and its report under ``out``; returns the JSON's path."""
    section = dict(cfg["compounding"])
    mode = section.pop("mode", "quick")
    if mode not in ("quick", "full"):
        raise ValueError(f"compounding.mode must be quick or full, got {mode!r}")
    study = getattr(StudyConfig, mode)(**{k: v for k, v in section.items() if v is not None})
    out.mkdir(parents=True, exist_ok=True)
    result = run_study(study)
    result["mode"] = mode
    path = write_json(result, out / "compounding_error.json")
    from .report import write_report

    write_report(result, out / "compounding_error.md")
    return path


def write_json(result: dict, path: Path) -> Path:
    """Atomically: a finished study is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return path
