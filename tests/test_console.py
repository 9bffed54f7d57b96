"""The console: compact progress lines, every log event kept whole in train.log, the stack's notices off the console
but not lost."""

import json
import logging
from types import SimpleNamespace

import pytest

from trl_irl.console import Notices, compact, stage_progress


def test_a_log_event_becomes_one_compact_line_and_a_whole_json_line(tmp_path, capsys):
    callback = stage_progress("grpo", tmp_path / "train.log")
    state = SimpleNamespace(is_world_process_zero=True, global_step=3, max_steps=10)
    logs = {"loss": 0.123456, "reward": -0.5, "irl/accuracy": 0.75, "kl": 0.0012, "grad_norm": 2.0, "epoch": 0.1}
    callback.on_log(None, state, None, logs=logs)
    callback.on_log(None, state, None, logs={"epoch": 0.2})  # nothing shown: no metric of the line's
    state.global_step = 3  # a tenth of the steps has not passed since the line shown: kept in the file only
    callback.on_log(None, state, None, logs={"loss": 0.1})
    callback.on_log(None, state, None, logs={"eval_loss": 0.2})  # the first evaluation is shown
    assert capsys.readouterr().out.splitlines() == [
        "  grpo step 3/10: loss 0.1235, reward -0.5, irl acc 0.75, kl 0.0012",
        "  grpo step 3/10: eval loss 0.2",
    ]
    rows = [json.loads(line) for line in (tmp_path / "train.log").read_text().splitlines()]
    assert rows == [
        {"stage": "grpo", "step": 3, **logs},
        {"stage": "grpo", "step": 3, "epoch": 0.2},
        {"stage": "grpo", "step": 3, "loss": 0.1},
        {"stage": "grpo", "step": 3, "eval_loss": 0.2},
    ]


def test_an_early_stopped_stage_shows_evaluations_1_2_4_8_and_its_best(tmp_path, capsys):
    callback = stage_progress("bc", None)
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=1300, best_metric=None)
    for epoch in range(1, 14):  # BC: 100 epochs at most, early-stopped after 13 evaluations
        state.global_step = 13 * epoch
        callback.on_log(None, state, None, logs={"eval_loss": 2.0 - epoch / 10})
    state.best_metric = 1.1
    callback.on_log(
        SimpleNamespace(metric_for_best_model="eval_loss"), state, None, logs={"train_loss": 1.4, "train_runtime": 4.5}
    )
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"  bc step {13 * n}/1300" for n in (1, 2, 4, 8, 13)]
    assert lines[-1] == "  bc step 169/1300: train loss 1.4, 4.5 s, early-stopped, best eval loss 1.1"


def test_an_oracle_whose_verifier_never_rewarded_is_told_apart():
    from trl_irl.console import never_rewarded

    key = "rewards/verifier/mean"
    assert never_rewarded([{key: 0.0, "loss": 0.0}, {"train_loss": 0.0}, {key: 0}])
    assert not never_rewarded([{key: 0.0}, {key: 0.0625}])  # one sample rewarded once: a signal
    assert not never_rewarded([{"loss": 0.1}])  # nothing logged: nothing to say
    assert not never_rewarded([])  # a stage reused from an earlier run


def test_other_processes_write_nothing(tmp_path, capsys):
    stage_progress("bc", tmp_path / "train.log").on_log(
        None, SimpleNamespace(is_world_process_zero=False, global_step=1, max_steps=1), None, logs={"loss": 1.0}
    )
    assert capsys.readouterr().out == "" and not (tmp_path / "train.log").exists()


def test_compact_skips_what_is_not_a_number():
    assert compact({"loss": "nan?", "eval_loss": 2.0, "train_runtime": 12.345}) == "eval loss 2, 12.35 s"


def test_notices_stay_off_the_console_and_errors_and_ours_do_not():
    keep = Notices().filter
    record = lambda name, level: logging.LogRecord(name, level, __file__, 1, "m", None, None)  # noqa: E731
    assert not keep(record("bitsandbytes.backends.cpu.ops", logging.WARNING))
    assert not keep(record("py.warnings", logging.WARNING))  # FutureWarnings, routed through logging
    assert not keep(record("transformers.modeling_utils", logging.WARNING))  # the load report
    assert not keep(record("sentence_transformers.base.model", logging.INFO))  # Prompt-OIRL's embedding model
    assert keep(record("transformers.trainer", logging.ERROR))
    assert keep(record("trl_irl.pipeline", logging.WARNING)) and keep(record("__main__", logging.INFO))
    assert keep(record("transformersx", logging.WARNING))  # a name that only starts alike is not one of them


def test_a_multirun_summary_has_a_row_per_job(tmp_path, capsys, monkeypatch):
    from omegaconf import OmegaConf

    from trl_irl.multirun import MultirunSummary

    for job, (bc, grpo) in enumerate([(0.25, 0.5), (0.3, 0.45)]):
        folder = tmp_path / str(job)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n- algo=grpo\n")
        (folder / "metrics.json").write_text(
            json.dumps(
                {
                    "arms": {"bc": {"success_rate": bc, "kl": 0.0}, "grpo": {"success_rate": grpo}},
                    "gap_closed": {"grpo": grpo - bc, "bc@T*": None},
                }
            )
        )
    (tmp_path / "2" / ".hydra").mkdir(parents=True)  # a job that failed: no result
    monkeypatch.chdir(tmp_path.parent)  # Hydra's sweep dir is relative to where trl-irl ran
    MultirunSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": tmp_path.name}}}))
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == str(tmp_path / "multirun_summary.json")  # the absolute path last
    assert "None" not in out  # an undefined gap reads "-", as in a run's table
    summary = json.loads((tmp_path / "multirun_summary.json").read_text())
    rows = {r["job"]: r for r in summary["jobs"]}
    assert rows[0]["overrides"] == "seed=0 algo=grpo" and rows[0]["grpo/success_rate"] == 0.5
    assert rows[1]["bc/success_rate"] == 0.3 and rows[1]["grpo/gap_closed"] == 0.45 - 0.3
    assert rows[2]["missing"] is True and "(no result)" in out
    # over the two seeds: t(1) = 12.706, so bc's interval 0.275 -+ 12.706 x 0.0354 / sqrt(2) is cut at 0, where a rate
    # ends; the gap closed (0.25, 0.15) keeps its negative lower end
    (group,) = summary["over_seeds"]
    low, high = group["bc/success_rate"]["ci95"]
    assert low == 0.0 and high == pytest.approx(0.275 + 12.706 * 0.05 / 2**0.5 / 2**0.5, abs=1e-3)
    assert group["grpo/gap_closed"]["ci95"][0] == pytest.approx(0.2 - 12.706 * 0.1 / 2**0.5 / 2**0.5, abs=1e-3)


def test_a_multirun_with_a_refused_job_lists_it_and_exits_2_after_the_summary(tmp_path, capsys):
    from omegaconf import OmegaConf

    from trl_irl.multirun import MultirunSummary

    for job in (0, 1):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(f"- algo.beta={job - 1}\n")
    (tmp_path / "0" / "refused.txt").write_text("algo.beta must be >= 0, got -1")  # as trl_irl.cli.refuse leaves it
    (tmp_path / "1" / "metrics.json").write_text(json.dumps({"arms": {"bc": {"success_rate": 0.25}}}))
    with pytest.raises(SystemExit) as stop:
        MultirunSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert stop.value.code == 2
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == str(tmp_path / "multirun_summary.json") and "(refused" in out
    rows = {r["job"]: r for r in json.loads((tmp_path / "multirun_summary.json").read_text())["jobs"]}
    assert rows[0]["refused"] == "algo.beta must be >= 0, got -1" and rows[1]["bc/success_rate"] == 0.25


def test_the_results_table_gives_every_difference_and_gap_closed_with_its_interval():
    from rich.console import Console

    from trl_irl.evaluation import intervals, print_table

    def records(successes):  # the per-prompt records evaluate_arm writes
        return [{"score": float(s), "demonstration_nll": 2.0, "demonstration_tokens": 4} for s in successes]

    arms = {"bc": [1, 0, 0, 0, 0, 0, 0, 0], "grpo": [1, 1, 0, 0, 0, 0, 0, 0], "oracle": [1, 0, 1, 0, 0, 0, 0, 0]}
    spans = intervals({arm: records(s) for arm, s in arms.items()})
    metrics = {
        "arms": {a: {"success_rate": sum(s) / 8, "num_samples": 8} for a, s in arms.items()},
        "gap_closed": {"grpo": 1.0},
        "intervals": spans,
        "config": {"algo": {"name": "ppo"}, "credit": {"name": "airl"}, "reward": {"objective": "airl"}},
    }
    console = Console(record=True, width=160)
    print_table(metrics, console)
    text = console.export_text()
    assert "BC vs online IRL: algo=ppo, credit=airl, reward=airl" in text  # what ran
    lines = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in text.splitlines()
        if line.startswith("│")
    }
    low, high = spans["success_rate"]["minus_bc"]["grpo"]["ci95"]
    assert lines["success_rate - bc"][1] == f"+0.125 [{low:+.3f}, {high:+.3f}]" and low == 0.0
    assert lines["gap_closed"][1] == "1.000 [-]"  # one success apart on 8 prompts: the gap may not be there at all
    assert lines["demo_nll - bc"][1] == "+0.000 [+0.000, +0.000]"
    notes = " ".join(text.split())
    assert "95% paired bootstrap interval over the 8 held-out prompts; [-]: unbounded" in notes
    assert "gap_closed = (arm - bc) / (oracle - bc) on success; - where oracle <= bc" in notes
    console = Console(record=True, width=120)
    print_table({"arms": {"bc": {"demo_nll_per_token": 1.0}}}, console)  # no verifier: nothing to explain
    assert "95%" not in console.export_text() and "gap_closed" not in console.export_text()


def test_a_multirun_summary_gives_mean_std_and_interval_over_seeds_and_reads_whole_when_piped(tmp_path, capsys):
    from omegaconf import OmegaConf

    from trl_irl.multirun import MultirunSummary
    from trl_irl.statistics import over_seeds

    values = {"grpo": [0.5, 0.6, 0.7], "ppo": [0.2, 0.3, 0.4]}
    for job, (algo, seed) in enumerate((a, s) for a in values for s in range(3)):
        folder = tmp_path / str(job)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- algo={algo}\n- seed={seed}\n")
        (folder / "metrics.json").write_text(json.dumps({"arms": {algo: {"success_rate": values[algo][seed]}}}))
    MultirunSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    out = capsys.readouterr().out  # not a terminal: no column cut to 80 characters
    summary = json.loads((tmp_path / "multirun_summary.json").read_text())
    groups = {g["overrides"]: g for g in summary["over_seeds"]}
    assert groups["algo=grpo"]["seeds"] == ["0", "1", "2"] and groups["algo=grpo"]["jobs"] == [0, 1, 2]
    assert groups["algo=grpo"]["grpo/success_rate"] == over_seeds([0.5, 0.6, 0.7])
    stats = groups["algo=ppo"]["ppo/success_rate"]
    assert f"{stats['mean']:.3f} +- {stats['std']:.3f} [{stats['ci95'][0]:.3f}, {stats['ci95'][1]:.3f}]" in out
    assert "grpo/success_rate" in out and "…" not in out
