"""Every job ends the same way: its result written atomically, then reported, its path returned (the CLI prints it
last)."""

import json

import pytest

from trl_irl.jobs import JOBS, job
from trl_irl.results import finish


def test_finish_writes_then_reports_and_returns_the_path(tmp_path):
    seen = []

    def report(result, path):  # the report reads the finished file, as the pipeline's plot and table may
        seen.append((result, json.loads(path.read_text())))

    path = finish({"a": 1, "b": [0.5]}, tmp_path / "sub" / "metrics.json", report)
    assert path == tmp_path / "sub" / "metrics.json"
    assert seen == [({"a": 1, "b": [0.5]}, {"a": 1, "b": [0.5]})]
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]  # no temporary left beside it


def test_a_report_that_fails_leaves_the_result_whole(tmp_path):
    def broken(result, path):
        raise RuntimeError("no display")

    with pytest.raises(RuntimeError):
        finish({"x": 2}, tmp_path / "m.json", broken)
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": 2}


def test_the_three_jobs_and_an_unknown_one():
    assert set(JOBS) == {"pipeline", "prompt_oirl", "compounding_error"}
    with pytest.raises(
        ValueError, match="job='train' is unknown: choose one of \\['compounding_error', 'pipeline', 'prompt_oirl'\\]"
    ):
        job("train")


def test_runs_of_a_wandb_sweep_log_online():
    from trl_irl.tracking import wandb_mode

    assert wandb_mode({"mode": "offline"}, {}) == "offline"  # no server by default
    assert wandb_mode({"mode": "offline"}, {"WANDB_SWEEP_ID": "abc123"}) == "online"  # started by `wandb agent`
    assert wandb_mode({"mode": "online"}, {}) == "online"
    assert wandb_mode({"mode": "offline"}, {"WANDB_SWEEP_ID": "abc", "WANDB_MODE": "disabled"}) == "disabled"


def test_each_stage_logs_to_wandb_under_its_own_keys_and_step():
    """One wandb run holds every stage: BC's and reward pretraining's eval loss, and their steps, stay apart."""
    from transformers import TrainerState

    from trl_irl.tracking import stage_wandb

    logged, defined = [], []

    class FakeWandb:
        class run:
            summary: dict = {}

        def log(self, values):
            logged.append(values)

        def define_metric(self, name, **kwargs):
            defined.append((name, kwargs.get("step_metric")))

    for stage, logs in (("bc", {"eval_loss": 2.0, "loss": 3.0}), ("reward_pretrain", {"eval_loss": 0.5})):
        callback = stage_wandb(stage)
        callback._wandb, callback._initialized = FakeWandb(), True
        state = TrainerState(global_step=3)
        callback.on_log(None, state, None, logs=logs)
    assert logged == [
        {"bc/eval/loss": 2.0, "bc/train/loss": 3.0, "bc/global_step": 3},
        {"reward_pretrain/eval/loss": 0.5, "reward_pretrain/global_step": 3},
    ]
