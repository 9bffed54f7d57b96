"""Nothing a user trains is lost or silently mixed: resume is exact (also past an epoch boundary), torn checkpoints
are skipped, a stale config is refused, one folder holds one run, NaN is never saved."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from tests.test_cli import run
from trl_irl.checkpoints import COMPLETE, mark_complete, read_json, read_safetensors, select_checkpoint, torn_reason
from trl_irl.run_folder import LOCK, RunLock, config_changes, stage_config

# 16 training prompts, 4 per step: an epoch is 4 steps, so resuming from checkpoint-6 crosses the boundary at 4 and 8
ARGS = [
    "recipe=toy",
    "arms=[bc,grpo]",
    "task.num_demonstrations=16",
    "algo.max_steps=10",
    "algo.save_steps=2",
    "algo.save_total_limit=null",
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run(*ARGS, f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def interrupted(reference, tmp_path, keep_up_to: int):
    """A copy of the reference as if killed right after checkpoint-``keep_up_to`` was written."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for stage in ("grpo",):
        for ckpt in (out / stage).glob("checkpoint-*"):
            if int(ckpt.name.split("-")[1]) > keep_up_to:
                shutil.rmtree(ckpt)
        shutil.rmtree(out / stage / "final")
        shutil.rmtree(out / stage / "final_reward")
    (out / "metrics.json").unlink()
    return out


def assert_same_weights(a, b):
    for part in ("grpo/final", "grpo/final_reward"):
        wa, wb = read_safetensors(a / part), read_safetensors(b / part)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), (part, key)  # bit-identical


def test_resume_past_an_epoch_boundary_is_exact(reference, tmp_path):
    out = interrupted(reference, tmp_path, keep_up_to=6)
    result = run(*ARGS, f"hydra.run.dir={out}", "resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "grpo continues from" in result.stdout and "checkpoint-6" in result.stdout
    assert_same_weights(reference, out)


def test_ctrl_c_says_how_to_resume_and_the_folder_alone_resumes_exactly(reference, tmp_path):
    """Interrupted mid-training (SIGINT after checkpoint-6 is complete): one line with the command, no traceback; that
    command alone (no override retyped) ends bit-identical to the uninterrupted run."""
    import signal
    import time

    from tests.test_cli import ENV, TRL_IRL

    out = tmp_path / "run"
    process = subprocess.Popen(
        [TRL_IRL, *ARGS, f"hydra.run.dir={out}"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,  # Ctrl-C reaches it even where the suite itself
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # runs in background
    deadline = time.time() + 300
    while not (out / "grpo" / "checkpoint-6" / COMPLETE).exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    command = f"trl-irl resume=true hydra.run.dir={out}"
    assert stderr.strip().splitlines()[-1].endswith(f"Resume with: {command}"), stderr[-2000:]
    assert not (out / "grpo" / "final").exists() and not (out / LOCK).exists()  # stopped, the folder released
    result = run("resume=true", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "grpo continues from" in result.stdout
    assert_same_weights(reference, out)


def test_sigterm_is_an_interrupt_too(tmp_path):
    import signal
    import time

    from tests.test_cli import ENV, TRL_IRL

    out = tmp_path / "run"
    process = subprocess.Popen(
        [TRL_IRL, "recipe=toy", "bc.num_train_epochs=1000", f"hydra.run.dir={out}"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not (out / "bc" / "stage_config.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"trl-irl: interrupted (SIGTERM); what was trained up to the last "
        f"complete checkpoint is kept. Resume with: trl-irl resume=true "
        f"hydra.run.dir={out}"
    )
    assert not (out / LOCK).exists()


def test_a_resume_that_reuses_the_finished_online_arm_plots_its_reward_curve(reference, tmp_path):
    """Everything finished, only the evaluation left: the online-IRL arm is reused, and the plot still shows its
    reward updates (from the log history saved with the arm), the same figure as the uninterrupted run's."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "metrics.json").unlink()
    (out / "metrics.png").unlink()
    history = json.loads((out / "grpo" / "final" / "log_history.json").read_text())
    assert sum("irl/accuracy" in event for event in history) == 5  # 10 steps, logged every 2nd (the toy recipe)
    result = run(*ARGS, f"hydra.run.dir={out}", "resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "grpo: finished by an earlier run, reused" in result.stdout
    assert (out / "metrics.png").read_bytes() == (reference / "metrics.png").read_bytes()


def test_a_resume_composes_the_recorded_overrides_with_the_given_ones(tmp_path):
    from trl_irl.run_folder import RECORD, resume_overrides, write_record

    write_record(tmp_path, ["recipe=toy", "algo=ppo", "+algo.num_iterations=2", "seed=3", "output_dir=/old"], {"a": 1})
    assert (tmp_path / RECORD).read_text() == "- recipe=toy\n- algo=ppo\n- +algo.num_iterations=2\n- seed=3\n"
    assert resume_overrides(tmp_path, ["resume=true"]) == [
        "recipe=toy",
        "algo=ppo",
        "+algo.num_iterations=2",
        "seed=3",
        "resume=true",
    ]
    # a given key replaces the recorded one (a key added with + keeps its +); resume's own keys are never recorded ones
    assert resume_overrides(tmp_path, ["resume=true", "algo.num_iterations=4", "seed=1", "retrain_changed=true"]) == [
        "recipe=toy",
        "algo=ppo",
        "resume=true",
        "+algo.num_iterations=4",
        "seed=1",
        "retrain_changed=true",
    ]
    assert resume_overrides(tmp_path / "elsewhere", ["resume=true", "seed=1"]) == ["resume=true", "seed=1"]  # no record


def test_a_torn_checkpoint_is_set_aside_and_the_previous_one_used(reference, tmp_path):
    out = interrupted(reference, tmp_path, keep_up_to=8)
    torn = out / "grpo" / "checkpoint-8"
    # killed while our part was written: TRL's files complete, the reward state only in its temporary folder
    (torn / "irl_reward").rename(torn / "irl_reward.tmp")
    (torn / COMPLETE).unlink()
    cut = out / "grpo" / "checkpoint-6" / "model.safetensors"  # and a truncated copy of the one before
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    assert "model.safetensors has" in torn_reason(out / "grpo" / "checkpoint-6")
    result = run(*ARGS, f"hydra.run.dir={out}", "resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint-8 is torn (no COMPLETE marker" in result.stdout
    assert "checkpoint-6 is torn (model.safetensors has" in result.stdout
    assert "continues from" in result.stdout and "checkpoint-4" in result.stdout
    assert (out / "grpo" / "checkpoint-8.torn" / "irl_reward.tmp").exists()  # kept, out of the trainer's sight
    assert_same_weights(reference, out)


def test_resume_from_picks_a_checkpoint(reference, tmp_path):
    out = interrupted(reference, tmp_path, keep_up_to=10)
    result = run(*ARGS, f"hydra.run.dir={out}", "resume=true", "resume_from=grpo/checkpoint-2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "grpo" / "checkpoint-10.unused").exists()  # newer ones set aside, not overwritten
    assert_same_weights(reference, out)
    done = run(*ARGS, f"hydra.run.dir={out}", "resume=true", "resume_from=grpo/checkpoint-2", timeout=120)
    assert done.returncode != 0 and "resume_from=grpo/checkpoint-2: grpo has finished" in done.stderr
    shutil.rmtree(out / "grpo" / "final")
    bad = run(*ARGS, f"hydra.run.dir={out}", "resume=true", "resume_from=grpo/checkpoint-3", timeout=120)
    assert bad.returncode != 0 and "resume_from=grpo/checkpoint-3: no such checkpoint" in bad.stderr


def test_a_stale_resume_is_refused_naming_the_keys(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = (out / "bc" / "final" / "model.safetensors").stat().st_mtime_ns
    result = run(*ARGS, f"hydra.run.dir={out}", "resume=true", "task.seed=5", "reward=gail", timeout=120)
    assert result.returncode != 0
    assert "was trained under another config" in result.stderr
    assert "bc: task.seed: 0 -> 5" in result.stderr
    assert "reward.objective: 'bt' -> 'gail'" in result.stderr
    assert (out / "bc" / "final" / "model.safetensors").stat().st_mtime_ns == before  # nothing touched


def test_retrain_changed_keeps_what_did_not_change(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    result = run(*ARGS, f"hydra.run.dir={out}", "resume=true", "algo.learning_rate=3e-4", "retrain_changed=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "grpo was trained under another config; retraining it" in result.stdout
    assert "bc was trained" not in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["timings_s"]["bc"] < 1.0  # reused
    assert json.loads((out / "grpo" / "stage_config.json").read_text())["algo"]["learning_rate"] == 3e-4


def test_a_fresh_run_into_a_used_folder_is_refused_and_resume_into_an_empty_one_says_so(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    result = run(*ARGS, f"hydra.run.dir={out}", timeout=120)
    assert result.returncode == 2 and "already holds trained stages ['bc', 'reward_pretrain', 'grpo']" in result.stderr
    assert "Traceback" not in result.stderr  # a refusal: one line, nothing ran
    empty = tmp_path / "empty"
    result = run("recipe=toy", "arms=[bc]", f"hydra.run.dir={empty}", "resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resume=true: nothing to resume in" in result.stdout


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    result = run("recipe=toy", f"hydra.run.dir={out}", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"is in use by another run (pid {os.getpid()} on this host" in result.stderr
    assert not (out / "bc").exists()


def test_a_stale_lock_is_taken_over_and_the_lock_released(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}))
    messages = []
    with RunLock(tmp_path, log=messages.append):
        assert read_json(tmp_path / LOCK)["pid"] == os.getpid()
        with pytest.raises(RuntimeError, match="in use by another run"):
            RunLock(tmp_path).__enter__()
    assert "is gone; taking the folder over" in messages[0]
    assert not (tmp_path / LOCK).exists()
    with pytest.raises(ValueError), RunLock(tmp_path):  # released when the run fails, too
        raise ValueError
    assert not (tmp_path / LOCK).exists()


def test_select_checkpoint_without_any_complete_one(tmp_path):
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "x").write_text("1")
    mark_complete(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-2" / "x").write_text("12")  # grew after the marker: not the file that was written
    logged = []
    assert select_checkpoint(tmp_path, log=logged.append) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2.torn", "checkpoint-4.torn"]
    assert "x has 2 bytes, 1 were written" in logged[1]


def test_damaged_files_are_named():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")
        with pytest.raises(OSError, match=r"model.safetensors cannot be read"):
            read_safetensors(d)
        (Path(d) / "state.json").write_text('{"num_updates": 3, "buf')
        with pytest.raises(OSError, match=r"state.json is not valid JSON"):
            read_json(Path(d) / "state.json")


def test_stage_configs_differ_where_the_stage_depends_on_the_change():
    cfg = {
        "seed": 0,
        "task": {"name": "dataset", "path": "a.jsonl", "verifier": "exact", "answer_column": None},
        "model": {},
        "quant": {},
        "peft": {},
        "bc": {"learning_rate": 1e-3},
        "reward": {"objective": "bt", "prefix_weight": 0.0, "pretrain": {}, "online": {"learning_rate": 1e-4}},
        "eval": {"batch_size": 8},
        "algo": {"name": "grpo"},
        "credit": {"name": "sequence"},
        "shared_base": False,
        "spin": {},
    }
    changed = json.loads(json.dumps(cfg))
    changed["task"]["verifier"] = "numeric"
    changed["reward"]["online"]["learning_rate"] = 1e-5
    diffs = {
        s: config_changes(stage_config(cfg, s, "grpo"), stage_config(changed, s, "grpo"))
        for s in ("bc", "reward_pretrain", "grpo", "oracle", "spin")
    }
    assert diffs == {
        "bc": [],
        "reward_pretrain": [],
        "spin": [],
        "grpo": ["reward.online.learning_rate: 0.0001 -> 1e-05"],
        "oracle": ["task.verifier: 'exact' -> 'numeric'"],
    }
    # each key once, nested as in the config: the online-IRL arm takes the whole reward section, its pretraining's keys
    # among them; the oracle's verifier sits in its task
    grpo, oracle = stage_config(cfg, "grpo", "grpo"), stage_config(cfg, "oracle", "grpo")
    assert not [k for k in [*grpo, *oracle] if "." in k]
    assert grpo["reward"]["objective"] == "bt" and grpo["reward"]["online"]["learning_rate"] == 1e-4
    assert oracle["task"]["verifier"] == "exact"


def test_nan_in_a_trained_model_is_never_saved(tmp_path, policy_path, tokenizer, demos):
    from tests.test_online_irl_trainer import make_trainer

    trainer = make_trainer(tmp_path, policy_path, tokenizer, demos)
    with torch.no_grad():
        next(trainer.reward_updater.model.parameters())[0].fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"NaN or inf in \['reward\..*this checkpoint is not written"):
        trainer._save_checkpoint(trainer.model, None)
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_a_diverging_reward_update_stops_before_its_step(tmp_path, policy_path, tokenizer, demos):
    from tests.test_online_irl_trainer import make_trainer

    trainer = make_trainer(tmp_path, policy_path, tokenizer, demos, reward_learning_rate=1e-3)
    updater = trainer.reward_updater
    updater.add(
        [d["prompt"] for d in demos[:8]],
        [d["completion"] for d in demos[:8]],
        [d["completion"][::-1] for d in demos[:8]],
    )
    before = {k: v.clone() for k, v in updater.model.state_dict().items()}
    from trl_irl.batching import model_inputs

    updater.objective.pair_loss = lambda model, batch, policy: (
        model(**model_inputs(batch)).logits.sum() * float("nan"),
        {},
    )
    with pytest.raises(FloatingPointError, match="not finite"):
        updater.update()
    after = updater.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the step never ran


def test_a_sigterm_swallowed_by_library_code_still_ends_the_run(tmp_path):
    """The handler's ``Terminated`` can be lost (raised inside a finaliser, or caught by library code): the next
    stage's start, or the next training step, raises it again instead of training on to the end."""
    import signal
    import time

    from transformers import TrainerControl, TrainerState, TrainingArguments

    from trl_irl.run_folder import Terminated, raise_if_terminated, resumable, termination_check

    def swallowed_sigterm():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here, at once
        except Terminated:
            return True  # ...and library code swallows it
        return False

    step_end = termination_check().on_step_end
    args = TrainingArguments(str(tmp_path), report_to=[])
    for next_check in (raise_if_terminated, lambda: step_end(args, TrainerState(), TrainerControl())):
        with pytest.raises(Terminated), resumable(tmp_path):
            assert swallowed_sigterm()
            next_check()  # a stage starting, a training step ending: raised again
    with resumable(tmp_path):  # a new run starts clean: nothing raised
        raise_if_terminated()


def test_the_reward_pretraining_stage_depends_on_its_trainable_blocks():
    """Reward pretraining trains only ``reward.online.trainable_layers`` top blocks, as the online updates do: a
    resume that changes it must retrain reward pretraining too, not reuse the one trained under the old value."""
    cfg = {
        "seed": 0,
        "task": {"name": "dataset"},
        "model": {},
        "quant": {},
        "peft": {},
        "bc": {},
        "reward": {"objective": "bt", "prefix_weight": 0.0, "pretrain": {}, "online": {"trainable_layers": None}},
        "eval": {"batch_size": 8},
    }
    changed = json.loads(json.dumps(cfg))
    changed["reward"]["online"]["trainable_layers"] = 2
    assert config_changes(
        stage_config(cfg, "reward_pretrain", "grpo"), stage_config(changed, "reward_pretrain", "grpo")
    ) == ["reward.online.trainable_layers: None -> 2"]
    assert config_changes(stage_config(cfg, "bc", "grpo"), stage_config(changed, "bc", "grpo")) == []
