"""The Python API's footguns, closed: a reward model of the wrong kind for the objective, an in-memory policy whose
KL reference TRL would reload from elsewhere, and reward accuracy that counted ties as misses."""

import pytest
import torch
from datasets import Dataset

from tests.tiny_configs import tiny_rl_config
from trl_irl import OnlineRewardGRPOConfig, OnlineRewardGRPOTrainer
from trl_irl.models import load_causal_lm, load_reward_model
from trl_irl.rewards import make_objective
from trl_irl.rewards.objectives import encode, pair_accuracy


def args(tmp_path, **overrides):
    return tiny_rl_config(
        OnlineRewardGRPOConfig,
        tmp_path / "run",
        per_device_train_batch_size=4,
        max_completion_length=4,
        max_steps=1,
        **overrides,
    )


def dataset(demos):
    return Dataset.from_list([{"prompt": d["prompt"], "demonstration": d["completion"]} for d in demos])


@pytest.mark.parametrize("objective, kind", [("airl", "classifier"), ("bt", "lm"), ("gail", "lm")])
def test_a_reward_model_of_the_wrong_kind_is_refused_at_construction(
    objective, kind, tmp_path, policy_path, tokenizer, demos
):
    with pytest.raises(ValueError, match=f"objective='{objective}' scores with"):
        OnlineRewardGRPOTrainer(
            model=str(tmp_path / "never_loaded"),
            reward_model=load_reward_model(policy_path, kind),
            args=args(tmp_path, objective=objective),
            train_dataset=dataset(demos),
            processing_class=tokenizer,
        )


def test_an_in_memory_policy_with_a_kl_term_is_refused(tmp_path, policy_path, tokenizer, demos):
    policy = load_causal_lm(policy_path)
    with pytest.raises(ValueError, match="TRL would load the KL reference from"):
        OnlineRewardGRPOTrainer(
            model=policy,
            reward_model=load_reward_model(policy_path, "classifier"),
            args=args(tmp_path, beta=0.05),
            train_dataset=dataset(demos),
            processing_class=tokenizer,
        )


def test_pair_accuracy_counts_ties_apart():
    demo, sample = torch.tensor([1.0, 2.0, 0.5, 3.0]), torch.tensor([0.0, 2.0, 1.0, 1.0])
    # pair 1 ties on reward, pair 3 is the same text: decided pairs 0 (win) and 2 (loss)
    assert pair_accuracy(demo, sample, [False, False, False, True]) == (0.5, 0.5)
    assert pair_accuracy(demo[:2], demo[:2], [True, True]) == (None, 1.0)


def test_the_online_reward_accuracy_is_not_dragged_below_half_by_identical_samples(policy_path, tokenizer, demos):
    model = load_reward_model(policy_path, "classifier")
    objective = make_objective("bt", 0.0)
    prompts, texts = [d["prompt"] for d in demos[:4]], [d["completion"] for d in demos[:4]]
    batch = encode(tokenizer, prompts * 2, texts + texts)  # every sample equals its demonstration
    _, metrics = objective.pair_loss(model, batch)
    assert metrics["ties"] == 1.0 and metrics["accuracy"] == 0.5  # was 0.0: every tie counted a miss


def test_reward_config_fields_the_irl_loss_would_drop_are_refused(tmp_path, policy_path, tokenizer, demos):
    from trl_irl import IRLRewardConfig, IRLRewardTrainer

    with pytest.raises(ValueError, match="center_rewards_coefficient=0.01: the IRL objective's loss"):
        IRLRewardConfig(output_dir=str(tmp_path), center_rewards_coefficient=0.01, report_to="none")
    pairs = Dataset.from_list(
        [{"prompt": d["prompt"], "chosen": d["completion"], "rejected": "a", "margin": 1.0} for d in demos]
    )
    with pytest.raises(ValueError, match="train_dataset has a 'margin' column"):
        IRLRewardTrainer(
            model=load_reward_model(policy_path, "classifier"),
            args=IRLRewardConfig(output_dir=str(tmp_path), report_to="none"),
            train_dataset=pairs,
            processing_class=tokenizer,
        )
