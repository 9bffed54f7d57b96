"""A user's file through the whole job on the tiny model (a character tokenizer built from the file's text): plain
and chat rows, the oracle's reward is the verifier's, SPIN trains, and bad input stops before any model loads."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trl_irl.stages.context import open_context
from trl_irl.stages.training import (
    behaviour_cloning,
    build_policy_trainer,
    reward_pretraining,
    rows_dataset,
    sdft_training,
    spin_training,
)

TRL_IRL = shutil.which("trl-irl", path=str(Path(sys.executable).parent)) or "trl-irl"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
SMALL = [
    "bc.num_train_epochs=2",
    "reward.pretrain.num_train_epochs=1",
    "algo.max_steps=2",
    "algo.per_device_train_batch_size=8",
    "algo.num_generations=4",
    "algo.save_steps=2",
    "eval.batch_size=32",
]


def reversal_file(path: Path, n=60, chat=False) -> Path:
    rows = []
    for i in range(n):
        items = [chr(97 + int(d)) for d in format(i + 8, "o")]  # distinct: i written in octal, as letters
        prompt, answer = "rev " + "".join(items) + "=", "".join(reversed(items))
        if chat:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "completion": [{"role": "assistant", "content": answer}],
                }
            )
        else:
            rows.append({"prompt": prompt, "completion": answer})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(*args, cwd=None, timeout=300):
    return subprocess.run([TRL_IRL, *args], env=ENV, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def composed(*overrides):
    from hydra import compose, initialize_config_dir

    from trl_irl.config import CONF_DIR, config_dict

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return config_dict(compose("config", overrides=list(overrides)))


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
def test_a_users_file_end_to_end(chat, tmp_path):
    """`trl-irl task=dataset task.path=my.jsonl task.verifier=exact`: BC, online IRL and the oracle, the table with
    gap closed, metrics a dataset supports (and not the automaton's), and samples a person can read."""
    reversal_file(tmp_path / "my.jsonl", chat=chat)
    out = tmp_path / "run"
    result = run(
        "task=dataset", "task.path=my.jsonl", "task.verifier=exact", *SMALL, f"hydra.run.dir={out}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(out / "metrics.json")
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["arms"]) == ["bc", "bc@T*", "grpo", "oracle"]
    for arm in metrics["arms"].values():
        assert 0.0 <= arm["success_rate"] <= 1.0 and arm["demo_nll_per_token"] > 0.0
        assert "expert_logprob_per_token" not in arm and "valid_token_rate" not in arm  # no known expert here
        assert {"reward_accuracy", "reward_ties", "kl_to_bc", "mean_length", "distinct_2"} <= set(arm)
    bc, irl, oracle = (metrics["arms"][a]["success_rate"] for a in ("bc", "grpo", "oracle"))
    expected = (irl - bc) / (oracle - bc) if oracle > bc else None
    assert metrics["gap_closed"]["grpo"] == (pytest.approx(expected) if expected is not None else None)
    best = metrics["arms"]["bc@T*"]  # BC at the temperature its validation rows liked best
    assert set(best["validation_success"]) == {"0", "0.25", "0.5", "0.75", "1"}
    assert best["temperature"] == min(
        float(t) for t, v in best["validation_success"].items() if v == max(best["validation_success"].values())
    )
    assert metrics["reference"]["success_rate"] == 1.0  # every demonstration passes its own verifier
    assert metrics["task"]["chat"] is chat and metrics["task"]["heldout"] == 6
    assert "gap_closed" in result.stdout and "oracle" in result.stdout
    records = [json.loads(line) for line in (out / "samples_oracle.jsonl").read_text().splitlines()]
    assert len(records) == 6 and set(records[0]) == {
        "prompt",
        "sample",
        "demonstration",
        "score",
        "reward",
        "greedy_score",
        "demonstration_reward",
        "demonstration_nll",
        "demonstration_tokens",
    }
    if chat:
        assert records[0]["prompt"].startswith("user: rev ") and records[0]["prompt"].endswith("\nassistant: ")
    assert all(r["score"] == float(r["sample"].strip() == r["demonstration"]) for r in records)


@pytest.fixture
def dataset_pipeline(tmp_path):
    from trl_irl.plan import RunPlan

    path = reversal_file(tmp_path / "my.jsonl")
    pipeline = RunPlan(
        composed(
            "task=dataset",
            f"task.path={path}",
            "task.verifier=exact",
            *SMALL,
            "bc.num_train_epochs=1",
            f"output_dir={tmp_path / 'run'}",
        )
    )
    pipeline = open_context(pipeline)
    return pipeline, behaviour_cloning(pipeline)


def test_the_oracles_reward_is_the_verifier(dataset_pipeline):
    """The oracle trainer's rewards, through TRL's own reward call, equal the verifier on each row: right answers
    get 1, wrong ones 0, whatever the demonstrations look like."""
    p, bc = dataset_pipeline
    trainer = build_policy_trainer(p, "oracle", bc, max_steps=1)
    assert trainer.reward_updater is None  # no reward model: nothing learns a reward here
    rows = [rows_dataset(p.data.train)[i] for i in range(8)]
    completions = [r["demonstration"] if i % 2 == 0 else r["demonstration"][::-1] + "x" for i, r in enumerate(rows)]
    ids = [p.tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    rewards = trainer._calculate_rewards(rows, [r["prompt"] for r in rows], completions, ids)
    expected = [p.plan.task.verifier(r["prompt"], c, p.data.train[r["row_index"]]) for r, c in zip(rows, completions)]
    assert rewards[:, 0].tolist() == expected == [1.0, 0.0] * 4
    irl = build_policy_trainer(
        p, "grpo", bc, reward_pretraining(p, bc), max_steps=1
    )  # online IRL: its one reward is the reward model's
    assert [f.__name__ for f in irl.reward_funcs] == ["irl_reward"] and irl.reward_updater is not None


def test_spin_on_a_4bit_lora_policy(tmp_path):
    """SPIN with peft=lora quant=4bit: DPO trains the policy adapter against a frozen copy of it, and the arm is
    saved as the adapter alone plus the merged model, like every other arm."""
    from trl_irl.plan import RunPlan

    path = reversal_file(tmp_path / "my.jsonl")
    p = RunPlan(
        composed(
            "task=dataset",
            f"task.path={path}",
            "task.verifier=exact",
            "peft=lora",
            "quant=4bit",
            "bc.num_train_epochs=1",
            "arms=[bc,spin]",
            "spin.rounds=1",
            "spin.learning_rate=1e-3",
            "spin.per_device_train_batch_size=8",
            f"output_dir={tmp_path / 'run'}",
        )
    )
    p = open_context(p)
    bc_path = behaviour_cloning(p)
    spin_training(p, bc_path)
    final = p.plan.final_dir("spin")
    assert (final / "adapter_model.safetensors").exists() and (final / "DONE").exists()
    assert (final.parent / "merged" / "model.safetensors").exists()
    from trl_irl.checkpoints import read_safetensors

    bc, spin = read_safetensors(bc_path), read_safetensors(final)
    assert set(bc) == set(spin)  # the policy adapter only: no "ref" copy saved
    assert any(not torch.equal(bc[k], spin[k]) for k in bc)  # and it trained


def test_spin_trains_from_bc_on_demonstrations_over_its_own_samples(dataset_pipeline):
    """SPIN's DPO rounds raise the demonstrations' log-likelihood relative to the policy's own samples: on the first
    round's pairs (BC's samples, regenerated with the round's seed), log pi(demo) - log pi(sample) grows from BC to
    the SPIN policy."""
    from trl_irl.evaluation import sample_completions
    from trl_irl.rewards.objectives import completion_logps, encode

    p, bc_path = dataset_pipeline
    p.cfg["spin"] |= {"rounds": 2, "learning_rate": 1e-3, "num_train_epochs": 2, "per_device_train_batch_size": 8}
    spin_training(p, bc_path)
    assert (p.out / "spin" / "round_1" / "final" / "model.safetensors").exists()
    assert (p.plan.final_dir("spin") / "DONE").exists()
    bc, spin = p.roles.load_policy(bc_path), p.roles.load_policy(str(p.plan.final_dir("spin")))
    prompts, demos = [r["prompt"] for r in p.data.train], [r["completion"] for r in p.data.train]
    samples = sample_completions(
        bc,
        p.tokenizer,
        prompts,
        p.data.max_completion_length,
        p.cfg["eval"]["batch_size"],
        6000 + 100 * p.cfg["seed"] + 1,
    )
    keep = [i for i, (s, d) in enumerate(zip(samples, demos)) if s.strip() != d.strip()]

    def margin(model):
        def logp(texts):
            return completion_logps(
                model, encode(p.tokenizer, [prompts[i] for i in keep], [texts[i] for i in keep])
            ).sum(-1)

        with torch.no_grad():
            return (logp(demos) - logp(samples)).mean().item()

    assert len(keep) > len(prompts) // 2
    assert margin(spin) > margin(bc) + 1.0


def test_sdft_distils_the_policy_toward_bc_shown_the_demonstration(dataset_pipeline, monkeypatch):
    """SDFT (TRL's SDFTTrainer) from BC: the teacher reads the demonstration, a blank line and the prompt (TRL's
    prompt-first default made a plain-text policy's teacher predict EOS where the answer goes); the distillation loss on
    the policy's own completions falls over training (from TRL's logged ``sdft/distillation_loss``), and the saved
    policy is not BC. On a model trained from scratch the teacher barely reads the demonstration (BC never saw one in
    its prompt), so the loss starts near 0."""
    from trl.experimental.sdft import sdft_trainer

    p, bc_path = dataset_pipeline
    seen = []
    compose = sdft_trainer.DemonstrationTeacherContextBuilder._compose_teacher_prompt

    def spy(self, prompt, context):
        seen.append((prompt, context, compose(self, prompt, context)))
        return seen[-1][2]

    monkeypatch.setattr(sdft_trainer.DemonstrationTeacherContextBuilder, "_compose_teacher_prompt", spy)
    p.cfg["sdft"] |= {"max_steps": 40, "learning_rate": 3e-4, "per_device_train_batch_size": 8, "num_generations": 4}
    sdft_training(p, bc_path)
    assert (p.plan.final_dir("sdft") / "DONE").exists()
    demonstration = {r["prompt"]: r["completion"] for r in p.data.train}
    assert seen and all(demonstration[prompt] == context for prompt, context, _ in seen)
    assert all(teacher == f"{context}\n\n{prompt}" for prompt, context, teacher in seen)
    events = [json.loads(line) for line in (p.out / "train.log").read_text().splitlines()]
    losses = [e["sdft/distillation_loss"] for e in events if "sdft/distillation_loss" in e]
    assert len(losses) == 8 and np.mean(losses[-2:]) < 0.6 * np.mean(losses[:2]), losses
    bc, sdft = (
        p.roles.load_policy(bc_path).state_dict(),
        p.roles.load_policy(str(p.plan.final_dir("sdft"))).state_dict(),
    )
    assert any(not torch.equal(bc[k], sdft[k]) for k in bc)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task=dataset", "task.path=nowhere.jsonl"], "task.path=nowhere.jsonl: no such file or folder"),
        (
            ["task=dataset", "task.path={file}", "task.prompt_column=question"],
            r"task.prompt_column='question' is not a column of",
        ),
        (["task=dataset", "task.path={file}", "arms=[bc,oracle]"], "arms: oracle is rewarded by the task's verifier"),
        (["task=dataset", "task.path={file}", "task.verifier=exact", "arms=[bc,ppo]"], r"arms: \['ppo'\] unknown"),
        (["task=dataset", "task.path={file}", "task.verifier=fuzzy"], "task.verifier='fuzzy' is unknown"),
        (
            ["task=dataset", "task.path={file}", "arms=[bc,spin]", "+spin.extra.betta=1"],
            r"unknown key\(s\) \['betta'\] under spin",
        ),
    ],
)
def test_bad_input_is_refused_before_any_model_loads(overrides, message, tmp_path):
    from trl_irl.plan import RunPlan

    file = reversal_file(tmp_path / "my.jsonl")
    cfg = composed(*[o.replace("{file}", str(file)) for o in overrides], f"output_dir={tmp_path / 'run'}")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        RunPlan(cfg)
    assert not (tmp_path / "run").exists()


def test_filtering_that_leaves_no_rows_stops_before_the_model(tmp_path):
    from trl_irl.plan import RunPlan

    file = reversal_file(tmp_path / "my.jsonl")
    with pytest.raises(ValueError, match="no training rows left with prompts of at most task.max_prompt_length=3"):
        RunPlan(
            composed("task=dataset", f"task.path={file}", "task.max_prompt_length=3", f"output_dir={tmp_path / 'run'}")
        )
    assert not (tmp_path / "run" / "init").exists() and not (tmp_path / "run" / "bc").exists()


def test_cli_error_names_the_key_before_training(tmp_path):
    reversal_file(tmp_path / "my.jsonl")
    result = run(
        "task=dataset",
        "task.path=my.jsonl",
        "task.completion_column=answer",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode != 0
    assert "task.completion_column='answer' is not a column of my.jsonl" in result.stderr
    assert not (tmp_path / "run" / "bc").exists()


def test_a_registered_task_from_the_command_line(tmp_path):
    """`task.name=<module>:<function>`: a user's own task, built from the task group's other keys."""
    (tmp_path / "my_tasks.py").write_text(
        "from trl_irl.tasks import DatasetTask\n"
        "def reversal(path, **kwargs):\n"
        "    return DatasetTask(path, verifier='exact', **kwargs)\n"
    )
    reversal_file(tmp_path / "my.jsonl")
    sys.path.insert(0, str(tmp_path))
    try:
        from trl_irl.plan import RunPlan

        cfg = composed(
            "task=dataset",
            "task.name=my_tasks:reversal",
            f"task.path={tmp_path / 'my.jsonl'}",
            "~task.verifier",
            f"output_dir={tmp_path / 'run'}",
        )
        pipeline = RunPlan(cfg)
        assert pipeline.arms == ["bc", "grpo", "oracle"]  # its verifier brings the oracle
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_tasks", None)


def test_a_python_function_as_the_verifier(tmp_path):
    """trl_irl.run(verifier=fn): the function scores the held-out samples and rewards the oracle."""
    import trl_irl

    seen = []

    def reversed_exactly(prompt, completion, row):
        seen.append(row)
        return float(completion.strip() == row["completion"])

    path = reversal_file(tmp_path / "my.jsonl")
    path.write_text(path.read_text().replace('"rev ', '"r\\u00e9v '))  # "rév ...": a prompt that is not ASCII
    metrics = trl_irl.run(
        "task=dataset",
        f"task.path={path}",
        "arms=[bc]",
        "bc.num_train_epochs=1",
        "eval.batch_size=32",
        output_dir=tmp_path / "run",
        verifier=reversed_exactly,
    )
    text = (tmp_path / "run" / "samples_bc.jsonl").read_text(encoding="utf-8")
    assert '"prompt": "rév ' in text  # written as it reads, not escaped
    records = [json.loads(line) for line in text.splitlines()]
    assert metrics["arms"]["bc"]["success_rate"] == sum(r["score"] for r in records) / len(records)
    assert all(r["score"] == float(r["sample"].strip() == r["demonstration"]) for r in records)
    assert metrics["config"]["task"]["verifier"] == "reversed_exactly" and "completion" in seen[0]  # the file's row
