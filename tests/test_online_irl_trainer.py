"""OnlineRewardGRPOTrainer: reward state survives checkpoint and resume; bad input stops early with a clear error."""

import math

import pytest
import torch
from datasets import Dataset

from tests.tiny_configs import tiny_rl_config
from trl_irl import IRLRewardConfig, IRLRewardTrainer, OnlineRewardGRPOConfig, OnlineRewardGRPOTrainer
from trl_irl.models import build_char_tokenizer, load_reward_model


def make_args(tmp_path, **overrides):
    fields = dict(
        logging_steps=1,
        save_strategy="steps",
        save_steps=1,
        reward_batch_size=8,
        reward_update_steps=2,
        reward_learning_rate=1e-3,
        seed=0,
    )
    return tiny_rl_config(OnlineRewardGRPOConfig, tmp_path / "run", **{**fields, **overrides})


def make_trainer(tmp_path, policy_path, tokenizer, demos, cls=OnlineRewardGRPOTrainer, **overrides):
    dataset = Dataset.from_list([{"prompt": d["prompt"], "demonstration": d["completion"]} for d in demos])
    return cls(
        model=policy_path,
        reward_model=load_reward_model(policy_path, "classifier"),
        args=make_args(tmp_path, **overrides),
        train_dataset=dataset,
        processing_class=tokenizer,
    )


def reward_state(trainer):
    u = trainer.reward_updater
    params = {k: v.detach().clone() for k, v in u.model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in u.optimizer.state_dict()["state"].values()]
    return params, moments, list(u.buffer.items), u.num_updates, u.standardizer.state_dict()


class RecordingTrainer(OnlineRewardGRPOTrainer):
    """Records the reward state right after resume loaded it, before training goes on."""

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        self.after_load = reward_state(self)


def test_resume_restores_reward_model_optimizer_and_buffer(tmp_path, policy_path, tokenizer, demos):
    first = make_trainer(tmp_path, policy_path, tokenizer, demos)
    first.train()
    saved = reward_state(first)
    assert saved[3] == 4 and len(saved[2]) == 16  # 2 generation batches of 8, each followed by 2 reward steps
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert (checkpoint / "irl_reward" / "state.json").exists()
    assert not (tmp_path / "run" / "checkpoint-2" / "irl_reward.tmp").exists()  # written atomically

    resumed = make_trainer(tmp_path, policy_path, tokenizer, demos, cls=RecordingTrainer, max_steps=3)
    fresh = reward_state(resumed)
    assert not torch.equal(fresh[0]["score.weight"], saved[0]["score.weight"])  # so the check below can fail
    resumed.train(resume_from_checkpoint=str(checkpoint))
    restored = resumed.after_load
    assert restored[0].keys() == saved[0].keys()
    assert all(torch.equal(restored[0][k], saved[0][k]) for k in saved[0])
    assert len(restored[1]) == len(saved[1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(restored[1], saved[1]))
    assert restored[2:] == saved[2:]


def test_resume_then_continue_training(tmp_path, policy_path, tokenizer, demos):
    make_trainer(tmp_path, policy_path, tokenizer, demos).train()
    resumed = make_trainer(tmp_path, policy_path, tokenizer, demos, max_steps=3)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3
    assert resumed.reward_updater.num_updates == 6  # 4 restored + 2 after one more generation batch
    assert len(resumed.reward_updater.buffer) == 24


def test_nan_reward_stops_training_with_a_clear_error(tmp_path, policy_path, tokenizer, demos):
    trainer = make_trainer(tmp_path, policy_path, tokenizer, demos)
    trainer.reward_updater.model.score.weight.data.fill_(math.nan)
    with pytest.raises(FloatingPointError, match="NaN .*reward_learning_rate"):
        trainer.train()


def test_missing_column_stops_before_any_model_is_loaded(tmp_path, tokenizer):
    dataset = Dataset.from_list([{"prompt": "A", "answer": "abc"}])
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['demonstration'\]"):
        # the model path does not exist: validation comes first (a learning reward model needs demonstrations)
        OnlineRewardGRPOTrainer(
            model=str(tmp_path / "missing"),
            reward_model=torch.nn.Linear(1, 1),
            args=make_args(tmp_path),
            train_dataset=dataset,
            processing_class=tokenizer,
        )


def test_no_reward_at_all_is_refused(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="no reward"):
        OnlineRewardGRPOTrainer(
            model=str(tmp_path / "missing"),
            reward_model=None,
            args=make_args(tmp_path),
            train_dataset=Dataset.from_list([{"prompt": "A"}]),
            processing_class=tokenizer,
        )


def test_empty_dataset_names_the_problem(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="train_dataset is empty"):
        OnlineRewardGRPOTrainer(
            model=str(tmp_path / "missing"),
            reward_model=None,
            args=make_args(tmp_path),
            train_dataset=Dataset.from_dict({"prompt": [], "demonstration": []}),
            processing_class=tokenizer,
        )


def test_tokenizer_without_pad_token_names_the_fix(tmp_path, task, demos):
    tokenizer = build_char_tokenizer(task.alphabet)
    tokenizer.pad_token = None
    dataset = Dataset.from_list([{"prompt": d["prompt"], "demonstration": d["completion"]} for d in demos])
    with pytest.raises(ValueError, match="no pad token.*add_special_tokens"):
        OnlineRewardGRPOTrainer(
            model=str(tmp_path / "missing"),
            reward_model=None,
            args=make_args(tmp_path),
            train_dataset=dataset,
            processing_class=tokenizer,
        )


def test_unknown_objective_is_rejected_by_the_config(tmp_path):
    with pytest.raises(ValueError, match="reward.objective='maxent' is unknown"):
        make_args(tmp_path, objective="maxent")


def test_reward_trainer_learns_and_checks_its_columns(tmp_path, policy_path, tokenizer, task, demos):
    from trl_irl.evaluation import sample_completions

    policy = load_reward_model(policy_path, "lm")
    samples = sample_completions(policy, tokenizer, [d["prompt"] for d in demos], task.horizon, 64, seed=0)
    pairs = Dataset.from_list(
        [{"prompt": d["prompt"], "chosen": d["completion"], "rejected": s} for d, s in zip(demos, samples)]
    )
    args = IRLRewardConfig(
        output_dir=str(tmp_path / "rm"),
        objective="gail",
        num_train_epochs=4,
        learning_rate=3e-3,
        per_device_train_batch_size=16,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
    )
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['rejected'\]"):
        IRLRewardTrainer(
            model=load_reward_model(policy_path, "classifier"),
            args=args,
            train_dataset=pairs.remove_columns("rejected"),
            processing_class=tokenizer,
        )
    trainer = IRLRewardTrainer(
        model=load_reward_model(policy_path, "classifier"),
        args=args,
        train_dataset=pairs,
        eval_dataset=pairs,
        processing_class=tokenizer,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before - 0.05 and after["eval_accuracy"] > 0.7, (before, after)


def test_vllm_with_a_4bit_policy_is_refused_before_any_engine_starts(tmp_path, policy_path, tokenizer, demos):
    """TRL 1.16's vLLM weight sync can't carry a bitsandbytes base (huggingface/trl#4973): said at start-up."""
    from trl_irl.shared_base import REWARD, SharedBase

    shared = SharedBase(policy_path, {"r": 4, "alpha": 8}, {"mode": "4bit"}, roles=(REWARD,))
    dataset = Dataset.from_list([{"prompt": d["prompt"], "demonstration": d["completion"]} for d in demos])
    with pytest.raises(ValueError, match=r"use_vllm=true and a bitsandbytes-quantised policy .*trl#4973"):
        OnlineRewardGRPOTrainer(
            model=shared.model,
            reward_model=shared.role(REWARD, "classifier"),
            args=make_args(tmp_path, use_vllm=True),
            train_dataset=dataset,
            processing_class=tokenizer,
        )


def test_deepspeed_zero3_is_refused_with_the_alternatives(policy_path):
    from types import SimpleNamespace

    from trl_irl.trainers.online_irl import check_backends

    args = SimpleNamespace(use_vllm=False, model_init_kwargs=None, deepspeed_plugin=SimpleNamespace(zero_stage=3))
    with pytest.raises(ValueError, match="PPOTrainer under DeepSpeed ZeRO stage 3 is not supported.*--zero_stage 2"):
        check_backends(args, policy_path, "PPOTrainer")
    for stage in (1, 2):
        args.deepspeed_plugin.zero_stage = stage
        check_backends(args, policy_path, "PPOTrainer")  # ZeRO-1 and ZeRO-2 pass
    args.deepspeed_plugin = None
    check_backends(args, policy_path, "PPOTrainer")  # no DeepSpeed (DDP, one process) passes


def test_ppo_under_deepspeed_refuses_a_separate_critic_before_loading(policy_path):
    from types import SimpleNamespace

    from trl_irl.trainers import PPOTrainer

    args = SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2))
    with pytest.raises(ValueError, match="DeepSpeed needs the critic as an adapter.*shared_base=true"):
        PPOTrainer(model=policy_path, args=args)


def test_remax_says_at_start_up_that_its_greedy_rollout_skips_vllm(tmp_path, policy_path, tokenizer, demos):
    from transformers.utils import logging

    from trl_irl.trainers import ReMaxTrainer

    records = []
    handler = type("H", (__import__("logging").Handler,), {"emit": lambda self, r: records.append(r.getMessage())})()
    logger = logging.get_logger("trl_irl.trainers.algorithms")
    logger.addHandler(handler)
    try:
        with pytest.raises(ImportError, match="vllm|vLLM"):  # not installed here: TRL stops after our message
            make_trainer(tmp_path, policy_path, tokenizer, demos, cls=ReMaxTrainer, use_vllm=True, scale_rewards="none")
    finally:
        logger.removeHandler(handler)
    assert any("greedy baseline rollout runs on the training model's generate()" in m for m in records), records
