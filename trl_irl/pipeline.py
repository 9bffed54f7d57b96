"""The main job, in the order it runs: task -> BC -> the arms -> every arm evaluated on the held-out rows ->
metrics.json + plot.

``RunPlan(cfg)`` (``plan.py``) checked the whole run and resolved it before this starts: the arms, the stage folders,
the tokenizer and rows, every trainer config. ``run(plan)`` then trains each stage from what it starts from (the
stages are functions in ``stages/``), and the stage runner (``stages/runner.py``) does the bookkeeping around each:
the run folder held, a stage that a resumed run finished reused (``resume=true``; policy training continues from its
newest complete checkpoint, or ``resume_from``), the config that shaped a stage written beside it, writes on the main
process only under ``accelerate launch``, timings. The models come from one provider, ``roles.Roles``, whatever the
layout (full models, LoRA, one shared base).

    bc = behaviour_cloning(ctx)                              -> bc/final (reused by a resumed run, as below)
    for each arm:
        online IRL   reward = reward_pretraining(ctx, bc)    -> reward_pretrain/final
                     policy_training(ctx, algo, bc, reward)  -> <algo>/final, <algo>/final_reward
        oracle       policy_training(ctx, "oracle", bc)      -> oracle/final
        spin, sdft   spin_training(ctx, bc), sdft_training   -> spin/final, sdft/final
    evaluate(ctx, bc): every arm, bc@T*, the reward's diagnostics -> metrics.json, samples_<arm>.jsonl, metrics.png
"""

from __future__ import annotations

import time
from pathlib import Path

from .console import never_rewarded, stage_header
from .evaluation import demonstration_reference, intervals, plot, print_table
from .plan import RunPlan
from .results import finish
from .stages.context import open_context
from .stages.evaluate import evaluate
from .stages.runner import StageRunner
from .stages.training import (
    behaviour_cloning,
    finished_log_history,
    policy_training,
    reward_pretraining,
    sdft_training,
    spin_training,
)


def run(plan: RunPlan) -> Path:
    """Trains and evaluates every arm of ``plan`` in its run folder; returns the path of ``metrics.json``."""
    runner = StageRunner(plan)
    with runner.holding_folder():
        return train_and_evaluate(plan, runner)


def train_and_evaluate(plan: RunPlan, runner: StageRunner) -> Path:
    start = time.perf_counter()
    with runner.timing("setup"):
        ctx = open_context(plan, runner)
    with runner.timing("bc"):
        bc = behaviour_cloning(ctx)  # the folder every other arm starts from
    log_history = []  # the online-IRL arm's, for the plot
    for arm in [a for a in plan.arms if a != "bc"]:
        with runner.timing(arm):
            if runner.reuse_finished(arm):
                if arm == plan.algo:
                    log_history = finished_log_history(ctx, arm)
                continue
            if arm == plan.algo:  # online IRL: a reward pretrained on BC's samples, then learning beside the policy
                with runner.timing("reward_pretrain", header=False):
                    reward = reward_pretraining(ctx, bc)
                log_history = policy_training(ctx, arm, bc, reward)
            elif arm == "oracle":  # the same algorithm on the task's verifier: the RL ceiling
                history = policy_training(ctx, arm, bc)
                if never_rewarded(history) and plan.state.is_main_process:
                    print(
                        "  oracle: the verifier scored every training sample 0, so the oracle had nothing to learn "
                        "from (a task too hard for BC's samples, or a verifier that never matches: see "
                        "samples_bc.jsonl)",
                        flush=True,
                    )
            elif arm == "spin":
                spin_training(ctx, bc)
            elif arm == "sdft":
                sdft_training(ctx, bc)
    if plan.state.is_main_process:
        stage_header("evaluation")
    arms, records, diagnostics = evaluate(ctx, bc)
    spans = intervals(records, seed=plan.cfg["seed"])
    gaps = spans.get("success_rate", {}).get("gap_closed", {})
    metrics = {
        "arms": arms,
        "gap_closed": {arm: gap["value"] for arm, gap in gaps.items()},
        "intervals": spans,
        "reference": demonstration_reference(plan.task, plan.data.heldout, plan.tokenizer),
        **({"reward_diagnostics": diagnostics} if diagnostics else {}),
        "task": plan.data.report,
        "timings_s": {**runner.timings, "total": round(time.perf_counter() - start, 2)},
        "config": plan.cfg,
    }

    def report(result: dict, path: Path):
        plot(result, log_history, path.with_name("metrics.png"))
        print_table(result)

    path = plan.out / "metrics.json"
    runner.on_main(finish, metrics, path, report)
    return path
