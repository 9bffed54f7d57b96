"""The training stages, each a function of what it starts from: ``behaviour_cloning(ctx)``,
``reward_pretraining(ctx, bc)``, ``policy_training(ctx, arm, bc, reward)``, ``spin_training(ctx, bc)`` and
``sdft_training(ctx, bc)``. Each writes its model under ``<stage>/final`` through the stage runner (``ctx.runner``),
which records the config that shaped it and marks it done; ``pipeline.run`` decides which to run and in what order.
The two whose results later stages take (BC's folder, the pretrained reward) return them, reused when a resumed run
finished them; an arm a resumed run finished is skipped by ``pipeline.run`` (the evaluation reads it from disk).
"""

from __future__ import annotations

import functools
import gc
import json
import math
import shutil
from pathlib import Path

import torch
from datasets import Dataset
from transformers import EarlyStoppingCallback
from trl import DPOTrainer, SFTTrainer
from trl.experimental.sdft import SDFTTrainer

from ..checkpoints import atomic_write_text, non_finite
from ..evaluation import sample_completions
from ..rewards.online import OnlineRewardUpdater
from ..shared_base import AdapterRole
from ..trainers import IRLRewardTrainer
from .context import Context

LOG_HISTORY = "log_history.json"  # an RL arm's logged events, beside its final model


def release_memory():
    """Return freed tensors' memory (after the last reference to a model is dropped)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def behaviour_cloning(ctx: Context) -> str:
    """BC on the training rows (TRL's SFTTrainer), early-stopped on the validation loss; the best epoch's model is
    saved as ``bc/final``, every other arm's start. Returns that folder."""
    plan, runner = ctx.plan, ctx.runner
    if runner.reuse_finished("bc"):
        return str(plan.final_dir("bc"))
    runner.begin("bc")
    model, peft = ctx.roles.bc_model()

    def pairs(rows):
        return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])

    trainer = SFTTrainer(
        model=model,
        args=plan.bc_config(),
        train_dataset=pairs(ctx.data.train),
        eval_dataset=pairs(ctx.data.validation),
        processing_class=ctx.tokenizer,
        callbacks=[EarlyStoppingCallback(ctx.cfg["bc"]["early_stopping_patience"])],
        **peft,
    )
    runner.progress(trainer, "bc").train()
    runner.mark_done("bc", functools.partial(ctx.roles.save_model, trainer.model))
    # the epoch checkpoints served load_best_model_at_end; final/ is the best model (a 7B's would be GBs)
    runner.on_main(lambda: [shutil.rmtree(c) for c in (ctx.out / "bc").glob("checkpoint-*")])
    del trainer
    release_memory()
    return str(plan.final_dir("bc"))


def reward_pretraining(ctx: Context, bc: str):
    """The online-IRL arm's reward model, from the BC policy ``bc``, pretrained on (demonstration, BC sample) pairs of
    the training rows and scored on the validation rows. Returns it (reloaded when a resumed run finished it)."""
    plan, runner = ctx.plan, ctx.runner
    kind = plan.objective.model_kind
    if runner.reuse_finished("reward_pretrain"):
        return ctx.roles.reward(bc, kind, saved=plan.final_dir("reward_pretrain"))
    reward = ctx.roles.reward(bc, kind)
    runner.begin("reward_pretrain")
    bc_model = ctx.roles.load_policy(bc)

    def pairs(rows, seed):
        samples = sample_completions(
            bc_model,
            ctx.tokenizer,
            [r["prompt"] for r in rows],
            ctx.data.max_completion_length,
            ctx.cfg["eval"]["batch_size"],
            seed,
            desc="BC samples",
            bf16=plan.sample_bf16,
        )
        return Dataset.from_list(
            [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": s} for r, s in zip(rows, samples)]
        )

    train = pairs(ctx.data.train, ctx.seed("reward_pretrain_train"))
    validation = pairs(ctx.data.validation, ctx.seed("reward_pretrain_validation"))
    if isinstance(reward, AdapterRole):  # a role trains only inside its scope: the updater's loop, not a Trainer
        pretrain_reward_role(ctx, reward, train, validation, ctx.roles.policy_role(bc, bc_model))
    else:
        trainer = IRLRewardTrainer(
            model=reward,
            args=plan.reward_pretrain_config(),
            train_dataset=train,
            eval_dataset=validation,
            processing_class=ctx.tokenizer,
            policy=bc_model if plan.objective.needs_policy else None,
        )
        runner.progress(trainer, "reward_pretrain").train()
    runner.mark_done(
        "reward_pretrain",
        functools.partial(ctx.roles.save_reward, reward, objective=plan.objective, start=bc, policy=bc),
    )
    return reward


def pretrain_reward_role(ctx: Context, reward, train: Dataset, validation: Dataset, policy):
    """Reward pretraining of an adapter role: the online updater's own loop over the (demonstration, BC sample) pairs
    for ``num_train_epochs`` (a Trainer would see a frozen model: a role trains only inside its scope). ``policy``:
    what AIRL's reward reads log pi from."""
    objective = ctx.plan.objective
    c = ctx.plan.reward_pretrain_config()  # the same IRLRewardConfig as a full model's: its values and defaults
    batch = c.per_device_train_batch_size
    updater = OnlineRewardUpdater(
        reward,
        ctx.tokenizer,
        objective,
        learning_rate=c.learning_rate,
        weight_decay=c.weight_decay,
        batch_size=batch,
        steps=int(math.ceil(len(train) / batch) * c.num_train_epochs),
        buffer_size=len(train),
        max_grad_norm=c.max_grad_norm,
        seed=ctx.cfg["seed"],
        scoring_batch_size=batch,
        trainable_layers=c.trainable_layers,
        bf16=bool(c.bf16),
    )
    updater.add(train["prompt"], train["chosen"], train["rejected"])
    policy = policy if objective.needs_policy else None
    metrics = updater.update(policy)
    r_chosen = updater.rewards(validation["prompt"], validation["chosen"], policy)
    r_rejected = updater.rewards(validation["prompt"], validation["rejected"], policy)
    print(
        f"reward pretraining: train loss {metrics['loss']:.4f}, validation accuracy "  # as the Trainer would log
        f"{(r_chosen > r_rejected).float().mean().item():.3f}",
        flush=True,
    )


def policy_training(ctx: Context, arm: str, bc: str, reward=None) -> list[dict]:
    """An RL arm from the BC policy ``bc``: the algorithm on the online-IRL ``reward`` (``arm`` = the algo's name),
    which keeps learning and is saved beside the policy as ``<arm>/final_reward``, or on the task's verifier
    (``arm="oracle"``, ``reward=None``). Continues from its newest checkpoint on resume. Returns the trainer's log
    history."""
    plan, runner = ctx.plan, ctx.runner
    checkpoint = runner.resume_checkpoint(arm)
    if checkpoint is None:
        runner.begin(arm)
    trainer = runner.progress(build_policy_trainer(ctx, arm, bc, reward), arm)
    trainer.train(resume_from_checkpoint=checkpoint)
    bad = non_finite(trainer.trained_modules())  # the models about to be saved, as before every checkpoint
    if bad:
        raise FloatingPointError(
            f"{arm}: NaN or inf in {bad[:5]}: training diverged and nothing is saved. Lower its learning rates; "
            "resume=true continues from its last checkpoint, which was checked the same way"
        )
    if reward is not None:
        runner.on_main(
            ctx.roles.save_reward, reward, ctx.out / arm / "final_reward", plan.objective, bc, plan.final_dir(arm)
        )
    history = trainer.state.log_history
    runner.mark_done(arm, functools.partial(save_rl_arm, ctx.roles, trainer.model.eval(), history))
    del trainer, reward
    ctx.roles.release()
    release_memory()
    return history


def save_rl_arm(roles, model, history: list[dict], final: Path):
    """A finished RL arm: its policy (``Roles.save_policy``) and its log history, the plot's curves when a resumed run
    reuses the arm (``finished_log_history``)."""
    roles.save_policy(model, final)
    atomic_write_text(Path(final) / LOG_HISTORY, json.dumps(history))


def finished_log_history(ctx: Context, arm: str) -> list[dict]:
    """The log history ``policy_training`` saved with the finished ``arm`` (empty for an arm saved without one)."""
    path = ctx.plan.final_dir(arm) / LOG_HISTORY
    return json.loads(path.read_text()) if path.exists() else []


def build_policy_trainer(ctx: Context, arm: str, bc: str, reward=None, **overrides):
    """The algorithm's trainer (``plan.spec``) for ``arm`` from the BC policy ``bc``: online IRL on ``reward``, or the
    oracle (``reward=None``) on the task's verifier; ``overrides`` change fields of its config."""
    plan = ctx.plan
    oracle = reward is None
    args = plan.policy_config(arm, ctx.data.max_completion_length, **overrides)
    rows = ctx.data.policy_rows(verifier=oracle)  # the prompts it rolls out on (task.rollout_pool)
    if oracle:  # the verifier is a reward function: no reward model
        rewards = {"reward_model": None, "reward_funcs": [verifier_reward(plan.task.verifier, rows)]}
    else:  # a sample on a rollout prompt is paired with one of these demonstrations (OnlineRewardUpdater.add)
        rewards = {"reward_model": reward, "demonstration_dataset": rows_dataset(ctx.data.train)}
    critic = {"critic": ctx.roles.critic(bc)} if plan.spec.critic else {}
    return plan.spec.trainer_cls(
        model=ctx.roles.policy(bc, learns_reward=not oracle),
        args=args,
        train_dataset=rows_dataset(rows),
        processing_class=ctx.tokenizer,
        **rewards,
        **critic,
    )


def rows_dataset(rows: list[dict]) -> Dataset:
    """The rows a policy trainer samples prompts from: prompt, demonstration (None on a rollout prompt) and the row's
    index (the oracle's verifier reads the row)."""
    return Dataset.from_list(
        [{"prompt": r["prompt"], "demonstration": r["completion"], "row_index": i} for i, r in enumerate(rows)]
    )


def verifier_reward(score, rows: list[dict]):
    """The oracle arm's reward function for TRL: the task's verifier ``score(prompt, completion, row)`` on each
    completion, its row looked up by the dataset's ``row_index`` column (TRL passes dataset columns to reward
    functions as keyword arguments)."""

    def verifier(prompts, completions, row_index, **_):  # the name TRL logs it under: rewards/verifier/mean
        return [float(score(p, c, rows[i])) for p, c, i in zip(prompts, completions, row_index)]

    return verifier


def spin_training(ctx: Context, bc: str) -> None:
    """SPIN from the BC policy ``bc``: each round samples the current policy on the training prompts, then DPO prefers
    every demonstration over its sample (identical pairs, which carry no gradient, are dropped); the reference is the
    round's starting policy (TRL's DPOTrainer: a copy of it, or of its adapter)."""
    plan, runner = ctx.plan, ctx.runner
    runner.begin("spin")
    rounds, path = ctx.cfg["spin"]["rounds"], bc
    demos = ctx.data.train
    prompts = [r["prompt"] for r in demos]
    for k in range(1, rounds + 1):
        model = ctx.roles.load_policy(path, trainable=True)
        samples = sample_completions(
            model,
            ctx.tokenizer,
            prompts,
            ctx.data.max_completion_length,
            ctx.cfg["eval"]["batch_size"],
            ctx.seed("spin", k),
            desc=f"SPIN round {k} samples",
            bf16=plan.sample_bf16,
        )
        pairs = [
            {"prompt": r["prompt"], "chosen": r["completion"], "rejected": s}
            for r, s in zip(demos, samples)
            if s.strip() != r["completion"].strip()
        ]
        print(
            f"SPIN round {k}/{rounds}: {len(pairs)} pairs ({len(samples) - len(pairs)} samples equal to their "
            "demonstration dropped)",
            flush=True,
        )
        if not pairs:  # the policy reproduces every demonstration: nothing left to prefer
            break
        trainer = DPOTrainer(
            model=model.train(),
            args=plan.spin_config(k),
            train_dataset=Dataset.from_list(pairs),
            processing_class=ctx.tokenizer,
        )
        runner.progress(trainer, f"spin round {k}").train()
        path = str(ctx.out / "spin" / f"round_{k}" / "final")
        runner.on_main(ctx.roles.save_policy_adapter, trainer.model, path)
        del trainer, model
        release_memory()
    runner.mark_done("spin", functools.partial(ctx.roles.save_policy, ctx.roles.load_policy(path)))
    release_memory()


def sdft_training(ctx: Context, bc: str) -> None:
    """SDFT from the BC policy ``bc`` (TRL's SDFTTrainer): the policy samples the training prompts, and each completion
    is distilled toward the BC policy (the teacher, ``teacher_model_kind=base``) shown the prompt with its
    demonstration (``plan.SDFT_TEACHER_PROMPT``: the demonstration, a blank line, the prompt)."""
    runner = ctx.runner
    runner.begin("sdft")
    args = ctx.plan.sdft_config()
    args.max_completion_length = ctx.data.max_completion_length
    args.distillation_topk = min(args.distillation_topk, len(ctx.tokenizer))  # TRL's 100 > a tiny vocabulary
    rows = Dataset.from_list([{"prompt": r["prompt"], "privileged_context": r["completion"]} for r in ctx.data.train])
    trainer = SDFTTrainer(
        model=ctx.roles.load_policy(bc, trainable=True).train(),
        args=args,
        train_dataset=rows,
        processing_class=ctx.tokenizer,
    )
    runner.progress(trainer, "sdft").train()
    runner.mark_done("sdft", functools.partial(ctx.roles.save_policy, trainer.model.eval()))
    del trainer
    release_memory()
