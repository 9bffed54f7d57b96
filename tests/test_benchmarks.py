"""Every benchmark in benchmarks/ runs its quickest mode end to end, on the tiny model where it trains one, and writes
its figures where ``--out`` says. Their numbers at this size mean nothing (the committed results come from the
commands in each script's docstring); what is checked is that a benchmark still runs, never how fast or how well."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TRANSFORMERS_VERBOSITY": "error"}


def bench(script: str, *args, timeout: int = 300) -> str:
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *map(str, args)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    return result.stdout


def test_every_benchmark_has_a_quick_run_here():
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    tested = {
        "compounding_error.py",
        "credit.py",
        "faults.py",
        "fingerprint.py",
        "memory.py",
        "online_irl_overhead.py",
        "prompt_oirl.py",
        "real_lm.py",
        "real_lm_data.py",
        "step_phases.py",
    }
    assert scripts == tested  # a new benchmark gets its quick run below


def test_compounding_error(tmp_path):
    bench(
        "compounding_error.py",
        "--quick",
        "--smoke",
        "--out",
        tmp_path / "c.json",
        "--report",
        tmp_path / "c.md",
        "--jobs",
        tmp_path / "jobs",
    )
    result = json.loads((tmp_path / "c.json").read_text())
    assert {r["horizon"] for r in result["rows"]} == {4, 8} and (tmp_path / "c.md").exists()


def test_credit(tmp_path):
    bench(
        "credit.py",
        "--seeds",
        0,
        "--steps",
        2,
        "--eval-every",
        1,
        "--n-eval",
        8,
        "--algos",
        "grpo",
        "--credits",
        "sequence",
        "--override",
        "recipe=toy",
        "--work",
        tmp_path / "work",
        "--out",
        tmp_path / "credit.json",
    )
    row = json.loads((tmp_path / "credit.json").read_text())["rows"][0]
    assert (row["algo"], row["credit"]) == ("grpo", "sequence") and len(row["per_seed"][0]["curve"]) == 3


def test_faults(tmp_path):
    bench(
        "faults.py",
        "--trials",
        1,
        "--kills-per-trial",
        1,
        "--workdir",
        tmp_path / "work",
        "--out",
        tmp_path / "faults.json",
    )
    result = json.loads((tmp_path / "faults.json").read_text())
    assert result["trials"] == result["trials_identical"] == 1


def test_fingerprint(tmp_path):
    bench("fingerprint.py", "--out", tmp_path / "fingerprint.txt")
    assert len((tmp_path / "fingerprint.txt").read_text().splitlines()) == 9  # one hash line per run


def test_memory(tmp_path):
    bench("memory.py", "--quick", "--models", "tiny", "--out", tmp_path / "memory.json")
    rows = json.loads((tmp_path / "memory.json").read_text())["rows"]
    assert {r["setup"] for r in rows} == {"policy_only", "separate", "shared_base"}


def test_online_irl_overhead(tmp_path):
    bench(
        "online_irl_overhead.py",
        "--model",
        "tiny",
        "--rounds",
        1,
        "--steps",
        2,
        "--bc-steps",
        2,
        "--online-updates",
        1,
        "--out",
        tmp_path / "overhead.json",
    )
    result = json.loads((tmp_path / "overhead.json").read_text())
    assert {"online_irl", "online_irl_layers_1", "online_irl_lora"} <= set(result["ratio_median_of_rounds"])
    assert set(result["reward_quality"]["settings"]) == {"full_depth", "layers_1", "lora"}
    assert {"bc", "generation", "grpo_frozen_reward_speedup"} <= set(result["bf16"])


def test_step_phases(tmp_path):
    """A sample counts in the first phase its stack holds: the reward update's backward is the reward update's."""
    loop = "Trainer._inner_training_loop (transformers/trainer.py:1)"
    update = "OnlineRewardUpdater.update (trl_irl/rewards/online.py:2)"
    backward = "backward (torch/autograd/__init__.py:3)"
    lines = [
        f"{loop};{update};{backward} 3",
        f"{loop};training_step (transformers/trainer.py:4);{backward} 5",
        f"{loop};GenerationMixin.generate (transformers/generation/utils.py:5) 2",
        "load (x.py:1) 40",
    ]
    (tmp_path / "raw.txt").write_text("\n".join(lines) + "\n")
    bench("step_phases.py", tmp_path / "raw.txt", "--out", tmp_path / "phases.json")
    result = json.loads((tmp_path / "phases.json").read_text())
    assert result == {
        "samples": 10,
        "share": {"policy loss: backward": 0.5, "reward update: backward": 0.3, "generation": 0.2},
    }


def test_prompt_oirl(tmp_path):
    from tests.test_prompt_oirl import DATA, slice_logs

    if not (DATA / "labels_llama2_gsm8k.npz").exists() or importlib.util.find_spec("lightgbm") is None:
        pytest.skip("needs the prompting logs and the prompt-oirl extra")
    logs = slice_logs(tmp_path / "logs", n_train=200, n_test=80)
    bench(
        "prompt_oirl.py",
        "--runs",
        "gsm8k:split_paper",
        "--no-warm-up",
        "--work",
        tmp_path / "work",
        "--out",
        tmp_path / "prompt_oirl.json",
        "--override",
        f"data.dir={logs}",
        f"features.cache_dir={tmp_path / 'cache'}",
        "features.query_dims=8",
        "selection.ks=[1,6]",
        "selection.max_subsets=0",
        "+rm.candidates.gbdt.n_estimators=30",
        "rm.candidates.mlp.epochs=3",
    )
    result = json.loads((tmp_path / "prompt_oirl.json").read_text())
    assert [(r["dataset"], r["split"]) for r in result["rows"]] == [("gsm8k", "split_paper")] and result["goals"] == {}


def test_real_lm_on_the_tiny_model(tmp_path):
    bench(
        "real_lm.py",
        "--tasks",
        "spiral_matrix",
        "--seeds",
        0,
        "--arms",
        "bc",
        "bc_best",
        "oracle",
        "irl_bt",
        "--workers",
        1,
        "--draws",
        200,
        "--override",
        "model=tiny",
        "reward.online.trainable_layers=1",
        "algo.max_steps=2",
        "bc.num_train_epochs=1",
        "reward.pretrain.num_train_epochs=1",
        "eval.rerank_samples=2",
        "task.num_heldout=16",
        "--work",
        tmp_path / "work",
        "--out",
        tmp_path / "real_lm.json",
        timeout=600,
    )
    results = json.loads((tmp_path / "real_lm.json").read_text())
    task = results["tasks"]["spiral_matrix"]
    report = task["report"]
    assert set(report["success_rate"]) == {"bc", "bc_best", "oracle", "irl_bt"}
    # every difference is [estimate, low, high]: the means' difference, inside its interval
    scores = {a: np.array(task["scores"][a]["0"]) for a in report["success_rate"]}
    estimate, low, high = report["vs_bc_best"]["irl_bt"]
    assert estimate == pytest.approx(scores["irl_bt"].mean() - scores["bc_best"].mean()) and low <= estimate <= high
    assert report["vs_bc"]["oracle"][0] == pytest.approx(scores["oracle"].mean() - scores["bc"].mean())
    assert "irl_bt" in report["gap_closed"] and set(report["goals"]["irl_bt"]) == set(results_goals())
    # the reward's lift: from the per-prompt picks in the run's metrics.json, as over several seeds
    picks = task["diagnostics"]["irl_bt"]["0"]["grpo"]["per_prompt"]
    lift = np.mean(picks["reward_pick"]) - np.mean(picks["random_pick"])
    assert report["reward_lift"]["irl_bt"]["final"]["lift"][0] == pytest.approx(lift)
    # the Markdown tables beside the JSON: the same figures, and the decision rule's verdict from the goals
    table = (tmp_path / "real_lm.md").read_text().splitlines()
    arm_row, *_, verdict_row = [line for line in table if line.startswith("| irl_bt |")]
    assert arm_row.split(" | ")[4] == f"{estimate:+.3f} [{low:+.3f}, {high:+.3f}]"  # the vs bc@T* column
    holds = all(v for k, v in report["goals"]["irl_bt"].items() if k != "reward_lift")
    assert verdict_row.endswith(f"| {'yes' if holds else 'no'} |")
    # the trained arms' weights are removed once their run is scored; BC's are kept for the next arm
    assert not (tmp_path / "work" / "spiral_matrix" / "seed0" / "oracle" / "oracle").exists()
    assert (tmp_path / "work" / "spiral_matrix" / "seed0" / "bc" / "bc" / "final").exists()


def results_goals():
    spec = importlib.util.spec_from_file_location("real_lm", ROOT / "benchmarks" / "real_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GOALS


def test_real_lm_data(tmp_path):
    if importlib.util.find_spec("reasoning_gym") is None:
        pytest.skip("needs reasoning-gym (pip install -e '.[data]')")
    bench(
        "real_lm_data.py",
        "--task",
        "spiral_matrix",
        "--size",
        20,
        "--rollout",
        "--rollout-size",
        30,
        "--out-dir",
        tmp_path,
    )
    rows = [json.loads(line) for line in (tmp_path / "spiral_matrix.jsonl").read_text().splitlines()]
    prompts = [json.loads(line) for line in (tmp_path / "spiral_matrix_prompts.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and rows[0]["completion"] == rows[0]["answer"]
    # the rollout prompts: the requested count, no demonstration, none of the demonstration file's prompts
    assert len(prompts) == 30 and set(prompts[0]) == {"prompt", "answer"}
    assert not {r["prompt"] for r in rows} & {p["prompt"] for p in prompts}
