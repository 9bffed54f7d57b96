"""The compounding-error study: how the cost of each arm grows with the horizon T.

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
Settings that differ only in the error mode form a group: one set of demonstrations, one BC policy, and every arm
that never looks at validity trained once and scored under each mode (``train_group``). The online-IRL reward model
has its own width (``StudyConfig.reward_capacity``), realisable by default whatever the policy's.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..results import finish
from ..statistics import interval, resample_indices
from ..tasks import AutomatonTask
from ..validation import refusing
from . import arms as A
from .env import Automaton, GRUPolicy, metrics
from .report import write_report

ARMS = (
    "bc",
    "bc_reward_width",
    "bc_loss_only",
    "online_irl_bt",
    "online_irl_airl",
    "airl_reward_frozen",
    "oracle_rl",
    "dagger",
)
VALIDITY_ARMS = ("oracle_rl", "dagger")  # the only arms that see validity: trained once per error mode
REWARD_ARMS = ("bc_reward_width", "online_irl_bt", "online_irl_airl", "airl_reward_frozen")  # use the reward model's BC
AXES = {
    "task": ("plain", "rare"),
    "errors": ("nonrecoverable", "recoverable"),
    "capacity": ("realisable", "small"),
    "demos": ("small", "large"),
}
GOAL_SETTING = "rare/nonrecoverable/small/small"  # the goal: non-recoverable, misspecified
METRICS = (
    "success_rate",
    "invalid_per_rollout",
    "expert_logprob_per_token",
    "errors_per_rollout",
    "errors_after_first",
    "steps_after_first",
    "cost",
)


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
    """A subset of ``ARMS`` with ``bc``: bc, bc_reward_width (BC at the reward model's width: a reference),
    bc_loss_only (online IRL's loop with the reward off), online_irl_bt, online_irl_airl, airl_reward_frozen (AIRL
    with its reward never updated), oracle_rl, dagger (see ``arms``)."""
    n_states: int = 16
    n_tokens: int = 16
    n_allowed: int = 4
    rare_states: int = 4
    """Sub-automaton size of the ``rare`` task."""
    rare_prob: float = 0.01
    """The expert's door probability per main state (``rare`` task), half the task's default: the rarer the door,
    the fewer demonstrations show the sub-automaton that BC must then act in unseen."""
    rare_exit_prob: float = 0.02
    """The expert's probability of leaving the sub-automaton per step: small = sticky (``rare`` task)."""
    start_states: int = 1
    """Rollouts start in this many states. With one, the first positions are the best-covered contexts; with every
    start state, position 0 has the fewest examples per context (N / 12) and BC's first-step leak (about 0.18 at
    N=200) dominates short horizons, which hides how the error rate evolves along the rollout."""
    hidden: dict = field(default_factory=lambda: {"realisable": 32, "small": 16})
    """GRU width per capacity: 32 fits the expert as well as 64 does (realisable), 16 a little short of it (BC's
    held-out NLL per width: docs/compounding_error_study.md, "The two capacities")."""
    reward_capacity: str = "realisable"
    """Width of the online-IRL reward model (AIRL's discriminator, the Bradley-Terry scorer): a ``hidden`` level, or
    ``policy`` for the policy's own width. A reward model is only trained, never deployed, so it may be larger than
    the policy, as one reward model trains policies of several sizes in RLHF. It starts from BC at its width on the
    same demonstrations (the ``bc_reward_width`` arm)."""
    demos: dict = field(default_factory=lambda: {"small": 200, "large": 1000})
    """Number of demonstrations per ``demos`` level."""
    heldout: int = 100
    """Held-out demonstrations: BC's early stopping, DAgger's refits and online IRL's reward gate."""
    eval_rollouts: int = 2000
    bc_learning_rate: float = 3e-3
    bc_patience: int = 10
    rl: dict = field(
        default_factory=lambda: {
            "iterations": 600,
            "learning_rate": 3e-3,
            "bc_weight": 0.5,
            "reward_steps": 2,
            "reward_learning_rate": 3e-3,
            "gamma": 0.97,
        }
    )
    """``arms.RLSettings`` fields for every RL arm (and DAgger's rounds). Chosen on seeds 0-1 of the goal setting:
    policy lr 3e-3 lifts the oracle from 0.32 to 0.77 in the same time; online IRL's extra BC loss (0.5) kept
    Bradley-Terry from collapsing at that lr; two reward steps per policy step, not one, let the Bradley-Terry scorer
    keep up with the policy (success at T=64 0.24 / 0.49 vs 0.11 / 0.23; AIRL 0.69 / 0.71 vs 0.58 / 0.48); 600
    iterations, not 300, because online IRL was still rising at 300; gamma 0.97, not 1, because at T=128 the
    undiscounted return of 128 dense rewards was too noisy: AIRL 0.19 / 0.42 with gamma 1 (below its own frozen
    reward's 0.33 / 0.28) and 0.33 / 0.61 with 0.97; at T=64 gamma 0.97 also lifted AIRL (0.65 / 0.67 -> 0.68 / 0.78)
    and the oracle (0.83 / 0.86 -> 0.89 / 0.91)."""
    workers: int = 2
    """Processes that train (group, seed) jobs side by side, one torch thread each (2 = the cores here)."""
    bootstrap: int = 2000

    @classmethod
    def quick(cls, **overrides) -> StudyConfig:
        return replace(cls(), **overrides)

    @classmethod
    def full(cls, **overrides) -> StudyConfig:
        """Horizons up to 128, 3 seeds, and one factor at a time changed from the goal's group (task, capacity,
        demonstrations), each group under both error modes: 12 (group, seed) jobs of about 20 min each at T=128."""
        groups = ["rare/{}/small/small", "plain/{}/small/small", "rare/{}/realisable/small", "rare/{}/small/large"]
        settings = [g.format(errors) for g in groups for errors in AXES["errors"]]
        return replace(cls(), settings=settings, horizons=[8, 16, 32, 64, 128], seeds=3, **overrides)

    def check(self):
        """Every bad value names its field, before any training."""
        for name in self.settings:
            parts = name.split("/")
            if len(parts) != 4 or any(p not in choices for p, choices in zip(parts, AXES.values())):
                raise ValueError(
                    f"compounding.settings: {name!r} is not task/errors/capacity/demos with "
                    + ", ".join(f"{k} in {v}" for k, v in AXES.items())
                )
        if unknown := set(self.arms) - set(ARMS):
            raise ValueError(f"compounding.arms: unknown {sorted(unknown)}; choose from {ARMS}")
        if "bc" not in self.arms:
            raise ValueError("compounding.arms must include bc: every other arm starts from it")
        if not self.horizons or sorted(self.horizons) != list(self.horizons) or self.horizons[0] < 1:
            raise ValueError(f"compounding.horizons must be increasing positive integers, got {self.horizons}")
        if self.seeds < 1:
            raise ValueError("compounding.seeds must be >= 1")
        if self.workers < 1:
            raise ValueError("compounding.workers must be >= 1 (1 runs every job in this process)")
        if self.reward_capacity not in (*AXES["capacity"], "policy"):
            raise ValueError(
                f"compounding.reward_capacity must be one of {(*AXES['capacity'], 'policy')}, "
                f"got {self.reward_capacity!r}"
            )
        if unknown := set(self.rl) - {f.name for f in fields(A.RLSettings)}:
            raise ValueError(
                f"compounding.rl: unknown {sorted(unknown)}; fields of arms.RLSettings are "
                f"{[f.name for f in fields(A.RLSettings)]}"
            )
        for key, levels in (("hidden", AXES["capacity"]), ("demos", AXES["demos"])):
            if missing := set(levels) - set(getattr(self, key)):
                raise ValueError(f"compounding.{key} needs a value for {sorted(missing)}")
        self.task("rare/recoverable/small/small", 0)  # the task's own checks (rare_prob, ...)
        return self

    def reward_hidden(self, capacity: str) -> int:
        """The reward model's GRU width when the policy has ``capacity``."""
        return self.hidden[capacity if self.reward_capacity == "policy" else self.reward_capacity]

    def task(self, setting: str, seed: int) -> AutomatonTask:
        kind, errors, _, _ = setting.split("/")
        rare = dict(rare_states=self.rare_states, rare_prob=self.rare_prob, rare_exit_prob=self.rare_exit_prob)
        return AutomatonTask(
            n_states=self.n_states,
            n_tokens=self.n_tokens,
            n_allowed=self.n_allowed,
            horizon=max(self.horizons),
            seed=seed,
            transitions="random",
            recoverable=errors == "recoverable",
            **(rare if kind == "rare" else {}),
        )


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

    low, high = interval(
        np.array([statistic(per_seed[rows]) for (rows,) in resample_indices((len(per_seed),), n, seed)])
    )
    return low, high


def arm_trainers(
    cfg: StudyConfig,
    env: Automaton,
    bc: GRUPolicy,
    reward_bc: GRUPolicy,
    data,
    heldout,
    horizon: int,
    s: A.RLSettings,
    g: torch.Generator,
) -> dict:
    """How each arm is trained from the shared BC policy (``reward_bc``: the BC policy of the reward model's width)."""

    def irl(objective, **kw):
        return A.online_irl(bc, env, data, heldout, horizon, objective, s, g, reward_init=reward_bc, **kw)

    return {
        "bc": lambda: bc,
        "bc_reward_width": lambda: reward_bc,
        "bc_loss_only": lambda: A.online_irl(bc, env, data, heldout, horizon, "none", s, g),
        "online_irl_bt": lambda: irl("bt"),
        "online_irl_airl": lambda: irl("airl"),
        "airl_reward_frozen": lambda: irl("airl", learn_reward=False),
        "oracle_rl": lambda: A.oracle_rl(bc, env, horizon, s, g),
        "dagger": lambda: A.dagger(bc, env, data, heldout, horizon, s, g),
    }


def train_group(cfg: StudyConfig, group: tuple[str, str, str], seed: int, log=print) -> list[dict]:
    """One ``task/capacity/demos`` group and seed: BC, then every other arm from it, scored under each error mode of
    the group's settings; per-seed rows of every metric at every horizon.

    The error mode only decides what counts as an error (the dynamics are the same: an invalid token leaves the state
    as it was), and only oracle RL and DAgger ever look at validity. So every other arm is trained once and its same
    evaluation rollouts are scored under each mode; oracle RL and DAgger are trained per mode. Each arm draws from
    its own generator, so its result does not depend on which other arms run."""
    kind, capacity, demos = group
    modes = [setting.split("/")[1] for setting in cfg.settings if group_of(setting) == group]
    horizon = max(cfg.horizons)
    envs = {m: Automaton(cfg.task(f"{kind}/{m}/{capacity}/{demos}", seed), n_starts=cfg.start_states) for m in modes}
    env = envs[modes[0]]
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data, heldout = env.demonstrations(cfg.demos[demos], horizon, g), env.demonstrations(cfg.heldout, horizon, g)
    s = A.RLSettings(**cfg.rl)

    def fit_bc(hidden: int) -> tuple[GRUPolicy, float]:
        start = time.perf_counter()
        torch.manual_seed(seed)
        policy = A.behaviour_cloning(
            GRUPolicy(env.n_starts, env.n_actions, hidden),
            data,
            heldout,
            g,
            learning_rate=cfg.bc_learning_rate,
            patience=cfg.bc_patience,
        )
        return policy, time.perf_counter() - start

    bc, bc_seconds = fit_bc(cfg.hidden[capacity])
    reward_hidden = cfg.reward_hidden(capacity)
    needs_wide = reward_hidden != cfg.hidden[capacity] and any(a in cfg.arms for a in REWARD_ARMS)
    reward_bc, reward_bc_seconds = fit_bc(reward_hidden) if needs_wide else (bc, bc_seconds)
    rows = []
    for arm in cfg.arms:
        per_mode = arm in VALIDITY_ARMS
        for m in modes if per_mode else modes[:1]:
            arm_g = torch.Generator().manual_seed(seed * 1000 + ARMS.index(arm))
            torch.manual_seed(seed * 1000 + ARMS.index(arm))
            start = time.perf_counter()
            policy = arm_trainers(cfg, envs[m], bc, reward_bc, data, heldout, horizon, s, arm_g)[arm]()
            seconds = {"bc": bc_seconds, "bc_reward_width": reward_bc_seconds}.get(arm, time.perf_counter() - start)
            sampled = policy.sample(envs[m], cfg.eval_rollouts, horizon, torch.Generator().manual_seed(10_000 + seed))
            for scored in [m] if per_mode else modes:
                rollouts = envs[scored].run(sampled.starts, sampled.actions)
                setting = f"{kind}/{scored}/{capacity}/{demos}"
                for h in cfg.horizons:
                    metric = metrics(rollouts.prefix(h), h)
                    metric["cost"] = cost(metric, scored == "recoverable", cfg.eval_rollouts)
                    rows.append(
                        {
                            "setting": setting,
                            "arm": arm,
                            "seed": seed,
                            "horizon": h,
                            **metric,
                            "train_seconds": round(seconds, 2),
                        }
                    )
                log(
                    f"{setting} seed {seed} {arm}: success@{horizon} {rows[-1]['success_rate']:.3f}, "
                    f"cost {rows[-1]['cost']:.3f} ({seconds:.1f} s)"
                )
    return rows


def group_of(setting: str) -> tuple[str, str, str]:
    """The settings that share demonstrations, BC and every validity-blind arm: all but the error mode."""
    kind, _, capacity, demos = setting.split("/")
    return kind, capacity, demos


def _train_group_job(args) -> list[dict]:
    cfg, group, seed = args
    torch.set_num_threads(1)  # a GRU at batch 64: one thread is fastest and its timings are steady
    return train_group(cfg, group, seed, log=lambda line: print(line, flush=True))


def summarise(cfg: StudyConfig, rows: list[dict]) -> dict:
    """Seed means with bootstrap CIs per (setting, arm, horizon); exponents per (setting, arm); the goals."""
    summary, exponents, gaps = [], {}, {}
    for setting in cfg.settings:
        exponents[setting] = {}
        for arm in cfg.arms:
            per_seed = {
                h: {r["seed"]: r for r in rows if (r["setting"], r["arm"], r["horizon"]) == (setting, arm, h)}
                for h in cfg.horizons
            }
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
                "per_seed": [fit_exponent(cfg.horizons, c) for c in costs],
            }
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
        out["online_irl_closes_half_the_gap"] = {
            "setting": GOAL_SETTING,
            "horizon": max(cfg.horizons),
            **closed,
            "met": {a: v is not None and v >= 0.5 for a, v in closed.items()},
        }
    out["exponents_on_rare_task"] = {
        setting: {
            "bc_b": e["bc"]["b"],
            "bc_above_1": e["bc"]["b"] > 1,
            **{f"{a}_b": e[a]["b"] for a in irl},
            **{f"{a}_at_most_1": e[a]["b"] <= 1 for a in irl},
            # separated: the CIs of BC's exponent and online IRL's do not overlap
            **{f"{a}_separated_from_bc": e[a]["ci95"][1] < e["bc"]["ci95"][0] for a in irl},
        }
        for setting, e in exponents.items()
        if setting.startswith("rare/")
    }
    return out


def run_study(cfg: StudyConfig, log=print, jobs_dir: Path | None = None) -> dict:
    """Every (group, seed) job, ``cfg.workers`` at a time in separate processes (one torch thread each).

    ``jobs_dir``: each finished job's rows are written there atomically, and a rerun with the same settings reuses
    them, so a long study that is stopped resumes where it was (the file name carries a hash of everything the
    job's rows depend on)."""
    cfg.check()
    torch.set_num_threads(1)
    start = time.perf_counter()
    groups = list(dict.fromkeys(group_of(setting) for setting in cfg.settings))
    jobs = [(cfg, group, seed) for group in groups for seed in range(cfg.seeds)]
    done = {job[1:]: _load_job(jobs_dir, cfg, *job[1:]) for job in jobs} if jobs_dir else {}
    todo = [job for job in jobs if done.get(job[1:]) is None]
    if len(todo) < len(jobs):
        log(f"reusing {len(jobs) - len(todo)} finished jobs from {jobs_dir}")
    save = (
        (
            lambda job, rows: finish(
                {"key": job_key(cfg, *job[1:]), "rows": rows}, jobs_dir / job_file(cfg, *job[1:]), indent=1
            )
        )
        if jobs_dir
        else (lambda job, rows: None)
    )
    if cfg.workers > 1 and len(todo) > 1:
        context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch or Hydra threads
        with ProcessPoolExecutor(max_workers=min(cfg.workers, len(todo)), mp_context=context) as pool:
            futures = {pool.submit(_train_group_job, job): job for job in todo}
            for future in as_completed(futures):
                done[futures[future][1:]] = future.result()
                save(futures[future], done[futures[future][1:]])
    else:
        for job in todo:
            done[job[1:]] = train_group(*job, log=log)
            save(job, done[job[1:]])
    order = {setting: i for i, setting in enumerate(cfg.settings)}
    rows = sorted(
        (r for job_rows in done.values() for r in job_rows),
        key=lambda r: (order[r["setting"]], r["seed"], cfg.arms.index(r["arm"]), r["horizon"]),
    )
    return {
        "config": asdict(cfg),
        "rows": rows,
        **summarise(cfg, rows),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "jobs": len(jobs),
        "jobs_reused": len(jobs) - len(todo),
    }


def job_key(cfg: StudyConfig, group: tuple, seed: int) -> dict:
    """Everything one job's rows depend on: the config less what only chooses or runs jobs, the group's error modes."""
    fixed = {k: v for k, v in asdict(cfg).items() if k not in ("settings", "seeds", "workers", "bootstrap")}
    modes = [setting.split("/")[1] for setting in cfg.settings if group_of(setting) == group]
    return {"config": fixed, "group": list(group), "modes": modes, "seed": seed}


def job_file(cfg: StudyConfig, group: tuple, seed: int) -> str:
    digest = hashlib.sha256(json.dumps(job_key(cfg, group, seed), sort_keys=True).encode()).hexdigest()[:12]
    return f"{'_'.join(group)}_seed{seed}_{digest}.json"


def _load_job(jobs_dir: Path, cfg: StudyConfig, group: tuple, seed: int) -> list[dict] | None:
    path = Path(jobs_dir) / job_file(cfg, group, seed)
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved["rows"] if saved.get("key") == json.loads(json.dumps(job_key(cfg, group, seed))) else None


def check(cfg: dict) -> tuple[StudyConfig, str]:
    """``trl-irl recipe=compounding_error``'s settings, checked before any job starts: (the study, its mode)."""
    section = dict(cfg["compounding"])
    mode = section.pop("mode", "quick")
    with refusing():
        if mode not in ("quick", "full"):
            raise ValueError(f"compounding.mode must be quick or full, got {mode!r}")
        study = getattr(StudyConfig, mode)(**{k: v for k, v in section.items() if v is not None})
        study.check()
    return study, mode


def run(study: StudyConfig, mode: str, out: Path) -> Path:
    """The checked study (``check``), its JSON and its report under ``out``; returns the JSON's path."""
    out.mkdir(parents=True, exist_ok=True)
    result = run_study(study, jobs_dir=out / "jobs")  # rerun into the same folder to resume a stopped study
    result["mode"] = mode

    return finish(
        result, out / "compounding_error.json", lambda r, path: write_report(r, path.with_suffix(".md")), indent=1
    )
