"""The `trl-irl` command end to end at toy size, and the errors a user sees for bad configs."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trl_irl.evaluation import samples_file

TRL_IRL = shutil.which("trl-irl", path=str(Path(sys.executable).parent)) or "trl-irl"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def run(*args, timeout=300):
    return subprocess.run([TRL_IRL, *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def test_toy_recipe_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = run("recipe=toy", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line == str((out / "metrics.json").resolve())  # the output contract
    metrics = json.loads(Path(last_line).read_text())
    assert list(metrics["arms"]) == [
        "bc",
        "bc@T*",
        "grpo",
        "oracle",
    ]  # the automaton's success check rewards the oracle
    for arm in metrics["arms"].values():
        assert 0.0 <= arm["success_rate"] <= 1.0
        assert arm["expert_logprob_per_token"] <= 0.0
    assert metrics["arms"]["grpo"]["kl_to_bc"] > 0.0  # the policy moved
    assert (out / "metrics.png").stat().st_size > 0
    assert (out / "grpo" / "checkpoint-4" / "irl_reward" / "state.json").exists()
    assert "BC vs online IRL" in result.stdout and "gap_closed" in result.stdout
    for arm in metrics["arms"]:
        assert len((out / samples_file(arm)).read_text().splitlines()) == 32  # one per held-out prompt
    for stage in ("bc", "grpo", "oracle"):  # TRL's cards named no base model ("[None]") for a local folder
        card = (out / stage / "README.md").read_text()
        assert "fine-tuned version of `trl-irl's tiny Llama" in card and f'model="{out / stage / "final"}"' in card
    # what ran, and how sure each figure is
    assert "BC vs online IRL: algo=grpo, credit=sequence, reward=bt" in result.stdout
    assert (
        "success_rate - bc" in result.stdout and "95% paired bootstrap interval over the 32 held-out" in result.stdout
    )
    assert "success_greedy 95%" in result.stdout and "success_greedy - bc" in result.stdout
    spans = metrics["intervals"]
    assert set(spans["success_rate"]["ci95"]) == {"bc", "bc@T*", "grpo", "oracle"}
    assert (
        set(spans["success_rate"]["minus_bc"]) == {"bc@T*", "grpo", "oracle"} and "gap_closed" in spans["success_rate"]
    )
    assert set(spans["success_greedy"]["ci95"]) == {"bc", "bc@T*", "grpo", "oracle"}
    assert metrics["gap_closed"]["grpo"] == spans["success_rate"]["gap_closed"]["grpo"]["value"]
    assert metrics["task"]["heldout"] == 32 and metrics["task"]["n_states"] == metrics["config"]["task"]["n_states"]
    # every sample with the reward model's score, which the saved reward gives again
    records = [json.loads(line) for line in (out / "samples_grpo.jsonl").read_text().splitlines()]
    assert all(isinstance(r["reward"], float) and isinstance(r["demonstration_reward"], float) for r in records)
    import trl_irl

    reward = trl_irl.load_reward(out / "grpo" / "final_reward")
    scores = reward.score([r["prompt"] for r in records], [r["sample"] for r in records])
    assert scores == pytest.approx([r["reward"] for r in records], abs=1e-5)


def test_a_saved_airl_reward_scores_with_the_arms_policy(tmp_path):
    """AIRL's reward reads log pi of the arm's policy: load_reward rebuilds both and gives the evaluation's rewards."""
    import trl_irl

    out = tmp_path / "run"
    result = run("recipe=toy", "reward=airl", "arms=[bc,grpo]", "algo.max_steps=2", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads((out / "grpo" / "final_reward" / "trl_irl_reward.json").read_text())
    assert card["objective"] == "airl" and card["policy"] == "../final" and card["lora"] is None
    records = [json.loads(line) for line in (out / "samples_grpo.jsonl").read_text().splitlines()]
    reward = trl_irl.load_reward(out / "grpo" / "final_reward")
    assert reward.policy is not None
    scores = reward.score([r["prompt"] for r in records], [r["sample"] for r in records])
    assert scores == pytest.approx([r["reward"] for r in records], abs=1e-4)


def test_automaton_figures_unchanged_by_the_task_interface(tmp_path):
    """The automaton through the task interface gives the figures of the code before it (commit 4415b48, same
    seed, CPU, one thread): toy at 12 BC epochs, whose validation loss still falls at the last epoch, so the new
    validation split stops BC where the held-out one did. BC's reward accuracy (now scored by the final reward
    model) and mean length (now generated tokens, not task steps) changed meaning and are left out."""
    out = tmp_path / "run"
    result = run("recipe=toy", "bc.num_train_epochs=12", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    arms = json.loads((out / "metrics.json").read_text())["arms"]
    before = {
        "bc": {
            "success_rate": 0.0,
            "expert_logprob_per_token": -1.1013031009697916,
            "valid_token_rate": 0.24651162790697675,
            "kl_to_bc": 0.0,
        },
        "grpo": {
            "success_rate": 0.03125,
            "expert_logprob_per_token": -1.1192795086689487,
            "valid_token_rate": 0.26046511627906976,
            "kl_to_bc": 0.00238995682372738,
            "reward_accuracy": 0.84375,
        },
    }
    for arm, values in before.items():
        for key, value in values.items():  # within noise: a sample or two on another CPU's kernels
            assert arms[arm][key] == pytest.approx(value, abs=0.07 if "rate" in key or "accuracy" in key else 0.05), (
                arm,
                key,
            )


def test_unknown_recipe_lists_the_available_ones():
    result = run("recipe=does_not_exist", timeout=120)
    assert result.returncode != 0
    assert "Could not find 'recipe/does_not_exist'" in result.stderr
    assert "default" in result.stderr and "toy" in result.stderr  # the fix: the names that exist


def test_misspelt_trainer_key_fails_before_training(tmp_path):
    result = run("recipe=toy", "+algo.extra.lerning_rate=1", f"hydra.run.dir={tmp_path}", timeout=120)
    assert result.returncode == 2
    assert "unknown key(s) ['lerning_rate'] under algo" in result.stderr
    assert not (tmp_path / "bc").exists()  # nothing expensive ran


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["+sead=3"], "unknown config key sead"),  # the schema check, before the job
        (["recipe=toy", "task=dataset", "task.path=my.jsonl"], "task.horizon (from recipe=toy"),
        (["algo.beta=-1"], "algo.beta must be >= 0"),  # a trainer config's own check
        (["job=nope"], "job='nope' is unknown"),
        (["recipe=compounding_error", "compounding.mode=fast"], "compounding.mode must be quick or full, got 'fast'"),
    ],
)
def test_a_refusal_is_one_line_on_the_console_and_writes_nothing(overrides, message, tmp_path):
    out = tmp_path / "run"
    result = run(*overrides, f"hydra.run.dir={out}", timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip().splitlines()[-1]], result.stderr  # one line
    assert result.stderr.strip().startswith(f"trl-irl: {message}"), result.stderr
    assert not out.exists()  # refused before Hydra made the job's folder
    traced = subprocess.run(
        [TRL_IRL, *overrides, f"hydra.run.dir={out}"],
        env={**ENV, "HYDRA_FULL_ERROR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )  # for whoever debugs the check itself
    assert traced.returncode == 2 and "Traceback" in traced.stderr and f"trl-irl: {message}" in traced.stderr


def test_hydras_own_commands_leave_a_run_folder_as_it_was(tmp_path):
    out = tmp_path / "run"
    (out / "bc").mkdir(parents=True)
    (out / "bc" / "stage_config.json").write_text("{}")
    for args in (["--cfg", "job"], ["--help"], ["--info", "config"]):
        result = run(*args, f"hydra.run.dir={out}", timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["bc", "bc/stage_config.json"]


def test_an_error_while_running_keeps_its_traceback(tmp_path, monkeypatch):
    """Only a refusal (nothing ran yet) is shortened: a failure inside a stage shows where it happened."""
    (tmp_path / "boom.py").write_text(
        "import trl_irl.pipeline as p\n"
        "def fail(self, *a, **k):\n    raise ValueError('boom inside a stage')\n"
        "p.behaviour_cloning = fail\n"
    )
    monkeypatch.chdir(tmp_path)
    result = run("recipe=toy", "plugins=[boom]", f"hydra.run.dir={tmp_path / 'run'}", timeout=180)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "boom inside a stage" in result.stderr


def test_shared_base_4bit_ppo_end_to_end_and_resume(tmp_path):
    """QLoRA on the toy task: policy, critic and reward as adapters on one 4-bit base. Every role is checkpointed,
    the policy is exported merged, and a resumed run reuses every finished stage and reports the same metrics."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    args = ["recipe=toy", "peft=lora", "quant=4bit", "shared_base=true", "algo=ppo", f"hydra.run.dir={out}"]
    result = run(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    first = json.loads((out / "metrics.json").read_text())
    checkpoint = out / "ppo" / "checkpoint-4"
    for part in (
        "adapter_model.safetensors",
        "critic/model.safetensors",
        "irl_reward/model/model.safetensors",
        "optimizer.pt",
    ):
        assert (checkpoint / part).exists(), part
    merged = AutoModelForCausalLM.from_pretrained(out / "ppo" / "merged")  # a plain model, no adapters
    assert not any("lora" in name for name, _ in merged.named_parameters())
    import trl_irl  # the learnt reward, an adapter and head on the 4-bit base, scores as the evaluation did

    records = [json.loads(line) for line in (out / "samples_ppo.jsonl").read_text().splitlines()]
    scores = trl_irl.load_reward(out / "ppo" / "final_reward").score(
        [r["prompt"] for r in records], [r["sample"] for r in records]
    )
    assert scores == pytest.approx([r["reward"] for r in records], abs=1e-4)
    result = run(*args, "resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    second = json.loads((out / "metrics.json").read_text())
    for arm, values in first["arms"].items():  # the loaded adapter is upcast from bf16 (TRL's QLoRA cast) to fp32,
        for key, value in values.items():  # which moves the tiny KL in its 3rd digit
            assert second["arms"][arm][key] == pytest.approx(value, rel=0.05 if key == "kl_to_bc" else 1e-9), key
    assert second["timings_s"]["bc"] < first["timings_s"]["bc"] / 2  # BC was loaded, not retrained


def test_quantised_base_without_lora_is_refused_before_training(tmp_path):
    result = run("recipe=toy", "quant=4bit", f"hydra.run.dir={tmp_path}", timeout=120)
    assert result.returncode != 0
    assert "only adapters can train: add peft=lora" in result.stderr
    assert not (tmp_path / "bc").exists()


def test_a_qlora_recipe_end_to_end_on_the_tiny_model(policy_path, task, tmp_path):
    """`recipe=qlora/ppo_0.5b` as a user runs it (their weights in model.path, their demonstrations in task.path),
    at toy sizes: the recipe's own settings (4-bit base, all four roles on it, gradient checkpointing in BC and PPO,
    gradient accumulation) train together."""
    data = tmp_path / "demos.jsonl"  # the tiny policy's alphabet: automaton rollouts, written as a user's file
    data.write_text("".join(json.dumps(d) + "\n" for d in task.sample_demonstrations(48, seed=0)))
    out = tmp_path / "run"
    result = run(
        "recipe=qlora/ppo_0.5b",
        f"model.path={policy_path}",
        f"task.path={data}",
        "task.verifier=exact",
        "bc.num_train_epochs=1",
        "reward.pretrain.num_train_epochs=1",
        "reward.online.batch_size=8",
        "algo.max_steps=2",
        "algo.per_device_train_batch_size=8",
        "algo.num_generations=4",
        "algo.gradient_accumulation_steps=2",
        "algo.save_steps=2",
        "eval.batch_size=16",
        f"hydra.run.dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    cfg = metrics["config"]
    assert cfg["shared_base"] and cfg["quant"]["mode"] == "4bit" and cfg["algo"]["extra"]["gradient_checkpointing"]
    assert metrics["arms"]["ppo"]["kl_to_bc"] > 0.0  # the policy moved
    checkpoint = out / "ppo" / "checkpoint-2"
    assert (checkpoint / "critic" / "model.safetensors").exists()
    assert (checkpoint / "irl_reward" / "model" / "model.safetensors").exists()
    for arm in ("ppo", "oracle"):  # the oracle trains the same algorithm, with its own critic
        assert (out / arm / "merged" / "model.safetensors").exists()
        assert f"fine-tuned version of `{policy_path}`" in (out / arm / "README.md").read_text()  # the folder given


def test_a_key_set_without_plus_that_is_not_in_the_config_names_the_key_meant():
    """Hydra refuses ``algo.max_step=5`` with "not in struct" and advises ``+algo.max_step=5``, the wrong fix."""
    from trl_irl.config import check_override_keys
    from trl_irl.validation import Refused

    with pytest.raises(
        Refused,
        match=r"unknown config key algo.max_step \(on the command line: algo.max_step=5\): "
        r"did you mean algo.max_steps\?",
    ):
        check_override_keys(["algo.max_step=5"])
    with pytest.raises(
        Refused,
        match=r"If num_iterations is a field of the algo section's config class that its file does not list, "
        r"set it with a \+: \+algo.num_iterations=2$",
    ):  # a GRPOConfig field grpo.yaml lacks
        check_override_keys(["algo.num_iterations=2"])
    with pytest.raises(Refused, match="did you mean seed"):
        check_override_keys(["sead=3"])
    with pytest.raises(Refused, match=r"did you mean task.path.*Fix the spelling or remove it$"):  # the group's keys;
        check_override_keys(["task=dataset", "task.pth=my.jsonl"])  # a task's options are all in its file: no "+" fix
    # what Hydra composes passes: keys the config has, + keys, group choices, a recipe's own keys, Hydra's
    check_override_keys(
        [
            "algo=ppo",
            "algo.gae_lambda=0.9",
            "+algo.num_iterations=2",
            "recipe=qlora/ppo_0.5b",
            "algo.gradient_accumulation_steps=8",
            "hydra.run.dir=out",
            "hydra/job_logging=disabled",
            "task.path=my.jsonl",
        ]
    )
    check_override_keys(["-m", "algo=grpo,ppo", "algo.nope=1"])  # a multirun over groups: Hydra checks each job


def test_the_cli_says_which_key_was_meant_for_a_key_set_without_plus(tmp_path):
    result = run("algo.max_step=5", f"hydra.run.dir={tmp_path}", timeout=120)
    assert result.returncode == 2 and "not in struct" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("trl-irl: unknown config key algo.max_step")


def test_the_python_door_keeps_the_stacks_notices_in_the_runs_log_and_restores_the_callers_logging(tmp_path):
    """``trl_irl.run`` shows what the CLI shows: no progress bars of model loads, no library warnings on the console;
    those go to ``<run>/cli.log``; afterwards the caller's logging and the libraries' settings are as they were."""
    script = textwrap.dedent(
        f"""
        import logging, transformers, datasets
        import trl_irl
        before = (transformers.utils.logging.is_progress_bar_enabled(), logging._warnings_showwarning is None,
                  len(logging.getLogger().handlers), transformers.utils.logging.get_verbosity())
        trl_irl.run("recipe=toy", "algo.max_steps=2", "bc.num_train_epochs=1", output_dir={str(tmp_path / "run")!r})
        after = (transformers.utils.logging.is_progress_bar_enabled(), logging._warnings_showwarning is None,
                  len(logging.getLogger().handlers), transformers.utils.logging.get_verbosity())
        assert before == after, (before, after)
        assert datasets.utils.logging.is_progress_bar_enabled()
        print("restored")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("restored")
    for noise in ("Loading weights", "Writing model shards", "Warning", "warn("):
        assert noise not in result.stderr, (noise, result.stderr[-2000:])
    log = (tmp_path / "run" / "cli.log").read_text()
    assert "TRLExperimentalWarning" in log  # raised while the run was checked, before its folder existed
