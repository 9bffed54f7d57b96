"""One config schema: a trainer-config field set from a shared Hydra section says where on the field, and the
pipeline builds, checks and names every value from that one statement."""

import dataclasses

import pytest

from tests.test_recipes import composed
from trl_irl.plan import RunPlan
from trl_irl.schema import build_config, check_section, config_paths, config_values, section_paths
from trl_irl.trainers import ALGORITHMS, IRLRewardConfig, OnlineRewardGRPOConfig, PPOConfig

CONFIGS = [spec.config_cls for spec in ALGORITHMS.values()] + [IRLRewardConfig]


def keys(value, prefix=""):
    for key, item in value.items():
        path = f"{prefix}.{key}" if prefix else key
        yield from keys(item, path) if isinstance(item, dict) else [path]


CREDIT_GROUPS = {"sequence": "bt", "redistribution": "bt", "attention": "gail", "implicit": "airl", "airl": "airl"}


def test_every_shared_key_is_a_field_and_every_path_is_in_the_config():
    paths = {path for cls in CONFIGS for path in config_paths(cls).values()}
    present = set()
    for credit, reward in CREDIT_GROUPS.items():
        cfg = composed("default", f"credit={credit}", f"reward={reward}")
        written = {f"credit.{p}" for p in keys(cfg["credit"])} | {
            f"reward.online.{p}" for p in keys(cfg["reward"]["online"])
        }
        assert written <= paths, credit  # every key the groups write feeds a field
        present |= set(keys(cfg))
    assert paths <= present  # every declared path is written by some group: no dangling metadata


def test_a_field_has_one_name_for_one_setting():
    """``prefix_weight`` and ``objective`` are the same fields on the policy's config and the reward trainer's."""
    policy, reward = config_paths(OnlineRewardGRPOConfig), config_paths(IRLRewardConfig)
    assert policy["objective"] == reward["objective"] == "reward.objective"
    assert policy["prefix_weight"] == reward["prefix_weight"] == "reward.prefix_weight"
    for cls in CONFIGS:  # each path feeds one field of a config
        values = list(config_paths(cls).values())
        assert len(values) == len(set(values)), cls


def test_the_policy_config_takes_each_value_from_its_path():
    cfg = composed(
        "toy",
        "algo=ppo",
        "credit=attention",
        "credit.attention_mix=0.3",
        "credit.credit_gamma=0.9",
        "reward.online.learning_rate=0.0123",
        "reward.online.standardize=false",
        "reward.prefix_weight=0.5",
        "reward=gail",
        "algo.gae_lambda=0.7",
    )
    pipeline = RunPlan(cfg)
    args = pipeline.policy_config("ppo", 6)
    assert isinstance(args, PPOConfig)
    assert (args.credit, args.attention_mix, args.credit_gamma) == ("attention", 0.3, 0.9)
    assert (args.reward_learning_rate, args.reward_standardize) == (0.0123, False)
    assert (args.objective, args.prefix_weight, args.gae_lambda) == ("gail", 0.5, 0.7)
    assert config_values(PPOConfig, cfg)["reward_update_steps"] == cfg["reward"]["online"]["update_steps"]
    oracle = pipeline.policy_config("oracle", 6)  # no reward model: no credit read from one, no online settings
    assert oracle.credit == "sequence" and oracle.reward_learning_rate == OnlineRewardGRPOConfig.reward_learning_rate
    reward = pipeline.reward_pretrain_config()
    assert (reward.objective, reward.prefix_weight) == ("gail", 0.5)


def test_errors_name_the_path_written_and_leave_the_prose():
    base = dict(output_dir="/tmp/unused", use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(ValueError, match=r"^reward\.online\.batch_size must be >= 1, got 0$"):
        build_config(OnlineRewardGRPOConfig, {**base, "reward_batch_size": 0}, "algo")
    with pytest.raises(ValueError, match=r"^algo\.beta must be >= 0, got -1$"):
        build_config(OnlineRewardGRPOConfig, {**base, "beta": -1}, "algo", section_paths("algo", {"beta": -1}))
    with pytest.raises(ValueError, match=r"^algo: token_kl_coef > 0 needs .*set beta > 0$"):  # prose: no path put in
        build_config(OnlineRewardGRPOConfig, {**base, "token_kl_coef": 0.1}, "algo")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lerning_rate'\] under reward.online: valid keys are"):
        check_section({"reward": {"online": {"lerning_rate": 1}}}, "reward.online", [OnlineRewardGRPOConfig])
    assert section_paths("algo", {"name": "ppo", "beta": 0, "extra": {"loss_type": "bnpo"}}) == {
        "beta": "algo.beta",
        "loss_type": "algo.extra.loss_type",
    }


def test_every_config_path_points_at_a_field_of_its_class():
    for cls in CONFIGS:
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(config_paths(cls)) <= names
