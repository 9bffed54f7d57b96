"""The compounding-error study's bookkeeping: cost, exponents and their intervals against hand-worked values, the
config's errors, and a tiny end-to-end run through the recipe with its report regenerated from the JSON."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trl_irl.compounding import experiment, report
from trl_irl.compounding.experiment import StudyConfig, bootstrap_ci, cost, fit_exponent, run_study

ROOT = Path(__file__).resolve().parents[1]


def test_cost_is_linear_in_T_for_a_constant_error_rate():
    h, horizons = 0.03, [8, 16, 32, 64]
    nonrecoverable = [cost({"success_rate": (1 - h) ** T}, False, 10**6) for T in horizons]
    assert nonrecoverable[0] == pytest.approx(-8 * math.log(0.97))
    assert fit_exponent(horizons, nonrecoverable) == pytest.approx(1.0)
    assert fit_exponent(horizons, [cost({"errors_per_rollout": h * T}, True, 10) for T in horizons]) == pytest.approx(
        1.0
    )
    assert cost({"success_rate": 0.0}, False, 50) == pytest.approx(math.log(100))  # floored at 1/(2n)


def test_fit_exponent_and_its_bootstrap_interval():
    horizons = [8, 16, 32, 64]
    assert fit_exponent(horizons, [3 * T**1.5 for T in horizons]) == pytest.approx(1.5)
    x, y = np.log(horizons), np.log([1.0, 2.5, 4.0, 13.0])  # against the normal-equations slope
    assert fit_exponent(horizons, np.exp(y)) == pytest.approx(
        ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    )
    seeds = np.array([[2 * T**1.2 for T in horizons], [T**1.6 for T in horizons]])
    lo, hi = bootstrap_ci(seeds, lambda c: fit_exponent(horizons, c.mean(0)), 500)
    assert 1.2 - 1e-9 <= lo < fit_exponent(horizons, seeds.mean(0)) < hi <= 1.6 + 1e-9
    assert bootstrap_ci(seeds[:1], lambda c: fit_exponent(horizons, c.mean(0)), 50) == pytest.approx((1.2, 1.2))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"settings": ["rare/nonrecoverable/tiny/small"]}, "compounding.settings: 'rare/nonrecoverable/tiny/small'"),
        ({"arms": ["bc", "gail"]}, r"compounding.arms: unknown \['gail'\]"),
        ({"arms": ["dagger"]}, "compounding.arms must include bc"),
        ({"horizons": [16, 8]}, "compounding.horizons must be increasing"),
        ({"rl": {"iteration": 3}}, r"compounding.rl: unknown \['iteration'\]"),
        ({"hidden": {"small": 4}}, r"compounding.hidden needs a value for \['realisable'\]"),
        ({"rare_exit_prob": 2.0}, "task.rare_exit_prob must be in"),
        ({"reward_capacity": "large"}, "compounding.reward_capacity must be one of"),
        ({"workers": 0}, "compounding.workers must be >= 1"),
    ],
)
def test_bad_study_config_names_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        run_study(StudyConfig.quick(**overrides))


TINY = dict(
    horizons=[4, 8],
    seeds=2,
    demos={"small": 30, "large": 60},
    hidden={"realisable": 8, "small": 4},
    eval_rollouts=200,
    rl={"iterations": 3, "dagger_rounds": 1, "dagger_rollouts": 10},
)
SETTINGS = ["rare/nonrecoverable/small/small", "rare/recoverable/small/small", "plain/recoverable/realisable/small"]


def test_recipe_runs_the_study_and_the_report_regenerates(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "trl_irl.cli",
            "recipe=compounding_error",
            f"output_dir={tmp_path}",
            f"compounding.settings=[{','.join(SETTINGS)}]",
            "compounding.horizons=[4,8]",
            "compounding.seeds=2",
            "compounding.demos={small: 30, large: 60}",
            "compounding.hidden={realisable: 8, small: 4}",
            "compounding.eval_rollouts=200",
            "compounding.rl={iterations: 3, dagger_rounds: 1, dagger_rollouts: 10}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    path = Path(out.stdout.strip().splitlines()[-1])
    result = json.loads(path.read_text())
    assert result["config"]["workers"] == 2  # the jobs ran in two processes
    assert {"arm", "horizon", "success_rate", "invalid_per_rollout", "expert_logprob_per_token"} <= set(
        result["rows"][0]
    )
    assert len(result["rows"]) == 3 * 2 * 8 * 2  # settings x seeds x arms x horizons
    # the same study in this process, one job after another, gives the same numbers
    sequential = run_study(StudyConfig.quick(settings=SETTINGS, workers=1, **TINY))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]  # noqa: E731
    assert strip(sequential["rows"]) == strip(result["rows"])
    for setting, per_arm in result["exponents"].items():  # the exponent is the fit of the seed-mean cost curve
        for arm, e in per_arm.items():
            curve = [
                np.mean(
                    [r["cost"] for r in result["rows"] if (r["setting"], r["arm"], r["horizon"]) == (setting, arm, T)]
                )
                for T in (4, 8)
            ]
            assert e["b"] == pytest.approx(math.log(curve[1] / curve[0]) / math.log(2))
    for r in result["rows"]:  # a prefix can only lose success as it grows
        longer = next(
            q
            for q in result["rows"]
            if (q["setting"], q["arm"], q["seed"], q["horizon"]) == (r["setting"], r["arm"], r["seed"], 8)
        )
        assert longer["success_rate"] <= r["success_rate"]
    md = path.with_suffix(".md")
    assert "## Fitted exponents" in md.read_text() and path.with_name("compounding_error_cost.png").stat().st_size > 0
    regenerated = tmp_path / "again" / "compounding_error.md"
    subprocess.run(
        [sys.executable, "benchmarks/compounding_error.py", "--report-only", str(path), "--report", str(regenerated)],
        check=True,
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert (
        regenerated.read_text().split("\n", 3)[3] == md.read_text().split("\n", 3)[3]
    )  # same body; header names the command


def test_validity_blind_arms_are_shared_across_error_modes_and_arms_are_independent(tmp_path, monkeypatch):
    cfg = StudyConfig.quick(settings=SETTINGS[:2], workers=1, **TINY)
    result = run_study(cfg, jobs_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2  # one file per (group, seed) job

    def no_training(*args, **kwargs):
        raise RuntimeError("a job was trained again")

    with monkeypatch.context() as patch:  # a rerun resumes from the finished jobs and trains nothing
        patch.setattr(experiment, "train_group", no_training)
        resumed = run_study(cfg, jobs_dir=tmp_path)
        assert resumed["rows"] == result["rows"] and (resumed["jobs_reused"], result["jobs_reused"]) == (2, 0)
        assert "2 of 2 jobs reused" in report.markdown(resumed, "s.png", "c.png", "cmd")
        with pytest.raises(RuntimeError, match="trained again"):  # another config is another job
            run_study(
                StudyConfig.quick(settings=SETTINGS[:2], workers=1, **{**TINY, "eval_rollouts": 100}), jobs_dir=tmp_path
            )
    rows = {(r["setting"].split("/")[1], r["arm"], r["seed"], r["horizon"]): r for r in result["rows"]}
    for (mode, arm, seed, h), r in rows.items():
        if mode != "nonrecoverable":
            continue
        twin = rows[("recoverable", arm, seed, h)]
        if arm in ("oracle_rl", "dagger"):  # they see validity: trained per error mode
            continue
        # one policy, one set of rollouts, scored twice: the same successes; recoverable counts every later error too
        assert twin["success_rate"] == r["success_rate"] and twin["train_seconds"] == r["train_seconds"]
        assert twin["errors_per_rollout"] >= r["errors_per_rollout"]
    # dagger's numbers do not depend on which other arms ran before it
    alone = run_study(StudyConfig.quick(settings=SETTINGS[:2], arms=["bc", "dagger"], workers=1, **TINY))
    for r in alone["rows"]:
        match = rows[(r["setting"].split("/")[1], r["arm"], r["seed"], r["horizon"])]
        assert {k: v for k, v in r.items() if k != "train_seconds"} == {
            k: v for k, v in match.items() if k != "train_seconds"
        }
